"""Labels per second of each teacher through jaxdistill's Teacher.label, on this machine.

Usage: python benchmarks/teacher_throughput.py [--shared ../shared] [--out teachers.json]
Frames: 64-atom Si (2x2x2 cubic diamond, rattled 0.05 Å) and ethanol (rattled 0.05 Å),
distinct frames, after a warm-up call (JAX compilation / first-call costs excluded).
Orb uses full-size Orb-v3 architectures with random weights (no internet here), loaded
through orb-models' own loader; its batching gain = labels/s at batch 8 over batch 1.
"""

import argparse
import json
import os
import platform
import time

import ase.build


def frames(kind, n, seed0=0):
    out = []
    for i in range(n):
        if kind == "si64":
            a = ase.build.bulk("Si", "diamond", a=5.43, cubic=True) * (2, 2, 2)
        else:
            a = ase.build.molecule("CH3CH2OH")
        a.rattle(0.05, seed=seed0 + i)
        out.append(a)
    return out


def rate(teacher, kind, n, batch_size=None, repeats=3):
    """Best of `repeats` timings of labelling n distinct frames (labels per second)."""
    if batch_size is not None:
        teacher.batch_size = batch_size
    teacher.label(frames(kind, max(2, batch_size or 1), seed0=1000))  # warm-up
    best = 0.0
    for r in range(repeats):
        fs = frames(kind, n, seed0=100 * r)
        t = time.perf_counter()
        teacher.label(fs)
        best = max(best, n / (time.perf_counter() - t))
    return best


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--shared", default=os.path.join(os.path.dirname(__file__), "..", "shared"))
    p.add_argument("--out", default="teachers.json")
    p.add_argument("--n", type=int, default=8)
    args = p.parse_args()
    from jaxdistill.teachers import load_teacher

    results = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "load_avg_start": os.getloadavg(),
        "labels_per_second": {},
    }
    r = results["labels_per_second"]
    sev = load_teacher("sevennet:7net-0")
    r["sevennet-0"] = {
        "si64": rate(sev, "si64", args.n),
        "ethanol": rate(sev, "ethanol", 4 * args.n),
    }
    ani = os.path.join(args.shared, "teachers", "fennol-ani1x")
    if os.path.isdir(ani):
        one = load_teacher(f"fennol:{ani}/ani1x_model0.fnx")
        r["fennol-ani1x (1 model)"] = {"ethanol": rate(one, "ethanol", 20 * args.n)}
        ens = load_teacher(f"fennol:{ani}/ani1x_model*.fnx")
        r["fennol-ani1x (8-model ensemble)"] = {"ethanol": rate(ens, "ethanol", 4 * args.n)}
    import tempfile

    import torch
    from orb_models.forcefield import pretrained

    tmp = tempfile.mkdtemp()
    for kind, name, arch in (
        (
            "conservative",
            "orb-v3-conservative-inf-omat",
            pretrained.orb_v3_conservative_architecture,
        ),
        ("direct", "orb-v3-direct-20-omat", pretrained.orb_v3_direct_architecture),
    ):
        torch.manual_seed(0)
        path = os.path.join(tmp, f"{kind}.ckpt")
        torch.save(arch(device="cpu").state_dict(), path)
        t = load_teacher(f"orb:{name}@{path}")
        entry = {}
        for struct, n in (("si64", args.n), ("ethanol", 4 * args.n)):
            entry[struct + " batch1"] = rate(t, struct, n, batch_size=1)
            entry[struct + " batch8"] = rate(t, struct, n, batch_size=8)
            entry[struct + " batching gain"] = entry[struct + " batch8"] / entry[struct + " batch1"]
        r[name + " (random weights)"] = entry
    results["load_avg_end"] = os.getloadavg()
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
