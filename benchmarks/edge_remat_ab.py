"""A/B of a student setting read when a step is traced, by default the per-edge work
kept for the backward pass or recomputed in it (``--variable`` and ``--values`` name
another environment variable and its two values, e.g. ``JAXDISTILL_MESSAGE_PASSING``
``reference,auto``: the fused kernels where "auto" takes them).

``JAXDISTILL_EDGE_REMAT`` (read when a step is traced, :func:`jaxdistill.models.edges.
edge_function`) says whether a message-passing layer's per-edge intermediates are
stored by the forward pass ("off") or built again inside the backward pass ("on").
Per student, Si size and list (as allocated, or compacted to the cutoff), this script
compiles a user's jax-md NVE chunk (``nbrs.update`` + ``apply_fn`` in ``lax.scan``,
md_speed.nve_chunk) once per setting and then runs both from the same start state,
alternating, so both integrate the same trajectory and meet the same neighbour lists.
µs per step: median over rounds. The largest force difference between the two at the
start positions is recorded (the values must agree to float rounding).

``--calculator-systems`` adds the ASE calculator: one ``StudentCalculator`` per setting
(each with its own student and potential, so each traces its own program), their
``get_forces`` calls alternating, with the atoms moved before every call as MD does.

    python benchmarks/edge_remat_ab.py --sizes 64,512,4096 --rounds 5 \
        --calculator-systems si64,si1000 --output benchmarks/results/edge_remat_ab.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from md_speed import FUSED_STUDENTS, nve_chunk, stats, versions
from structures import silicon_cell

from jaxdistill import create_student
from jaxdistill.md import ase_calculator
from jaxdistill.md.jaxmd import jax_md_potential
from jaxdistill.models.edges import EDGE_REMAT_ENV_VAR

#: The two values compared (``--values``), A then B.
SETTINGS = ["off", "on"]
#: The environment variable they are given to (``--variable``).
VARIABLE = [EDGE_REMAT_ENV_VAR]


def fresh_potential(label: str, atoms, capacity: float, compact: bool, variable: str, setting: str):
    """``(neighbor_fn, energy_fn)`` of a fresh student (same seed, same parameters)
    through ``jax_md_potential``, with ``variable`` set to ``setting``: such settings
    are read when a function is traced, and JAX reuses the traces of a function it has
    seen."""
    from jax_md import space

    architecture, hyper = FUSED_STUDENTS[label]
    student = create_student(architecture, ["Si"], cutoff=5.0, **hyper)
    box = jnp.asarray(np.diag(atoms.cell.array), jnp.float32)
    displacement, _ = space.periodic(box)
    os.environ[variable] = setting
    return jax_md_potential(
        student,
        displacement,
        box,
        atoms.numbers,
        format="dense",
        capacity_multiplier=capacity,
        compact_rows=compact,
    )


def compile_chunk(label: str, atoms, steps: int, capacity: float, compact: bool, setting: str):
    """``(chunk, state, nbrs, forces at the start, compile seconds)``, traced and
    compiled with the setting."""
    neighbor_fn, energy_fn = fresh_potential(label, atoms, capacity, compact, VARIABLE[0], setting)
    chunk, state, nbrs = nve_chunk(neighbor_fn, energy_fn, atoms, steps)
    force_fn = jax.jit(jax.grad(lambda r, n: -energy_fn(r, neighbor=n)))
    t0 = time.perf_counter()
    jax.block_until_ready(chunk(state, nbrs))
    forces = np.asarray(force_fn(state.position, nbrs))
    return chunk, state, nbrs, forces, time.perf_counter() - t0


def calculator_ab(label: str, atoms, calls: int) -> dict:
    """ASE ``get_forces`` per setting, calls alternating: ms per call, |dF|."""
    architecture, hyper = FUSED_STUDENTS[label]
    built = {}
    for setting in SETTINGS:
        os.environ[VARIABLE[0]] = setting
        ase_calculator._SHARED.clear()  # its own potential, so its own trace
        student = create_student(architecture, ["Si"], cutoff=5.0, **hyper)
        copy = atoms.copy()
        copy.calc = ase_calculator.StudentCalculator(student)
        built[setting] = (copy, copy.get_forces())  # builds the graph and compiles
    base = atoms.positions.copy()
    rng = np.random.default_rng(0)
    times = {setting: [] for setting in SETTINGS}
    for i in range(calls):
        for setting in SETTINGS if i % 2 == 0 else SETTINGS[::-1]:
            copy = built[setting][0]
            copy.positions = base + rng.normal(scale=0.01, size=base.shape)
            t0 = time.perf_counter()
            copy.get_forces()
            times[setting].append((time.perf_counter() - t0) * 1e3)
    return {
        "ms_per_call": {setting: stats(times[setting]) for setting in SETTINGS},
        "max_force_difference": float(np.abs(built[SETTINGS[1]][1] - built[SETTINGS[0]][1]).max()),
        "device": str(built[SETTINGS[1]][0].calc.jax_device),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--students", default="painn 64x3,painn 128x3 + ZBL,schnet 64x3")
    parser.add_argument("--sizes", default="64,512,4096")
    parser.add_argument("--compact", default="false,true", help="lists: false, true or both")
    parser.add_argument("--capacity-multiplier", type=float, default=1.6)
    parser.add_argument("--steps", type=int, default=200, help="steps per chunk (÷5 at 4096+)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calculator-systems", default="", help="e.g. si64,si1000")
    parser.add_argument("--calculator-calls", type=int, default=300)
    parser.add_argument("--variable", default=EDGE_REMAT_ENV_VAR, help="environment variable")
    parser.add_argument("--values", default="off,on", help="its two values, A then B")
    parser.add_argument(
        "--output", type=Path, default=Path("benchmarks/results/edge_remat_ab.json")
    )
    args = parser.parse_args()
    VARIABLE[0] = args.variable
    SETTINGS[:] = [v.strip() for v in args.values.split(",")]
    if len(SETTINGS) != 2:
        parser.error(f"--values needs two values, got {args.values!r}")
    record = {
        "script": "benchmarks/edge_remat_ab.py",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "device": str(jax.devices()[0].device_kind),
        "versions": versions(),
        "args": {k: str(v) for k, v in vars(args).items()},
        "variable": VARIABLE[0],
        "values": list(SETTINGS),
        "rows": [],
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    for n in [int(s) for s in args.sizes.split(",") if s]:
        atoms = silicon_cell(n)
        steps = args.steps if n < 4096 else max(10, args.steps // 5)
        for label in [s.strip() for s in args.students.split(",")]:
            for compact in [c.strip() == "true" for c in args.compact.split(",")]:
                row = {"student": label, "n_atoms": n, "compact_rows": compact, "steps": steps}
                try:
                    built = {
                        s: compile_chunk(label, atoms, steps, args.capacity_multiplier, compact, s)
                        for s in SETTINGS
                    }
                    times = {s: [] for s in SETTINGS}
                    for r in range(args.rounds):
                        order = SETTINGS if r % 2 == 0 else SETTINGS[::-1]
                        for s in order:
                            chunk, state, nbrs, _, _ = built[s]
                            t0 = time.perf_counter()
                            _, end_nbrs = jax.block_until_ready(chunk(state, nbrs))
                            times[s].append((time.perf_counter() - t0) / steps * 1e6)
                    row["us_per_step"] = {s: stats(times[s]) for s in SETTINGS}
                    row["compile_s"] = {s: built[s][4] for s in SETTINGS}
                    row["max_force_difference"] = float(
                        np.abs(built[SETTINGS[1]][3] - built[SETTINGS[0]][3]).max()
                    )
                    row["neighbor_slots"] = int(np.prod(built[SETTINGS[0]][2].idx.shape))
                    row["overflow"] = bool(end_nbrs.did_buffer_overflow)
                    off, on = (row["us_per_step"][s]["median"] for s in SETTINGS)
                    print(
                        f"[remat] {label}/{n}/compact={compact}: {SETTINGS[0]} {off:.1f} "
                        f"{SETTINGS[1]} {on:.1f} us "
                        f"({100 * (on / off - 1):+.1f} %) dF {row['max_force_difference']:.2e}",
                        flush=True,
                    )
                except Exception as error:  # record it and go on with the next case
                    row["error"] = f"{type(error).__name__}: {error}"[:500]
                    print(f"[remat] {label}/{n}/compact={compact}: {row['error']}", flush=True)
                record["rows"].append(row)
                args.output.write_text(json.dumps(record, indent=1))
    for name in [s for s in args.calculator_systems.split(",") if s]:
        atoms = silicon_cell(int(name.removeprefix("si")))
        for label in [s.strip() for s in args.students.split(",")]:
            row = {"student": label, "n_atoms": len(atoms), "ase_calculator": True}
            try:
                row.update(calculator_ab(label, atoms, args.calculator_calls))
                off, on = (row["ms_per_call"][s]["median"] for s in SETTINGS)
                print(
                    f"[remat] calculator {label}/{len(atoms)}: {SETTINGS[0]} {off:.3f} "
                    f"{SETTINGS[1]} {on:.3f} ms "
                    f"({100 * (on / off - 1):+.1f} %) dF {row['max_force_difference']:.2e}",
                    flush=True,
                )
            except Exception as error:
                row["error"] = f"{type(error).__name__}: {error}"[:500]
                print(f"[remat] calculator {label}/{len(atoms)}: {row['error']}", flush=True)
            record["rows"].append(row)
            args.output.write_text(json.dumps(record, indent=1))
    os.environ.pop(VARIABLE[0], None)


if __name__ == "__main__":
    main()
