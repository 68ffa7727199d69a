"""What a CUDA-graph launch costs a single calculator call, by how the input reaches
the program (issue 18).

    python benchmarks/graph_launch.py --systems si64,si1000 --output graph_launch.json

XLA runs a compiled program's kernels as CUDA graphs (command buffers). When a buffer
the graph reads or writes moves between calls, XLA updates the graph before launching
it, and the driver then uploads the changed graph. A trace of one calculator call
(``call_profile.py --timeline-dir``, 2026-12-07, H100) showed ``cuGraphLaunch`` taking
200-420 µs of host time, the GPU idle until it returned. This script times the
calculator's compiled forces program (and the calculator itself), one call at a time,
with its input

- ``numpy``: a host array, as the calculator passes it (a new device buffer per call);
- ``device_same``: one device array, the same each call (every address stable);
- ``device_new``: a new device array each call, put there before the timed call;

and, from a ``jax.profiler`` trace of ``--traced`` calls of each, the median host
time of ``cuGraphLaunch`` and of the command buffers' execution. Run it under several
``XLA_FLAGS`` (one process each) to compare XLA's command-buffer settings.
"""

from __future__ import annotations

import os

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import argparse
import glob
import json
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from records import header
from student_call import structures, untrained_student

from jaxdistill import StudentCalculator
from jaxdistill.md.ase_calculator import fetch


def host_events(call, calls: int) -> dict[str, float]:
    """Median host durations (µs) of the graph-launch events over ``calls`` traced calls."""
    from jax.profiler import ProfileData

    wanted = ("cuGraphLaunch", "command_buffer::execute", "ExecuteThunks", "ParseArguments")
    found: dict[str, list[float]] = {key: [] for key in wanted}
    with tempfile.TemporaryDirectory() as trace_dir:
        with jax.profiler.trace(trace_dir):
            for _ in range(calls):
                call()
        files = sorted(glob.glob(f"{trace_dir}/**/*.xplane.pb", recursive=True))
        data = ProfileData.from_file(files[-1]) if files else None
    for plane in data.planes if data else ():
        if not plane.name.startswith("/host"):
            continue
        for line in plane.lines:
            for event in line.events:
                for key in wanted:
                    if key in event.name:
                        found[key].append(event.duration_ns / 1e3)
    return {f"{key}_us": float(np.median(v)) if v else None for key, v in found.items()} | {
        "graph_launches_per_call": len(found["cuGraphLaunch"]) / calls
    }


def cases(calculator, atoms) -> dict:
    """The timed ways of calling the calculator's program (each returns nothing)."""
    program = calculator.program()
    packed = calculator._input_buffer.copy()
    device = calculator.jax_device
    same = jax.device_put(packed, device)
    rng = np.random.default_rng(0)
    base = atoms.positions.copy()
    spin = calculator._spin

    def numpy_input():
        fetch(program(packed), spin)

    def device_same():
        fetch(program(same), spin)

    def device_new():
        fetch(program(jax.device_put(packed + 0.0, device)), spin)

    def calculator_call():
        atoms.positions = base + rng.normal(scale=0.01, size=base.shape)
        atoms.get_forces()

    return {
        "numpy": numpy_input,
        "device_same": device_same,
        "device_new": device_new,
        "calculator": calculator_call,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--architectures", default="painn")
    parser.add_argument("--systems", default="si64,si1000")
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--traced", type=int, default=10)
    parser.add_argument("--label", default="", help="a name for this process's XLA_FLAGS")
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args()
    record = header(xla_flags=os.environ.get("XLA_FLAGS", ""), label=args.label, rows=[])
    systems = structures(quick=False)
    for name in args.systems.split(","):
        for architecture in args.architectures.split(","):
            atoms = systems[name].copy()
            student = untrained_student(architecture, atoms)
            atoms.calc = StudentCalculator(student)
            atoms.get_forces()
            row = {"architecture": architecture, "system": name, "n_atoms": len(atoms)}
            timed = cases(atoms.calc, atoms)
            with jax.default_device(atoms.calc.jax_device):
                for call in timed.values():
                    call()
                    call()
                times = {key: [] for key in timed}
                for i in range(args.calls):  # rotating order, as in calculator_ab.py
                    keys = list(timed)
                    turn = i % len(keys)
                    for key in keys[turn:] + keys[:turn]:
                        start = time.perf_counter()
                        timed[key]()
                        times[key].append((time.perf_counter() - start) * 1e3)
                for key, call in timed.items():
                    row[key] = {
                        "median_ms": float(np.median(times[key])),
                        "p99_ms": float(np.percentile(times[key], 99)),
                        **host_events(call, args.traced),
                    }
            record["rows"].append(row)
            args.output.parent.mkdir(parents=True, exist_ok=True)
            args.output.write_text(json.dumps(record, indent=1) + "\n")
            print(
                f"[launch] {args.label or '-'} {architecture} {name} "
                + "; ".join(
                    f"{key} {row[key]['median_ms']:.3f} ms (graph launch "
                    f"{row[key]['cuGraphLaunch_us'] or 0:.0f} µs x"
                    f"{row[key]['graph_launches_per_call']:.0f})"
                    for key in timed
                ),
                flush=True,
            )


if __name__ == "__main__":
    main()
