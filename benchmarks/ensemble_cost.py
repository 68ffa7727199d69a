"""What a student committee costs: K = 1, 2, 4, 8 members against one plain student,
for a crystal (diamond Si) and for molecules (ethanol, 1-hexanol) (issue 19).

    # one H100/H200, everything in one run (about 6 minutes expected; no new case starts
    # after --budget-seconds, default 360 s, so it ends inside 7 minutes even when slow)
    python benchmarks/ensemble_cost.py --systems si64,si512,ethanol,hexanol \\
        --members 0,1,2,4,8 --item-seconds 3 --output $OUT/ensemble_cost_gpu.json
    # a tiny CPU check (si64 and ethanol, K = 0, 1, 2; a few minutes on 2 busy cores)
    python benchmarks/ensemble_cost.py --quick --output /tmp/ensemble_cost_quick.json

Systems (``--systems``, comma list): ``si<n>`` = cubic diamond Si of n = 8 k^3 atoms
(``si64``, ``si512``; students know Si), ``ethanol`` (9 atoms, ``ase.build.molecule``)
and ``hexanol`` (21 atoms, ``structures.hexanol``), both in vacuum (students know H, C,
O). ``--sizes 64,512`` (the old option) means ``--systems si64,si512``; ``--systems``
wins when both are given. Students: the default-size ``--architecture`` (PaiNN),
untrained, cutoff 5 Å (timing does not depend on the weights); a committee of K has
members with seeds 0..K-1 (``jaxdistill.committee.load_committee``). For each system
and each K:

- ``calculator``: ``StudentCalculator`` per call on every ``--devices`` device (default:
  the GPU when JAX has one, else the CPU), the atoms moved slightly before every call as
  in MD (``student_call.time_calculator``): ``forces`` (energy and forces, what ASE's
  integrators ask for; a committee also returns its per-atom force disagreement in the
  same transfer) and ``all`` (with stress for the periodic crystals);
- ``jax_md``: µs per MD step of ``run_md`` on JAX's default device (NVT Langevin,
  chunks in ``lax.scan``; ``md_speed.time_jax_md``): the committee's mean forces drive
  the MD (one vmapped energy per step), the disagreement is computed once per sample
  (``sample_every`` = the chunk length).

Untrained students are random potentials, and at 300 K and 1 fs the K = 0 and K = 2
runs on the H200 (2026-11-30) stopped before timing: ``run_md``'s fragment check
(``bond_factor`` 1.5: more covalently bonded pieces than at the start) raised
``MDInstabilityError`` ("the structure broke apart") at step 9000 and 12000 (the
temperature check was already off). At 1 K and 0.1 fs a random Si crystal stays whole
(11000 steps, checked on a CPU), but a random molecule still flies apart within 50 fs,
so the timing runs switch that check off and are kept tame: 1 K, 0.1 fs, friction
0.05/fs (``--md-temperature``, ``--md-timestep-fs``, ``--md-friction``,
``--md-bond-check``; recorded as ``jax_md_run_options``). Non-finite numbers still stop
a run. The chunks are fixed-shape programs, so the time per step does not depend on the
trajectory except through neighbour-list rebuilds (``neighbor_list_rebuilds`` per row:
a cold crystal rebuilds almost never, a production run at 300 K every few tens of
steps). ``ns_per_day_at_median`` is given for a production time step
(``ns_per_day_timestep_fs``: 1 fs for Si, 0.5 fs for the molecules), not the 0.1 fs of
the timing run.

``K = 0`` rows are a plain ``Student`` (not a committee) for reference: K = 1 should cost
the same (a committee of one runs the plain program). ``relative_to_one_student`` holds,
per system, each K's median over the K = 0 median (calculator ``forces`` per device, and
jax-md µs per step): "K = 4 costs X× one student". Each part is in try/except, so a
failure is recorded and the rest still runs; the JSON is rewritten after every row.
"""

from __future__ import annotations

import os

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import argparse
import datetime
import json
import platform
import re
import sys
import time
from pathlib import Path

import ase
import ase.build
import jax

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(ROOT))
from md_speed import Budget, error_record, time_jax_md, versions  # noqa: E402
from structures import hexanol, silicon_cell  # noqa: E402
from student_call import time_calculator  # noqa: E402

