"""Labelled frames as plain numpy arrays, and the content hashes that identify frames.

Pure numpy (no HDF5, no teacher, no jax): the training core (``train/loss.py``,
``train/reference.py``, ``train/step.py``, ``data/batching.py``) reads
:class:`LabelArrays` from here, so importing it imports neither h5py nor a teacher.
:class:`~jaxdistill.data.store.LabelStore` reads and writes them.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import ase

__all__ = [
    "HASH_LEN",
    "HESSIAN_FIELDS",
    "MAX_COORDINATE_ANGSTROM",
    "PER_ATOM_FIELDS",
    "UNITS",
    "LabelArrays",
    "bad_frames",
    "describe_bad_frames",
    "frame_hash",
    "frames_fingerprint",
    "usable_frames",
]

#: Stored coordinates farther than this from the origin (Å) make a frame bad (the
#: same bound as :data:`jaxdistill.graph.MAX_COORDINATE_ANGSTROM`).
MAX_COORDINATE_ANGSTROM = 1e6

#: Units of every stored quantity (also written into the file's ``units`` attribute).
UNITS: dict[str, str] = {
    "positions": "Å",
    "cell": "Å",
    "energy": "eV",
    "forces": "eV/Å",
    "stress": "eV/Å³ (Voigt xx yy zz yz xz xy, ASE sign: (1/V) dE/dstrain)",
    "force_disagreement": "eV/Å",
    "energy_disagreement": "eV",
    "temperature_kelvin": "K",
    "hessian_directions": "dimensionless (each a unit vector over the frame's 3n coordinates)",
    "hessian_products": "eV/Å² (H·u, H = d²E/dR²)",
}

#: Fields of :class:`LabelArrays` with one row per atom.
PER_ATOM_FIELDS = frozenset(
    {"positions", "numbers", "forces", "hessian_directions", "hessian_products"}
)
#: The optional Hessian-vector label fields (None when a store has none).
HESSIAN_FIELDS = ("hessian_directions", "hessian_products")

HASH_LEN = 32  # hex characters of a frame's content hash (128-bit BLAKE2b)


def frame_hash(atoms: ase.Atoms) -> str:
    """Content hash of a structure: atomic numbers, positions, cell and pbc (exact bits).

    Args:
        atoms: The structure.

    Returns:
        A 32-character hex string (128-bit BLAKE2b). Equal structures, bit for bit,
        give equal hashes; labels and ``info`` are not included.
    """
    digest = hashlib.blake2b(digest_size=HASH_LEN // 2)
    digest.update(np.ascontiguousarray(atoms.numbers, dtype=np.int64).tobytes())
    digest.update(np.ascontiguousarray(atoms.positions, dtype=np.float64).tobytes())
    digest.update(np.ascontiguousarray(atoms.cell.array, dtype=np.float64).tobytes())
    digest.update(np.ascontiguousarray(atoms.pbc, dtype=np.bool_).tobytes())
    return digest.hexdigest()


def frames_fingerprint(hashes: Sequence[str]) -> str:
    """Fingerprint of an ordered list of frame hashes (identifies a whole input file)."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(str(len(hashes)).encode())
    for h in hashes:
        digest.update(h.encode())
    return digest.hexdigest()


