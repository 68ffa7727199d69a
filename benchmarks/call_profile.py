"""Where an ASE calculator call goes on the GPU, kernel by kernel (issue 18).

    python benchmarks/call_profile.py --systems si64,si512,si1000 \
        --output benchmarks/results/call_profile.json

For each student and structure, three things are traced with ``jax.profiler``
(``--calls`` calls each, after warm-up) and read back as ``step_profile.py`` reads an
MD step:

- ``calculator``: ``atoms.get_forces()`` on a :class:`StudentCalculator`, the atoms
  moved slightly before each call (as MD does);
- ``bare``: the calculator's own compiled program called directly on a ready input
  buffer (no ASE, no neighbour check, the same transfers);
- ``jaxmd_force``: a jitted jax-md force call on a receiver-major ``Dense`` list of the
  same crystal (capacity multiplier 1.25, allocated once), called from Python one call
  at a time (periodic orthorhombic cells only).

For the calculator's program and the jax-md force call, the lowered (StableHLO, before
XLA's optimisation) program is also summarised on any device: operations by kind and
the elements each kind produces (``lowered_ops``), so the two programs' work can be
compared without a GPU.

Per call: wall time, device kernels launched, the sum of their durations
(``kernel_busy_us_per_call``) and the copies among them, and the kernels that take the
most time. A calculator call whose kernels take far longer than the jax-md force call's
does more work on the device (a larger graph, another program); one whose wall time
far exceeds its kernels' is bound by launches, transfers or the host.
"""

from __future__ import annotations

import os

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import argparse
import datetime
import json
import re
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from step_profile import read_trace
from student_call import structures, untrained_student

import jaxdistill
from jaxdistill import StudentCalculator


def traced(call, calls: int) -> dict:
    """Wall time per call of ``call()`` (median of ``calls``), then one traced run of
    ``calls`` calls read back per call."""
    for _ in range(3):
        call()
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    row = {"wall_us_per_call": float(np.median(times) * 1e6)}
    with tempfile.TemporaryDirectory() as trace_dir:
        with jax.profiler.trace(trace_dir):
            for _ in range(calls):
                call()
        trace = read_trace(trace_dir, calls)
    trace = {k.replace("per_step", "per_call"): v for k, v in trace.items() if k != "lines"}
    for kernel in trace.get("top_kernels", []) or []:
        kernel["calls_per_call"] = kernel.pop("calls_per_step")
        kernel["us_per_call"] = kernel.pop("us_per_step")
    row.update(trace)
    copies = [k for k in trace.get("top_kernels", []) or [] if "memcpy" in k["name"].lower()]
    row["copy_us_per_call"] = sum(k["us_per_call"] for k in copies)
    return row


def timeline(call, calls: int, path: Path) -> None:
    """Trace ``calls`` calls of ``call()`` (after a warm-up call) and write every event
    of the trace to ``path`` as JSON: plane, line, name, start and duration in µs from
    the first event, for the GPU's stream lines and the host's threads (host events
    shorter than 1 µs left out). Says where the wall time of a call goes between its
    kernels: launches, waits, copies."""
    import glob

    from jax.profiler import ProfileData

    call()
    with tempfile.TemporaryDirectory() as trace_dir:
        with jax.profiler.trace(trace_dir):
            for _ in range(calls):
                call()
        files = sorted(glob.glob(f"{trace_dir}/**/*.xplane.pb", recursive=True))
        data = ProfileData.from_file(files[-1])
    events = []
    for plane in data.planes:
        gpu = plane.name.startswith("/device:GPU")
        if not gpu and not plane.name.startswith("/host"):
            continue
        for line in plane.lines:
            if gpu and not line.name.startswith("Stream"):
                continue  # (the "XLA Ops" lines repeat the stream's kernels)
            for event in line.events:
                if not gpu and event.duration_ns < 1000:
                    continue
                events.append(
                    (plane.name, line.name, event.name[:120], event.start_ns, event.duration_ns)
                )
    origin = min(e[3] for e in events) if events else 0
    rows = [
        {
            "plane": plane,
            "line": line,
            "name": name,
            "start_us": (start - origin) / 1e3,
            "duration_us": duration / 1e3,
        }
        for plane, line, name, start, duration in sorted(events, key=lambda e: e[3])
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"calls": calls, "events": rows}) + "\n")


