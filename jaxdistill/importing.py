"""Import labels a user already has (DFT, another code's MD) into a label store.

``import_labels("frames.extxyz", "labels.h5")`` (``jaxdistill import FRAMES STORE``)
reads every frame of an ASE-readable file (extxyz, an ASE database ``.db``, a ``.traj``,
...) that already holds energy, forces and optionally stress, checks them as the
labelling stage checks a teacher's, and writes them into a new
:class:`~jaxdistill.data.store.LabelStore` that ``train`` and ``evaluate`` read like
any other. The store's teacher provenance is ``{"name": "imported", "source": FILE,
"sha256": ..., "keys": {...}}``, so a student trained on it says where its labels
came from.

Where the labels are found, per frame, for a key name ``K`` (``--energy-key`` etc.;
defaults ``energy``, ``forces``, ``stress``): ``atoms.info[K]`` (per-frame values) or
``atoms.arrays[K]`` (per-atom forces), else the results of the frame's calculator
(ASE's extxyz reader puts ``energy``, ``forces`` and ``stress`` there; an ASE database
does the same), which are used for the default names only. Units must be ASE's: eV,
eV/Å, eV/Å³ (Voigt ``xx yy zz yz xz xy`` or a 3×3 tensor, ASE's sign: a compressed
crystal has negative stress). Frames without stress, and frames not periodic in all
three directions, get NaN stress (not labelled), as the store expects.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import ase
import ase.io
import numpy as np

from jaxdistill.data.arrays import frame_hash, frames_fingerprint
from jaxdistill.data.store import LabelStore
from jaxdistill.labelling import LabelSummary, frame_problems, labels_problem
from jaxdistill.teachers.base import NAN_STRESS, TeacherLabels, file_sha256, wants_stress

__all__ = ["IMPORTED_TEACHER", "import_labels", "read_labelled_frames"]

#: The teacher name of imported labels.
IMPORTED_TEACHER = "imported"


def _lookup(atoms: ase.Atoms, key: str, default_key: str, per_atom: bool) -> Any | None:
    """``key`` from info/arrays, else from the calculator's results (default names only)."""
    store = atoms.arrays if per_atom else atoms.info
    if key in store:
        return store[key]
    results = getattr(atoms.calc, "results", None) or {}
    if key == default_key and key in results:
        return results[key]
    return None


def _voigt(stress: Any) -> np.ndarray:
    value = np.asarray(stress, dtype=np.float64)
    if value.shape == (6,):
        return value.copy()
    if value.size == 9:
        s = value.reshape(3, 3)
        return np.array([s[0, 0], s[1, 1], s[2, 2], s[1, 2], s[0, 2], s[0, 1]])
    raise ValueError(f"has shape {value.shape}, expected 6 (Voigt) or 3x3")


def _frame_labels(
    atoms: ase.Atoms, keys: dict[str, str], name: str, stress_required: bool
) -> TeacherLabels:
    """The labels of one frame, or a ValueError naming the frame and key."""
    energy = _lookup(atoms, keys["energy"], "energy", per_atom=False)
    if energy is None:
        raise ValueError(
            f"{name} has no energy under the key {keys['energy']!r} (in atoms.info or the "
            f"calculator results; it has info keys {sorted(atoms.info)}); pass --energy-key"
        )
    forces = _lookup(atoms, keys["forces"], "forces", per_atom=True)
    if forces is None:
        raise ValueError(
            f"{name} has no forces under the key {keys['forces']!r} (in atoms.arrays or the "
            f"calculator results; it has array keys {sorted(atoms.arrays)}); pass --forces-key"
        )
    try:
        energy = float(np.asarray(energy, dtype=np.float64).reshape(()))
    except (TypeError, ValueError):
        raise ValueError(
            f"{name}: energy {keys['energy']!r} is {energy!r}, not one number"
        ) from None
    stress = _lookup(atoms, keys["stress"], "stress", per_atom=False)
    if stress is None and stress_required:
        raise ValueError(
            f"{name} has no stress under the key {keys['stress']!r} (--stress-key was given)"
        )
    if stress is not None and wants_stress(atoms):
        try:
            stress = _voigt(stress)
        except ValueError as error:
            raise ValueError(f"{name}: stress {keys['stress']!r} {error}") from None
    else:
        stress = NAN_STRESS.copy()
    return TeacherLabels(energy=energy, forces=np.asarray(forces, dtype=np.float64), stress=stress)


