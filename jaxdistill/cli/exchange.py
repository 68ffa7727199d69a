"""``jaxdistill import``, ``export`` and ``info``: labels in, students out, either described.

Plain functions with typer annotations, registered in ``jaxdistill.cli.main``. Each is
a thin shell over :func:`jaxdistill.importing.import_labels`,
:func:`jaxdistill.export.export_compiled`, :func:`jaxdistill.student.load_student`
and :class:`jaxdistill.data.store.LabelStore`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from jaxdistill.cli.errors import report_errors

__all__ = [
    "describe_store",
    "describe_student",
    "export_command",
    "import_command",
    "info_command",
]

console = Console()


def _table(title: str, rows: list[tuple[str, str]]) -> Table:
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    for key, value in rows:
        table.add_row(escape(key), escape(value))
    return table


def _counts(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items())


def _teacher_text(teacher: Mapping[str, Any] | None) -> str:
    """A teacher's provenance in one line: name, package and version, weights hash."""
    if not teacher:
        return "unknown"
    parts = [str(teacher.get("spec") or teacher.get("name", "?"))]
    if teacher.get("package"):
        parts.append(f"{teacher['package']} {teacher.get('version', '')}".strip())
    digest = teacher.get("sha256") or teacher.get("weights_sha256")
    if isinstance(digest, list):
        digest = digest[0] if digest else None
    if digest:
        parts.append(f"sha256 {str(digest)[:12]}…")
    if teacher.get("source"):
        parts.append(f"from {teacher['source']}")
    return "; ".join(parts)