def lowered_ops(lowered) -> dict:
    """Operations of a lowered program by kind: ``{kind: [count, elements produced]}``,
    most elements first, plus their totals (a device-independent size of the work)."""
    counts: dict[str, list[int]] = {}
    for line in lowered.as_text().splitlines():
        match = re.search(r"= \"?stablehlo\.([a-z_]+)", line)
        if not match:
            continue
        entry = counts.setdefault(match.group(1), [0, 0])
        entry[0] += 1
        shapes = re.findall(r"tensor<((?:\d+x)*)[a-z]+\d*>", line.split("->")[-1])
        if shapes:
            entry[1] += int(np.prod([int(d) for d in shapes[-1].split("x") if d]))
    ordered = dict(sorted(counts.items(), key=lambda kv: -kv[1][1]))
    return {
        "operations": sum(c for c, _ in counts.values()),
        "elements": sum(e for _, e in counts.values()),
        "by_kind": ordered,
    }


def write_hlo(lowered, path: Path | None) -> None:
    """The compiled program's HLO text (after XLA's optimisation: its fusions are the
    trace's kernels; ``benchmarks/hlo_kernels.py --call-profile`` reads them)."""
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(lowered.compile().as_text())


def calculator_cases(
    student,
    atoms,
    calls: int,
    edge_layout: str = "auto",
    hlo_path: Path | None = None,
    timeline_path: Path | None = None,
) -> dict:
    device = "gpu" if jax.default_backend() == "gpu" else "cpu"  # (a CPU smoke run)
    calculator = StudentCalculator(student, device=device, edge_layout=edge_layout)
    atoms = atoms.copy()
    atoms.calc = calculator
    atoms.get_forces()
    base = atoms.positions.copy()
    rng = np.random.default_rng(0)

    def moved_call():
        atoms.positions = base + rng.normal(scale=0.01, size=base.shape)
        atoms.get_forces()

    out = {"calculator": traced(moved_call, calls)}
    graph = calculator._graph
    out["graph"] = {
        "node_capacity": int(graph.positions.shape[0]),
        "edge_capacity": int(np.prod(graph.senders.shape)),
        "edge_shape": list(graph.senders.shape),
    }
    # the calculator's forces program as it runs, compacted where the calculator compacts
    out["graph"]["compact_width"] = calculator._compact_width
    program, packed = calculator.program(), calculator._input_buffer.copy()
    out["bare"] = traced(lambda: np.asarray(program(packed)), calls)
    lowered = program.func.lower(*program.args, packed, **program.keywords)
    out["bare"]["lowered_ops"] = lowered_ops(lowered)
    write_hlo(lowered, hlo_path)
    if timeline_path is not None:
        from student_call import null_call

        null, _ = null_call(calculator, np.asarray(program(packed)).size)
        with jax.default_device(calculator.jax_device):
            timeline(lambda: np.asarray(program(packed)), 5, timeline_path)
            timeline(
                lambda: np.asarray(null(packed)),
                5,
                timeline_path.with_name(timeline_path.stem + "_null.json"),
            )
    return out


