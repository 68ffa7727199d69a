"""Where a student's MD step goes, kernel by kernel (issue 13).

    PYTHONPATH=. python benchmarks/step_profile.py --formats sparse,dense \
        --output benchmarks/results/step_profile_h100.json

For each student and Si cell, a user's own jax-md NVE loop (``nbrs.update`` +
``apply_fn`` inside ``lax.scan``, as ``md_speed.user_nve_loop``) is timed, then one
chunk of it is traced with ``jax.profiler``; the trace (``xplane.pb``) is read back
with ``jax.profiler.ProfileData``. Per MD step it records:

- ``us_per_step``: wall time of a chunk / its steps (median over chunks);
- ``kernels_per_step``: device kernels launched (events on the GPU's stream lines);
- ``kernel_busy_us_per_step``: the sum of their durations; the rest of the wall time
  is launch gaps and host work, so ``busy_fraction`` says whether the step is bound by
  the number of kernels (small) or by their work (near 1);
- ``top_kernels``: the kernels that take the most time, by name.

``--xla-variants`` repeats the whole thing in a child process per set of XLA flags
(XLA reads them once, at start), e.g. command buffers (CUDA graphs) around the while
loop. ``--unroll`` adds runs with ``lax.scan(unroll=k)``. ``--old-package DIR`` adds the
same measurements for another copy of the ``jaxdistill`` package (a before/after pair
in one run). On a CPU the trace has no device plane: the kernel fields are None.
"""

from __future__ import annotations

import os

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import argparse
import collections
import datetime
import glob
import json
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: Named sets of XLA flags for ``--xla-variants``.
XLA_VARIANTS = {
    "default": "",
    "command_buffer_while": (
        "--xla_gpu_enable_command_buffer=FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,CUDNN,"
        "WHILE,CONDITIONAL --xla_gpu_graph_min_graph_size=1"
    ),
    "no_command_buffer": "--xla_gpu_enable_command_buffer=",
}
STUDENTS = {
    "painn64x3": ("painn", {}),
    "painn128x3zbl": ("painn", {"features": 128, "repulsion": "zbl"}),
    "schnet64x3": ("schnet", {}),
}


