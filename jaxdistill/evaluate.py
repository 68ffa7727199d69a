"""Accuracy of a student against its teacher's labels: numbers, parity plots, JSON.

``evaluate(student, store, split="test")`` predicts the frames of a split (by default
the held-out test frames of the split the student was trained with, recomputed from
the fractions and seed stored in ``student.metadata["split"]``) and compares with the
stored teacher labels. Definitions (teacher ``t``, student ``s``; all means over the
evaluated frames):

- energy MAE / RMSE, meV/atom: of ``(E_s - E_t) / n_atoms`` per frame;
- force MAE / RMSE, meV/Å: over every Cartesian component of every atom;
- force vector MAE, meV/Å: mean of ``|F_s - F_t|`` (Euclidean norm) per atom;
- relative force MAE: ``sum |F_s - F_t|_components / sum |F_t|_components`` (the force
  MAE divided by the teacher's mean absolute force component; dimensionless), and
  relative force RMSE = force RMSE / RMS teacher force component;
- force angle, degrees: mean (and median) angle between ``F_s`` and ``F_t`` over atoms
  whose teacher force is at least ``angle_min_force`` eV/Å (the angle of a vanishing
  force is noise);
- stress MAE / RMSE over the six Voigt components of frames with a stress label, in
  meV/Å³ and GPa (1 eV/Å³ = 160.2177 GPa);
- per element: the force metrics restricted to atoms of that element.
"""

from __future__ import annotations

import datetime
import functools
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
from ase.data import chemical_symbols

from jaxdistill._version import __version__
from jaxdistill.data.arrays import LabelArrays, usable_frames
from jaxdistill.data.batching import Capacity, make_batch, precompute_neighbours
from jaxdistill.data.store import LabelStore
from jaxdistill.graph import bucket_capacity
from jaxdistill.models import build_model
from jaxdistill.potential import make_potential, voigt_stress
from jaxdistill.student import Student, load_student

EV_PER_A3_TO_GPA = 160.21766208
RESULT_FILE = "evaluation.json"
PLOT_FILES = {
    "energy": "parity_energy.png",
    "forces": "parity_forces.png",
    "stress": "parity_stress.png",
    "force_error_histogram": "force_error_histogram.png",
}

__all__ = ["EV_PER_A3_TO_GPA", "Predictions", "evaluate", "predict_frames", "split_indices"]


class Predictions:
    """Teacher labels and student predictions of the same frames (host float64).

    Attributes:
        labels: the frames and teacher labels.
        energy: ``[n_frames]`` student energies, eV.
        forces: ``[n_atoms_total, 3]`` student forces, eV/Å (rows as in ``labels``).
        stress: ``[n_frames, 6]`` student stress, eV/Å³ (Voigt, ASE sign).
    """

    def __init__(
        self, labels: LabelArrays, energy: np.ndarray, forces: np.ndarray, stress: np.ndarray
    ) -> None:
        self.labels, self.energy, self.forces, self.stress = labels, energy, forces, stress


@functools.lru_cache(maxsize=8)
def _jitted_predict(architecture: str, species: tuple[int, ...], cutoff: float, hyper: str):
    """One jitted predict per model in a process (compiled once per capacity bucket)."""
    model = build_model(architecture, species, cutoff, **json.loads(hyper))
    return jax.jit(make_potential(model.apply).predict)


