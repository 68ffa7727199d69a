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
import tempfile
from pathlib import Path

import ase.io
import numpy as np
from rich.console import Console

from jaxdistill.active import refine
from jaxdistill.data.store import LabelStore
from jaxdistill.evaluate import compute_metrics, evaluate, predict_frames
from jaxdistill.pipeline import DistillConfig
from jaxdistill.student import load_student
from jaxdistill.teachers.base import TeacherLabels, load_teacher


def errors_on_frames(student, path: Path, scratch: Path) -> tuple[float, float]:
    """Force MAE (meV/Å) and energy MAE (meV/atom) on labelled extxyz frames."""
    frames = ase.io.read(path, ":")
    labels = [
        TeacherLabels(
            energy=atoms.get_potential_energy(),
            forces=atoms.get_forces(),
            stress=np.full(6, np.nan),
            force_disagreement=np.nan,
            energy_disagreement=np.nan,
        )
        for atoms in frames
    ]
    store_path = scratch / f"{path.stem}.h5"
    with LabelStore.create(store_path, teacher={"name": "md-stage teacher"}) as store:
        store.append(frames, labels)
    with LabelStore(store_path) as store:
        metrics = compute_metrics(predict_frames(student, store.arrays()))
    return metrics["forces"]["mae_meV_per_A"], metrics["energy"]["mae_meV_per_atom"]


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
    with tempfile.TemporaryDirectory() as scratch:
        for name in (previous, Path(result["student"])):
            student = load_student(name)
            print(name)
            for frames in sorted(md.glob("teacher_nvt_*K.extxyz")):
                force, energy = errors_on_frames(student, frames, Path(scratch))
                print(f"  {frames.stem}: force {force:.3f} meV/Å, energy {energy:.4f} meV/atom")
            test = evaluate(student, run / "labels.h5", split="test")
            print(f"  test split: force {test['forces']['mae_meV_per_A']:.3f} meV/Å")


if __name__ == "__main__":
    main(*sys.argv[1:4])
