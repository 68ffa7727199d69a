"""HDF5 label store: frames + teacher labels, append-only, crash-safe, resumable.

This module only stores: :func:`jaxdistill.labelling.label` labels frames into a store,
and :mod:`jaxdistill.data.arrays` holds the numpy side (:class:`LabelArrays`, frame
hashes, units).

Layout (readable with plain h5py; see docs/data.md for the full table). All datasets
live at the root, are contiguous and are *preallocated* to a capacity when the file is
created, so appending a frame only overwrites bytes inside existing datasets and never
changes HDF5 metadata:

- per atom, ``[capacity_atoms, ...]``: ``positions`` (Å), ``numbers``, ``forces`` (eV/Å);
- per frame, ``[capacity_frames, ...]``: ``cell`` (Å), ``pbc``, ``energy`` (eV),
  ``stress`` (eV/Å³, Voigt xx yy zz yz xz xy, ASE sign, NaN when not labelled),
  ``force_disagreement`` (eV/Å), ``energy_disagreement`` (eV), ``sampler``,
  ``temperature_kelvin``, ``seed``, ``input_index``, ``input_hash``;
- ``offsets`` ``[capacity_frames + 1]``: atoms of frame ``i`` are rows
  ``offsets[i]:offsets[i+1]`` of the per-atom arrays;
- ``committed`` ``[2]`` int64: (frames, atoms) that are complete. Everything beyond it
  is ignored;
- with Hessian labels (format version 2, ``hessian`` attribute ``{"directions": K,
  "method", "step_angstrom", "seed"}``), per atom ``[capacity_atoms, K, 3]``:
  ``hessian_directions`` (each frame's K unit directions over its 3n coordinates) and
  ``hessian_products`` (the teacher's ``H·u``, eV/Å², NaN where not labelled). Stores
  without them stay version 1, readable by older jaxdistill.

Crash safety: an append writes the frame data, flushes, then writes ``committed`` and
flushes again (and fsyncs when ``durable``). A process killed at any instant leaves
either the old or the new ``committed``, and the data it counts were flushed before it,
so a kill loses at most the batch being written. Creating and growing the file happen
in a temporary file that is renamed into place (``os.replace`` is atomic), so the
store's path never holds a half-made file.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import ase
import ase.data
import ase.io
import h5py
import numpy as np
from ase.calculators.singlepoint import SinglePointCalculator

from jaxdistill.data.arrays import HASH_LEN, UNITS, LabelArrays, frame_hash, frames_fingerprint
from jaxdistill.teachers.base import TeacherLabels

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "LabelStore", "LabelStoreError", "copy_frames"]

FORMAT_NAME = "jaxdistill-label-store"
FORMAT_VERSION = 2  # the newest version this code reads and writes (2: Hessian labels)

SAMPLER_LEN = 32  # bytes of the fixed-length sampler-name field

# name -> (dtype, trailing shape, fill value); per-atom and per-frame datasets.
_ATOM_FIELDS: dict[str, tuple[Any, tuple[int, ...], Any]] = {
    "positions": (np.float64, (3,), np.nan),
    "numbers": (np.int32, (), 0),
    "forces": (np.float64, (3,), np.nan),
}
_FRAME_FIELDS: dict[str, tuple[Any, tuple[int, ...], Any]] = {
    "cell": (np.float64, (3, 3), np.nan),
    "pbc": (np.bool_, (3,), False),
    "energy": (np.float64, (), np.nan),
    "stress": (np.float64, (6,), np.nan),
    "force_disagreement": (np.float64, (), np.nan),
    "energy_disagreement": (np.float64, (), np.nan),
    "sampler": (f"S{SAMPLER_LEN}", (), b""),
    "temperature_kelvin": (np.float64, (), np.nan),
    "seed": (np.int64, (), -1),
    "input_index": (np.int64, (), -1),
    "input_hash": (f"S{HASH_LEN}", (), b""),
}


_HESSIAN_FIELDS = ("hessian_directions", "hessian_products")  # [capacity_atoms, K, 3] float64


class LabelStoreError(ValueError):
    """A file is not a valid label store (foreign, truncated, inconsistent), or a resume
    would mix incompatible inputs or teachers."""


def _new_dcpl() -> h5py.h5p.PropDCID:
    # Early allocation: the dataset's bytes exist (filled) from creation on, so later
    # writes into it never allocate space or touch metadata.
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    return dcpl


def _json_attr(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(folder: Path) -> None:
    # Makes a rename durable (power loss); harmless where directories cannot be fsynced.
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _eof_text(message: str) -> str:
    """ "eof = A ... stored_eof = B" of an HDF5 truncation message, in words."""
    import re

    found = dict(re.findall(r"\b(eof|stored_eof) = (\d+)", message))
    if "eof" in found and "stored_eof" in found:
        return f"{found['eof']} of its {found['stored_eof']} bytes"
    return "fewer bytes than it records"


def _partial_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.partial")


def _remove_stale_partials(path: Path) -> None:
    """Delete temporary files left by writers of ``path`` that were killed."""
    for partial in path.parent.glob(f".{path.name}.*.partial"):
        try:
            pid = int(partial.name[len(path.name) + 2 :].split(".")[0])
            os.kill(pid, 0)  # raises if no such process: the file is an orphan
        except ProcessLookupError:
            with contextlib.suppress(FileNotFoundError):
                partial.unlink()
        except (ValueError, PermissionError):
            continue


def _create_file(
    path: Path,
    capacity_frames: int,
    capacity_atoms: int,
    attrs: Mapping[str, Any],
    hessian_k: int = 0,
) -> h5py.File:
    file = h5py.File(path, "w", track_order=True)
    file.attrs["format"] = FORMAT_NAME
    # Version 1 unless the store holds Hessian labels, so older readers keep reading
    # every store they can understand.
    file.attrs["format_version"] = 2 if hessian_k else 1
    file.attrs["units"] = _json_attr(UNITS)
    for key, value in attrs.items():
        file.attrs[key] = value
    for name, (dtype, shape, fill) in _ATOM_FIELDS.items():
        file.create_dataset(
            name, shape=(capacity_atoms, *shape), dtype=dtype, fillvalue=fill, dcpl=_new_dcpl()
        )
    for name, (dtype, shape, fill) in _FRAME_FIELDS.items():
        file.create_dataset(
            name, shape=(capacity_frames, *shape), dtype=dtype, fillvalue=fill, dcpl=_new_dcpl()
        )
    for name in _HESSIAN_FIELDS if hessian_k else ():
        file.create_dataset(
            name,
            shape=(capacity_atoms, hessian_k, 3),
            dtype=np.float64,
            fillvalue=np.nan,
            dcpl=_new_dcpl(),
        )
    file.create_dataset(
        "offsets", shape=(capacity_frames + 1,), dtype=np.int64, fillvalue=0, dcpl=_new_dcpl()
    )
    file.create_dataset("committed", shape=(2,), dtype=np.int64, fillvalue=0, dcpl=_new_dcpl())
    file.flush()
    return file


class LabelStore:
    """An HDF5 file of labelled frames (see the module docstring for the layout).

    Open an existing store with ``LabelStore(path)`` (read-only) or
    ``LabelStore(path, mode="a")`` (append); create one with :meth:`LabelStore.create`
    or through :func:`jaxdistill.labelling.label`.

    Args:
        path: The ``.h5`` file.
        mode: ``"r"`` read-only (default; opened without HDF5 file locking, so a store
            can be inspected while another process appends to it), or ``"a"`` to append.
        durable: In ``"a"`` mode, fsync after every commit (survives power loss, not just
            a killed process).

    Raises:
        FileNotFoundError: The file does not exist.
        LabelStoreError: The file is not HDF5, is truncated, is not a label store, or is
            internally inconsistent.
    """

    def __init__(self, path: str | Path, mode: str = "r", durable: bool = True) -> None:
        if mode not in ("r", "a"):
            raise ValueError(
                f"mode must be 'r' or 'a', got {mode!r} (create with LabelStore.create)"
            )
        self.path = Path(path)
        self.mode = mode
        self.durable = durable
        if not self.path.exists():
            raise FileNotFoundError(f"label store not found: {self.path}")
        try:
            if mode == "r":
                self._file = h5py.File(self.path, "r", locking=False)
            else:
                self._file = h5py.File(self.path, "r+")
        except OSError as error:
            text = str(error)
            if "already open" in text:
                raise LabelStoreError(
                    f"{self.path} is already open in this process in another mode; close that "
                    f"LabelStore first ({text})"
                ) from None
            if "truncated file" in text:
                raise LabelStoreError(
                    f"{self.path} is truncated (an incomplete copy or download?): HDF5 found "
                    f"{_eof_text(text)}; copy the store again"
                ) from None
            if self.path.stat().st_size == 0:
                raise LabelStoreError(f"{self.path} is an empty file, not a label store") from None
            if (
                "unable to lock" in text.lower()
                or "file locking" in text.lower()
                or ("lock" in text.lower() and "truncated" not in text)
            ):
                raise LabelStoreError(
                    f"{self.path} is open for writing by another process ({text})"
                ) from None
            raise LabelStoreError(
                f"{self.path} cannot be read as HDF5 (truncated or not an HDF5 file?): {text}"
            ) from None
        try:
            self._validate()
        except Exception:
            self._file.close()
            raise

    # ------------------------------------------------------------------ creation
    @classmethod
    def create(
        cls,
        path: str | Path,
        *,
        teacher: Mapping[str, Any] | None = None,
        capacity_frames: int = 1024,
        capacity_atoms: int = 65536,
        input_info: Mapping[str, Any] | None = None,
        metadata: Mapping[str, Any] | None = None,
        hessian: Mapping[str, Any] | None = None,
        overwrite: bool = False,
        durable: bool = True,
    ) -> LabelStore:
        """Create an empty store, atomically, and open it for appending.

        Args:
            path: The ``.h5`` file to create.
            teacher: Teacher provenance (``teacher.provenance()``), stored as JSON in the
                ``teacher`` attribute.
            capacity_frames: Frames preallocated (the store grows automatically).
            capacity_atoms: Atoms preallocated (the store grows automatically).
            input_info: Description of the labelled input (``n_frames``, ``fingerprint``,
                ``source``), used by :func:`~jaxdistill.labelling.label` to resume safely.
            metadata: Free-form JSON-serialisable metadata (``metadata`` attribute).
            hessian: For Hessian-vector labels: ``{"directions": K, "method": ...,
                "step_angstrom": ..., "seed": ...}`` (``hessian`` attribute); the store
                then has the ``hessian_*`` datasets (format version 2).
            overwrite: Replace an existing file.
            durable: fsync after every commit.

        Returns:
            The store, open in ``"a"`` mode.
        """
        path = Path(path)
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path} exists (pass overwrite=True to replace it)")
        path.parent.mkdir(parents=True, exist_ok=True)
        from jaxdistill._version import __version__

        attrs = {
            "teacher": _json_attr(dict(teacher or {})),
            "input": _json_attr(dict(input_info or {})),
            "metadata": _json_attr(dict(metadata or {})),
            "hessian": _json_attr(dict(hessian or {})),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "jaxdistill_version": __version__,
        }
        _remove_stale_partials(path)
        partial = _partial_path(path)
        try:
            hessian_k = int((hessian or {}).get("directions", 0))
            if hessian and hessian_k < 1:
                raise ValueError(f"hessian['directions'] must be >= 1, got {hessian_k}")
            _create_file(
                partial, int(capacity_frames), int(capacity_atoms), attrs, hessian_k
            ).close()
            if durable:
                _fsync_path(partial)
            os.replace(partial, path)
            if durable:
                _fsync_dir(path.parent)
        finally:
            with contextlib.suppress(FileNotFoundError):
                partial.unlink()
        return cls(path, mode="a", durable=durable)

    # ---------------------------------------------------------------- validation
    def _validate(self) -> None:
        f = self._file
        fmt = f.attrs.get("format")
        if isinstance(fmt, bytes):
            fmt = fmt.decode()
        if fmt != FORMAT_NAME:
            found = ", ".join(sorted(f.keys())[:8]) or "nothing"
            raise LabelStoreError(
                f"{self.path} is an HDF5 file but not a jaxdistill label store "
                f"(attribute 'format' is {fmt!r}, expected {FORMAT_NAME!r}; it contains: {found})"
            )
        version = int(f.attrs.get("format_version", -1))
        if version > FORMAT_VERSION or version < 1:
            raise LabelStoreError(
                f"{self.path} has label-store format version {version}; this jaxdistill reads "
                f"version {FORMAT_VERSION}"
            )
        hessian_fields = _HESSIAN_FIELDS if self.hessian_k else ()
        missing = [
            n
            for n in (*_ATOM_FIELDS, *_FRAME_FIELDS, *hessian_fields, "offsets", "committed")
            if n not in f
        ]
        if missing:
            raise LabelStoreError(f"{self.path} is an incomplete label store: missing {missing}")
        try:
            frames, atoms = (int(x) for x in f["committed"][:])
            cap_frames, cap_atoms = self.capacity
            offsets = f["offsets"][: frames + 1] if frames <= cap_frames else None
        except OSError as error:
            raise LabelStoreError(f"{self.path} cannot be read (truncated?): {error}") from None
        if not (0 <= frames <= cap_frames and 0 <= atoms <= cap_atoms) or offsets is None:
            raise LabelStoreError(
                f"{self.path} is inconsistent: committed ({frames} frames, {atoms} atoms) "
                f"exceeds capacity ({cap_frames}, {cap_atoms})"
            )
        if offsets[0] != 0 or offsets[-1] != atoms or np.any(np.diff(offsets) < 1):
            raise LabelStoreError(
                f"{self.path} is inconsistent: frame offsets do not match the committed atoms"
            )
        for name in (*_ATOM_FIELDS, *hessian_fields):
            if f[name].shape[0] != cap_atoms:
                raise LabelStoreError(
                    f"{self.path} is inconsistent: {name} has {f[name].shape[0]} rows, "
                    f"expected {cap_atoms}"
                )
        for name in _FRAME_FIELDS:
            if f[name].shape[0] != cap_frames:
                raise LabelStoreError(
                    f"{self.path} is inconsistent: {name} has {f[name].shape[0]} rows, "
                    f"expected {cap_frames}"
                )

    # --------------------------------------------------------------- properties
    @property
    def capacity(self) -> tuple[int, int]:
        """Preallocated (frames, atoms)."""
        return int(self._file["energy"].shape[0]), int(self._file["positions"].shape[0])

    @property
    def n_atoms_total(self) -> int:
        """Committed atoms over all frames."""
        return int(self._file["committed"][1])

    def __len__(self) -> int:
        return int(self._file["committed"][0])

    def _attr_json(self, key: str) -> dict[str, Any]:
        raw = self._file.attrs.get(key, "{}")
        return json.loads(raw.decode() if isinstance(raw, bytes) else raw)

    @property
    def teacher(self) -> dict[str, Any]:
        """Teacher provenance stored with the labels."""
        return self._attr_json("teacher")

    @property
    def input_info(self) -> dict[str, Any]:
        """Description of the labelled input (``n_frames``, ``fingerprint``, ``source``)."""
        return self._attr_json("input")

    @property
    def hessian(self) -> dict[str, Any]:
        """How the Hessian-vector labels were made (``directions``, ``method``,
        ``step_angstrom``, ``seed``); empty when the store has none."""
        return self._attr_json("hessian")

    @property
    def hessian_k(self) -> int:
        """Hessian directions per frame (0: the store has no Hessian labels)."""
        return int(self.hessian.get("directions", 0))

    @property
    def metadata(self) -> dict[str, Any]:
        """Free-form metadata."""
        return self._attr_json("metadata")

    @property
    def units(self) -> dict[str, str]:
        """Units of the stored quantities."""
        return self._attr_json("units")

    def element_counts(self) -> dict[str, int]:
        """Atom counts per element symbol over the committed frames."""
        numbers = self._file["numbers"][: self.n_atoms_total]
        values, counts = np.unique(numbers, return_counts=True)
        return {
            ase.data.chemical_symbols[int(z)]: int(c) for z, c in zip(values, counts, strict=True)
        }

    # ------------------------------------------------------------------ reading
    def arrays(self, indices: Sequence[int] | np.ndarray | None = None) -> LabelArrays:
        """Committed frames as numpy arrays (one read per dataset).

        Args:
            indices: Frames to return, in that order (default: all).

        Returns:
            A :class:`LabelArrays`.
        """
        f = self._file
        n, a = len(self), self.n_atoms_total
        sampler = f["sampler"][:n].astype(str) if n else np.zeros(0, dtype=str)
        full = LabelArrays(
            positions=f["positions"][:a],
            numbers=f["numbers"][:a],
            forces=f["forces"][:a],
            offsets=f["offsets"][: n + 1],
            cell=f["cell"][:n],
            pbc=f["pbc"][:n],
            energy=f["energy"][:n],
            stress=f["stress"][:n],
            force_disagreement=f["force_disagreement"][:n],
            energy_disagreement=f["energy_disagreement"][:n],
            sampler=sampler,
            temperature_kelvin=f["temperature_kelvin"][:n],
            seed=f["seed"][:n],
            input_index=f["input_index"][:n],
            frame_index=np.arange(n, dtype=np.int64),
            **{name: f[name][:a] for name in (_HESSIAN_FIELDS if self.hessian_k else ())},
        )
        if indices is None:
            return full
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if len(idx) and (idx.min() < -n or idx.max() >= n):
            raise IndexError(f"frame index out of range for a store of {n} frames")
        return full.subset(np.where(idx < 0, idx + n, idx))

    def input_hashes(self) -> list[str]:
        """Content hashes of the committed frames' inputs (see :func:`frame_hash`)."""
        return [h.decode() for h in self._file["input_hash"][: len(self)]]

    def input_indices(self) -> np.ndarray:
        """``[n_frames]`` int64: each committed frame's index in the labelled input."""
        return self._file["input_index"][: len(self)]

    @staticmethod
    def _atoms_from_arrays(arr: LabelArrays, i: int) -> ase.Atoms:
        lo, hi = int(arr.offsets[i]), int(arr.offsets[i + 1])
        atoms = ase.Atoms(
            numbers=arr.numbers[lo:hi],
            positions=arr.positions[lo:hi],
            cell=arr.cell[i],
            pbc=arr.pbc[i],
        )
        atoms.info["sampler"] = str(arr.sampler[i])
        atoms.info["temperature_kelvin"] = float(arr.temperature_kelvin[i])
        atoms.info["seed"] = int(arr.seed[i])
        atoms.info["input_index"] = int(arr.input_index[i])
        atoms.info["frame_index"] = int(arr.frame_index[i])
        if math.isfinite(arr.force_disagreement[i]):
            atoms.info["force_disagreement"] = float(arr.force_disagreement[i])
            atoms.info["energy_disagreement"] = float(arr.energy_disagreement[i])
        results: dict[str, Any] = {
            "energy": float(arr.energy[i]),
            "forces": arr.forces[lo:hi].copy(),
        }
        if np.all(np.isfinite(arr.stress[i])):
            results["stress"] = arr.stress[i].copy()
        atoms.calc = SinglePointCalculator(atoms, **results)
        return atoms

    def to_atoms(self, indices: Sequence[int] | np.ndarray | None = None) -> list[ase.Atoms]:
        """Frames as ase.Atoms with a SinglePointCalculator holding the labels.

        ``atoms.get_potential_energy()`` (eV), ``get_forces()`` (eV/Å) and, when
        labelled, ``get_stress()`` (eV/Å³) return the teacher's labels; ``atoms.info``
        holds ``sampler``, ``temperature_kelvin``, ``seed``, ``input_index``,
        ``frame_index`` and, for ensembles, the disagreements.
        """
        arr = self.arrays(indices)
        return [self._atoms_from_arrays(arr, i) for i in range(arr.n_frames)]

    def __getitem__(
        self, index: int | slice | Sequence[int] | np.ndarray
    ) -> ase.Atoms | list[ase.Atoms]:
        n = len(self)
        if isinstance(index, slice):
            return self.to_atoms(range(*index.indices(n)))
        if isinstance(index, (int, np.integer)):
            i = int(index)
            if not -n <= i < n:
                raise IndexError(f"frame {i} out of range for a store of {n} frames")
            return self.to_atoms([i % n])[0]
        return self.to_atoms(index)

    def __iter__(self) -> Iterator[ase.Atoms]:
        # Read in blocks so that iterating a large store does not load it whole.
        n, block = len(self), 256
        for start in range(0, n, block):
            yield from self.to_atoms(range(start, min(start + block, n)))

    def split(
        self,
        fractions: Mapping[str, float] | Sequence[float] = (0.8, 0.1, 0.1),
        seed: int = 0,
    ) -> dict[str, np.ndarray]:
        """Deterministic random split of the frames.

        The frames are permuted with ``numpy.random.default_rng(seed)`` and cut into
        consecutive pieces whose sizes follow ``fractions`` (largest-remainder rounding,
        so the sizes add up to ``len(self)``). Same store length + same seed = same
        split.

        Args:
            fractions: ``{"train": 0.8, "validation": 0.1, "test": 0.1}`` or a sequence
                of three fractions for train/validation/test. Must add up to 1.
            seed: Random seed.

        Returns:
            Split name -> sorted frame indices.
        """
        if not isinstance(fractions, Mapping):
            values = list(fractions)
            if len(values) != 3:
                raise ValueError("give three fractions (train, validation, test) or a dict")
            fractions = dict(zip(("train", "validation", "test"), values, strict=True))
        names = list(fractions)
        weights = np.array([float(fractions[k]) for k in names])
        if np.any(weights < 0) or not math.isclose(weights.sum(), 1.0, abs_tol=1e-6):
            raise ValueError(f"split fractions must be >= 0 and add up to 1, got {dict(fractions)}")
        n = len(self)
        exact = weights * n
        sizes = np.floor(exact).astype(int)
        remainder = n - sizes.sum()
        # Largest remainders get the leftover frames; ties go to the earlier split.
        order = np.argsort(-(exact - sizes), kind="stable")
        sizes[order[:remainder]] += 1
        perm = np.random.default_rng(seed).permutation(n)
        bounds = np.concatenate([[0], np.cumsum(sizes)])
        return {name: np.sort(perm[bounds[k] : bounds[k + 1]]) for k, name in enumerate(names)}

    def export_extxyz(
        self, path: str | Path, indices: Sequence[int] | np.ndarray | None = None
    ) -> Path:
        """Write frames and labels to an extended-XYZ file (energy, forces, stress, tags).

        Returns:
            The written path.
        """
        path = Path(path)
        ase.io.write(path, self.to_atoms(indices), format="extxyz")
        return path

    # ------------------------------------------------------------------ writing
    def _require_writable(self) -> None:
        if self.mode != "a":
            raise LabelStoreError(f"{self.path} is open read-only; open it with mode='a' to append")

    def reserve(self, n_frames: int, n_atoms: int) -> None:
        """Make room for ``n_frames`` more frames and ``n_atoms`` more atoms.

        Growing rewrites the store into a temporary file with (at least) twice the
        capacity and renames it into place: atomic, and rare.
        """
        self._require_writable()
        cap_f, cap_a = self.capacity
        need_f, need_a = len(self) + n_frames, self.n_atoms_total + n_atoms
        if need_f <= cap_f and need_a <= cap_a:
            return
        new_f = max(need_f, 2 * cap_f, 16)
        new_a = max(need_a, 2 * cap_a, 1024)
        n, a = len(self), self.n_atoms_total
        attrs = {
            k: v
            for k, v in self._file.attrs.items()
            if k not in ("format", "format_version", "units")
        }
        partial = _partial_path(self.path)
        try:
            new = _create_file(partial, new_f, new_a, attrs, self.hessian_k)
            try:
                for name in (*_ATOM_FIELDS, *(_HESSIAN_FIELDS if self.hessian_k else ())):
                    if a:
                        new[name][:a] = self._file[name][:a]
                for name in _FRAME_FIELDS:
                    if n:
                        new[name][:n] = self._file[name][:n]
                new["offsets"][: n + 1] = self._file["offsets"][: n + 1]
                new.flush()
                new["committed"][:] = [n, a]
                new.flush()
            finally:
                new.close()
            if self.durable:
                _fsync_path(partial)
            self._file.close()
            os.replace(partial, self.path)
            if self.durable:
                _fsync_dir(self.path.parent)
        finally:
            with contextlib.suppress(FileNotFoundError):
                partial.unlink()
        self._file = h5py.File(self.path, "r+")

    def append(
        self,
        frames: Sequence[ase.Atoms],
        labels: Sequence[TeacherLabels],
        input_indices: Sequence[int] | None = None,
        input_hashes: Sequence[str] | None = None,
        hessian: Sequence[tuple[np.ndarray, np.ndarray] | None] | None = None,
    ) -> None:
        """Append labelled frames and commit them (all or nothing).

        Args:
            frames: Structures. Tags are read from ``atoms.info``: ``sampler`` (default
                ``"input"``), ``temperature_kelvin`` (default NaN), ``seed`` (default -1).
            labels: One :class:`~jaxdistill.teachers.TeacherLabels` per frame.
            input_indices: Index of each frame in the labelled input (default: -1).
            input_hashes: :func:`frame_hash` of each input frame (default: computed).
            hessian: Per frame ``(directions, products)``, each ``[K, n_atoms, 3]``
                (unit directions; ``H·u`` in eV/Å²), or None for a frame without
                Hessian labels (stored as NaN). Only for a store created with
                ``hessian=``.
        """
        self._require_writable()
        b = len(frames)
        k_store = self.hessian_k
        if hessian is not None and not k_store:
            raise LabelStoreError(
                f"{self.path} was created without Hessian labels; label into a new store "
                "to add them"
            )
        if len(labels) != b:
            raise ValueError(f"{b} frames but {len(labels)} labels")
        if b == 0:
            return
        counts = np.array([len(atoms) for atoms in frames], dtype=np.int64)
        if np.any(counts < 1):
            raise ValueError("cannot store a frame without atoms")
        self.reserve(b, int(counts.sum()))
        f = self._file
        k, a = len(self), self.n_atoms_total
        m = int(counts.sum())
        for atoms, lab in zip(frames, labels, strict=True):
            if lab.forces.shape != (len(atoms), 3):
                raise ValueError(
                    f"forces of shape {lab.forces.shape} for a frame of {len(atoms)} atoms"
                )
        samplers = []
        for atoms in frames:
            name = str(atoms.info.get("sampler", "input")).encode("ascii", "replace")
            if len(name) > SAMPLER_LEN:
                raise ValueError(f"sampler name longer than {SAMPLER_LEN} bytes: {name!r}")
            samplers.append(name)
        hashes = list(input_hashes) if input_hashes is not None else [frame_hash(x) for x in frames]
        indices = list(input_indices) if input_indices is not None else [-1] * b

        if k_store:
            pairs = list(hessian) if hessian is not None else [None] * b
            if len(pairs) != b:
                raise ValueError(f"{b} frames but {len(pairs)} Hessian labels")
            hessian_rows = {name: np.full((m, k_store, 3), np.nan) for name in _HESSIAN_FIELDS}
            row = 0
            for atoms, pair in zip(frames, pairs, strict=True):
                n_at = len(atoms)
                if pair is not None:
                    for name, value in zip(_HESSIAN_FIELDS, pair, strict=True):
                        value = np.asarray(value, dtype=np.float64)
                        if value.shape != (k_store, n_at, 3):
                            raise ValueError(
                                f"{name} of shape {value.shape} for a frame of {n_at} atoms "
                                f"in a store of {k_store} directions per frame"
                            )
                        hessian_rows[name][row : row + n_at] = np.swapaxes(value, 0, 1)
                row += n_at

        # 1. Data of the new frames, in space nobody counts yet.
        f["positions"][a : a + m] = np.concatenate([x.positions for x in frames])
        f["numbers"][a : a + m] = np.concatenate([x.numbers for x in frames])
        f["forces"][a : a + m] = np.concatenate([lab.forces for lab in labels])
        f["offsets"][k + 1 : k + b + 1] = a + np.cumsum(counts)
        f["cell"][k : k + b] = np.stack([x.cell.array for x in frames])
        f["pbc"][k : k + b] = np.stack([np.asarray(x.pbc, dtype=bool) for x in frames])
        f["energy"][k : k + b] = [lab.energy for lab in labels]
        f["stress"][k : k + b] = np.stack(
            [np.asarray(lab.stress, dtype=np.float64).reshape(6) for lab in labels]
        )
        f["force_disagreement"][k : k + b] = [lab.force_disagreement for lab in labels]
        f["energy_disagreement"][k : k + b] = [lab.energy_disagreement for lab in labels]
        f["sampler"][k : k + b] = np.array(samplers, dtype=f"S{SAMPLER_LEN}")
        f["temperature_kelvin"][k : k + b] = [
            float(x.info.get("temperature_kelvin", np.nan)) for x in frames
        ]
        f["seed"][k : k + b] = [int(x.info.get("seed", -1)) for x in frames]
        f["input_index"][k : k + b] = indices
        f["input_hash"][k : k + b] = np.array([h.encode() for h in hashes], dtype=f"S{HASH_LEN}")
        if k_store:
            for name, rows in hessian_rows.items():
                f[name][a : a + m] = rows
        f.flush()
        # 2. Only now count them: one 16-byte write, flushed last.
        f["committed"][:] = [k + b, a + m]
        f.flush()
        if self.durable:
            _fsync_path(self.path)

    def set_attrs(self, **values: Any) -> None:
        """Set JSON attributes (``teacher``, ``input``, ``metadata``) of an empty store.

        Attributes are HDF5 metadata, so they are only changed while no frame is
        committed (changing metadata later would break the crash-safety guarantee).
        """
        self._require_writable()
        if len(self):
            raise LabelStoreError("attributes can only be set on an empty store")
        for key, value in values.items():
            if key not in ("teacher", "input", "metadata"):
                raise ValueError(f"unknown store attribute {key!r}")
            self._file.attrs[key] = _json_attr(value)
        self._file.flush()

    # ---------------------------------------------------------------- lifecycle
    def close(self) -> None:
        """Close the file."""
        if self._file.id.valid:
            self._file.close()

    def __enter__(self) -> LabelStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"LabelStore({str(self.path)!r}, {len(self)} frames, {self.n_atoms_total} atoms, "
            f"teacher={self.teacher.get('name')!r})"
        )