def predict_frames(student: Student, labels: LabelArrays, batch_size: int = 16) -> Predictions:
    """Student energies, forces and stresses of every frame, batched and bucketed.

    Frames are sorted by size so that a batch holds similar frames; each batch is padded
    to the next capacity bucket, so the prediction compiles a few times at most.
    """
    if labels.n_frames == 0:
        raise ValueError("no frames to evaluate")
    unknown = sorted(set(np.unique(labels.numbers).tolist()) - set(student.species))
    if unknown:
        names = ", ".join(chemical_symbols[z] for z in unknown)
        raise ValueError(f"the frames contain element(s) {names} unknown to the student")
    frames = precompute_neighbours(labels, student.cutoff)
    predict = _jitted_predict(
        student.architecture,
        student.species,
        student.cutoff,
        json.dumps(student.hyperparameters, sort_keys=True),
    )
    order = np.argsort(frames.n_atoms * 1_000_000 + frames.n_edges, kind="stable")
    energy = np.zeros(labels.n_frames)
    forces = np.zeros((len(labels.numbers), 3))
    stress = np.zeros((labels.n_frames, 6))
    for lo in range(0, labels.n_frames, batch_size):
        idx = order[lo : lo + batch_size]
        capacity = Capacity(
            bucket_capacity(int(frames.n_atoms[idx].sum()) + 1),
            bucket_capacity(int(frames.n_edges[idx].sum()) + 1),
            bucket_capacity(len(idx) + 1, minimum=2),
        )
        batch = make_batch(frames, [idx], capacity, student.dtype, stacked=False)
        out = jax.device_get(predict(student.params, batch.graph))
        counts = labels.n_atoms[idx]
        energy[idx] = np.asarray(out.energy[: len(idx)], np.float64)
        stress[idx] = np.asarray(voigt_stress(out.stress[: len(idx)]), np.float64)
        node = 0
        for i, n in zip(idx, counts, strict=True):
            a = labels.offsets[i]
            forces[a : a + n] = out.forces[node : node + n]
            node += n
    return Predictions(labels, energy, forces, stress)


def split_indices(student: Student, store: LabelStore, split: str) -> np.ndarray:
    """Frame indices of ``split`` ("train", "validation", "test" or "all").

    The split is recomputed from the fractions and seed in ``student.metadata["split"]``
    (written by training), after checking that ``store`` is the store it was trained on.
    """
    if split == "all":
        return np.arange(len(store))
    info = student.metadata.get("split")
    if not info:
        raise ValueError(
            "this student has no training split in its metadata (it was not trained by "
            "jaxdistill.train); evaluate it on all frames: --split all (split='all')"
        )
    mismatch = []
    if info.get("n_frames") is not None and int(info["n_frames"]) != len(store):
        mismatch.append(f"{len(store)} frames, the training store had {info['n_frames']}")
    fingerprint = store.input_info.get("fingerprint")
    if info.get("input_fingerprint") and fingerprint and info["input_fingerprint"] != fingerprint:
        mismatch.append("its input fingerprint differs from the training store's")
    if mismatch:
        raise ValueError(
            f"{store.path} is not the store this student was trained on ({'; '.join(mismatch)}), "
            f"so its '{split}' split would not be held out; evaluate on all frames: "
            "--split all (split='all')"
        )
    parts = store.split(info["fractions"], seed=int(info["seed"]))
    if split not in parts:
        raise ValueError(f"unknown split {split!r}; choose one of {', '.join([*parts, 'all'])}")
    return np.asarray(parts[split])


def _force_metrics(diff: np.ndarray, teacher: np.ndarray, student: np.ndarray, min_force: float):
    n = len(diff)
    if n == 0:
        return {"atoms": 0}
    abs_teacher = np.abs(teacher)
    norm_t = np.linalg.norm(teacher, axis=1)
    norm_s = np.linalg.norm(student, axis=1)
    keep = (norm_t >= min_force) & (norm_s > 0)
    cosine = np.sum(teacher[keep] * student[keep], axis=1) / (norm_t[keep] * norm_s[keep])
    angles = np.degrees(np.arccos(np.clip(cosine, -1.0, 1.0)))
    rms_teacher = float(np.sqrt(np.mean(teacher**2)))
    mae = float(np.mean(np.abs(diff)))
    rmse = float(np.sqrt(np.mean(diff**2)))
    return {
        "atoms": int(n),
        "mae_meV_per_A": 1e3 * mae,
        "rmse_meV_per_A": 1e3 * rmse,
        "vector_mae_meV_per_A": 1e3 * float(np.mean(np.linalg.norm(diff, axis=1))),
        "max_abs_meV_per_A": 1e3 * float(np.max(np.abs(diff))),
        "relative_mae": float(np.sum(np.abs(diff)) / max(np.sum(abs_teacher), 1e-300)),
        "relative_rmse": rmse / rms_teacher if rms_teacher > 0 else math.nan,
        "mean_abs_teacher_meV_per_A": 1e3 * float(np.mean(abs_teacher)),
        "angle_mean_deg": float(np.mean(angles)) if len(angles) else math.nan,
        "angle_median_deg": float(np.median(angles)) if len(angles) else math.nan,
        "angle_atoms": int(keep.sum()),
    }


