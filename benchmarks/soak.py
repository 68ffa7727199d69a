"""Memory over a long run: host RSS and device memory against calls or steps.

    # a million ASE calls of ethanol on the CPU, and of 64-atom Si on the GPU
    python benchmarks/soak.py ase --system ethanol --device cpu --calls 1000000 --output F.json
    python benchmarks/soak.py ase --system si64 --device gpu --calls 1000000 --output F.json
    # a million jax-md steps (run_md, NVT) of 64-atom Si
    python benchmarks/soak.py jaxmd --system si64 --steps 1000000 --output F.json

Records (step or call, host RSS MB, device bytes in use, compilations so far) at about
200 points, and the growth after warm-up (the first 5 % of the run), and draws them
(``--plot F.png``). Untrained default PaiNN; atoms move around their start (ASE) or
under a Langevin thermostat (jax-md).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

import ase.build
import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from structures import silicon_cell

import jaxdistill
from jaxdistill import StudentCalculator, create_student, run_md
from jaxdistill.diagnostics import count_compilations


def rss_mb() -> float:
    """Resident set size of this process, MB (from /proc, no dependency)."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def device_bytes() -> int | None:
    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("bytes_in_use")


def system(name: str) -> ase.Atoms:
    if name == "ethanol":
        atoms = ase.build.molecule("CH3CH2OH")
        atoms.center(vacuum=5.0)
        atoms.pbc = False
        return atoms
    return silicon_cell(int(name.removeprefix("si")))


def soak_ase(args, record) -> None:
    atoms = system(args.system)
    student = create_student("painn", ["H", "C", "O", "Si"], cutoff=5.0)
    atoms.calc = StudentCalculator(student, device=args.device)
    base = atoms.positions.copy()
    rng = np.random.default_rng(0)
    noise = rng.normal(scale=0.01, size=(64, *base.shape))  # reused: no RNG cost per call
    every = max(1, args.calls // 200)
    points = record["points"]
    start = time.perf_counter()
    with count_compilations() as compiled:
        for call in range(args.calls + 1):
            atoms.positions = base + noise[call % 64]
            atoms.get_forces()
            if call % every == 0:
                points.append([call, rss_mb(), device_bytes(), compiled.count])
                if time.perf_counter() - start > args.max_seconds:
                    break  # the JSON says how far it got
    record["calls_done"] = call
    record["seconds"] = time.perf_counter() - start
    record["us_per_call"] = 1e6 * record["seconds"] / max(call, 1)
    record["jax_device"] = str(atoms.calc.jax_device)


def soak_jaxmd(args, record) -> None:
    atoms = system(args.system)
    student = create_student("painn", ["H", "C", "O", "Si"], cutoff=5.0)
    points = record["points"]
    counter = count_compilations()

    def callback(progress) -> None:
        points.append([progress.step, rss_mb(), device_bytes(), compiled.count])

    with counter as compiled:
        summary = _soak_run(student, atoms, args, callback)
    record["summary"] = summary.as_dict()


def _soak_run(student, atoms, args, callback):
    return run_md(
        student,
        atoms,
        ensemble="nvt",
        temperature_kelvin=300.0,
        friction_per_fs=0.05,
        timestep_fs=1.0,
        steps=args.steps,
        sample_every=1000,
        chunk_steps=max(1000, args.steps // 200),
        capacity_multiplier=2.0,  # room for an untrained student's density changes
        max_temperature_factor=1e6,
        bond_factor=None,
        callback=callback,
        keep_on_interrupt=True,  # a `timeout` still leaves the points recorded so far
    )


def growth(points: list[list], warmup_fraction: float = 0.05) -> dict:
    steps = np.array([p[0] for p in points], dtype=float)
    rss = np.array([p[1] for p in points], dtype=float)
    after = steps >= warmup_fraction * steps[-1]
    out = {
        "rss_start_mb": float(rss[0]),
        "rss_after_warmup_mb": float(rss[after][0]),
        "rss_end_mb": float(rss[-1]),
        "rss_growth_after_warmup_mb": float(rss[-1] - rss[after][0]),
        "rss_max_after_warmup_mb": float(rss[after].max() - rss[after][0]),
    }
    device = [p[2] for p in points if p[2] is not None]
    if device:
        out["device_bytes_start"] = int(device[0])
        out["device_bytes_end"] = int(device[-1])
    return out


def plot(record: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = record["points"]
    x = [p[0] for p in points]
    fig, left = plt.subplots(figsize=(6.5, 3.8))
    left.plot(x, [p[1] for p in points], color="C0", label="host RSS")
    left.set_xlabel("ASE calls" if record["mode"] == "ase" else "MD steps")
    left.set_ylabel("host RSS, MB", color="C0")
    device = [p[2] for p in points]
    if any(d is not None for d in device):
        right = left.twinx()
        right.plot(x, [d / 2**20 if d is not None else np.nan for d in device], color="C1")
        right.set_ylabel("device memory in use, MB", color="C1")
    left.set_title(f"{record['mode']} soak: {record['system']} on {record['jax_device']}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("mode", choices=["ase", "jaxmd"])
    parser.add_argument("--system", default="si64", help="ethanol, si64, si512, ...")
    parser.add_argument("--device", default="auto", help="StudentCalculator device (ase mode)")
    parser.add_argument("--calls", type=int, default=1_000_000)
    parser.add_argument("--steps", type=int, default=1_000_000)
    parser.add_argument("--max-seconds", type=float, default=1e9, help="ase mode: stop then")
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--plot", type=Path, default=None)
    args = parser.parse_args()
    record = {
        "benchmark": "soak",
        "mode": args.mode,
        "system": args.system,
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "jax_device": str(jax.devices()[0].device_kind),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "jax": jax.__version__,
        "jaxdistill": jaxdistill.__version__,
        "command": " ".join(sys.argv),
        "columns": ["call_or_step", "rss_mb", "device_bytes_in_use", "compilations"],
        "points": [],
    }
    try:
        (soak_ase if args.mode == "ase" else soak_jaxmd)(args, record)
    finally:
        if record["points"]:
            record["growth"] = growth(record["points"])
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(record, indent=1) + "\n")
        if args.plot and record["points"]:
            plot(record, args.plot)
        print(json.dumps({k: v for k, v in record.items() if k != "points"}, indent=1))


if __name__ == "__main__":
    main()