from jaxdistill import StudentCalculator, create_student  # noqa: E402
from jaxdistill.committee import load_committee  # noqa: E402

MOLECULE_SPECIES = ["H", "C", "O"]
MOLECULES = ("ethanol", "hexanol")
DEVICES = ("cpu", "gpu")


def build_system(name: str) -> tuple[ase.Atoms, list[str]]:
    """The structure of a ``--systems`` name and the species its students know."""
    match = re.fullmatch(r"si(\d+)", name)
    if match:
        try:
            return silicon_cell(int(match.group(1))), ["Si"]
        except ValueError as error:
            raise ValueError(f"{name}: {error}") from None
    if name == "ethanol":
        atoms = ase.build.molecule("CH3CH2OH")
        atoms.center(vacuum=5.0)
        atoms.pbc = False
        return atoms, list(MOLECULE_SPECIES)
    if name == "hexanol":
        return hexanol(), list(MOLECULE_SPECIES)
    raise ValueError(f"unknown system {name!r}: use si<8 k^3> (si64, si512), ethanol or hexanol")


def model_for(architecture: str, k: int, species=("Si",)):
    """A plain student (k = 0) or a committee of k members with seeds 0..k-1."""
    species = list(species)
    if k == 0:
        return create_student(architecture, species, cutoff=5.0, seed=0)
    return load_committee(
        [create_student(architecture, species, cutoff=5.0, seed=s) for s in range(k)]
    )


def production_timestep_fs(name: str) -> float:
    """The time step a real run would use (for ns/day): 0.5 fs with hydrogen."""
    return 0.5 if name in MOLECULES else 1.0


def jax_md_run_options(args) -> dict:
    """``run_md`` options of the timing runs (random students: tame and unchecked)."""
    return dict(
        ensemble="nvt",
        temperature_kelvin=args.md_temperature,
        timestep_fs=args.md_timestep_fs,
        friction_per_fs=args.md_friction,
        max_temperature_factor=1e9,  # untrained students: speed only
        bond_factor=1.5 if args.md_bond_check else None,
    )


