"""Labelled frames as plain numpy arrays, and the content hashes that identify frames.

Pure numpy (no HDF5, no teacher, no jax): the training core (``train/loss.py``,
``train/reference.py``, ``train/step.py``, ``data/batching.py``) reads
:class:`LabelArrays` from here, so importing it imports neither h5py nor a teacher.
:class:`~jaxdistill.data.store.LabelStore` reads and writes them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import ase

__all__ = ["HASH_LEN", "UNITS", "LabelArrays", "frame_hash", "frames_fingerprint"]

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
}

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
        per_atom = {"positions", "numbers", "forces"}
        values: dict[str, np.ndarray] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "offsets":
                values[f.name] = offsets
            elif f.name in per_atom:
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
        values: dict[str, np.ndarray] = {}
        for f in fields(LabelArrays):
            if f.name == "offsets":
                counts = np.concatenate([p.n_atoms for p in parts])
                values[f.name] = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
            else:
                values[f.name] = np.concatenate([getattr(p, f.name) for p in parts])
        return LabelArrays(**values)
