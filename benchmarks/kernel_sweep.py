"""Time the students' force call per kernel setting, all in one process (issue 13).

``md_speed.py`` times whole MD steps, one process and one compilation per path; with
the Pallas kernels' settings (tile sizes, warps, matrix-product precision) read from
environment variables at trace time, a sweep of them costs mostly process start-ups and
LJ floors there. This script builds each setting's jax-md force function in one process
(a receiver-major ``Dense`` list, capacity multiplier 1.6, allocated once for a rattled
Si crystal and then held fixed), times ``iterations`` force calls inside one
``fori_loop`` (three repeats, median), and compares every setting's forces with the
reference path's (``force_max_error``, eV/Å, against the same call at
``message_passing="reference"`` in full float32 products), so a faster setting that
loses accuracy shows it.

Force-call times, not MD steps: compare settings within one run (one card), and take
MD-step claims from ``md_speed.py``.

    python benchmarks/kernel_sweep.py --sizes 64,512,4096 --output results/kernel_sweep.json
    python benchmarks/kernel_sweep.py --quick --output /tmp/sweep.json   # CPU smoke run
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from structures import silicon_cell

from jaxdistill import create_student
from jaxdistill.models import fused, node_kernels

#: Every environment variable a setting may set (cleared before each setting): the
#: kernels' own switches, named by the modules that read them, and JAX's precision.
KERNEL_ENV = (
    fused.ENV_VAR,
    fused.BLOCKS_ENV_VAR,
    fused.PRECISION_ENV_VAR,
    fused.FUSED_LAYOUT_ENV_VAR,
    fused.SLOT_BLOCKS_ENV_VAR,
    node_kernels.ENV_VAR,
    node_kernels.BLOCKS_ENV_VAR,
    "JAX_DEFAULT_MATMUL_PRECISION",
)

_NODES = {"JAXDISTILL_NODE_KERNELS": "on", "JAXDISTILL_MESSAGE_PASSING": "reference"}

#: name -> (message_passing, environment). "tf32" is JAX's default precision for the
#: kernels' products (JAXDISTILL_KERNEL_PRECISION=default), "f32" full float32.
SETTINGS: dict[str, tuple[str, dict[str, str]]] = {
    "reference": ("reference", {}),
    "reference_f32": ("reference", {"JAX_DEFAULT_MATMUL_PRECISION": "highest"}),
    "slots_f32_w4": ("fused", {"JAXDISTILL_FUSED_LAYOUT": "slots"}),
    "slots_f32_w8": (
        "fused",
        {"JAXDISTILL_FUSED_LAYOUT": "slots", "JAXDISTILL_SLOT_BLOCKS": "32,64,8"},
    ),
    "slots_tf32_w8": (
        "fused",
        {
            "JAXDISTILL_FUSED_LAYOUT": "slots",
            "JAXDISTILL_SLOT_BLOCKS": "32,64,8",
            "JAXDISTILL_KERNEL_PRECISION": "default",
        },
    ),
    "slots_f32_s16_w8": (
        "fused",
        {"JAXDISTILL_FUSED_LAYOUT": "slots", "JAXDISTILL_SLOT_BLOCKS": "16,64,8"},
    ),
    "slots_f32_f32_w4": (
        "fused",
        {"JAXDISTILL_FUSED_LAYOUT": "slots", "JAXDISTILL_SLOT_BLOCKS": "32,32,4"},
    ),
    # node kernels beside reference messages ("auto" with the override: the node
    # kernels are never used with message_passing="reference" itself)
    "nodes_f32_w8": ("auto", {**_NODES, "JAXDISTILL_NODE_BLOCKS": "16,8"}),
    "nodes_tf32_w8": (
        "auto",
        {**_NODES, "JAXDISTILL_NODE_BLOCKS": "16,8", "JAXDISTILL_KERNEL_PRECISION": "default"},
    ),
    "nodes_f32_r32_w8": ("auto", {**_NODES, "JAXDISTILL_NODE_BLOCKS": "32,8"}),
    "nodes_f32_r16_w16": ("auto", {**_NODES, "JAXDISTILL_NODE_BLOCKS": "16,16"}),
    "slots_nodes_f32_w8": (
        "fused",
        {
            "JAXDISTILL_NODE_KERNELS": "on",
            "JAXDISTILL_NODE_BLOCKS": "16,8",
            "JAXDISTILL_FUSED_LAYOUT": "slots",
            "JAXDISTILL_SLOT_BLOCKS": "32,64,8",
        },
    ),
}

STUDENTS = {"painn64x3": ("painn", {}), "schnet64x3": ("schnet", {})}


def force_function(student, atoms, capacity_multiplier: float):
    """``(force(R) -> F, R0)`` over a receiver-major list allocated once at ``R0``."""
    from jax_md import quantity, space

    from jaxdistill.md.jaxmd import jax_md_potential

    box = jnp.asarray(np.diag(atoms.cell.array), jnp.float32)
    displacement, _ = space.periodic(box)
    r0 = jnp.asarray(atoms.positions, jnp.float32)
    neighbor_fn, energy_fn = jax_md_potential(
        student,
        displacement,
        box,
        atoms.numbers,
        format="dense",
        capacity_multiplier=capacity_multiplier,
    )
    nbrs = neighbor_fn.allocate(r0)
    force = quantity.force(energy_fn)
    return (lambda r: force(r, neighbor=nbrs)), r0


def time_force(force, r0, iterations: int, repeats: int = 3) -> tuple[list[float], np.ndarray]:
    """µs per force call over ``iterations`` calls in one loop, and the forces at ``r0``."""

    def body(i, carry):
        r, acc = carry
        return r + 1e-7, acc + force(r)

    run = jax.jit(lambda carry: jax.lax.fori_loop(0, iterations, body, carry))
    carry = (r0, jnp.zeros_like(r0))
    jax.block_until_ready(run(carry))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(run(carry))
        times.append((time.perf_counter() - start) / iterations * 1e6)
    return times, np.asarray(jax.jit(force)(r0))


def set_environment(env: dict[str, str]) -> None:
    for key in KERNEL_ENV:
        os.environ.pop(key, None)
    os.environ.update(env)
    jax.config.update("jax_default_matmul_precision", env.get("JAX_DEFAULT_MATMUL_PRECISION"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--sizes", default="64,512,4096")
    parser.add_argument("--students", default="painn64x3,schnet64x3")
    parser.add_argument("--settings", default=",".join(SETTINGS))
    parser.add_argument("--capacity-multiplier", type=float, default=1.6)
    parser.add_argument("--budget-seconds", type=float, default=500.0)
    parser.add_argument("--quick", action="store_true", help="a CPU smoke run (8 atoms)")
    args = parser.parse_args()
    start = time.perf_counter()
    sizes = [8] if args.quick else [int(n) for n in args.sizes.split(",")]
    record = {
        "benchmark": "kernel_sweep",
        "date": datetime.date.today().isoformat(),
        "command": " ".join(sys.argv),
        "device": str(jax.devices()[0].device_kind),
        "jax": jax.__version__,
        "rows": [],
        "skipped": [],
    }

    def save() -> None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(record, indent=2) + "\n")

    settings = [s for s in args.settings.split(",") if s]
    for name in settings:
        if name not in SETTINGS:
            raise SystemExit(f"unknown setting {name!r}; known: {', '.join(SETTINGS)}")
        unknown = set(SETTINGS[name][1]) - set(KERNEL_ENV)
        if unknown:  # a renamed variable would otherwise be set and silently ignored
            raise SystemExit(f"setting {name!r} sets {sorted(unknown)}, not in KERNEL_ENV")
    for n in sizes:
        atoms = silicon_cell(64 if args.quick else n)
        if args.quick:
            atoms = atoms[:8]
        atoms.rattle(0.05, seed=0)
        iterations = 2 if args.quick else (200 if n <= 1000 else 40)
        for label in args.students.split(","):
            architecture, hyper = STUDENTS[label]
            student = create_student(architecture, ["Si"], cutoff=5.0, **hyper)
            # the oracle: the reference path in full float32
            set_environment({"JAX_DEFAULT_MATMUL_PRECISION": "highest"})
            force, r0 = force_function(
                student.with_message_passing("reference"), atoms, args.capacity_multiplier
            )
            oracle = np.asarray(jax.jit(force)(r0))
            for name in settings:
                if time.perf_counter() - start > args.budget_seconds:
                    record["skipped"].append(f"{label}/{n}/{name}: budget")
                    continue
                message_passing, env = SETTINGS[name]
                if architecture == "schnet" and "JAXDISTILL_NODE_KERNELS" in env:
                    continue  # PaiNN's update block only
                row = {"student": label, "n_atoms": n, "setting": name, "env": env}
                try:
                    set_environment(env)
                    force, r0 = force_function(
                        student.with_message_passing(message_passing),
                        atoms,
                        args.capacity_multiplier,
                    )
                    times, forces = time_force(force, r0, iterations)
                    row.update(
                        force_call_us=float(np.median(times)),
                        force_call_us_all=times,
                        force_max_error=float(np.abs(forces - oracle).max()),
                        force_max=float(np.abs(oracle).max()),
                    )
                    print(
                        f"[sweep] {label} {n} {name}: {row['force_call_us']:.1f} us, "
                        f"max |dF| {row['force_max_error']:.2e} eV/A",
                        flush=True,
                    )
                except Exception as error:  # a setting that does not compile is a result
                    row["error"] = f"{type(error).__name__}: {str(error)[:400]}"
                    print(f"[sweep] {label} {n} {name}: {row['error']}", flush=True)
                record["rows"].append(row)
                save()
    set_environment({})
    record["runtime_seconds"] = time.perf_counter() - start
    save()


if __name__ == "__main__":
    main()
