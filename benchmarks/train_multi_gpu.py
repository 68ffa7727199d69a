"""Training on one device and on all local devices: same student, store, global batch.

On a machine with 2 GPUs (the store from a labelling run, e.g. a pipeline's labels.h5):

    python benchmarks/train_multi_gpu.py --store runs/si-sevennet/labels.h5 \
        --epochs 20 --batch-size 32 --features 64 --layers 3 \
        --output benchmarks/results/train_multi_gpu_2xh200.json

On a CPU, tiny, with two host devices (the flag must be set before jax starts; a small
EMT store is made when --store is not given):

    XLA_FLAGS=--xla_force_host_platform_device_count=2 \
        python benchmarks/train_multi_gpu.py --epochs 2 --batch-size 4 --features 8 \
        --layers 1 --output /tmp/train_multi_cpu.json

Each device set trains the same student from the same seed with the same config (the
global batch is split across the devices by ``train(..., devices=...)``'s shard_map
data parallelism). The steps are ``epochs × training frames / batch``. Each run is
done in two calls: the first stops after ``--warmup-steps`` (compilation and the first
steps), the second resumes to the end, so ``structures_per_s`` is the steady state of
the second call (``train``'s ``structures_per_second_this_call``). Reported per device
set: structures/s, the final validation force and energy MAE, wall times. JSON out.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def make_store(path: Path, n_frames: int) -> Path:
    """Rattled Cu cells of two sizes labelled by EMT: a tiny store for a CPU check."""
    import ase.build

    from jaxdistill.labelling import label

    frames = []
    for i in range(n_frames):
        atoms = ase.build.bulk("Cu", "fcc", a=3.61, cubic=True) * (1 + i % 2, 1, 1)
        atoms.rattle(0.05, seed=i)
        frames.append(atoms)
    path.unlink(missing_ok=True)
    label("ase:ase.calculators.emt:EMT", frames, path, progress=False)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", help="label store (default: a tiny EMT store)")
    parser.add_argument("--frames", type=int, default=48, help="frames of the tiny store")
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--batch-size", type=int, default=8, help="global batch")
    parser.add_argument("--architecture", default="painn")
    parser.add_argument("--features", type=int, default=64)
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--cutoff", type=float, default=5.0)
    parser.add_argument("--warmup-steps", type=int, default=5)
    parser.add_argument(
        "--seeds", default="0", help="seeds, e.g. 0,1: the spread between seeds is the noise"
    )
    parser.add_argument("--workdir", default="/tmp/jaxdistill-train-multi")
    parser.add_argument("--output", required=True)
    args = parser.parse_args()

    import jax

    from jaxdistill.data.store import LabelStore
    from jaxdistill.train import train

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    store = Path(args.store) if args.store else make_store(work / "tiny.h5", args.frames)
    split = {"train": 0.8, "validation": 0.2, "test": 0.0}
    with LabelStore(store) as labels:
        n_train = len(labels.split(split, seed=0)["train"])
    steps = max(args.warmup_steps + 1, round(args.epochs * n_train / args.batch_size))
    config = {
        "architecture": args.architecture,
        "model": {"features": args.features, "num_layers": args.layers},
        "cutoff_angstrom": args.cutoff,
        "steps": steps,
        "batch_size": args.batch_size,
        "split": split,
        "validation_interval": steps,  # validate at the end only: the loop times training
        "checkpoint_interval": steps,
        "patience": None,
        "log_interval": max(1, steps // 10),
        "seed": 0,
    }
    devices = jax.local_devices()
    result = {
        "benchmark": "train_multi_gpu",
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "host": platform.node(),
        "jax": jax.__version__,
        "devices": [str(d) for d in devices],
        "store": str(store),
        "training_frames": n_train,
        "config": config,
        "runs": [],
    }
    sets = [devices[:1]] + ([devices] if len(devices) > 1 else [])
    seeds = [int(x) for x in args.seeds.split(",")]
    for seed, chosen in ((seed, chosen) for seed in seeds for chosen in sets):
        config = {**config, "seed": seed}
        out = work / f"student-{len(chosen)}dev-seed{seed}"
        shutil.rmtree(out, ignore_errors=True)
        start = time.perf_counter()
        train(store, out, config, devices=chosen, stop_after=args.warmup_steps, progress=False)
        warm_s = time.perf_counter() - start
        start = time.perf_counter()
        student = train(store, out, config, devices=chosen, progress=False)
        steady_s = time.perf_counter() - start
        summary = student.metadata["training"]
        validation = summary.get("last_validation", {})
        entry = {
            "seed": seed,
            "devices": len(chosen),
            "device_names": [str(d) for d in chosen],
            "steps": summary.get("steps_completed"),
            "epochs": summary.get("epochs"),
            "warmup_call_s": round(warm_s, 3),
            "steady_call_s": round(steady_s, 3),
            "structures_per_s": summary.get("structures_per_second_this_call"),
            "validation": validation,
        }
        result["runs"].append(entry)
        print(json.dumps(entry), flush=True)
        one = [r["structures_per_s"] or 0.0 for r in result["runs"] if r["devices"] == 1]
        many = [r["structures_per_s"] or 0.0 for r in result["runs"] if r["devices"] > 1]
        if one and many and one[0]:
            result["speedup"] = round(float(np.mean(many)) / float(np.mean(one)), 3)
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=1, default=str))


if __name__ == "__main__":
    main()
