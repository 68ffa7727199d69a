"""Training throughput (structures/s) of students on 64-atom Si frames.

Self-contained: it builds rattled and strained 64-atom diamond-Si cells, labels them
with a cheap Lennard-Jones teacher into a temporary label store (throughput does not
depend on the label values), then times the jitted training step of the real
training code (``jaxdistill.train``): fresh padded batches from the store, built in a
background thread and sent to the device, exactly as ``train()`` does.

    python benchmarks/train_speed.py --quick          # CPU: default student, batch 4
    python benchmarks/train_speed.py                  # GPU: a sweep of sizes

Writes ``benchmarks/results/train_speed-<device>-<date>.json`` (or ``--output``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def make_frames(n_frames: int, seed: int = 0):
    import ase.build

    rng = np.random.default_rng(seed)
    frames = []
    for i in range(n_frames):
        atoms = ase.build.bulk("Si", "diamond", a=5.43, cubic=True) * (2, 2, 2)
        strain = np.eye(3) + 0.01 * rng.standard_normal((3, 3))
        atoms.set_cell(atoms.cell.array @ strain, scale_atoms=True)
        atoms.rattle(0.08, seed=int(rng.integers(1 << 30)) + i)
        frames.append(atoms)
    return frames


def label_store(path: Path, n_frames: int) -> Path:
    from ase.calculators.lj import LennardJones

    from jaxdistill.labelling import label
    from jaxdistill.teachers import load_teacher

    teacher = load_teacher(LennardJones(sigma=2.1, epsilon=0.1, rc=5.0, smooth=True))
    label(teacher, make_frames(n_frames), path, progress=False)
    return path


def time_variant(
    store_path: Path,
    architecture: str,
    batch_size: int,
    steps: int,
    model: dict,
    edge_layout: str = "edge_list",
):
    import jax

    from jaxdistill.data.batching import (
        make_batch,
        plan_capacity,
        precompute_neighbours,
        shard_indices,
    )
    from jaxdistill.data.store import LabelStore
    from jaxdistill.student import create_student
    from jaxdistill.train import TrainConfig
    from jaxdistill.train.loop import BatchOrder, _Prefetcher
    from jaxdistill.train.loss import LossWeights
    from jaxdistill.train.optimizer import make_optimizer
    from jaxdistill.train.reference import apply_head_statistics, fit_head_statistics
    from jaxdistill.train.step import (
        init_state,
        make_mesh,
        make_train_step,
        replicated,
        sharded,
    )

    config = TrainConfig(
        architecture=architecture, batch_size=batch_size, model=model, edge_layout=edge_layout
    )
    with LabelStore(store_path) as store:
        labels = store.arrays()
    student = create_student(
        architecture, ["Si"], cutoff=config.cutoff_angstrom, dtype=config.dtype, **model
    )
    params = apply_head_statistics(student.params, fit_head_statistics(labels, student.species))
    frames = precompute_neighbours(labels, student.cutoff)
    mesh = make_mesh()
    n_shards = mesh.devices.size
    per_shard = -(-batch_size // n_shards)
    plan = plan_capacity([frames], per_shard, config.capacity, receiver_major=config.receiver_major)
    order = BatchOrder(frames.n_frames, batch_size, seed=0)
    optimizer = make_optimizer(config)
    weights = LossWeights(config.energy_weight, config.forces_weight, config.stress_weight)
    step_fn = make_train_step(student.potential.predict, optimizer, weights, config.ema_decay, mesh)
    state = jax.device_put(init_state(params, optimizer), replicated(mesh))

    def host_batch(step: int):
        shards = shard_indices(order.indices(step), n_shards)
        batch = make_batch(frames, shards, plan.capacity(frames, shards), config.dtype)
        return jax.device_put(batch, sharded(mesh))

    warmup = 3
    prefetcher = _Prefetcher(host_batch, iter(range(warmup + steps)))
    try:
        start = time.perf_counter()
        state, sums = step_fn(state, prefetcher.get())
        jax.block_until_ready(sums)
        compile_s = time.perf_counter() - start
        for _ in range(warmup - 1):
            state, sums = step_fn(state, prefetcher.get())
        jax.block_until_ready(sums)
        start = time.perf_counter()
        for _ in range(steps):
            state, sums = step_fn(state, prefetcher.get())
        jax.block_until_ready(sums)
        elapsed = time.perf_counter() - start
    finally:
        prefetcher.close()
    return {
        "architecture": architecture,
        "model": model or "defaults",
        "edge_layout": edge_layout,
        "num_parameters": student.num_parameters,
        "batch_size": batch_size,
        "atoms_per_structure": 64,
        "capacity": {
            "mode": plan.mode,
            "nodes_per_shard": plan.fixed.nodes if plan.fixed else None,
            "edges_per_shard": plan.fixed.edges if plan.fixed else None,
        },
        "devices": n_shards,
        "first_step_s_incl_compile": round(compile_s, 3),
        "timed_steps": steps,
        "step_ms": round(1e3 * elapsed / steps, 3),
        "structures_per_s": round(steps * batch_size / elapsed, 2),
        "atoms_per_s": round(steps * batch_size * 64 / elapsed, 1),
        "final_loss": float(sums["loss"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="CPU: default student, batch 4")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per variant")
    parser.add_argument("--frames", type=int, default=None, help="labelled 64-atom frames")
    parser.add_argument("--output", type=Path, default=None, help="JSON file to write")
    parser.add_argument(
        "--edge-layouts",
        default="edge_list",
        help="training batch layouts to time, e.g. edge_list,receiver_major",
    )
    parser.add_argument("--variants", default=None, help="e.g. painn:16,schnet:16 (arch:batch)")
    args = parser.parse_args()

    import jax

    if args.quick:
        variants = [("painn", 4, {})]
        steps, n_frames = args.steps or 20, args.frames or 16
    else:
        variants = [
            ("painn", 1, {}),
            ("painn", 4, {}),
            ("painn", 16, {}),
            ("painn", 64, {}),
            ("painn", 4, {"features": 128}),
            ("schnet", 4, {}),
            ("schnet", 16, {}),
        ]
        steps, n_frames = args.steps or 200, args.frames or 256
    if args.variants:
        variants = [
            (name, int(batch), {})
            for name, batch in (v.split(":") for v in args.variants.split(","))
        ]
    device = jax.devices()[0]
    results = {
        "benchmark": "train_speed",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "device": f"{device.platform}:{getattr(device, 'device_kind', '')}",
        "local_devices": jax.local_device_count(),
        "jax": jax.__version__,
        "python": platform.python_version(),
        "frames": n_frames,
        "cpu_count": os.cpu_count(),
        "load_average_1min_at_start": round(os.getloadavg()[0], 2),
        "variants": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        store = label_store(Path(tmp) / "si64.h5", n_frames)
        for (architecture, batch_size, model), layout in (
            (v, layout) for v in variants for layout in args.edge_layouts.split(",")
        ):
            result = time_variant(store, architecture, batch_size, steps, model, layout)
            results["variants"].append(result)
            print(
                f"{architecture:7s} batch {batch_size:3d} {json.dumps(model) if model else '':18s}"
                f" {layout:14s}"
                f" {result['step_ms']:9.2f} ms/step {result['structures_per_s']:9.1f} structures/s"
                f" (first step {result['first_step_s_incl_compile']:.1f} s)",
                flush=True,
            )
    output = args.output or (
        ROOT
        / "benchmarks"
        / "results"
        / f"train_speed-{device.platform}-{datetime.date.today().isoformat()}.json"
    )
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