def read_labelled_frames(
    path: str | Path,
    energy_key: str | None = None,
    forces_key: str | None = None,
    stress_key: str | None = None,
    index: str = ":",
) -> tuple[list[ase.Atoms], list[TeacherLabels]]:
    """Frames of an ASE-readable file and the labels they carry.

    Args:
        path: the file (extxyz, ASE database, trajectory, ...).
        energy_key: ``atoms.info`` key of the energy, eV (default "energy", also found
            in the calculator's results).
        forces_key: ``atoms.arrays`` key of the forces, eV/Å (default "forces").
        stress_key: ``atoms.info`` key of the stress, eV/Å³ (default "stress";
            optional unless given).
        index: which frames (ASE's index syntax; default all).

    Returns:
        The frames (positions, numbers, cell, pbc and info tags) and their labels.

    Raises:
        FileNotFoundError: no such file.
        ValueError: an unreadable file, or a frame without a label, with labels of the
            wrong shape or non-finite (naming the file, frame and key).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise ValueError(f"{path} is an empty file")
    try:
        read = ase.io.read(path, index=index)
    except Exception as error:  # ase raises many kinds for a file it cannot parse
        text = " ".join(str(error).split()) or type(error).__name__
        raise ValueError(f"cannot read frames from {path}: {text}") from None
    frames = list(read) if isinstance(read, list) else [read]
    if not frames:
        raise ValueError(f"{path} holds no frames")
    keys = {
        "energy": energy_key or "energy",
        "forces": forces_key or "forces",
        "stress": stress_key or "stress",
    }
    labels = []
    for i, atoms in enumerate(frames):
        name = f"frame {i} of {path}"
        frame_labels = _frame_labels(atoms, keys, name, stress_required=stress_key is not None)
        problem = labels_problem(frame_labels, len(atoms))
        if problem is not None:
            raise ValueError(f"{name}: " + problem.replace("the teacher's", "its"))
        labels.append(frame_labels)
    return frames, labels


def import_labels(
    source: str | Path,
    store_path: str | Path,
    *,
    energy_key: str | None = None,
    forces_key: str | None = None,
    stress_key: str | None = None,
    index: str = ":",
    overwrite: bool = False,
    skip_bad_frames: bool = False,
    durable: bool = True,
) -> LabelSummary:
    """Write the labelled frames of ``source`` into a new label store.

    Args:
        source: an ASE-readable file whose frames carry energy, forces, optional stress.
        store_path: the HDF5 store to create.
        energy_key, forces_key, stress_key, index: see :func:`read_labelled_frames`.
        overwrite: replace an existing store.
        skip_bad_frames: leave out frames with bad positions or cells (non-finite,
            coincident atoms; named in :attr:`LabelSummary.skipped`) instead of refusing.
        durable: fsync the store after writing.

    Returns:
        A :class:`~jaxdistill.labelling.LabelSummary` (every frame counts as labelled).

    Raises:
        FileExistsError: the store exists and ``overwrite`` is False.
        ValueError: as :func:`read_labelled_frames`, and for a bad frame unless
            ``skip_bad_frames``.
    """
    start = time.perf_counter()
    source, store_path = Path(source), Path(store_path)
    if store_path.exists() and not overwrite:
        raise FileExistsError(f"{store_path} exists; pass --overwrite to replace it")
    frames, labels = read_labelled_frames(source, energy_key, forces_key, stress_key, index)
    problems = frame_problems(frames)
    skipped: tuple[str, ...] = ()
    if problems and not skip_bad_frames:
        first = min(problems)
        more = f" (and {len(problems) - 1} more bad frames)" if len(problems) > 1 else ""
        raise ValueError(
            f"frame {first} of {source}: {problems[first]}{more}; nothing imported. Fix or "
            "remove it, or pass --skip-bad-frames (skip_bad_frames=True)"
        )
    kept = [i for i in range(len(frames)) if i not in problems]
    if problems:
        skipped = tuple(f"frame {i} of {source}: {why}" for i, why in sorted(problems.items()))
        if not kept:
            raise ValueError(f"every frame of {source} is bad; nothing to import")
    frames, labels = [frames[i] for i in kept], [labels[i] for i in kept]
    for atoms in frames:
        atoms.info.setdefault("sampler", "imported")
    hashes = [frame_hash(atoms) for atoms in frames]
    sha256 = file_sha256(source)
    used_keys = {
        "energy": energy_key or "energy",
        "forces": forces_key or "forces",
        "stress": stress_key or "stress",
    }
    provenance = {
        "name": IMPORTED_TEACHER,
        "spec": f"imported:{source.name}",
        "source": str(source.absolute()),
        "sha256": sha256,
        "weights_sha256": [sha256],
        "keys": used_keys,
        "index": index,
        "units": {"energy": "eV", "forces": "eV/Å", "stress": "eV/Å³"},
    }
    input_info = {
        "n_frames": len(frames),
        "fingerprint": frames_fingerprint(hashes),
        "source": str(source) + (f" (less {len(problems)} bad frames)" if problems else ""),
    }
    with LabelStore.create(
        store_path,
        teacher=provenance,
        capacity_frames=len(frames),
        capacity_atoms=sum(len(atoms) for atoms in frames),
        input_info=input_info,
        overwrite=overwrite,
        durable=durable,
    ) as store:
        store.append(frames, labels, input_indices=kept, input_hashes=hashes)
        seconds = time.perf_counter() - start
        return LabelSummary(
            path=store_path,
            n_frames=len(store),
            n_labelled=len(store),
            n_resumed=0,
            n_atoms=store.n_atoms_total,
            elements=store.element_counts(),
            seconds=seconds,
            seconds_per_frame=seconds / len(store) if len(store) else math.nan,
            skipped=skipped,
        )
