"""Time per ASE Langevin step of a teacher, as a user's teacher MD would run it.

    python benchmarks/teacher_md_step.py "fennol:models/ani1x_model*.fnx" ethanol.extxyz \
        --timestep-fs 0.5 --steps 200 --output benchmarks/results/teacher_md_step.json

The first ``--warmup`` steps (compilation, neighbour-list growth) are not timed. The
teacher is driven through ``teacher.as_calculator()``, the same path as the sampling
stage, so the number is what teacher MD costs in jaxdistill on this machine.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import ase.io
import jax
import numpy as np
from ase import units
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import thermalize_momenta

from jaxdistill.teachers import load_teacher


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("teacher", help="teacher spec, e.g. sevennet:7net-0")
    parser.add_argument("structure", type=Path, help="starting structure (last frame used)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--temperature", type=float, default=300.0)
    parser.add_argument("--timestep-fs", type=float, default=1.0)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()

    atoms = ase.io.read(args.structure, index=-1)
    teacher = load_teacher(args.teacher, device=args.device)
    atoms.calc = teacher.as_calculator()
    rng = np.random.default_rng(0)
    thermalize_momenta(atoms, temperature_K=args.temperature, rng=rng)
    dynamics = Langevin(
        atoms,
        timestep=args.timestep_fs * units.fs,
        temperature_K=args.temperature,
        friction=0.02 / units.fs,
        rng=np.random.default_rng(1),
    )
    dynamics.run(args.warmup)
    start = time.perf_counter()
    dynamics.run(args.steps)
    seconds = (time.perf_counter() - start) / args.steps
    result = {
        "teacher": args.teacher,
        "structure": atoms.get_chemical_formula(),
        "n_atoms": len(atoms),
        "steps_timed": args.steps,
        "warmup_steps": args.warmup,
        "ms_per_step": 1e3 * seconds,
        "host": platform.node(),
        "created": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    result["jax_devices"] = [str(d) for d in jax.devices()]
    print(json.dumps(result, indent=2))
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
