"""What a student committee costs: K = 1, 2, 4, 8 members against one plain student.

    # one H200 (a few minutes)
    python benchmarks/ensemble_cost.py --output benchmarks/results/ensemble_cost_h200.json
    # a tiny CPU check (64 atoms, K = 1, 2; about 3-5 minutes on 2 busy cores)
    python benchmarks/ensemble_cost.py --quick --output /tmp/ensemble_cost_quick.json

For diamond Si cells (default 64 and 512 atoms), default-size untrained students (timing
does not depend on the weights; members are created with seeds 0..K-1) and each K:

- ``calculator``: ``StudentCalculator`` per call, the atoms moved slightly before
  every call as in MD (``student_call.time_calculator``): ``forces`` (energy and forces,
  what ASE's integrators ask for; a committee also returns its per-atom force
  disagreement in the same transfer) and ``all`` (with stress); on every device JAX has;
- ``jax_md``: µs per MD step of ``run_md`` (NVT Langevin, chunks in ``lax.scan``;
  ``md_speed.time_jax_md``): the committee's mean forces drive the MD (one vmapped
  energy per step), the disagreement is computed once per sample (``sample_every`` =
  the chunk length, as in md_speed).

``K = 0`` rows are a plain ``Student`` (not a committee) for reference: K = 1 should cost
the same (a committee of one runs the plain program). Each part is in try/except, so a
failure is recorded and the rest still runs; the JSON is rewritten after every row.
"""

from __future__ import annotations

import os

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import argparse
import datetime
import json
import platform
import sys
import time
from pathlib import Path

import jax

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(ROOT))
from md_speed import Budget, error_record, time_jax_md, versions  # noqa: E402
from structures import silicon_cell  # noqa: E402
from student_call import time_calculator  # noqa: E402

from jaxdistill import StudentCalculator, create_student  # noqa: E402
from jaxdistill.committee import load_committee  # noqa: E402


def model_for(architecture: str, k: int):
    """A plain student (k = 0) or a committee of k members with seeds 0..k-1."""
    if k == 0:
        return create_student(architecture, ["Si"], cutoff=5.0, seed=0)
    return load_committee(
        [create_student(architecture, ["Si"], cutoff=5.0, seed=s) for s in range(k)]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny CPU check")
    parser.add_argument("--output", type=Path, default=None, help="JSON path")
    parser.add_argument("--sizes", default=None, help="Si cell sizes (8 k^3), e.g. 64,512")
    parser.add_argument("--members", default=None, help="committee sizes, e.g. 0,1,2,4,8")
    parser.add_argument("--architecture", default="painn")
    parser.add_argument("--repeats", type=int, default=None, help="calculator calls per case")
    parser.add_argument("--steps-per-chunk", type=int, default=None)
    parser.add_argument("--max-chunks", type=int, default=None)
    parser.add_argument("--item-seconds", type=float, default=None, help="cap per measurement")
    parser.add_argument("--budget-seconds", type=float, default=None)
    parser.add_argument("--skip-jax-md", action="store_true")
    args = parser.parse_args()
    quick = args.quick
    defaults = dict(
        sizes="64" if quick else "64,512",
        members="0,1,2" if quick else "0,1,2,4,8",
        repeats=20 if quick else 300,
        steps_per_chunk=20 if quick else 1000,
        max_chunks=3 if quick else 20,
        item_seconds=2.0 if quick else 6.0,
        budget_seconds=600.0 if quick else 540.0,
    )
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    sizes = [int(s) for s in str(args.sizes).split(",") if s]
    members = [int(k) for k in str(args.members).split(",") if k]
    budget = Budget(args.budget_seconds)
    devices = ["cpu"] + (["gpu"] if any(d.platform == "gpu" for d in jax.devices()) else [])
    device = jax.devices()[0]
    output = args.output or ROOT / "benchmarks" / "results" / (
        f"ensemble_cost_{'quick_' if quick else ''}{device.platform}.json"
    )
    record: dict = {
        "benchmark": "ensemble_cost",
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "hardware": {
            "device": str(device.device_kind),
            "platform": device.platform,
            "os": platform.platform(),
            "cpu_count": os.cpu_count(),
        },
        "versions": versions(),
        "calculator": [],
        "jax_md": [],
        "errors": [],
    }

    def save() -> None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(record, indent=1) + "\n")

    for n in sizes:
        atoms = silicon_cell(n)
        name = f"si{n}"
        for k in members:
            if budget.left() <= 0:
                record["errors"].append({"skipped": f"{name} K={k}: out of budget"})
                continue
            model = model_for(args.architecture, k)
            for dev in devices:
                row = {"system": name, "n_atoms": n, "members": k, "device": dev}
                try:
                    t0 = time.perf_counter()
                    calculator = StudentCalculator(model, device=dev)
                    row["forces"] = time_calculator(atoms, calculator, args.repeats, ["forces"])
                    row["all"] = time_calculator(
                        atoms, calculator, args.repeats, ["energy", "forces", "stress"]
                    )
                    row["seconds_incl_compile"] = time.perf_counter() - t0
                except Exception as error:  # one failure recorded, the rest still runs
                    row.update(error_record(error))
                record["calculator"].append(row)
                print(json.dumps(row), flush=True)
                save()
            if args.skip_jax_md:
                continue
            try:
                row = {"members": k, **time_jax_md(model, atoms, name, args, budget)}
            except Exception as error:
                row = {"system": name, "n_atoms": n, "members": k, **error_record(error)}
            record["jax_md"].append(row)
            print(json.dumps(row), flush=True)
            save()
    record["wall_seconds"] = budget.elapsed()
    save()
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
