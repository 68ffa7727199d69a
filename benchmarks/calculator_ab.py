"""Two ASE calculators of one student that differ in one option, A/B in one process
(issue 18): ``--option compact_rows`` (rows compacted per call against the full rows),
``--option host_wait`` (the host polling for a call's result against sleeping until
the runtime wakes it) or ``--option message_passing`` (the student's "reference" against
"auto"; with ``--node-kernels on``, PaiNN's update blocks as one fused kernel each way,
about 40 fewer kernels a call).

    python benchmarks/calculator_ab.py --option compact_rows --systems si512,si1000 \
        --calls 400 --output benchmarks/results/calculator_compact_ab.json

For each student and structure the two calculators take turns: each round moves the
atoms a little (as MD does) and times, in rotating order, both calculators'
``get_forces``, both compiled programs called bare on a ready buffer (fetched as each
calculator fetches), and a null call of the same transfer sizes (once per way of
fetching). A GPU host's timings drift by tens of percent between cases run a minute
apart (docs/benchmarks.md); calls made in the same round share that drift, so the
script reports, besides each case's median and 99th percentile, the median over rounds
of the paired difference (second value minus first, ``b_minus_a``) and its 25-75 %
range. (Until 2026-12-07 this was ``calculator_compact_ab.py``, compaction only.)
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from records import header
from structures import silicon_cell
from student_call import null_call, structures, untrained_student

from jaxdistill import StudentCalculator
from jaxdistill.diagnostics import count_compilations
from jaxdistill.md.ase_calculator import fetch


def _stats(values_ms: list[float]) -> dict[str, float]:
    values = np.asarray(values_ms)
    return {
        "median_ms": float(np.median(values)),
        "p25_ms": float(np.percentile(values, 25)),
        "p75_ms": float(np.percentile(values, 75)),
        "p99_ms": float(np.percentile(values, 99)),
    }


#: The options this script compares: option -> (its two values, their labels).
OPTIONS = {
    "compact_rows": ((False, True), ("full", "compact")),
    "host_wait": (("block", "spin"), ("block", "spin")),
    # the student's own option (``Student.with_message_passing``); with
    # ``--node-kernels on`` "auto" runs PaiNN's update blocks as fused node kernels
    "message_passing": (("reference", "auto"), ("reference", "auto")),
}
#: Options of the student rather than of the calculator.
STUDENT_OPTIONS = ("message_passing",)


def _bare(calculator) -> callable:
    """The calculator's compiled forces program on its ready buffer, fetched to the host
    as the calculator fetches it."""
    program, packed = calculator.program(), calculator._input_buffer.copy()
    return lambda: fetch(program(packed), calculator._spin)


def paired_rounds(cases: dict[str, callable], calls: int) -> dict[str, list[float]]:
    """``calls`` rounds of every case (each returns its time, ms), in an order that
    rotates by one each round, so that no case always follows the same one."""
    names = list(cases)
    times: dict[str, list[float]] = {name: [] for name in names}
    for i in range(calls):
        turn = i % len(names)
        for name in names[turn:] + names[:turn]:
            times[name].append(cases[name]())
    return times


def timed(call) -> float:
    """Wall time of ``call()``, ms."""
    start = time.perf_counter()
    call()
    return (time.perf_counter() - start) * 1e3


def compare(
    student, atoms, calls: int, device: str, edge_layout: str = "auto", option: str = "compact_rows"
) -> dict:
    """Two calculators of ``student`` on ``atoms`` that differ only in ``option``,
    ``calls`` rounds; times in ms. Case names end in the value's label (``OPTIONS``);
    ``b_minus_a`` holds the paired differences, second value minus first."""
    values, labels = OPTIONS[option]
    copies, first = {}, {}
    for value, label in zip(values, labels, strict=True):
        copy = atoms.copy()
        if option in STUDENT_OPTIONS:
            model, settings = student.with_message_passing(value), {}
        else:
            model, settings = student, {option: value}
        copy.calc = StudentCalculator(model, device=device, edge_layout=edge_layout, **settings)
        first[label] = copy.get_forces()  # builds the graph and compiles
        copies[label] = copy
    calcs = {label: copies[label].calc for label in labels}
    bare = {label: _bare(calcs[label]) for label in labels}
    second = calcs[labels[1]]
    sizes = second._input_buffer
    null, _ = null_call(second, bare[labels[1]]().size)
    jax_device = second.jax_device
    base = atoms.positions.copy()
    rng = np.random.default_rng(0)

    def move_and_call(label: str) -> float:
        copy = copies[label]
        copy.positions = base + rng.normal(scale=0.01, size=base.shape)
        return timed(copy.get_forces)

    cases = {}
    for label in labels:
        cases[f"forces_{label}"] = functools.partial(move_and_call, label)
    for label in labels:
        cases[f"bare_{label}"] = functools.partial(timed, bare[label])
    # the transfer floor, fetched as each calculator fetches (the same call when the
    # option does not change how)
    nulls = {label: calcs[label]._spin for label in labels}
    if nulls[labels[0]] == nulls[labels[1]]:
        nulls = {"": nulls[labels[0]]}
    for label, spin in nulls.items():
        name = f"null_{label}" if label else "null"
        cases[name] = functools.partial(timed, lambda spin=spin: fetch(null(sizes), spin))
    with jax.default_device(jax_device):
        for case in cases.values():
            case()  # the first call of each compiles
        with count_compilations() as compiled:
            times = paired_rounds(cases, calls)
    paired = {
        kind: _stats(np.subtract(times[f"{kind}_{labels[1]}"], times[f"{kind}_{labels[0]}"]))
        for kind in ("forces", "bare")
    }
    a, b = calcs[labels[0]], calcs[labels[1]]
    return {
        "option": option,
        "values": dict(zip(labels, [str(v) for v in values], strict=True)),
        **{name: _stats(values) for name, values in times.items()},
        "b_minus_a": paired,
        # slots per atom (receiver-major) or edges (edge list): full, then compacted
        "receiver_major": b._receiver_major,
        "full_size": b._slots if b._receiver_major else b._edge_capacity,
        "compact_size": {label: calcs[label]._compact_width for label in labels},
        "spins": {label: calcs[label]._spin for label in labels},
        "compaction_overflows": {label: calcs[label].compaction_overflows for label in labels},
        "neighbour_list_builds": {label: calcs[label].neighbour_list_builds for label in labels},
        "compilations_during_rounds": compiled.count,
        "max_force_difference": float(np.abs(first[labels[1]] - first[labels[0]]).max()),
        "device": str(jax_device),
        "a_to_b": f"{a.compact_rows}/{a.host_wait} -> {b.compact_rows}/{b.host_wait}",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--option", default="compact_rows", choices=sorted(OPTIONS))
    parser.add_argument("--architectures", default="painn,schnet")
    parser.add_argument("--systems", default="si512,water648,si1000")
    parser.add_argument("--calls", type=int, default=400)
    parser.add_argument("--device", default="auto", help="the calculators' device option")
    parser.add_argument("--edge-layout", default="auto", help="receiver_major on a CPU check")
    parser.add_argument(
        "--node-kernels",
        choices=("on", "off"),
        default=None,
        help="set JAXDISTILL_NODE_KERNELS for this process (see --option message_passing)",
    )
    parser.add_argument(
        "--output", type=Path, default=Path("benchmarks/results/calculator_ab.json")
    )
    args = parser.parse_args()
    if args.node_kernels is not None:
        from jaxdistill.models.node_kernels import ENV_VAR

        os.environ[ENV_VAR] = args.node_kernels
    record = header(node_kernels=args.node_kernels, rows=[])
    args.output.parent.mkdir(parents=True, exist_ok=True)
    available = {**structures(quick=False), "si4096": silicon_cell(4096)}
    a, b = OPTIONS[args.option][1]
    for name in args.systems.split(","):
        atoms = available[name]
        for architecture in args.architectures.split(","):
            student = untrained_student(architecture, atoms)
            row = {"architecture": architecture, "system": name, "n_atoms": len(atoms)}
            try:
                row.update(
                    compare(student, atoms, args.calls, args.device, args.edge_layout, args.option)
                )
            except Exception as error:  # record and go on: one failure, not the run
                row["error"] = repr(error)
            record["rows"].append(row)
            args.output.write_text(json.dumps(record, indent=1) + "\n")
            if "error" in row:
                print(f"[ab] {architecture} {name}: {row['error']}", flush=True)
                continue
            forces, bare = row["b_minus_a"]["forces"], row["b_minus_a"]["bare"]
            nulls = {k[5:] or "-": v for k, v in row.items() if k.startswith("null")}
            print(
                f"[ab] {architecture} {name} {args.option} {a}->{b} (size {row['full_size']}"
                f"->{row['compact_size'][b]}): forces {row[f'forces_{a}']['median_ms']:.3f}"
                f" -> {row[f'forces_{b}']['median_ms']:.3f} ms (p99 "
                f"{row[f'forces_{a}']['p99_ms']:.3f} -> {row[f'forces_{b}']['p99_ms']:.3f}), "
                f"paired {forces['median_ms']:+.3f} [{forces['p25_ms']:+.3f}, "
                f"{forces['p75_ms']:+.3f}]; bare {row[f'bare_{a}']['median_ms']:.3f} -> "
                f"{row[f'bare_{b}']['median_ms']:.3f}, paired {bare['median_ms']:+.3f}; null "
                + ", ".join(
                    f"{k} {v['median_ms']:.3f} (p99 {v['p99_ms']:.3f})" for k, v in nulls.items()
                )
                + f"; overflows {row['compaction_overflows']}, "
                f"compilations {row['compilations_during_rounds']}, "
                f"dF {row['max_force_difference']:.1e}",
                flush=True,
            )


if __name__ == "__main__":
    main()
