"""Does a student committee's disagreement rank frames by their true error?

    # K trained students (e.g. `jaxdistill train --seed k`) and any label store, e.g. the
    # md stage's frames of a run, on one H200 or a CPU
    python benchmarks/ensemble_ranking.py --students runs/si/s0 runs/si/s1 runs/si/s2 \\
        runs/si/s3 --store runs/si/labels/md.h5 --output ensemble_ranking.json
    # a self-contained CPU check (about 2-4 minutes on 2 busy cores): a random "teacher"
    # student, K members with perturbed copies of its parameters (so errors and spread
    # are related), 40 rattled Si frames labelled by it into a store under DIR
    python benchmarks/ensemble_ranking.py --demo /tmp/ranking_demo --output /tmp/ranking.json

For every frame of the store (all, or ``--max-frames`` evenly spaced), the committee
(``StudentCalculator`` on a ``StudentCommittee``: mean forces and per-atom force standard
deviation over the members) against the teacher's labels:

- disagreement: ``max_force_std`` (largest per-atom std, eV/Å: what ``run_md``
  thresholds), ``rms_force_std`` (RMS over atoms), ``energy_std_per_atom`` (eV/atom);
- true error: ``max_force_error`` (largest |F - F_teacher| over atoms, eV/Å),
  ``force_rmse`` (over atoms and components, eV/Å), ``energy_error_per_atom`` (eV/atom).

Reported: Spearman rank correlations (frames) of each disagreement with each error, and
over all atoms pooled (per-atom std against per-atom |ΔF|); the recall of the worst
10 % of frames (by ``max_force_error``) among the 10 % with the highest
``max_force_std`` (what an active-learning selection would catch; 0.1 by chance); the
median ratio error/disagreement (calibration: how many "sigmas" the true error is).
Written as JSON with the per-frame numbers.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import sys
import time
from pathlib import Path

import jax
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from jaxdistill import LabelStore, StudentCalculator, create_student  # noqa: E402
from jaxdistill.committee import load_committee  # noqa: E402


def ranks(values: np.ndarray) -> np.ndarray:
    """Average ranks (ties share their mean rank), as Spearman wants."""
    values = np.asarray(values, dtype=np.float64)
    order = np.argsort(values, kind="mergesort")
    ranked = np.empty(len(values))
    ranked[order] = np.arange(len(values), dtype=np.float64)
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranked)
    return sums[inverse] / counts[inverse]


def spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    """Spearman's rank correlation (scipy's when installed, else from numpy ranks)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return None
    try:
        from scipy.stats import spearmanr

        return float(spearmanr(a, b).statistic)
    except ImportError:
        return float(np.corrcoef(ranks(a), ranks(b))[0, 1])


def top_recall(score: np.ndarray, error: np.ndarray, fraction: float = 0.1) -> float | None:
    """Share of the ``fraction`` worst frames (by ``error``) among the ``fraction``
    highest ``score``."""
    n = max(1, round(fraction * len(score)))
    if len(score) < 2 * n:
        return None
    worst = set(np.argsort(error)[-n:].tolist())
    flagged = set(np.argsort(score)[-n:].tolist())
    return len(worst & flagged) / n


def frame_numbers(calculator: StudentCalculator, atoms) -> dict[str, float | np.ndarray]:
    """One frame's disagreement and true error against its stored (teacher) labels."""
    n = len(atoms)
    true_energy = atoms.get_potential_energy()
    true_forces = atoms.get_forces()
    calculator.calculate(atoms.copy(), ["energy", "forces"])
    results = calculator.results
    errors = np.linalg.norm(results["forces"] - true_forces, axis=1)
    return {
        "n_atoms": n,
        "max_force_std": float(results["max_force_std"]),
        "rms_force_std": float(results["force_disagreement"]),
        "energy_std_per_atom": float(results["energy_std"]) / n,
        "max_force_error": float(errors.max()),
        "force_rmse": float(np.sqrt(np.mean((results["forces"] - true_forces) ** 2))),
        "energy_error_per_atom": abs(float(results["energy"]) - true_energy) / n,
        "atom_std": np.asarray(results["force_std"]),
        "atom_error": errors,
    }


