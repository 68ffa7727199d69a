"""Data: the HDF5 label store and resumable labelling.

``LabelStore`` reads and appends labelled frames; ``label(teacher, frames, path)``
labels frames into a store, resuming where a previous run stopped.
"""

from jaxdistill.data.store import (
    UNITS,
    LabelArrays,
    LabelStore,
    LabelStoreError,
    LabelSummary,
    copy_frames,
    frame_hash,
    frames_fingerprint,
    label,
)

__all__ = [
    "UNITS",
    "LabelArrays",
    "LabelStore",
    "LabelStoreError",
    "LabelSummary",
    "copy_frames",
    "frame_hash",
    "frames_fingerprint",
    "label",
]