def _metric(value: Any, unit: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{value:.2f} {unit}"


def describe_student(path: Path) -> list[tuple[str, str]]:
    """The rows ``jaxdistill info STUDENT`` prints: architecture, size, species, cutoff,
    dtype, teacher provenance and training metrics when present."""
    from jaxdistill.student import load_student

    student = load_student(path)
    hyper = ", ".join(f"{k}={v}" for k, v in sorted(student.hyperparameters.items()))
    meta = student.metadata
    rows = [
        ("architecture", student.architecture + (f" ({hyper})" if hyper else "")),
        ("parameters", f"{student.num_parameters:,}"),
        ("species", ", ".join(student.symbols)),
        ("cutoff", f"{student.cutoff:g} Å"),
        ("dtype", student.dtype),
        ("teacher", _teacher_text(meta.get("teacher"))),
    ]
    training = meta.get("training")
    if isinstance(training, Mapping):
        steps = f"{training.get('steps_completed', '?')} of {training.get('steps', '?')}"
        if training.get("early_stopped"):
            steps += " (stopped early)"
        rows.append(("training steps", steps))
        best = training.get("best_validation_force_mae_meV_per_A")
        if best is not None:
            rows.append(("best validation force MAE", _metric(best, "meV/Å")))
        last = training.get("last_validation") or {}
        for key, label, unit in (
            ("energy_mae_meV_per_atom", "last validation energy MAE", "meV/atom"),
            ("force_mae_meV_per_A", "last validation force MAE", "meV/Å"),
        ):
            if key in last:
                rows.append((label, _metric(last[key], unit)))
        if training.get("train_seconds") is not None:
            rows.append(("training time", f"{training['train_seconds']:.0f} s"))
    split = meta.get("split")
    if isinstance(split, Mapping) and split.get("sizes"):
        rows.append(("split (frames)", _counts(split["sizes"])))
        if split.get("store"):
            rows.append(("label store", str(split["store"])))
    if meta.get("jaxdistill_version"):
        rows.append(("jaxdistill", str(meta["jaxdistill_version"])))
    return rows


def describe_store(path: Path) -> list[tuple[str, str]]:
    """The rows ``jaxdistill info STORE.h5`` prints: frames, atoms, elements, labels
    present, samplers and teacher provenance."""
    import numpy as np

    from jaxdistill.data.store import LabelStore

    with LabelStore(path) as store:
        arrays = store.arrays()
        n = len(store)
        with_stress = int(np.all(np.isfinite(arrays.stress), axis=1).sum()) if n else 0
        samplers: dict[str, int] = {}
        for name in arrays.sampler.tolist():
            samplers[name] = samplers.get(name, 0) + 1
        atoms = arrays.n_atoms
        rows = [
            ("frames", str(n)),
            (
                "atoms",
                f"{store.n_atoms_total} ({int(atoms.min())}–{int(atoms.max())} per frame)"
                if n
                else "0",
            ),
            ("elements", _counts(store.element_counts())),
            ("stress labels", f"{with_stress} of {n} frames"),
            ("samplers", _counts(samplers) or "–"),
            ("teacher", _teacher_text(store.teacher)),
            ("input", str(store.input_info.get("source", "?"))),
        ]
        if n:
            per_atom = arrays.energy / atoms
            rows.append(("energy", f"{per_atom.min():.4f} to {per_atom.max():.4f} eV/atom"))
            rows.append(("mean |F| component", f"{np.abs(arrays.forces).mean():.3f} eV/Å"))
    return rows


@report_errors
def info_command(
    path: Annotated[Path, typer.Argument(help="Student directory or label store (.h5).")],
) -> None:
    """Describe a saved student (architecture, size, teacher, training) or a label store."""
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such student directory or label store")
    if path.is_dir():
        console.print(_table(f"student {path}", describe_student(path)))
    else:
        console.print(_table(f"label store {path}", describe_store(path)))


@report_errors
def import_command(
    frames: Annotated[
        Path,
        typer.Argument(
            help="Labelled frames: extxyz, an ASE database (.db) or any file ase.io reads "
            "with energy and forces (stress optional)."
        ),
    ],
    store: Annotated[Path, typer.Argument(help="Label store (HDF5) to create.")],
    energy_key: Annotated[
        str | None,
        typer.Option(help="atoms.info key of the energy, eV (default: 'energy')."),
    ] = None,
    forces_key: Annotated[
        str | None,
        typer.Option(help="atoms.arrays key of the forces, eV/Å (default: 'forces')."),
    ] = None,
    stress_key: Annotated[
        str | None,
        typer.Option(
            help="atoms.info key of the stress, eV/Å³, Voigt or 3x3 (default: 'stress' when "
            "present; given, every periodic frame must have it)."
        ),
    ] = None,
    index: Annotated[str, typer.Option(help="Frames to read (ASE index syntax).")] = ":",
    overwrite: Annotated[bool, typer.Option(help="Replace STORE if it exists.")] = False,
    skip_bad_frames: Annotated[
        bool,
        typer.Option(
            help="Leave out frames with non-finite positions or cell, or coincident atoms, "
            "each named, instead of refusing."
        ),
    ] = False,
) -> None:
    """Import your own labels (energy, forces, optional stress) into a label store.

    The store records where the labels came from (the file and its SHA-256, teacher
    name 'imported') and is trained on like any other: jaxdistill train --data STORE.
    """
    from jaxdistill.importing import import_labels

    summary = import_labels(
        frames,
        store,
        energy_key=energy_key,
        forces_key=forces_key,
        stress_key=stress_key,
        index=index,
        overwrite=overwrite,
        skip_bad_frames=skip_bad_frames,
    )
    for line in summary.skipped:
        console.print(f"[yellow]skipped:[/] {escape(line)}", soft_wrap=True)
    console.print(
        _table(
            f"imported {frames} into {store}",
            [
                ("frames", str(summary.n_frames)),
                ("atoms", str(summary.n_atoms)),
                ("elements", _counts(summary.elements)),
                ("time", f"{summary.seconds:.2f} s"),
            ],
        )
    )


@report_errors
def export_command(
    student: Annotated[Path, typer.Argument(help="Student directory.")],
    output: Annotated[Path, typer.Argument(help="File to write, e.g. si.jaxexport.")],
    platform: Annotated[
        list[str] | None,
        typer.Option(help="Platform to compile for (repeatable): cpu, cuda, rocm, tpu."),
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace OUTPUT if it exists.")] = False,
) -> None:
    """Export a student as one portable file (serialized StableHLO via jax.export).

    It computes energy, forces and stress from padded graph arrays for any number of
    atoms and edges, and loads with jax alone: jaxdistill.portable.load_exported (a
    single file you may copy; docs/export.md).
    """
    from jaxdistill.export import DEFAULT_PLATFORMS, export_compiled

    if not student.is_dir():
        raise FileNotFoundError(f"{student}: student directory not found")
    platforms = tuple(platform) if platform else DEFAULT_PLATFORMS
    path = export_compiled(student, output, platforms=platforms, overwrite=overwrite)
    size = path.stat().st_size / 1024
    console.print(
        f"exported {student} to {path} ({size:.0f} KiB, for {', '.join(platforms)}); "
        "load it with jaxdistill.portable.load_exported"
    )