def relative_costs(record: dict) -> dict:
    """Per system: each K's median over the K = 0 median (calculator ``forces`` per
    device; jax-md µs per step). Absent where the K = 0 row failed or is missing."""

    def ratios(medians: dict[int, float]) -> dict[str, float]:
        if not medians.get(0):
            return {}
        return {str(k): medians[k] / medians[0] for k in sorted(medians)}

    out: dict = {}
    for row in record["calculator"]:
        if "forces" in row:
            by_device = out.setdefault(row["system"], {}).setdefault("calculator_forces", {})
            by_device.setdefault(row["device"], {})[row["members"]] = row["forces"]["median_ms"]
    for row in record["jax_md"]:
        if "us_per_step" in row:
            system = out.setdefault(row["system"], {})
            system.setdefault("jax_md_us_per_step", {})[row["members"]] = row["us_per_step"][
                "median"
            ]
    for system in out.values():
        if "calculator_forces" in system:
            system["calculator_forces"] = {
                device: ratios(medians) for device, medians in system["calculator_forces"].items()
            }
        if "jax_md_us_per_step" in system:
            system["jax_md_us_per_step"] = ratios(system["jax_md_us_per_step"])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="tiny CPU check")
    parser.add_argument("--output", type=Path, default=None, help="JSON path")
    parser.add_argument(
        "--systems", default=None, help="comma list of si<n> (si64, si512), ethanol, hexanol"
    )
    parser.add_argument(
        "--sizes", default=None, help="old form: Si cell sizes (8 k^3), e.g. 64,512 = si64,si512"
    )
    parser.add_argument("--members", default=None, help="committee sizes, e.g. 0,1,2,4,8")
    parser.add_argument(
        "--devices",
        default=None,
        help="calculator devices, comma list of cpu, gpu (default: gpu if JAX has one, else cpu)",
    )
    parser.add_argument("--architecture", default="painn")
    parser.add_argument("--repeats", type=int, default=None, help="calculator calls per case")
    parser.add_argument(
        "--steps-per-chunk", type=int, default=None, help="jax-md (a fifth above 256 atoms)"
    )
    parser.add_argument("--max-chunks", type=int, default=None)
    parser.add_argument("--item-seconds", type=float, default=None, help="cap per measurement")
    parser.add_argument(
        "--budget-seconds", type=float, default=None, help="no new case starts after this"
    )
    parser.add_argument("--skip-jax-md", action="store_true")
    parser.add_argument("--md-temperature", type=float, default=1.0, help="K (timing runs)")
    parser.add_argument("--md-timestep-fs", type=float, default=0.1, help="fs (timing runs)")
    parser.add_argument("--md-friction", type=float, default=0.05, help="Langevin, 1/fs")
    parser.add_argument(
        "--md-bond-check",
        action="store_true",
        help="keep run_md's fragment check (off by default: random students fall apart)",
    )
    args = parser.parse_args()
    quick = args.quick
    defaults = dict(
        members="0,1,2" if quick else "0,1,2,4,8",
        repeats=20 if quick else 300,
        steps_per_chunk=20 if quick else 500,
        max_chunks=3 if quick else 20,
        item_seconds=2.0 if quick else 3.0,
        budget_seconds=600.0 if quick else 360.0,
    )
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.systems is None:
        if args.sizes is not None:
            args.systems = ",".join(f"si{int(s)}" for s in str(args.sizes).split(",") if s)
        else:
            args.systems = "si64,ethanol" if quick else "si64,si512,ethanol,hexanol"
    names = [s.strip() for s in args.systems.split(",") if s.strip()]
    try:
        structures = {name: build_system(name) for name in names}
    except ValueError as error:
        parser.error(str(error))
    members = [int(k) for k in str(args.members).split(",") if k]
    has_gpu = any(d.platform == "gpu" for d in jax.devices())
    if args.devices is None:
        args.devices = "gpu" if has_gpu else "cpu"
    devices = [d.strip() for d in args.devices.split(",") if d.strip()]
    for dev in devices:
        if dev not in DEVICES:
            parser.error(f"--devices: unknown device {dev!r}; use cpu and/or gpu")
        if dev == "gpu" and not has_gpu:
            parser.error("--devices gpu, but JAX sees no GPU")
    run_options = jax_md_run_options(args)
    budget = Budget(args.budget_seconds)
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
        "jax_md_run_options": run_options,
        "calculator": [],
        "jax_md": [],
        "relative_to_one_student": {},
        "errors": [],
    }

    def save() -> None:
        record["relative_to_one_student"] = relative_costs(record)
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(record, indent=1) + "\n")

    for name, (atoms, species) in structures.items():
        n = len(atoms)
        for k in members:
            if budget.left() <= 0:
                record["errors"].append({"skipped": f"{name} K={k}: out of budget"})
                print(f"skipped {name} K={k}: out of budget", flush=True)
                save()
                continue
            try:
                model = model_for(args.architecture, k, species)
            except Exception as error:
                record["errors"].append({"system": name, "members": k, **error_record(error)})
                save()
                continue
            for dev in devices:
                row = {"system": name, "n_atoms": n, "members": k, "device": dev}
                try:
                    t0 = time.perf_counter()
                    calculator = StudentCalculator(model, device=dev)
                    row["forces"] = time_calculator(atoms, calculator, args.repeats, ["forces"])
                    everything = ["energy", "forces"] + (["stress"] if all(atoms.pbc) else [])
                    row["all"] = time_calculator(atoms, calculator, args.repeats, everything)
                    row["all_properties"] = everything
                    row["seconds_incl_compile"] = time.perf_counter() - t0
                except Exception as error:  # one failure recorded, the rest still runs
                    row.update(error_record(error))
                record["calculator"].append(row)
                print(json.dumps(row), flush=True)
                save()
            if args.skip_jax_md:
                continue
            try:
                timing = time_jax_md(
                    model,
                    atoms,
                    name,
                    args,
                    budget,
                    large_atoms=256,
                    ns_per_day_timestep_fs=production_timestep_fs(name),
                    **run_options,
                )
                row = {"members": k, **timing}
            except Exception as error:
                row = {"system": name, "n_atoms": n, "members": k, **error_record(error)}
            record["jax_md"].append(row)
            print(json.dumps(row), flush=True)
            save()
    record["wall_seconds"] = budget.elapsed()
    save()
    print(json.dumps(record["relative_to_one_student"], indent=1))
    print(f"wrote {output} ({budget.elapsed():.0f} s)")


if __name__ == "__main__":
    main()
