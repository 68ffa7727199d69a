"""Export a student as a portable compiled artefact: serialized StableHLO via ``jax.export``.

``export_compiled(student, "si.jaxexport")`` (``jaxdistill export STUDENT OUTPUT``)
writes one file that computes energy, forces and stress from the padded graph arrays
(:mod:`jaxdistill.portable` describes the inputs and the file). The parameters are
baked into the function; the sizes of atoms, edges and structures are symbolic
(``jax.export.symbolic_shape``), so one file serves any system size. It is lowered for
the CPU and for CUDA GPUs by default, and runs with jax and
:mod:`jaxdistill.portable` alone (no flax, optax or jaxdistill's training code).

The message passing is exported in its pure-JAX reference form: the fused Pallas
kernels are GPU-specific and would tie the artefact to one platform.
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp

from jaxdistill._version import __version__
from jaxdistill.graph import Graph
from jaxdistill.portable import (
    FORMAT_NAME,
    FORMAT_VERSION,
    FUNCTION_FILE,
    INPUTS,
    METADATA_FILE,
    OUTPUTS,
)
from jaxdistill.student import Student, load_student

__all__ = ["DEFAULT_PLATFORMS", "export_compiled"]

#: Platforms lowered by default: the CPU and CUDA GPUs (lowering needs no GPU).
DEFAULT_PLATFORMS = ("cpu", "cuda")
_PLATFORMS = ("cpu", "cuda", "rocm", "tpu")


def _input_specs(dtype: str) -> list[jax.ShapeDtypeStruct]:
    """Abstract inputs with symbolic sizes ``n_node``, ``n_edge``, ``n_graph``."""
    n_node, n_edge, n_graph = jax.export.symbolic_shape("n_node, n_edge, n_graph")
    shapes = {
        "positions": (n_node, 3),
        "numbers": (n_node,),
        "cell": (n_graph, 3, 3),
        "pbc": (n_graph, 3),
        "senders": (n_edge,),
        "receivers": (n_edge,),
        "shifts": (n_edge, 3),
        "node_graph": (n_node,),
        "n_node": (n_graph,),
        "node_mask": (n_node,),
        "edge_mask": (n_edge,),
        "graph_mask": (n_graph,),
    }
    kinds = {"float": jnp.dtype(dtype), "int": jnp.int32, "bool": jnp.bool_}
    return [jax.ShapeDtypeStruct(shapes[name], kinds[kind]) for name, kind in INPUTS]


def export_compiled(
    student: Student | str | Path,
    output: str | Path,
    platforms: Sequence[str] = DEFAULT_PLATFORMS,
    overwrite: bool = False,
) -> Path:
    """Write a student as a ``.jaxexport`` file (serialized StableHLO plus metadata).

    Args:
        student: a :class:`~jaxdistill.student.Student` or a student directory.
        output: the file to write (conventionally ``NAME.jaxexport``).
        platforms: platforms to lower for ("cpu", "cuda", "rocm", "tpu"); the artefact
            runs only on these.
        overwrite: replace an existing ``output``.

    Returns:
        The written path. Load it with :func:`jaxdistill.portable.load_exported`.

    Raises:
        FileExistsError: ``output`` exists and ``overwrite`` is False.
        ValueError: an unknown platform.
    """
    output = Path(output)
    if output.exists() and not overwrite:
        raise FileExistsError(f"{output} exists; pass --overwrite (overwrite=True) to replace it")
    if output.is_dir():
        raise IsADirectoryError(f"{output} is a folder; give a file name")
    platforms = tuple(dict.fromkeys(str(p).lower() for p in platforms))
    unknown = [p for p in platforms if p not in _PLATFORMS]
    if unknown or not platforms:
        raise ValueError(f"platforms must be among {_PLATFORMS}, got {list(platforms)}")
    if not isinstance(student, Student):
        student = load_student(student)
    student = student.with_message_passing("reference")
    # jax arrays: numpy leaves (a freshly trained student's) cannot be indexed by tracers
    predict = student.potential.predict
    params = jax.tree_util.tree_map(jnp.asarray, student.params)

    def energy_forces_stress(*arrays: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        prediction = predict(params, Graph(*arrays))
        return prediction.energy, prediction.forces, prediction.stress

    exported = jax.export.export(jax.jit(energy_forces_stress), platforms=platforms)(
        *_input_specs(student.dtype)
    )
    metadata = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "architecture": student.architecture,
        "hyperparameters": student.hyperparameters,
        "species": list(student.species),
        "symbols": student.symbols,
        "cutoff_angstrom": student.cutoff,
        "dtype": student.dtype,
        "num_parameters": student.num_parameters,
        "inputs": [name for name, _ in INPUTS],
        "outputs": list(OUTPUTS),
        "units": {"positions": "Å", "energy": "eV", "forces": "eV/Å", "stress": "eV/Å³"},
        "platforms": list(platforms),
        "jax_version": jax.__version__,
        "jaxdistill_version": __version__,
        "student_metadata": student.metadata,
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    # written beside the target and renamed: an interrupted export leaves no half file
    partial = output.with_name(f".{output.name}.{os.getpid()}.partial")
    try:
        with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            archive.writestr(METADATA_FILE, json.dumps(metadata, indent=2, default=str) + "\n")
            archive.writestr(FUNCTION_FILE, bytes(exported.serialize()))
        partial.replace(output)
    finally:
        partial.unlink(missing_ok=True)
    return output
