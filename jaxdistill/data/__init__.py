"""Data: labelled frames as numpy arrays, the HDF5 label store, and padded batches.

- :mod:`~jaxdistill.data.arrays`: :class:`LabelArrays`, frame hashes, units (pure numpy);
- :mod:`~jaxdistill.data.store`: :class:`LabelStore`, append-only and crash-safe (HDF5);
- :mod:`~jaxdistill.data.batching`: fixed-shape padded batches for jitted training.

Labelling (a teacher × frames → a store) is :func:`jaxdistill.labelling.label`. The
names below load on first use (PEP 562): importing ``jaxdistill.data.arrays`` (as the
training core does) imports neither h5py nor a teacher.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from jaxdistill._lazy import lazy_exports

#: public name -> the module that defines it
_EXPORTS = {
    "UNITS": "jaxdistill.data.arrays",
    "LabelArrays": "jaxdistill.data.arrays",
    "frame_hash": "jaxdistill.data.arrays",
    "frames_fingerprint": "jaxdistill.data.arrays",
    "LabelStore": "jaxdistill.data.store",
    "LabelStoreError": "jaxdistill.data.store",
    "copy_frames": "jaxdistill.data.store",
}

__all__ = [
    "UNITS",
    "LabelArrays",
    "LabelStore",
    "LabelStoreError",
    "copy_frames",
    "frame_hash",
    "frames_fingerprint",
]


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())


if TYPE_CHECKING:  # for type checkers and IDEs: the same names, eagerly
    from jaxdistill.data.arrays import UNITS, LabelArrays, frame_hash, frames_fingerprint
    from jaxdistill.data.store import LabelStore, LabelStoreError, copy_frames
