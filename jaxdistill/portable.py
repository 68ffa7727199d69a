"""Load and run an exported student with jax alone (no flax, optax or training code).

A student exported by ``jaxdistill export STUDENT OUTPUT`` (or
:func:`jaxdistill.export.export_student`) is one ``.jaxexport`` file: a zip archive of

- ``function.bin``: the student's energy, forces and stress as serialized StableHLO
  (``jax.export``), its parameters baked in, lowered for the CPU and CUDA, with
  symbolic sizes for atoms, edges and structures (one file serves every system size);
- ``metadata.json``: species, cutoff, dtype, the order and meaning of the inputs, and
  the student's own metadata (teacher provenance, training summary).

This module needs only ``jax``, ``numpy`` and the standard library and imports nothing
else from jaxdistill, so it can be copied on its own beside a program that should not
depend on jaxdistill::

    from portable import load_exported          # or jaxdistill.portable
    model = load_exported("si.jaxexport")
    out = model(positions, numbers, cell, pbc, senders, receivers, shifts)
    out["energy"], out["forces"], out["stress"]   # eV [n_graph], eV/Å [n_node, 3],
                                                  # eV/Å³ [n_graph, 3, 3]

Inputs are the arrays of jaxdistill's padded ``Graph`` (docs/architecture.md), in Å:
``positions [n_node, 3]``, ``numbers [n_node]``, ``cell [n_graph, 3, 3]`` (rows),
``pbc [n_graph, 3]``, ``senders``/``receivers [n_edge]`` (edge ``e`` runs from the
neighbour ``senders[e] = j`` to the centre ``receivers[e] = i``; ASE's
``neighbor_list("ijS", atoms, cutoff)`` gives ``i, j, S`` in this convention),
``shifts [n_edge, 3]`` (integer cell shifts; ``r_ij = R_j - R_i + shifts @ cell``),
and optionally ``node_graph``, ``n_node`` and the three masks. Left out, they describe
one structure with every atom and edge real. Every pair within the cutoff must be
present once per periodic image; pairs beyond it contribute exactly zero.

A function is compiled once per distinct array shape (calls are jitted), so pad to a
few sizes for MD. The serialized format is jax's: jax promises to load artefacts from
releases up to about six months older than itself.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "INPUTS", "ExportedStudent", "load_exported"]

FORMAT_NAME = "jaxdistill-exported-student"
FORMAT_VERSION = 1
FUNCTION_FILE = "function.bin"
METADATA_FILE = "metadata.json"

#: Input names in the order the exported function takes them, with each one's kind:
#: "float" (the student's dtype), "int" (int32) or "bool".
INPUTS: tuple[tuple[str, str], ...] = (
    ("positions", "float"),
    ("numbers", "int"),
    ("cell", "float"),
    ("pbc", "bool"),
    ("senders", "int"),
    ("receivers", "int"),
    ("shifts", "float"),
    ("node_graph", "int"),
    ("n_node", "int"),
    ("node_mask", "bool"),
    ("edge_mask", "bool"),
    ("graph_mask", "bool"),
)
#: Output names, in order: energy [n_graph] eV, forces [n_node, 3] eV/Å,
#: stress [n_graph, 3, 3] eV/Å³ (zero for structures not periodic in all directions).
OUTPUTS = ("energy", "forces", "stress")


class ExportedStudent:
    """An exported student, ready to call.

    Attributes:
        metadata: the contents of ``metadata.json``.
        species: atomic numbers the student knows.
        cutoff: neighbour cutoff, Å.
        dtype: "float32" or "float64" (float inputs are cast to it).
        exported: the ``jax.export.Exported`` function.
    """

    def __init__(self, exported: Any, metadata: Mapping[str, Any]) -> None:
        self.exported = exported
        self.metadata = dict(metadata)
        self.species = tuple(int(z) for z in metadata["species"])
        self.cutoff = float(metadata["cutoff_angstrom"])
        self.dtype = str(metadata["dtype"])
        self._call = jax.jit(exported.call)

    def __repr__(self) -> str:
        symbols = ", ".join(self.metadata.get("symbols", [str(z) for z in self.species]))
        return (
            f"ExportedStudent({self.metadata.get('architecture', '?')}, species=[{symbols}], "
            f"cutoff={self.cutoff:g} Å, {self.dtype}, "
            f"platforms={list(self.metadata.get('platforms', []))})"
        )

    def inputs(
        self,
        positions: Any,
        numbers: Any,
        cell: Any,
        pbc: Any,
        senders: Any,
        receivers: Any,
        shifts: Any,
        node_graph: Any = None,
        n_node: Any = None,
        node_mask: Any = None,
        edge_mask: Any = None,
        graph_mask: Any = None,
        reverse_edges: Any = None,
    ) -> dict[str, np.ndarray]:
        """The function's inputs as arrays of the right dtypes, defaults filled in.

        ``reverse_edges`` (the last field of a jaxdistill ``Graph``, so that
        ``model(*graph)`` works) is not an input: the exported function reads the edges
        as a plain list, which a receiver-major graph also is (its padding slots are
        masked).

        Without ``node_graph``/``n_node``/masks the arrays are one structure (a
        ``cell [3, 3]`` and ``pbc [3]`` get their graph axis); with no edges at all a
        masked self-edge is added (the exported sizes must be at least 1).
        """
        float_dtype = np.float64 if self.dtype == "float64" else np.float32
        positions = np.asarray(positions, dtype=float_dtype).reshape(-1, 3)
        cell = np.asarray(cell, dtype=float_dtype).reshape(-1, 3, 3)
        pbc = np.asarray(pbc, dtype=bool).reshape(-1, 3)
        senders = np.asarray(senders, dtype=np.int32).reshape(-1)
        receivers = np.asarray(receivers, dtype=np.int32).reshape(-1)
        shifts = np.asarray(shifts, dtype=float_dtype).reshape(-1, 3)
        n_atoms, n_graphs = len(positions), len(cell)
        if edge_mask is None:
            edge_mask = np.ones(len(senders), dtype=bool)
        if len(senders) == 0:  # an isolated atom: one masked edge keeps n_edge >= 1
            senders = receivers = np.zeros(1, dtype=np.int32)
            shifts = np.zeros((1, 3), dtype=float_dtype)
            edge_mask = np.zeros(1, dtype=bool)
        arrays = {
            "positions": positions,
            "numbers": numbers,
            "cell": cell,
            "pbc": pbc,
            "senders": senders,
            "receivers": receivers,
            "shifts": shifts,
            "node_graph": np.zeros(n_atoms) if node_graph is None else node_graph,
            "n_node": np.full(n_graphs, n_atoms) if n_node is None else n_node,
            "node_mask": np.ones(n_atoms) if node_mask is None else node_mask,
            "edge_mask": edge_mask,
            "graph_mask": np.ones(n_graphs) if graph_mask is None else graph_mask,
        }
        kinds = {"float": float_dtype, "int": np.int32, "bool": np.bool_}
        return {name: np.asarray(arrays[name], dtype=kinds[kind]) for name, kind in INPUTS}

    def __call__(self, *args: Any, **kwargs: Any) -> dict[str, jax.Array]:
        """Energy (eV, ``[n_graph]``), forces (eV/Å, ``[n_node, 3]``) and stress
        (eV/Å³, ``[n_graph, 3, 3]``); arguments as :meth:`inputs` takes them."""
        arrays = self.inputs(*args, **kwargs)
        outputs = self._call(*(arrays[name] for name, _ in INPUTS))
        return dict(zip(OUTPUTS, outputs, strict=True))


def load_exported(path: str | Path) -> ExportedStudent:
    """Read a ``.jaxexport`` file written by ``jaxdistill export``.

    Args:
        path: the file.

    Returns:
        An :class:`ExportedStudent`. A float64 student switches on JAX's 64-bit mode
        (``jax_enable_x64``, a process-wide setting).

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not an exported jaxdistill student (named in the message).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"exported student not found: {path}")
    try:
        with zipfile.ZipFile(path) as archive:
            metadata = json.loads(archive.read(METADATA_FILE))
            blob = archive.read(FUNCTION_FILE)
    except (zipfile.BadZipFile, KeyError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} is not an exported jaxdistill student: {error}") from None
    if metadata.get("format") != FORMAT_NAME:
        raise ValueError(f"{path}: format is {metadata.get('format')!r}, expected {FORMAT_NAME!r}")
    if int(metadata.get("format_version", -1)) > FORMAT_VERSION:
        raise ValueError(
            f"{path} has format version {metadata['format_version']}; this loader reads "
            f"up to {FORMAT_VERSION}"
        )
    if metadata.get("dtype") == "float64" and not jax.config.jax_enable_x64:
        jax.config.update("jax_enable_x64", True)
    from jax import export  # after the x64 switch: deserialisation reads it

    return ExportedStudent(export.deserialize(bytearray(blob)), metadata)