def read_trace(trace_dir: str, steps: int) -> dict:
    """Kernel counts and times per step from a jax.profiler trace of ``steps`` steps."""
    from jax.profiler import ProfileData

    files = sorted(glob.glob(f"{trace_dir}/**/*.xplane.pb", recursive=True))
    if not files:
        return {"kernels_per_step": None, "note": "no xplane.pb written"}
    data = ProfileData.from_file(files[-1])
    durations: dict[str, list[float]] = collections.defaultdict(list)
    lines_seen = {}
    for plane in data.planes:
        if not plane.name.startswith("/device:GPU"):
            continue
        for line in plane.lines:
            events = list(line.events)
            lines_seen[f"{plane.name}/{line.name}"] = len(events)
            # Stream lines hold the kernels and copies; the "XLA Ops"/"XLA Modules"
            # lines repeat them grouped by HLO op, so they are not counted again.
            if not line.name.startswith("Stream"):
                continue
            for event in events:
                durations[event.name].append(event.duration_ns / 1e3)
    if not durations:
        return {"kernels_per_step": None, "lines": lines_seen, "note": "no device plane"}
    total = sum(len(v) for v in durations.values())
    busy = sum(sum(v) for v in durations.values())
    top = sorted(durations.items(), key=lambda kv: -sum(kv[1]))[:25]
    return {
        "kernels_per_step": total / steps,
        "kernel_busy_us_per_step": busy / steps,
        "distinct_kernels": len(durations),
        "top_kernels": [
            {
                "name": name[:160],
                "calls_per_step": len(v) / steps,
                "us_per_step": sum(v) / steps,
                "us_per_call_median": sorted(v)[len(v) // 2],
            }
            for name, v in top
        ],
        "lines": lines_seen,
    }


def measure(
    label: str,
    architecture: str,
    hyper: dict,
    n_atoms: int,
    args,
    unroll: int,
    neighbor_format: str = "sparse",
    update: bool = True,
) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax_md import space

    sys.path.insert(0, str(Path(__file__).parent))
    from md_speed import nve_chunk
    from structures import silicon_cell

    from jaxdistill import create_student
    from jaxdistill.md.jaxmd import jax_md_potential

    atoms = silicon_cell(n_atoms)
    steps = args.steps if n_atoms <= 1000 else max(20, args.steps // 5)
    box = jnp.asarray(np.diag(atoms.cell.array), jnp.float32)
    displacement, _ = space.periodic(box)
    student = create_student(architecture, ["Si"], cutoff=5.0, **hyper)
    student = student.with_message_passing(args.message_passing)
    neighbor_fn, energy_fn = jax_md_potential(
        student, displacement, box, atoms.numbers, format=neighbor_format
    )
    chunk, state, nbrs = nve_chunk(neighbor_fn, energy_fn, atoms, steps, unroll, update)
    row = {
        "student": label,
        "n_atoms": n_atoms,
        "steps_per_chunk": steps,
        "unroll": unroll,
        "format": neighbor_format,
        "neighbor_update": update,
    }
    row["edges_allocated"] = int(
        np.prod(nbrs.idx.shape[-2:]) if neighbor_format == "dense" else nbrs.idx.shape[-1]
    )
    t0 = time.perf_counter()
    state, nbrs = jax.block_until_ready(chunk(state, nbrs))
    row["first_chunk_seconds_incl_compile"] = time.perf_counter() - t0
    times = []
    for _ in range(args.chunks):
        t0 = time.perf_counter()
        state, nbrs = jax.block_until_ready(chunk(state, nbrs))
        times.append((time.perf_counter() - t0) / steps * 1e6)
    row["us_per_step"] = float(np.median(times))
    row["us_per_step_all"] = [round(t, 2) for t in times]
    hlo = chunk.lower(state, nbrs).compile().as_text()
    if args.hlo_dir:
        loop = "update" if update else "fixed"
        name = f"hlo_{label}_{n_atoms}_{neighbor_format}_{loop}_u{unroll}.txt"
        Path(args.hlo_dir).mkdir(parents=True, exist_ok=True)
        (Path(args.hlo_dir) / name).write_text(hlo)
    row["hlo_counts"] = {
        key: hlo.count(key) for key in (" fusion(", " custom-call(", " scatter(", " sort(")
    }
    with tempfile.TemporaryDirectory() as trace_dir:
        with jax.profiler.trace(trace_dir):
            state, nbrs = jax.block_until_ready(chunk(state, nbrs))
        row.update(read_trace(trace_dir, steps))
    busy = row.get("kernel_busy_us_per_step")
    row["busy_fraction"] = None if busy is None else busy / row["us_per_step"]
    row["neighbor_overflow"] = bool(nbrs.did_buffer_overflow)
    row["finite"] = bool(jnp.all(jnp.isfinite(state.position)))
    return row


def child(args) -> None:
    """Measure every student and size in this process (one set of XLA flags)."""
    import jax

    if args.old_package:
        sys.path.insert(0, str(Path(args.old_package).resolve()))
    else:
        sys.path.insert(0, str(ROOT))
    import jaxdistill

    rows = []
    for label in args.students.split(","):
        architecture, hyper = STUDENTS[label]
        for n in (int(s) for s in args.sizes.split(",")):
            cases = [
                (u, f, True)
                for u in sorted({1, *(int(u) for u in args.unroll.split(",") if u)})
                for f in args.formats.split(",")
            ]
            if args.fixed_neighbors:
                cases.append((1, args.formats.split(",")[0], False))
            for unroll, neighbor_format, update in cases:
                try:
                    row = measure(
                        label, architecture, hyper, n, args, unroll, neighbor_format, update
                    )
                except Exception as error:
                    row = {
                        "student": label,
                        "n_atoms": n,
                        "unroll": unroll,
                        "format": neighbor_format,
                        "error": f"{type(error).__name__}: {error}"[:800],
                        "traceback": traceback.format_exc()[-2000:],
                    }
                row["package"] = str(Path(jaxdistill.__file__).parent)
                rows.append(row)
                brief = {
                    k: row.get(k)
                    for k in (
                        "student",
                        "n_atoms",
                        "unroll",
                        "format",
                        "neighbor_update",
                        "us_per_step",
                        "kernels_per_step",
                        "kernel_busy_us_per_step",
                        "error",
                    )
                }
                print(json.dumps(brief), flush=True)
    print("ROWS " + json.dumps({"device": str(jax.devices()[0].device_kind), "rows": rows}))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--output", type=Path, default=None)
    parser.add_argument("--students", default="painn64x3,schnet64x3")
    parser.add_argument("--sizes", default="64,512,4096")
    parser.add_argument(
        "--steps", type=int, default=500, help="steps per chunk (÷5 above 1000 atoms)"
    )
    parser.add_argument("--chunks", type=int, default=5)
    parser.add_argument("--unroll", default="", help="extra lax.scan unroll factors, e.g. 8")
    parser.add_argument("--message-passing", default="reference")
    parser.add_argument("--hlo-dir", default="", help="write each compiled chunk's HLO here")
    parser.add_argument(
        "--formats", default="sparse", help="neighbour-list formats, e.g. sparse,dense"
    )
    parser.add_argument(
        "--fixed-neighbors",
        action="store_true",
        help="also time the loop without nbrs.update (the model's share)",
    )
    parser.add_argument("--xla-variants", default="default", help=",".join(XLA_VARIANTS))
    parser.add_argument("--old-package", default="", help="directory holding another jaxdistill")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    record = {
        "benchmark": "step_profile",
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
        "runs": [],
    }
    packages = [("current", "")] + ([("old", args.old_package)] if args.old_package else [])
    for variant in args.xla_variants.split(","):
        for package_label, package in packages:
            env = dict(os.environ)
            env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + XLA_VARIANTS[variant]).strip()
            env["PYTHONPATH"] = os.pathsep.join(
                p for p in (package or str(ROOT), env.get("PYTHONPATH", "")) if p
            )
            forwarded = {
                k: v
                for k, v in vars(args).items()
                if k not in ("child", "output", "xla_variants", "old_package")
            }
            command = (
                [sys.executable, __file__, "--child"]
                + [
                    f"--{k.replace('_', '-')}" if v is True else f"--{k.replace('_', '-')}={v}"
                    for k, v in forwarded.items()
                    if v is not False
                ]
                + ([f"--old-package={package}"] if package else [])
            )
            print(f"[{variant}/{package_label}] XLA_FLAGS={env['XLA_FLAGS']!r}", flush=True)
            done = subprocess.run(command, env=env, capture_output=True, text=True)
            sys.stderr.write(done.stderr[-3000:])
            run = {
                "xla_variant": variant,
                "xla_flags": env["XLA_FLAGS"],
                "package": package_label,
                "returncode": done.returncode,
            }
            for line in done.stdout.splitlines():
                if line.startswith("ROWS "):
                    run.update(json.loads(line[5:]))
                else:
                    print(line, flush=True)
            if done.returncode:
                run["stderr_tail"] = done.stderr[-2000:]
            record["runs"].append(run)
            if args.output:
                args.output.parent.mkdir(parents=True, exist_ok=True)
                args.output.write_text(json.dumps(record, indent=1))
    if not args.output:
        print(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