def compute_metrics(predictions: Predictions, angle_min_force: float = 0.05) -> dict[str, Any]:
    """Every error metric (see the module docstring) of a set of predictions."""
    lab = predictions.labels
    n_atoms = lab.n_atoms.astype(np.float64)
    d_energy = (predictions.energy - lab.energy) / n_atoms
    d_forces = predictions.forces - lab.forces
    has_stress = np.all(np.isfinite(lab.stress), axis=1) & np.all(lab.pbc, axis=1)
    out: dict[str, Any] = {
        "frames": int(lab.n_frames),
        "atoms": len(lab.numbers),
        "stress_frames": int(has_stress.sum()),
        "energy": {
            "mae_meV_per_atom": 1e3 * float(np.mean(np.abs(d_energy))),
            "rmse_meV_per_atom": 1e3 * float(np.sqrt(np.mean(d_energy**2))),
            "max_abs_meV_per_atom": 1e3 * float(np.max(np.abs(d_energy))),
        },
        "forces": {
            **_force_metrics(d_forces, lab.forces, predictions.forces, angle_min_force),
            "angle_min_force_eV_per_A": angle_min_force,
        },
        "stress": None,
        "per_element": {},
    }
    if has_stress.any():
        d_stress = predictions.stress[has_stress] - lab.stress[has_stress]
        mae, rmse = float(np.mean(np.abs(d_stress))), float(np.sqrt(np.mean(d_stress**2)))
        out["stress"] = {
            "mae_meV_per_A3": 1e3 * mae,
            "rmse_meV_per_A3": 1e3 * rmse,
            "mae_GPa": EV_PER_A3_TO_GPA * mae,
            "rmse_GPa": EV_PER_A3_TO_GPA * rmse,
        }
    for z in np.unique(lab.numbers):
        rows = lab.numbers == z
        out["per_element"][chemical_symbols[int(z)]] = _force_metrics(
            d_forces[rows], lab.forces[rows], predictions.forces[rows], angle_min_force
        )
    return out


def _student_provenance(student: Student, path: Path | None) -> dict[str, Any]:
    training = student.metadata.get("training", {})
    return {
        "path": str(path) if path else None,
        "architecture": student.architecture,
        "hyperparameters": student.hyperparameters,
        "species": [chemical_symbols[z] for z in student.species],
        "cutoff_angstrom": student.cutoff,
        "dtype": student.dtype,
        "num_parameters": student.num_parameters,
        "head_statistics": student.metadata.get("head_statistics"),
        "training": {k: v for k, v in training.items() if k != "config"},
        "training_config": training.get("config"),
        "split": student.metadata.get("split"),
    }