def copy_frames(
    source: str | Path, destination: str | Path, indices: Sequence[int] | np.ndarray
) -> Path:
    """Write the frames ``indices`` of a store, with their labels, tags and teacher
    provenance, into a new store (replacing ``destination``).

    Returns:
        The new store's path.
    """
    destination = Path(destination)
    with LabelStore(source) as store:
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        arr = store.arrays(idx)
        frames = [LabelStore._atoms_from_arrays(arr, i) for i in range(arr.n_frames)]
        hashes = [store.input_hashes()[int(i)] for i in idx]
        labels = [
            TeacherLabels(
                energy=float(arr.energy[i]),
                forces=arr.forces[arr.offsets[i] : arr.offsets[i + 1]],
                stress=arr.stress[i],
                force_disagreement=float(arr.force_disagreement[i]),
                energy_disagreement=float(arr.energy_disagreement[i]),
            )
            for i in range(arr.n_frames)
        ]
        hessian = None
        if store.hessian_k:
            hessian = [
                (
                    np.swapaxes(arr.hessian_directions[arr.offsets[i] : arr.offsets[i + 1]], 0, 1),
                    np.swapaxes(arr.hessian_products[arr.offsets[i] : arr.offsets[i + 1]], 0, 1),
                )
                for i in range(arr.n_frames)
            ]
        with LabelStore.create(
            destination,
            teacher=store.teacher,
            hessian=store.hessian or None,
            capacity_frames=max(len(frames), 1),
            capacity_atoms=max(int(arr.n_atoms.sum()), 1),
            input_info={
                "n_frames": len(frames),
                "fingerprint": frames_fingerprint(hashes),
                "source": f"{len(frames)} of the {len(store)} frames of {store.path}",
            },
            overwrite=True,
        ) as copy:
            copy.append(
                frames, labels, input_indices=idx.tolist(), input_hashes=hashes, hessian=hessian
            )
    return destination
