"""Labelling: a teacher × frames → a label store, resumable and crash-safe.

:func:`label` reads the frames (a list or any file ``ase.io.read`` reads), asks the
teacher for energy, forces and stress in batches (and, with ``hessian_directions=K``,
for ``K`` Hessian-vector products per frame, see :mod:`jaxdistill.teachers.hessian`)
and appends each batch to an HDF5 :class:`~jaxdistill.data.store.LabelStore`,
committing it atomically. Re-run on the same
input and teacher, it resumes after the last committed frame; a different input or
teacher is refused.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ase
import ase.io
import numpy as np

from jaxdistill.data.arrays import frame_hash, frames_fingerprint
from jaxdistill.data.store import LabelStore, LabelStoreError
from jaxdistill.graph import atoms_problem
from jaxdistill.progress import progress_bar
from jaxdistill.teachers.base import Teacher
from jaxdistill.teachers.hessian import (
    DEFAULT_FD_STEP_ANGSTROM,
    labels_and_hessian,
    random_directions,
    resolve_hessian_method,
)
from jaxdistill.teachers.registry import load_teacher

__all__ = ["LabelSummary", "frame_directions", "label", "read_frames"]


@dataclass(frozen=True)
class LabelSummary:
    """What :func:`label` did.

    Attributes:
        path: The store.
        n_frames: Frames in the store after the run (= frames in the input).
        n_labelled: Frames labelled by this run.
        n_resumed: Frames found already labelled (skipped).
        n_atoms: Atoms in the store.
        elements: Atom counts per element symbol over the store.
        seconds: Wall time of this run's labelling, s.
        seconds_per_frame: ``seconds / n_labelled`` (NaN when nothing was labelled).
        skipped: One line per input frame left out by ``skip_bad_frames`` (its index
            in the input and what is wrong with it).
    """

    path: Path
    n_frames: int
    n_labelled: int
    n_resumed: int
    n_atoms: int
    elements: dict[str, int]
    seconds: float
    seconds_per_frame: float
    skipped: tuple[str, ...] = ()
    hessian: dict[str, Any] | None = None


def frame_directions(input_hash: str, n_atoms: int, k: int, seed: int) -> np.ndarray:
    """The ``k`` Hessian directions of a frame: drawn from a generator seeded by
    ``seed`` and the frame's content hash, so a resumed or repeated labelling (and a
    Dask worker labelling the frame) draws the same ones.

    Returns:
        ``[k, n_atoms, 3]`` unit directions (see
        :func:`jaxdistill.teachers.hessian.random_directions`).
    """
    rng = np.random.default_rng([int(seed), int(input_hash[:16], 16)])
    return random_directions(n_atoms, k, rng)


def _hessian_problem(products: np.ndarray) -> str | None:
    if not np.all(np.isfinite(products)):
        return "the teacher's Hessian-vector products are NaN or infinite"
    return None


def read_frames(frames: Sequence[ase.Atoms] | str | Path) -> tuple[list[ase.Atoms], str]:
    """The frames to label (a list, or every frame of a file ``ase.io`` reads) and how
    the store names their source; a missing, empty or unreadable file is a clear error."""
    if isinstance(frames, (str, Path)):
        path = Path(frames)
        if not path.is_file():
            raise FileNotFoundError(f"input frames not found: {path}")
        if path.stat().st_size == 0:
            raise ValueError(f"input frames {path} is an empty file")
        try:
            read = ase.io.read(path, index=":")
        except Exception as error:  # ase raises many kinds for a file it cannot parse
            text = " ".join(str(error).split()) or type(error).__name__
            raise ValueError(f"cannot read frames from {path}: {text}") from None
        return (list(read) if isinstance(read, list) else [read]), str(path)
    return list(frames), "<in-memory frames>"


def frame_problems(frames: Sequence[ase.Atoms]) -> dict[int, str]:
    """What is wrong with each frame a teacher should not see (index → reason): empty,
    non-finite or absurd positions, a singular cell, coincident atoms
    (:func:`jaxdistill.graph.atoms_problem`)."""
    problems = {}
    for i, atoms in enumerate(frames):
        problem = atoms_problem(atoms)
        if problem is not None:
            problems[i] = problem
    return problems


def labels_problem(labels: Any, n_atoms: int) -> str | None:
    """What is wrong with a teacher's labels of one frame, or None: non-finite energy,
    forces of the wrong shape or non-finite, an infinite stress (NaN = not labelled)."""
    energy = np.asarray(labels.energy, dtype=np.float64)
    forces = np.asarray(labels.forces, dtype=np.float64)
    if energy.shape != () or not np.isfinite(energy):
        return f"the teacher's energy is {energy.tolist()}"
    if forces.shape != (n_atoms, 3):
        return f"the teacher's forces have shape {forces.shape}, expected ({n_atoms}, 3)"
    if not np.all(np.isfinite(forces)):
        bad = np.where(~np.all(np.isfinite(forces), axis=1))[0]
        return f"the teacher's forces on atoms {bad[:10].tolist()} are NaN or infinite"
    stress = np.asarray(labels.stress, dtype=np.float64)
    if np.any(np.isinf(stress)) or (np.any(np.isnan(stress)) and not np.all(np.isnan(stress))):
        return f"the teacher's stress is {stress.tolist()}"
    return None


def _frame_name(source: str, index: int) -> str:
    return f"frame {index} of {source}"


def label(
    teacher: Teacher | str,
    frames: Sequence[ase.Atoms] | str | Path,
    store_path: str | Path,
    batch_size: int | None = None,
    progress: bool = True,
    durable: bool = True,
    console: Any | None = None,
    skip_bad_frames: bool = False,
    hessian_directions: int = 0,
    hessian_method: str = "auto",
    hessian_step_angstrom: float = DEFAULT_FD_STEP_ANGSTROM,
    hessian_seed: int = 0,
) -> LabelSummary:
    """Label frames with a teacher into a store; resumable and crash-safe.

    Frames are labelled in input order and committed in batches. If ``store_path``
    exists, it must have been made from the same input (same frames, bit for bit, in
    the same order: checked by content hash) and the same teacher (name, weights
    SHA-256, precision, package version); labelling then resumes after the last
    committed frame, so no frame is labelled twice and none is lost. A different input
    or teacher is refused with :class:`LabelStoreError`.

    Args:
        teacher: A :class:`~jaxdistill.teachers.Teacher` or a spec for
            :func:`~jaxdistill.teachers.load_teacher`.
        frames: Structures, or a file ``ase.io.read`` can read (all frames).
        store_path: The HDF5 store (created when absent).
        batch_size: Frames per teacher call and per commit (default: the teacher's
            ``batch_size``, at least 8). A kill loses at most one batch of work.
        progress: Show a rich progress bar.
        durable: fsync after each commit (protects against power loss too).
        console: A ``rich.console.Console`` for the progress bar (default: stderr).
        skip_bad_frames: Leave out input frames a teacher should not see (see
            :func:`frame_problems`) instead of refusing them; they are named in
            :attr:`LabelSummary.skipped`. Frames are numbered as in the input either way.
        hessian_directions: ``K`` > 0 also labels ``K`` Hessian-vector products per
            frame (random unit directions, see :func:`frame_directions`); the store
            records how (``store.hessian``) and a resume must ask for the same.
        hessian_method: ``"auto"`` (the teacher's autodiff when it has one, else
            finite differences), ``"autodiff"`` or ``"finite-difference"``.
        hessian_step_angstrom: Step of the finite differences, Å.
        hessian_seed: Seed of the directions.

    Returns:
        A :class:`LabelSummary`.

    Raises:
        ValueError: naming the frame (its index in the input) when a frame cannot be
            labelled (unless ``skip_bad_frames``; nothing is written then) or when the
            teacher returns non-finite labels for it (frames before it stay stored).
    """
    if isinstance(teacher, str):
        teacher = load_teacher(teacher)
    items, source = read_frames(frames)
    if not items:
        raise ValueError(f"no frames to label in {source}")
    problems = frame_problems(items)
    skipped: tuple[str, ...] = ()
    if problems and not skip_bad_frames:
        first = min(problems)
        more = f" (and {len(problems) - 1} more bad frames)" if len(problems) > 1 else ""
        raise ValueError(
            f"{_frame_name(source, first)}: {problems[first]}{more}; nothing labelled. "
            "Fix or remove it, or pass --skip-bad-frames (skip_bad_frames=True)"
        )
    if problems:
        skipped = tuple(f"{_frame_name(source, i)}: {why}" for i, why in sorted(problems.items()))
        kept = [i for i in range(len(items)) if i not in problems]
        items = [items[i] for i in kept]
        if not items:
            raise ValueError(f"every frame of {source} is bad; nothing to label")
        stored_source = f"{source} (less {len(problems)} bad frames)"
    else:
        kept, stored_source = list(range(len(items))), source
    hashes = [frame_hash(x) for x in items]
    fingerprint = frames_fingerprint(hashes)
    input_info = {"n_frames": len(items), "fingerprint": fingerprint, "source": stored_source}
    provenance = teacher.provenance()
    store_path = Path(store_path)
    hessian_k = int(hessian_directions)
    if hessian_k < 0:
        raise ValueError(f"hessian_directions must be >= 0, got {hessian_k}")
    hessian_info: dict[str, Any] = {}
    if hessian_k:
        method = resolve_hessian_method(teacher, hessian_method)
        hessian_info = {
            "directions": hessian_k,
            "method": method,
            "step_angstrom": float(hessian_step_angstrom) if method != "autodiff" else None,
            "seed": int(hessian_seed),
            "units": "eV/Å² (H·u for unit directions u over the frame's 3n coordinates)",
        }

    if store_path.exists():
        store = LabelStore(store_path, mode="a", durable=durable)
        try:
            _check_resume(store, input_info, hashes, provenance)
            _check_hessian_resume(store, hessian_info)
        except Exception:
            store.close()
            raise
    else:
        store = LabelStore.create(
            store_path,
            teacher=provenance,
            capacity_frames=len(items),
            capacity_atoms=sum(len(x) for x in items),
            input_info=input_info,
            hessian=hessian_info or None,
            durable=durable,
        )

    size = int(batch_size or max(int(getattr(teacher, "batch_size", 1)), 8))
    done_before = len(store)
    start = time.perf_counter()
    try:
        with progress_bar(console, enabled=progress) as bar:
            task = bar.add_task(
                f"labelling ({teacher.name})", total=len(items), completed=done_before
            )
            for lo in range(done_before, len(items), size):
                hi = min(lo + size, len(items))
                chunk = items[lo:hi]
                if hessian_k:
                    directions = [
                        frame_directions(h, len(atoms), hessian_k, hessian_seed)
                        for h, atoms in zip(hashes[lo:hi], chunk, strict=True)
                    ]
                    # one evaluation for both where the teacher offers it (FeNNol)
                    labels, products = labels_and_hessian(
                        teacher,
                        chunk,
                        directions,
                        method=hessian_info["method"],
                        step_angstrom=hessian_step_angstrom,
                    )
                else:
                    labels = teacher.label(chunk)
                for k, (atoms, frame_labels) in enumerate(zip(chunk, labels, strict=True)):
                    problem = labels_problem(frame_labels, len(atoms))
                    if problem is not None:
                        raise ValueError(
                            f"{_frame_name(source, kept[lo + k])}: {problem}; not stored (the "
                            f"{lo} frames before its batch are). Remove the frame from "
                            "the input and label into a new store"
                        )
                hessian = None
                if hessian_k:
                    for k, value in enumerate(products):
                        problem = _hessian_problem(value)
                        if problem is not None:
                            raise ValueError(
                                f"{_frame_name(source, kept[lo + k])}: {problem}; not stored "
                                f"(the {lo} frames before its batch are)"
                            )
                    hessian = list(zip(directions, products, strict=True))
                store.append(
                    chunk,
                    labels,
                    input_indices=range(lo, hi),
                    input_hashes=hashes[lo:hi],
                    hessian=hessian,
                )
                bar.update(task, completed=hi)
        seconds = time.perf_counter() - start
        n_new = len(store) - done_before
        return LabelSummary(
            path=store_path,
            n_frames=len(store),
            n_labelled=n_new,
            n_resumed=done_before,
            n_atoms=store.n_atoms_total,
            elements=store.element_counts(),
            seconds=seconds,
            seconds_per_frame=seconds / n_new if n_new else math.nan,
            skipped=skipped,
            hessian=store.hessian or None,
        )
    finally:
        store.close()


def _check_resume(
    store: LabelStore,
    input_info: Mapping[str, Any],
    hashes: Sequence[str],
    provenance: Mapping[str, Any],
) -> None:
    stored = store.input_info
    if stored.get("fingerprint") != input_info["fingerprint"]:
        raise LabelStoreError(
            f"{store.path} was labelled from a different input "
            f"({stored.get('n_frames')} frames from "
            f"{stored.get('source')!r}, fingerprint {stored.get('fingerprint')}); this input has "
            f"{input_info['n_frames']} frames (fingerprint {input_info['fingerprint']}). "
            "Use a new output path, or the original input."
        )
    done = len(store)
    if done > len(hashes):
        raise LabelStoreError(
            f"{store.path} holds {done} frames but the input has only {len(hashes)}"
        )
    indices = store.input_indices()
    if done and (
        not np.array_equal(indices, np.arange(done)) or store.input_hashes() != list(hashes[:done])
    ):
        raise LabelStoreError(
            f"{store.path}: stored frames do not match the input's first {done} frames"
        )
    mismatch = _labels_provenance_mismatch(store.teacher, provenance)
    if mismatch:
        raise LabelStoreError(
            f"{store.path} was labelled by a different teacher; refusing to mix labels:\n  "
            + "\n  ".join(mismatch)
        )


def _check_hessian_resume(store: LabelStore, wanted: Mapping[str, Any]) -> None:
    """A resumed store must hold the Hessian labels asked for, made the same way."""
    stored = store.hessian
    if not wanted and not stored:
        return
    if wanted and not stored:
        raise LabelStoreError(
            f"{store.path} holds labels without Hessian-vector products (it was made "
            "without --hessian-directions); they cannot be added to it. Label into a new "
            "store with --hessian-directions, or resume without it."
        )
    if not wanted:
        raise LabelStoreError(
            f"{store.path} holds {stored.get('directions')} Hessian directions per frame "
            f"({stored.get('method')}); resume it with --hessian-directions "
            f"{stored.get('directions')} (and the same method, step and seed)"
        )
    keys = ("directions", "method", "step_angstrom", "seed")
    mismatch = [
        f"{k}: store has {stored.get(k)!r}, asked for {wanted.get(k)!r}"
        for k in keys
        if _as_json(stored.get(k)) != _as_json(wanted.get(k))
    ]
    if mismatch:
        raise LabelStoreError(
            f"{store.path} holds Hessian labels made differently; refusing to mix them:\n  "
            + "\n  ".join(mismatch)
        )


def _as_json(value: Any) -> Any:
    """A value as the store keeps it (through JSON), so stored and new ones compare."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def _labels_provenance_mismatch(stored: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    keys = ("name", "spec", "package", "version", "weights_sha256", "precision", "ensemble_size")
    return [
        f"{k}: store has {stored.get(k)!r}, teacher has {new.get(k)!r}"
        for k in keys
        if _as_json(stored.get(k)) != _as_json(new.get(k))
    ]
