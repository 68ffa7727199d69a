"""The ASE calculator with its rows compacted per call against the full rows, A/B in
one process (issue 18).

    python benchmarks/calculator_compact_ab.py --systems si512,si1000 --calls 400 \\
        --output benchmarks/results/calculator_compact_ab.json

For each student and structure two calculators of the same student, one with
``compact_rows=True`` and one with ``False``, take turns: each round moves the atoms a
little (as MD does) and times, in rotating order, both calculators' ``get_forces``, both
compiled programs called bare on a ready buffer, and a null call of the same transfer
sizes. A GPU host's timings drift by tens of percent between cases run a minute apart
(docs/benchmarks.md); calls made in the same round share that drift, so the script
reports, besides each case's median, the median over rounds of the paired difference
(compacted minus full) and its 25-75 % range.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from structures import silicon_cell
from student_call import null_call, structures

from jaxdistill import StudentCalculator, create_student
from jaxdistill.diagnostics import count_compilations


def _stats(values_ms: list[float]) -> dict[str, float]:
    values = np.asarray(values_ms)
    return {
        "median_ms": float(np.median(values)),
        "p25_ms": float(np.percentile(values, 25)),
        "p75_ms": float(np.percentile(values, 75)),
        "p99_ms": float(np.percentile(values, 99)),
    }


def _bare(calculator) -> callable:
    """The calculator's compiled forces program on its ready buffer, fetched to the host."""
    program, packed = calculator.program(), calculator._input_buffer.copy()
    return lambda: np.asarray(program(packed))


def compare(student, atoms, calls: int, device: str, edge_layout: str = "auto") -> dict:
    """Both calculators on ``atoms``, ``calls`` rounds; times in ms."""
    settings = (False, True)
    copies, first = {}, {}
    for compact in settings:
        copy = atoms.copy()
        copy.calc = StudentCalculator(
            student, device=device, edge_layout=edge_layout, compact_rows=compact
        )
        first[compact] = copy.get_forces()  # builds the graph and compiles
        copies[compact] = copy
    calcs = {compact: copies[compact].calc for compact in settings}
    bare = {compact: _bare(calcs[compact]) for compact in settings}
    sizes = calcs[True]._input_buffer
    null, _ = null_call(calcs[True], bare[True]().size)
    jax_device = calcs[True].jax_device
    with jax.default_device(jax_device):
        np.asarray(null(sizes))
        for compact in settings:
            bare[compact]()

        def timed(call) -> float:
            start = time.perf_counter()
            call()
            return (time.perf_counter() - start) * 1e3

        base = atoms.positions.copy()
        rng = np.random.default_rng(0)
        names = ["forces_full", "forces_compact", "bare_full", "bare_compact", "null"]
        times: dict[str, list[float]] = {name: [] for name in names}

        def move_and_call(compact: bool) -> float:
            copy = copies[compact]
            copy.positions = base + rng.normal(scale=0.01, size=base.shape)
            return timed(copy.get_forces)

        cases = {
            "forces_full": lambda: move_and_call(False),
            "forces_compact": lambda: move_and_call(True),
            "bare_full": lambda: timed(bare[False]),
            "bare_compact": lambda: timed(bare[True]),
            "null": lambda: timed(lambda: np.asarray(null(sizes))),
        }
        with count_compilations() as compiled:
            for i in range(calls):
                turn = i % len(names)
                for name in names[turn:] + names[:turn]:
                    times[name].append(cases[name]())
    paired = {
        kind: _stats(np.subtract(times[f"{kind}_compact"], times[f"{kind}_full"]))
        for kind in ("forces", "bare")
    }
    return {
        **{name: _stats(values) for name, values in times.items()},
        "compact_minus_full": paired,
        # slots per atom (receiver-major) or edges (edge list): full, then compacted
        "receiver_major": calcs[True]._receiver_major,
        "full_size": calcs[True]._slots
        if calcs[True]._receiver_major
        else calcs[True]._edge_capacity,
        "compact_size": calcs[True]._compact_width,
        "compaction_overflows": calcs[True].compaction_overflows,
        "neighbour_list_builds": {str(c): calcs[c].neighbour_list_builds for c in settings},
        "compilations_during_rounds": compiled.count,
        "max_force_difference": float(np.abs(first[True] - first[False]).max()),
        "device": str(jax_device),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--architectures", default="painn,schnet")
    parser.add_argument("--systems", default="si512,water648,si1000")
    parser.add_argument("--calls", type=int, default=400)
    parser.add_argument("--device", default="auto", help="the calculators' device option")
    parser.add_argument("--edge-layout", default="auto", help="receiver_major on a CPU check")
    parser.add_argument(
        "--output", type=Path, default=Path("benchmarks/results/calculator_compact_ab.json")
    )
    args = parser.parse_args()
    record = {
        "script": "benchmarks/calculator_compact_ab.py",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "devices": [str(d.device_kind) for d in jax.devices()],
        "jax": jax.__version__,
        "command": " ".join(sys.argv),
        "rows": [],
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    available = {**structures(quick=False), "si4096": silicon_cell(4096)}
    for name in args.systems.split(","):
        atoms = available[name]
        for architecture in args.architectures.split(","):
            species = sorted(set(atoms.get_chemical_symbols()) | {"Si", "C", "H", "O"})
            student = create_student(architecture, species, cutoff=5.0)
            row = {"architecture": architecture, "system": name, "n_atoms": len(atoms)}
            try:
                row.update(compare(student, atoms, args.calls, args.device, args.edge_layout))
            except Exception as error:  # record and go on: one failure, not the run
                row["error"] = repr(error)
            record["rows"].append(row)
            args.output.write_text(json.dumps(record, indent=1) + "\n")
            if "error" in row:
                print(f"[ab] {architecture} {name}: {row['error']}", flush=True)
                continue
            forces, bare = row["compact_minus_full"]["forces"], row["compact_minus_full"]["bare"]
            print(
                f"[ab] {architecture} {name} size {row['full_size']}->{row['compact_size']}: "
                f"forces {row['forces_full']['median_ms']:.3f} -> "
                f"{row['forces_compact']['median_ms']:.3f} ms, paired "
                f"{forces['median_ms']:+.3f} [{forces['p25_ms']:+.3f}, {forces['p75_ms']:+.3f}]; "
                f"bare {row['bare_full']['median_ms']:.3f} -> "
                f"{row['bare_compact']['median_ms']:.3f}, paired {bare['median_ms']:+.3f}; "
                f"null {row['null']['median_ms']:.3f}; overflows {row['compaction_overflows']}, "
                f"compilations {row['compilations_during_rounds']}, "
                f"dF {row['max_force_difference']:.1e}",
                flush=True,
            )


if __name__ == "__main__":
    main()