def jaxmd_case(student, atoms, calls: int, hlo_path: Path | None = None) -> dict | None:
    cell = atoms.cell.array
    if not all(atoms.pbc) or np.abs(cell - np.diag(np.diag(cell))).max() > 0:
        return None
    from jax_md import quantity, space

    from jaxdistill.md.jaxmd import jax_md_potential

    box = jnp.asarray(np.diag(cell), jnp.float32)
    displacement, _ = space.periodic(box)
    r0 = jnp.asarray(atoms.positions, jnp.float32)
    neighbor_fn, energy_fn = jax_md_potential(
        student, displacement, box, atoms.numbers, format="dense", capacity_multiplier=1.25
    )
    nbrs = neighbor_fn.allocate(r0)
    force = jax.jit(quantity.force(energy_fn))
    row = traced(lambda: jax.block_until_ready(force(r0, neighbor=nbrs)), calls)
    row["edge_shape"] = list(nbrs.idx.shape)
    lowered = force.lower(r0, neighbor=nbrs)
    row["lowered_ops"] = lowered_ops(lowered)
    write_hlo(lowered, hlo_path)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--architectures", default="painn,schnet")
    parser.add_argument("--systems", default="si64,si512,si1000")
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--output", type=Path, default=None)
    parser.add_argument(
        "--edge-layout",
        default="auto",
        help="the calculator's edge layout (auto: receiver-major on a GPU, an edge list "
        "on a CPU; receiver_major on a CPU lowers the program a GPU runs)",
    )
    parser.add_argument(
        "--hlo-dir", type=Path, default=None,
        help="write the compiled HLO of the calculator's program and the jax-md force call",
    )  # fmt: skip
    parser.add_argument(
        "--timeline-dir", type=Path, default=None,
        help="write every traced event of 5 bare calls and of 5 null calls (call_timeline)",
    )  # fmt: skip
    args = parser.parse_args()
    if jax.default_backend() != "gpu":
        print("no GPU: the calculator's kernels are not traced (a GPU benchmark)")
    rows = []
    record = {
        "benchmark": "call_profile",
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "device": str(jax.devices()[0].device_kind),
        "jax": jax.__version__,
        "jaxdistill": jaxdistill.__version__,
        "command": " ".join(sys.argv),
        "rows": rows,
    }
    systems = structures(quick=False)
    for name in args.systems.split(","):
        atoms = systems[name]
        for architecture in args.architectures.split(","):
            student = untrained_student(architecture, atoms)
            row = {"architecture": architecture, "system": name, "n_atoms": len(atoms)}
            try:
                hlo = {
                    case: args.hlo_dir / f"hlo_{case}_{architecture}_{name}.txt"
                    for case in ("bare", "jaxmd_force")
                } if args.hlo_dir else {}  # fmt: skip
                timeline_path = (
                    args.timeline_dir / f"timeline_{architecture}_{name}.json"
                    if args.timeline_dir
                    else None
                )
                row.update(
                    calculator_cases(
                        student, atoms, args.calls, args.edge_layout, hlo.get("bare"), timeline_path
                    )
                )
                row["jaxmd_force"] = jaxmd_case(student, atoms, args.calls, hlo.get("jaxmd_force"))
            except Exception as error:  # record and go on
                row["error"] = f"{type(error).__name__}: {error}"[:800]
            rows.append(row)
            brief = {
                case: {
                    k: round(v, 1) if isinstance(v, float) else v
                    for k, v in (row.get(case) or {}).items()
                    if k
                    in (
                        "wall_us_per_call",
                        "kernels_per_call",
                        "kernel_busy_us_per_call",
                        "copy_us_per_call",
                        "edge_shape",
                    )
                }
                for case in ("calculator", "bare", "jaxmd_force")
            }
            for case in ("bare", "jaxmd_force"):
                ops = (row.get(case) or {}).get("lowered_ops")
                if ops:
                    brief[case]["lowered"] = (
                        f"{ops['operations']} ops, {ops['elements'] / 1e6:.1f}M"
                    )
            print(
                f"[call] {architecture} {name} {json.dumps(brief)} {row.get('error', '')}",
                flush=True,
            )
            if args.output:
                args.output.parent.mkdir(parents=True, exist_ok=True)
                args.output.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
