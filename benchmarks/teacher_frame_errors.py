"""A student's errors on the md stage's teacher NVT frames, per temperature, as JSON.

The md stage of `jaxdistill distill` writes the teacher's own NVT frames (with its
energies and forces) to ``RUN/md/teacher_nvt_<T>K.extxyz``; these include temperatures
that were never sampled for training. This script measures any student on them with the
md stage's comparison (`jaxdistill.validation.force_errors`):

    python benchmarks/teacher_frame_errors.py STUDENT_DIR MD_DIR [OUTPUT.json]

Used for the silicon student sizes in docs/results/README.md (2026-11-30).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import ase.io

from jaxdistill import StudentCalculator
from jaxdistill.student import load_student
from jaxdistill.validation import force_errors


def teacher_frame_errors(student_dir: str | Path, md_dir: str | Path) -> dict[str, dict]:
    """Errors of the student in ``student_dir`` on every ``teacher_nvt_*K.extxyz``.

    Returns:
        ``{"<T>K": force_errors(...)}``, ordered by temperature.
    """
    student = load_student(student_dir)
    paths = sorted(
        Path(md_dir).glob("teacher_nvt_*K.extxyz"),
        key=lambda path: float(re.findall(r"([\d.]+)K", path.name)[-1]),
    )
    if not paths:
        raise FileNotFoundError(f"no teacher_nvt_*K.extxyz in {md_dir}")
    return {
        path.stem.removeprefix("teacher_nvt_"): force_errors(
            lambda: StudentCalculator(student), ase.io.read(path, ":")
        )
        for path in paths
    }


def main(student_dir: str, md_dir: str, output: str | None = None) -> None:
    errors = {"student": student_dir, "md_dir": md_dir, **teacher_frame_errors(student_dir, md_dir)}
    text = json.dumps(errors, indent=2)
    if output:
        Path(output).write_text(text + "\n")
    for name, value in errors.items():
        if isinstance(value, dict):
            print(
                f"{name}: force {value['force_mae_mev_per_angstrom']:.2f} meV/Å, "
                f"energy {value['energy_mae_mev_per_atom']:.3f} meV/atom"
            )


if __name__ == "__main__":
    main(*sys.argv[1:4])