@dataclass(frozen=True)
class LabelArrays:
    """All (or selected) frames of a store as numpy arrays, for training.

    Per-atom arrays are flat; frame ``i`` owns rows ``offsets[i]:offsets[i+1]``.

    Attributes:
        positions: ``[n_atoms_total, 3]`` float64, Å.
        numbers: ``[n_atoms_total]`` int32, atomic numbers.
        forces: ``[n_atoms_total, 3]`` float64, eV/Å.
        offsets: ``[n_frames + 1]`` int64, starting at 0.
        cell: ``[n_frames, 3, 3]`` float64, Å (rows are cell vectors).
        pbc: ``[n_frames, 3]`` bool.
        energy: ``[n_frames]`` float64, eV.
        stress: ``[n_frames, 6]`` float64, eV/Å³ (Voigt, ASE sign); NaN = not labelled.
        force_disagreement: ``[n_frames]`` float64, eV/Å; NaN for a single teacher.
        energy_disagreement: ``[n_frames]`` float64, eV; NaN for a single teacher.
        sampler: ``[n_frames]`` str.
        temperature_kelvin: ``[n_frames]`` float64, K; NaN when not from MD.
        seed: ``[n_frames]`` int64; -1 when unknown.
        input_index: ``[n_frames]`` int64, index of the frame in the labelled input.
        frame_index: ``[n_frames]`` int64, index of the frame in the store.
        hessian_directions: ``[n_atoms_total, K, 3]`` float64 or None: frame ``i``'s
            ``K`` directions ``u`` are rows ``offsets[i]:offsets[i+1]`` (each a unit
            vector over the frame's ``3n`` coordinates); NaN for frames without
            Hessian labels; None when no frame has them.
        hessian_products: ``[n_atoms_total, K, 3]`` float64 or None: the teacher's
            ``H·u`` along those directions, eV/Å².
    """

    positions: np.ndarray
    numbers: np.ndarray
    forces: np.ndarray
    offsets: np.ndarray
    cell: np.ndarray
    pbc: np.ndarray
    energy: np.ndarray
    stress: np.ndarray
    force_disagreement: np.ndarray
    energy_disagreement: np.ndarray
    sampler: np.ndarray
    temperature_kelvin: np.ndarray
    seed: np.ndarray
    input_index: np.ndarray
    frame_index: np.ndarray
    hessian_directions: np.ndarray | None = None
    hessian_products: np.ndarray | None = None

    @property
    def hessian_k(self) -> int:
        """Hessian directions per frame (0 when there are no Hessian labels)."""
        return 0 if self.hessian_products is None else int(self.hessian_products.shape[1])

    @property
    def has_hessian(self) -> np.ndarray:
        """``[n_frames]`` bool: the frame has finite Hessian-vector labels."""
        if self.hessian_products is None:
            return np.zeros(self.n_frames, bool)
        finite = np.all(np.isfinite(self.hessian_products), axis=(1, 2))
        finite &= np.all(np.isfinite(self.hessian_directions), axis=(1, 2))
        bad_atoms = np.bincount(self.atom_frame[~finite], minlength=self.n_frames)
        return bad_atoms == 0

    @property
    def n_frames(self) -> int:
        """Number of frames."""
        return len(self.energy)

    @property
    def n_atoms(self) -> np.ndarray:
        """``[n_frames]`` atoms per frame."""
        return np.diff(self.offsets)

    @property
    def atom_frame(self) -> np.ndarray:
        """``[n_atoms_total]`` the frame (0..n_frames-1) each atom row belongs to."""
        return np.repeat(np.arange(self.n_frames), self.n_atoms)

    def subset(self, indices: Sequence[int] | np.ndarray) -> LabelArrays:
        """The arrays of the frames ``indices`` (positions in this object), in that order."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        starts, stops = self.offsets[idx], self.offsets[idx + 1]
        rows = (
            np.concatenate([np.arange(a, b) for a, b in zip(starts, stops, strict=True)])
            if len(idx)
            else np.zeros(0, dtype=np.int64)
        )
        offsets = np.concatenate([[0], np.cumsum(stops - starts)]).astype(np.int64)
        values: dict[str, np.ndarray | None] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                values[f.name] = None
            elif f.name == "offsets":
                values[f.name] = offsets
            elif f.name in PER_ATOM_FIELDS:
                values[f.name] = value[rows]
            else:
                values[f.name] = value[idx]
        return LabelArrays(**values)

    @staticmethod
    def concatenate(parts: Sequence[LabelArrays]) -> LabelArrays:
        """The frames of several objects, one after another (``frame_index`` is kept:
        it points into each part's own store)."""
        if not parts:
            raise ValueError("nothing to concatenate")
        if len(parts) == 1:
            return parts[0]
        ks = {p.hessian_k for p in parts if p.hessian_products is not None}
        if len(ks) > 1:
            raise ValueError(
                f"cannot combine frames with different numbers of Hessian directions {sorted(ks)}"
            )
        k = ks.pop() if ks else 0
        values: dict[str, np.ndarray | None] = {}
        for f in fields(LabelArrays):
            if f.name == "offsets":
                counts = np.concatenate([p.n_atoms for p in parts])
                values[f.name] = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
            elif f.name in HESSIAN_FIELDS:
                # Frames of a part without Hessian labels get NaN (= not labelled).
                values[f.name] = (
                    np.concatenate(
                        [
                            getattr(p, f.name)
                            if getattr(p, f.name) is not None
                            else np.full((len(p.numbers), k, 3), np.nan)
                            for p in parts
                        ]
                    )
                    if k
                    else None
                )
            else:
                values[f.name] = np.concatenate([getattr(p, f.name) for p in parts])
        return LabelArrays(**values)


def bad_frames(arrays: LabelArrays) -> dict[int, str]:
    """Frames that must not be trained or evaluated on, with the reason in words.

    A frame is bad when its positions are not finite or lie farther than
    :data:`MAX_COORDINATE_ANGSTROM` from the origin, its cell is not finite, its energy
    or forces are not finite, or its stress is infinite (a NaN stress means "not
    labelled" and is fine). Keys are positions in ``arrays``; ``arrays.frame_index``
    gives the frame's number in its store.
    """
    n = arrays.n_frames
    if n == 0:
        return {}
    frame = arrays.atom_frame
    reasons: dict[int, str] = {}

    def per_atom(bad_rows: np.ndarray, text: str) -> None:
        for i in np.unique(frame[bad_rows]).tolist():
            reasons.setdefault(int(i), text)

    position_ok = np.all(np.isfinite(arrays.positions), axis=1)
    per_atom(~position_ok, "non-finite positions")
    with np.errstate(invalid="ignore"):
        far = np.max(np.abs(np.where(position_ok[:, None], arrays.positions, 0.0)), axis=1)
    per_atom(far > MAX_COORDINATE_ANGSTROM, f"positions farther than {MAX_COORDINATE_ANGSTROM:g} Å")
    for i in np.where(~np.all(np.isfinite(arrays.cell.reshape(n, -1)), axis=1))[0].tolist():
        reasons.setdefault(int(i), "a non-finite cell")
    for i in np.where(~np.isfinite(arrays.energy))[0].tolist():
        reasons.setdefault(int(i), "a non-finite energy")
    per_atom(~np.all(np.isfinite(arrays.forces), axis=1), "non-finite forces")
    if arrays.hessian_products is not None:
        # NaN means "no Hessian labels"; an infinite product is a broken label.
        per_atom(np.any(np.isinf(arrays.hessian_products), axis=(1, 2)), "infinite Hessian labels")
    for i in np.where(np.any(np.isinf(arrays.stress.reshape(n, -1)), axis=1))[0].tolist():
        reasons.setdefault(int(i), "an infinite stress")
    return dict(sorted(reasons.items()))


def describe_bad_frames(arrays: LabelArrays, bad: dict[int, str], limit: int = 5) -> str:
    """``bad`` (from :func:`bad_frames`) as one line naming the frames by store index."""
    items = list(bad.items())[:limit]
    text = ", ".join(f"{int(arrays.frame_index[i])} ({why})" for i, why in items)
    more = f" and {len(bad) - limit} more" if len(bad) > limit else ""
    return f"frame{'s' if len(bad) > 1 else ''} {text}{more}"


def usable_frames(
    labels: LabelArrays,
    where: str,
    skip_bad_frames: bool,
    report: Callable[[str], None] | None = None,
) -> LabelArrays:
    """``labels`` without bad frames (:func:`bad_frames`): refused by number (a
    ValueError) unless ``skip_bad_frames``, which leaves them out and names them.

    Args:
        labels: the frames.
        where: how the message names them ("the training frames of labels.h5").
        skip_bad_frames: leave bad frames out instead of refusing.
        report: called with the line naming skipped frames (default: a warning).
    """
    bad = bad_frames(labels)
    if not bad:
        return labels
    named = describe_bad_frames(labels, bad)
    if not skip_bad_frames:
        raise ValueError(
            f"{where}: {named} cannot be used; pass --skip-bad-frames "
            "(skip_bad_frames=True) to leave them out"
        )
    message = f"skipping {len(bad)} bad frame(s) of {where}: {named}"
    if report is None:
        warnings.warn(message, stacklevel=2)
    else:
        report(message)
    return labels.subset([i for i in range(labels.n_frames) if i not in bad])
