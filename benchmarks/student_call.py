"""Per-call cost of StudentCalculator, against the floors of the machine.

    python benchmarks/student_call.py --output benchmarks/results/student_call_h200.json
    python benchmarks/student_call.py --quick --output /tmp/student_call.json   # a CPU check

For each student (default PaiNN and SchNet, untrained: timing does not depend on the
weights), each structure (ethanol 9, hexanol 21, Si 64, Si 512, water 648, Si 1000 atoms)
and each device (cpu, and gpu when JAX has one), with the atoms moved slightly before
every call as MD does:

- ``forces``: ``atoms.get_forces()`` (energy + forces: what ASE's integrators ask for);
- ``all``: one calculation of energy, forces and stress;
- ``bare``: the same jitted packed evaluation called directly with a ready buffer (no
  ASE, no neighbour check), interleaved call by call with ``get_forces`` calls
  (``forces_interleaved``) and null calls: ``forces_interleaved - bare`` is the
  calculator's own overhead;
- ``host``: ``get_forces`` with the calculator's compiled program replaced by one
  stored result (what the calculator does on the host alone: ASE's bookkeeping, the
  snapshot, the neighbour-list check, packing and unpacking);
- ``bare_after_idle``: ``bare`` timed after the host has spun (untimed) for the
  ``host`` median, as a ``get_forces`` call's program runs after its host work (is a
  device's call slower after such a pause? On the CPU it is not; docs/benchmarks.md:
  there the interleaved ``forces - bare`` exceeds ``host`` while back-to-back
  ``forces`` equals ``bare + host``);
- ``null``: a jitted function that takes the packed buffer and returns a vector of the
  result's size, into the same memory as the calculator's result (the transfer floor
  of the device);
- ``neighbours``: one host neighbour-list build (vesin) and one jax-md device rebuild of
  the same structure (an alternative the calculator does not use: measured to show
  which is faster at that size);

median, p99 and the p99/median ratio; compilations after the first call (expected 0).
On a GPU each case runs with every ``--layouts`` edge layout ("auto" is receiver-major
there; "edge_list" the layout used before 2026-12-06), side by side, and with every
``--compact-rows`` setting of the calculator (receiver-major rows compacted per call to
the pairs within the cutoff: "auto", "true", "false").
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
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from structures import hexanol, silicon_cell, water_box

import jaxdistill
from jaxdistill import StudentCalculator, create_student
from jaxdistill.diagnostics import count_compilations
from jaxdistill.graph import neighbour_pairs
from jaxdistill.md import ase_calculator

#: seconds of timed calls per case at most (beyond 30 calls)
BUDGET_S = 1.5


def untrained_student(architecture: str, atoms: ase.Atoms):
    """The untrained student the calculator benchmarks time on ``atoms`` (speed does
    not depend on the weights): cutoff 5 Å, the default size, species H C O Si plus
    whatever ``atoms`` holds, so the same student serves every structure here."""
    species = sorted(set(atoms.get_chemical_symbols()) | {"Si", "C", "H", "O"})
    return create_student(architecture, species, cutoff=5.0)


def structures(quick: bool) -> dict[str, ase.Atoms]:
    ethanol = ase.build.molecule("CH3CH2OH")
    ethanol.center(vacuum=5.0)
    ethanol.pbc = False
    systems = {"ethanol9": ethanol, "hexanol21": hexanol(), "si64": silicon_cell(64)}
    if not quick:
        systems.update(
            si512=silicon_cell(512),
            water648=water_box(216),
            si1000=ase.build.bulk("Si", "diamond", a=5.43, cubic=True) * (5, 5, 5),
        )
    return systems


def stats(times_s: list[float]) -> dict[str, float]:
    ms = np.asarray(times_s) * 1e3
    median = float(np.median(ms))
    p99 = float(np.percentile(ms, 99))
    return {"median_ms": median, "p99_ms": p99, "p99_over_median": p99 / median}


def time_calculator(atoms, calculator, repeats: int, properties: list[str]) -> dict:
    atoms = atoms.copy()
    atoms.calc = calculator
    base = atoms.positions.copy()
    rng = np.random.default_rng(0)
    calculator.calculate(atoms, properties)  # compile
    start = time.perf_counter()
    for _ in range(3):
        calculator.calculate(atoms, properties)
    per_call = (time.perf_counter() - start) / 3
    repeats = min(repeats, max(30, int(BUDGET_S / per_call)))  # large CPU cases: fewer
    times = []
    with count_compilations() as compiled:
        for _ in range(repeats):
            # small moves around the start (no drift): the list is kept, as in MD
            atoms.positions = base + rng.normal(scale=0.01, size=base.shape)
            start = time.perf_counter()
            if properties == ["forces"]:
                atoms.get_forces()
            else:
                calculator.calculate(atoms, properties)
            times.append(time.perf_counter() - start)
    return {**stats(times), "calls": repeats, "compilations_after_first": compiled.count}


def null_call(calculator, n_out: int):
    """A jitted call that takes the calculator's packed buffer and returns ``n_out``
    values into the memory its result lands in (pinned host or device): the transfer
    floor of the device."""

    def zeros(x):
        return jnp.zeros((n_out,), x.dtype) + x[0, 0]

    memory = os.environ.get(ase_calculator.RESULT_MEMORY_ENV, ase_calculator.RESULT_MEMORY)
    if calculator._evaluate is ase_calculator._program:
        memory = "device"  # (a CPU, or a GPU without pinned host memory)
    sharding = jax.sharding.SingleDeviceSharding(calculator.jax_device, memory_kind=memory)
    return jax.jit(zeros, out_shardings=sharding), memory


def time_floors(calculator, atoms, repeats: int) -> dict:
    """The calculator's ``get_forces``, the bare jitted evaluation and a null call of
    the same input/output sizes, interleaved call by call (so ``forces - bare`` compares
    calls made in the same seconds of the machine's life)."""
    atoms = atoms.copy()
    atoms.calc = calculator
    atoms.get_forces()  # builds the graph and compiles
    base = atoms.positions.copy()
    rng = np.random.default_rng(1)
    packed = calculator._input_buffer.copy()
    # the calculator's own program: its result lands where the calculator's does
    evaluate = calculator.program()
    null, memory = null_call(calculator, np.asarray(evaluate(packed)).size)
    device = calculator.jax_device

    start = time.perf_counter()
    result = np.asarray(evaluate(packed))
    repeats = min(repeats, max(30, int(BUDGET_S / (time.perf_counter() - start))))
    forces, bare, floor = [], [], []
    with jax.default_device(device):  # the null call runs where the model does
        # (the default device is part of jit's cache key: compile all three here first)
        np.asarray(null(packed))
        np.asarray(evaluate(packed))
        atoms.positions = base + 1e-3
        atoms.get_forces()
        host = time_host(calculator, atoms, repeats, result)
        idle_s = host["median_ms"] * 1e-3

        def run_bare() -> None:
            np.asarray(evaluate(packed))

        def timed(call) -> float:
            start = time.perf_counter()
            call()
            return time.perf_counter() - start

        def bare_after_idle() -> float:
            # the bare program, called after the host has been busy for as long as the
            # calculator's own host work takes (untimed): does the device's call get
            # slower when the host did not call it for that long?
            until = time.perf_counter() + idle_s
            while time.perf_counter() < until:
                pass
            return timed(run_bare)

        after_idle = []
        # each case returns the seconds it timed
        cases = [
            (forces, lambda: timed(atoms.get_forces)),
            (bare, lambda: timed(run_bare)),
            (floor, lambda: timed(lambda: np.asarray(null(packed)))),
            (after_idle, bare_after_idle),
        ]
        for i in range(repeats):
            atoms.positions = base + rng.normal(scale=0.01, size=base.shape)
            # each case takes its turn to run first after the host's work above, so
            # none of them alone pays for the device having idled meanwhile
            turn = i % len(cases)
            for times, measure in cases[turn:] + cases[:turn]:
                times.append(measure())
    return {
        "forces_interleaved": stats(forces),
        "bare": stats(bare),
        "bare_after_idle": stats(after_idle),
        "null": stats(floor),
        "host": host,
        "result_memory": memory,
    }


def time_host(calculator, atoms, repeats: int, stored: np.ndarray) -> dict:
    """``get_forces`` with the device work replaced by ``stored``, a result of the
    calculator's own forces program: the calculator's host work alone (the same moves
    as the other cases)."""
    program = calculator._evaluate
    calculator._evaluate = lambda *args, **kwargs: stored
    try:
        base = atoms.positions.copy()
        rng = np.random.default_rng(2)
        times = []
        for _ in range(repeats):
            atoms.positions = base + rng.normal(scale=0.01, size=base.shape)
            start = time.perf_counter()
            atoms.get_forces()
            times.append(time.perf_counter() - start)
    finally:
        calculator._evaluate = program
        atoms.positions = base
    return stats(times)


def time_neighbours(atoms, cutoff: float, repeats: int) -> dict:
    host = []
    for _ in range(repeats):
        start = time.perf_counter()
        neighbour_pairs(atoms, cutoff)
        host.append(time.perf_counter() - start)
    out = {"host_vesin": stats(host)}
    if np.all(atoms.pbc) and min(atoms.cell.lengths()) > 2 * cutoff:
        from jax_md import partition, space

        box = jnp.asarray(atoms.cell.array.T, dtype=jnp.float32)
        displacement, _ = space.periodic_general(box, fractional_coordinates=True)
        fn = partition.neighbor_list(
            displacement,
            box,
            cutoff,
            dr_threshold=0.0,
            fractional_coordinates=True,
            format=partition.Sparse,
            disable_cell_list=True,
        )
        scaled = jnp.asarray(atoms.get_scaled_positions(), dtype=jnp.float32)
        nbrs = fn.allocate(scaled)
        update = jax.jit(lambda r, n: n.update(r))
        jax.block_until_ready(update(scaled, nbrs).idx)
        device = []
        for _ in range(repeats):
            start = time.perf_counter()
            jax.block_until_ready(update(scaled, nbrs).idx)
            device.append(time.perf_counter() - start)
        out["device_jax_md"] = stats(device)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=500)
    parser.add_argument("--quick", action="store_true", help="small systems, few repeats")
    parser.add_argument("--architectures", default="painn,schnet")
    parser.add_argument("--output", type=Path, default=None)
    parser.add_argument("--layouts", default="auto,edge_list", help="edge layouts on a GPU")
    parser.add_argument("--devices", default="cpu,gpu", help="devices to time (those present)")
    parser.add_argument("--systems", default="", help="subset of the structures (default all)")
    parser.add_argument(
        "--compact-rows", default="auto", help="calculator compact_rows settings: auto,true,false"
    )
    args = parser.parse_args()
    repeats = 50 if args.quick else args.repeats
    present = {"cpu"} | {d.platform for d in jax.devices()}
    devices = [d for d in args.devices.split(",") if d in present]
    results = []
    record = {
        "benchmark": "student_call",
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "devices": [str(d.device_kind) for d in jax.devices()],
        "platform": platform.platform(),
        "processor": platform.processor(),
        "cpu_count": os.cpu_count(),
        "jax": jax.__version__,
        "jaxdistill": jaxdistill.__version__,
        "command": " ".join(sys.argv),
        "results": results,
        "neighbours": {},
    }
    for name, atoms in structures(args.quick).items():
        if args.systems and name not in args.systems.split(","):
            continue
        record["neighbours"][name] = time_neighbours(atoms, 5.5, max(10, repeats // 10))
        print(name, json.dumps(record["neighbours"][name]), flush=True)
        for architecture in args.architectures.split(","):
            student = untrained_student(architecture, atoms)
            compact_settings = {"auto": "auto", "true": True, "false": False}
            cases = [
                (device, layout, compact_settings[compact])
                for device in devices
                for layout in (args.layouts.split(",") if device == "gpu" else ["auto"])
                for compact in args.compact_rows.split(",")
            ]
            for device, layout, compact in cases:
                row = {
                    "architecture": architecture,
                    "system": name,
                    "n_atoms": len(atoms),
                    "device": device,
                    "edge_layout": layout,
                    "receiver_major": ase_calculator.uses_receiver_major(layout, device),
                    "compact_rows": compact,
                }
                try:
                    calculator = StudentCalculator(
                        student, device=device, edge_layout=layout, compact_rows=compact
                    )
                    row["forces"] = time_calculator(atoms, calculator, repeats, ["forces"])
                    properties = ["energy", "forces"] + (["stress"] if all(atoms.pbc) else [])
                    row["all"] = time_calculator(atoms, calculator, repeats, properties)
                    row.update(time_floors(calculator, atoms, repeats))
                    row["overhead_ms"] = (
                        row["forces_interleaved"]["median_ms"] - row["bare"]["median_ms"]
                    )
                    row["neighbour_list_builds"] = calculator.neighbour_list_builds
                    row["slots"] = calculator._slots
                    row["edge_capacity"] = calculator._edge_capacity
                    row["compact_width"] = calculator._compact_width
                    row["compaction_overflows"] = calculator.compaction_overflows
                except Exception as error:  # record and go on: one failure, not the run
                    row["error"] = repr(error)
                results.append(row)
                print(json.dumps(row), flush=True)
                if args.output:
                    args.output.parent.mkdir(parents=True, exist_ok=True)
                    args.output.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
