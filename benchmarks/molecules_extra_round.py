"""One more active-learning round on a finished molecules run, and the errors that follow.

Continues the refine stage of RUN_DIR (a copy of a `jaxdistill distill
configs/molecules-fennol.yaml` run directory) with ``rounds`` raised to ROUNDS: finished
rounds are skipped, so only the new ones run. Then prints the force and energy MAE of
the previous and the new final student on the md stage's teacher NVT frames of
MD_DIR (ensemble-labelled, e.g. 450 K never sampled) and on the test split.

    python benchmarks/molecules_extra_round.py runs/mol6 4 runs/mol5/md

Produced docs/results/molecules-ani1x/run4/round4_errors.json (2026-11-29, 2-core CPU).
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import ase.io
from rich.console import Console

from jaxdistill import StudentCalculator
from jaxdistill.config import DistillConfig
from jaxdistill.evaluate import evaluate
from jaxdistill.pipeline import refine
from jaxdistill.student import load_student
from jaxdistill.teachers import load_teacher
from jaxdistill.validation import force_errors


def main(run_dir: str, rounds: str, md_dir: str) -> None:
    run, md = Path(run_dir), Path(md_dir)
    config = DistillConfig.from_yaml(run / "config.yaml")
    previous = run / "refine" / f"round-{config.active_learning.rounds}" / "student"
    more = dataclasses.replace(config.active_learning, rounds=int(rounds))
    result = refine(
        run / "student",
        run / "labels.h5",
        load_teacher(config.teacher),
        config.sampling,
        config.train,
        more,
        run / "refine",
        console=Console(),
    )
    for name in (previous, Path(result["student"])):
        student = load_student(name)
        print(name)
        for path in sorted(md.glob("teacher_nvt_*K.extxyz")):
            # the md stage's own comparison on its teacher frames
            errors = force_errors(lambda s=student: StudentCalculator(s), ase.io.read(path, ":"))
            print(
                f"  {path.stem}: force {errors['force_mae_mev_per_angstrom']:.3f} meV/Å, "
                f"energy {errors['energy_mae_mev_per_atom']:.4f} meV/atom"
            )
        test = evaluate(student, run / "labels.h5", split="test")
        print(f"  test split: force {test['forces']['mae_meV_per_A']:.3f} meV/Å")


if __name__ == "__main__":
    main(*sys.argv[1:4])