def evaluate(
    student: Student | str | Path,
    store: LabelStore | str | Path,
    split: str = "test",
    output_dir: str | Path | None = None,
    *,
    batch_size: int = 16,
    angle_min_force: float = 0.05,
    plots: bool = True,
    skip_bad_frames: bool = False,
) -> dict[str, Any]:
    """Compare a student with the teacher labels of a store.

    Args:
        student: a Student or a student directory.
        store: the label store (path or open store).
        split: "test" (default), "validation", "train" (of the student's training
            split) or "all" frames.
        output_dir: when given, write ``evaluation.json`` and the PNG plots there.
        batch_size: frames per prediction call.
        angle_min_force: teacher force (eV/Å) below which an atom is left out of the
            force-angle statistics.
        plots: write the plots (with ``output_dir``).
        skip_bad_frames: leave out frames with non-finite or absurd positions or labels
            (named in a warning) instead of refusing the store.

    Returns:
        The metrics (see the module docstring), plus ``provenance`` (student, teacher,
        data, split frame indices) and ``files`` (what was written).
    """
    student_path = None
    if not isinstance(student, Student):
        student_path = Path(student).absolute()
        student = load_student(student_path)
    opened = not isinstance(store, LabelStore)
    store = LabelStore(store) if opened else store
    try:
        indices = split_indices(student, store, split)
        if len(indices) == 0:
            raise ValueError(f"the '{split}' split of {store.path} is empty")
        labels = usable_frames(
            store.arrays(indices), f"the '{split}' frames of {store.path}", skip_bad_frames
        )
        if labels.n_frames == 0:
            raise ValueError(f"no usable frames in the '{split}' split of {store.path}")
        unknown = sorted(set(np.unique(labels.numbers).tolist()) - set(student.species))
        if unknown:
            raise ValueError(
                f"{store.path} has element(s) {', '.join(chemical_symbols[z] for z in unknown)}"
                f" unknown to the student (it knows {', '.join(student.symbols)})"
            )
        predictions = predict_frames(student, labels, batch_size=batch_size)
        result = compute_metrics(predictions, angle_min_force)
        training_teacher = student.metadata.get("teacher")
        teacher = store.teacher
        result["split"] = split
        result["provenance"] = {
            "student": _student_provenance(student, student_path),
            "teacher": teacher,
            "teacher_of_training": training_teacher,
            "teacher_matches_training": (
                None
                if not training_teacher
                else training_teacher.get("name") == teacher.get("name")
                and training_teacher.get("weights_sha256") == teacher.get("weights_sha256")
            ),
            "data": {
                "store": str(Path(store.path).absolute()),
                "store_frames": len(store),
                "input": store.input_info,
                "units": store.units,
                "split": split,
                "frame_indices": [int(i) for i in indices],
            },
            "jaxdistill_version": __version__,
            "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        }
        result["files"] = {}
        if output_dir is not None:
            output_dir = Path(output_dir)
            output_dir.mkdir(parents=True, exist_ok=True)
            if plots:
                result["files"].update(write_plots(predictions, output_dir, result))
            result["files"]["json"] = RESULT_FILE
            (output_dir / RESULT_FILE).write_text(json.dumps(result, indent=2) + "\n")
        return result
    finally:
        if opened:
            store.close()


def _new_figure(width: float = 5.0, height: float = 5.0):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(figure)
    return figure


def _parity(axis, x: np.ndarray, y: np.ndarray, quantity: str, unit: str, **kwargs) -> None:
    lo, hi = float(min(x.min(), y.min())), float(max(x.max(), y.max()))
    pad = 0.05 * (hi - lo or 1.0)
    axis.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="0.6", lw=1, zorder=0)
    axis.scatter(x, y, s=kwargs.pop("s", 6), alpha=kwargs.pop("alpha", 0.6), **kwargs)
    axis.set_xlim(lo - pad, hi + pad)
    axis.set_ylim(lo - pad, hi + pad)
    axis.set_aspect("equal")
    axis.set_xlabel(f"teacher {quantity} ({unit})")
    axis.set_ylabel(f"student {quantity} ({unit})")