def demo(folder: Path, members: int) -> tuple[list[Path], Path]:
    """A random teacher student, K members near it, and a store it labelled."""
    import ase.build

    from jaxdistill.labelling import label
    from jaxdistill.teachers.ase import AseTeacher

    folder.mkdir(parents=True, exist_ok=True)
    options = dict(cutoff=4.0, features=16, num_layers=2, dtype="float64")
    teacher = create_student("painn", ["Si"], seed=100, **options)
    rng = np.random.default_rng(0)
    paths = []
    for k in range(members):
        # members = the teacher with noisy parameters: their mean misses the teacher
        # where their spread is large (a controlled case where ranking should work)
        scale = 0.05
        params = jax.tree_util.tree_map(
            lambda x, s=scale: np.asarray(x) * (1 + s * rng.standard_normal(np.shape(x))),
            teacher.params,
        )
        student = dataclasses.replace(teacher, params=params)
        paths.append(student.save(folder / f"student-{k}"))
    frames = []
    for i in range(40):
        atoms = ase.build.bulk("Si", "diamond", a=5.43, cubic=True)
        atoms.rattle(0.02 + 0.01 * i, seed=i)  # from near the crystal to hot
        frames.append(atoms)
    store = folder / "labels.h5"
    if not store.exists():
        calculator = StudentCalculator(teacher, dtype="float64")
        label(AseTeacher(calculator, name="random-teacher-student"), frames, store, progress=False)
    return paths, store


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--students", nargs="+", type=Path, help="K student directories")
    parser.add_argument("--store", type=Path, help="label store (HDF5) with teacher labels")
    parser.add_argument("--max-frames", type=int, default=None, help="evenly spaced subset")
    parser.add_argument("--dtype", default=None, help="float32 or float64 (default: saved)")
    parser.add_argument("--demo", type=Path, default=None, help="make a tiny demo in DIR")
    parser.add_argument("--demo-members", type=int, default=4)
    parser.add_argument("--output", type=Path, default=Path("ensemble_ranking.json"))
    args = parser.parse_args()
    if args.demo is not None:
        args.students, args.store = demo(args.demo, args.demo_members)
    if not args.students or args.store is None:
        parser.error("give --students DIR [DIR ...] and --store FILE (or --demo DIR)")
    if len(args.students) < 2:
        parser.error("a committee needs at least two students")
    start = time.perf_counter()
    committee = load_committee(args.students, dtype=args.dtype)
    calculator = StudentCalculator(committee, skin=0.0)
    with LabelStore(args.store) as store:
        indices = np.arange(len(store))
        if args.max_frames is not None and args.max_frames < len(indices):
            indices = np.unique(np.linspace(0, len(store) - 1, args.max_frames).round().astype(int))
        frames = store.to_atoms(indices)
        teacher = store.teacher
    rows = [frame_numbers(calculator, atoms) for atoms in frames]
    table = {
        key: np.array([r[key] for r in rows])
        for key in rows[0]
        if key not in ("atom_std", "atom_error")
    }
    disagreements = ("max_force_std", "rms_force_std", "energy_std_per_atom")
    errors = ("max_force_error", "force_rmse", "energy_error_per_atom")
    correlations = {
        f"{d} vs {e}": spearman(table[d], table[e]) for d in disagreements for e in errors
    }
    atom_std = np.concatenate([r["atom_std"] for r in rows])
    atom_error = np.concatenate([r["atom_error"] for r in rows])
    ratio = table["max_force_error"] / np.maximum(table["max_force_std"], 1e-12)
    record = {
        "benchmark": "ensemble_ranking",
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
        "device": str(jax.devices()[0].device_kind),
        "students": [str(p) for p in args.students],
        "members": len(committee),
        "store": str(args.store),
        "teacher": teacher,
        "frames": len(rows),
        "frame_indices": indices.tolist(),
        "spearman_frames": correlations,
        "spearman_atoms": spearman(atom_std, atom_error),
        "top10_recall_max_force_std": top_recall(table["max_force_std"], table["max_force_error"]),
        "median_error_over_max_std": float(np.median(ratio)),
        "mean": {key: float(np.mean(v)) for key, v in table.items()},
        "per_frame": {key: v.tolist() for key, v in table.items()},
        "seconds": time.perf_counter() - start,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(record, indent=1, default=str) + "\n")
    headline = {
        "frames": record["frames"],
        "members": record["members"],
        "spearman max_force_std vs max_force_error": correlations[
            "max_force_std vs max_force_error"
        ],
        "spearman rms_force_std vs force_rmse": correlations["rms_force_std vs force_rmse"],
        "spearman_atoms": record["spearman_atoms"],
        "top10_recall": record["top10_recall_max_force_std"],
    }
    print(json.dumps(headline, indent=1))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