def write_plots(
    predictions: Predictions, output_dir: Path, metrics: dict[str, Any]
) -> dict[str, str]:
    """Parity plots (energy, forces, stress) and a force-error histogram as PNG files.

    Returns:
        Plot name -> file name (inside ``output_dir``).
    """
    lab = predictions.labels
    files: dict[str, str] = {}
    n_atoms = lab.n_atoms.astype(np.float64)

    figure = _new_figure()
    axis = figure.add_subplot()
    _parity(axis, lab.energy / n_atoms, predictions.energy / n_atoms, "energy", "eV/atom")
    e = metrics["energy"]
    axis.set_title(f"energy: MAE {e['mae_meV_per_atom']:.2f} meV/atom")
    figure.tight_layout()
    figure.savefig(output_dir / PLOT_FILES["energy"])
    files["energy"] = PLOT_FILES["energy"]

    figure = _new_figure()
    axis = figure.add_subplot()
    symbols = [chemical_symbols[int(z)] for z in np.unique(lab.numbers)]
    for symbol in symbols:
        rows = np.asarray([chemical_symbols[int(z)] == symbol for z in lab.numbers])
        _parity(
            axis,
            lab.forces[rows].ravel(),
            predictions.forces[rows].ravel(),
            "force",
            "eV/Å",
            s=3,
            label=symbol,
        )
    f = metrics["forces"]
    axis.set_xlim(float(lab.forces.min()) - 0.1, float(lab.forces.max()) + 0.1)
    axis.set_ylim(float(lab.forces.min()) - 0.1, float(lab.forces.max()) + 0.1)
    axis.set_title(f"force components: MAE {f['mae_meV_per_A']:.1f} meV/Å")
    axis.legend(loc="upper left", markerscale=3)
    figure.tight_layout()
    figure.savefig(output_dir / PLOT_FILES["forces"])
    files["forces"] = PLOT_FILES["forces"]

    has_stress = np.all(np.isfinite(lab.stress), axis=1) & np.all(lab.pbc, axis=1)
    if has_stress.any():
        figure = _new_figure()
        axis = figure.add_subplot()
        _parity(
            axis,
            EV_PER_A3_TO_GPA * lab.stress[has_stress].ravel(),
            EV_PER_A3_TO_GPA * predictions.stress[has_stress].ravel(),
            "stress",
            "GPa",
            s=10,
        )
        axis.set_title(f"stress (Voigt): MAE {metrics['stress']['mae_GPa']:.3f} GPa")
        figure.tight_layout()
        figure.savefig(output_dir / PLOT_FILES["stress"])
        files["stress"] = PLOT_FILES["stress"]

    figure = _new_figure(6.0, 4.0)
    axis = figure.add_subplot()
    errors = 1e3 * np.linalg.norm(predictions.forces - lab.forces, axis=1)
    bins = np.linspace(0.0, max(float(errors.max()), 1e-6), 50)
    for z in np.unique(lab.numbers):
        axis.hist(errors[lab.numbers == z], bins=bins, alpha=0.6, label=chemical_symbols[int(z)])
    axis.set_yscale("log")
    axis.set_xlabel("|F_student − F_teacher| per atom (meV/Å)")
    axis.set_ylabel("atoms")
    axis.set_title(f"force error: mean {f['vector_mae_meV_per_A']:.1f} meV/Å")
    axis.legend()
    figure.tight_layout()
    figure.savefig(output_dir / PLOT_FILES["force_error_histogram"])
    files["force_error_histogram"] = PLOT_FILES["force_error_histogram"]
    return files


def summary_lines(result: dict[str, Any]) -> Sequence[str]:
    """A few human-readable lines of the headline numbers."""
    e, f, s = result["energy"], result["forces"], result["stress"]
    lines = [
        f"{result['split']}: {result['frames']} frames, {result['atoms']} atoms",
        f"energy MAE {e['mae_meV_per_atom']:.3f} meV/atom (RMSE {e['rmse_meV_per_atom']:.3f})",
        f"force MAE {f['mae_meV_per_A']:.2f} meV/Å (RMSE {f['rmse_meV_per_A']:.2f}; "
        f"relative {100 * f['relative_mae']:.2f} %; angle {f['angle_mean_deg']:.2f}°)",
    ]
    if s:
        lines.append(f"stress MAE {s['mae_meV_per_A3']:.3f} meV/Å³ ({s['mae_GPa']:.4f} GPa)")
    for symbol, m in result["per_element"].items():
        if m.get("atoms"):
            lines.append(
                f"  {symbol}: force MAE {m['mae_meV_per_A']:.2f} meV/Å "
                f"(relative {100 * m['relative_mae']:.2f} %, {m['atoms']} atoms)"
            )
    return lines
