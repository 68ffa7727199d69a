"""The Student: an architecture, its parameters and everything needed to use them.

A student on disk is a directory::

    student/
      student.json   architecture, hyper-parameters, species, cutoff, dtype,
                     library version, metadata (teacher provenance, training info)
      params/        Orbax checkpoint of the parameter pytree

``Student.save(path)`` writes it and :func:`load_student` reads it back bit for bit.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import ase
import jax
import jax.numpy as jnp
import numpy as np
from ase.data import atomic_numbers, chemical_symbols

from jaxdistill._version import __version__
from jaxdistill.graph import Graph, batch_graphs, validate_atoms
from jaxdistill.models import DEFAULT_ARCHITECTURE, build_model
from jaxdistill.models.fused import check_mode
from jaxdistill.potential import Potential, Prediction, make_potential

CONFIG_FILE = "student.json"
PARAMS_DIR = "params"
DTYPES = ("float32", "float64")


def resolve_dtype(dtype: str) -> str:
    """Check a dtype name; float64 switches on JAX's 64-bit mode (a global setting)."""
    dtype = str(np.dtype(dtype))
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    if dtype == "float64" and not jax.config.jax_enable_x64:
        jax.config.update("jax_enable_x64", True)
    return dtype


def as_atomic_numbers(species: Sequence[int | str]) -> tuple[int, ...]:
    """Element symbols or atomic numbers to a sorted tuple of unique atomic numbers."""
    numbers = set()
    for item in species:
        if isinstance(item, str):
            if item not in atomic_numbers:
                raise ValueError(f"unknown element symbol {item!r}")
            numbers.add(atomic_numbers[item])
        else:
            number = int(item)
            if not 1 <= number <= 118:
                raise ValueError(f"atomic number {number} out of range 1..118")
            numbers.add(number)
    if not numbers:
        raise ValueError("a student needs at least one element")
    return tuple(sorted(numbers))


def cast_params(params: Any, dtype: str) -> Any:
    """Cast every floating leaf of a parameter pytree to ``dtype``."""
    return jax.tree_util.tree_map(
        lambda x: (
            jnp.asarray(x, dtype) if jnp.issubdtype(jnp.asarray(x).dtype, jnp.floating) else x
        ),
        params,
    )


@dataclass
class Student:
    """A student potential.

    Attributes:
        architecture: registered architecture name (see ``jaxdistill.models``).
        species: atomic numbers it knows, sorted.
        cutoff: neighbour cutoff, Å.
        hyperparameters: architecture options (features, layers, ...).
        params: Flax parameter pytree.
        dtype: "float32" or "float64": precision of parameters and positions.
        metadata: free-form JSON-serialisable information (teacher provenance,
            reference energies, training summary).
        message_passing: how the model evaluates its message passing, with the same
            parameters: "auto" (default: the fused Pallas kernels on a GPU in
            float32 for large graphs (``models.fused.AUTO_MIN_NODES``), the pure-JAX
            reference otherwise; the environment variable
            ``JAXDISTILL_MESSAGE_PASSING=fused|reference`` decides instead when set),
            "fused" or "reference". A run-time choice, not saved with the student;
            see :meth:`with_message_passing` and docs/models.md.
    """

    architecture: str
    species: tuple[int, ...]
    cutoff: float
    hyperparameters: dict[str, Any]
    params: Any
    dtype: str = "float32"
    metadata: dict[str, Any] = field(default_factory=dict)
    message_passing: str = "auto"

    def __post_init__(self) -> None:
        self.message_passing = check_mode(self.message_passing)

    @cached_property
    def model(self):
        """The Flax module (evaluated as ``message_passing`` says)."""
        model = build_model(self.architecture, self.species, self.cutoff, **self.hyperparameters)
        if hasattr(model, "message_passing"):  # registered architectures may lack it
            model = model.clone(message_passing=self.message_passing)
        return model

    @cached_property
    def potential(self) -> Potential:
        """Energy/forces/stress functions of ``(params, graph)``."""
        return make_potential(self.model.apply)

    @cached_property
    def _predict_jit(self):
        return jax.jit(self.potential.predict)

    @property
    def symbols(self) -> list[str]:
        """Element symbols the student knows."""
        return [chemical_symbols[z] for z in self.species]

    @property
    def num_parameters(self) -> int:
        """Number of scalar parameters."""
        return int(sum(np.size(x) for x in jax.tree_util.tree_leaves(self.params)))

    def with_dtype(self, dtype: str) -> Student:
        """A copy whose parameters are cast to ``dtype``."""
        dtype = resolve_dtype(dtype)
        return Student(
            self.architecture,
            self.species,
            self.cutoff,
            dict(self.hyperparameters),
            cast_params(self.params, dtype),
            dtype,
            dict(self.metadata),
            self.message_passing,
        )

    def with_message_passing(self, mode: str) -> Student:
        """A copy (same parameters) whose model evaluates message passing as ``mode``.

        Args:
            mode: "auto", "fused" (the Pallas kernels; interpreted, and slow, on a
                CPU) or "reference" (pure JAX; needed for forward-mode derivatives
                such as ``jax.jvp`` or ``jax.hessian`` of the forces).
        """
        return replace(self, message_passing=check_mode(mode))

    def graph(self, structures: ase.Atoms | Sequence[ase.Atoms], **kwargs) -> Graph:
        """Validate structures and batch them into a padded graph at this student's cutoff."""
        structures = [structures] if isinstance(structures, ase.Atoms) else list(structures)
        for atoms in structures:
            validate_atoms(atoms, self.species)
        return batch_graphs(structures, self.cutoff, dtype=self.dtype, **kwargs)

    def predict(self, structures: ase.Atoms | Sequence[ase.Atoms] | Graph) -> Prediction:
        """Energies, forces and stresses of structures (or of a ready graph), jitted."""
        graph = structures if isinstance(structures, Graph) else self.graph(structures)
        return self._predict_jit(self.params, graph)

    def __getstate__(self) -> dict[str, Any]:
        """For pickle and ``copy.deepcopy``: the fields without the cached model,
        potential and jitted function (closures; rebuilt on first use)."""
        cached = {n for n, v in vars(Student).items() if isinstance(v, cached_property)}
        return {k: v for k, v in self.__dict__.items() if k not in cached}

    def __repr__(self) -> str:
        # one line (the dataclass default would print every parameter array)
        hyper = "".join(f", {k}={v!r}" for k, v in sorted(self.hyperparameters.items()))
        teacher = (self.metadata.get("teacher") or {}).get("name")
        steps = (self.metadata.get("training") or {}).get("steps_completed")
        return (
            f"Student({self.architecture!r}, species={self.symbols}, cutoff={self.cutoff:g} Å"
            f"{hyper}, {self.num_parameters:,} parameters, {self.dtype}"
            + (f", teacher={teacher!r}" if teacher else "")
            + (f", trained {steps} steps" if steps is not None else ", untrained")
            + ")"
        )

    def config(self) -> dict[str, Any]:
        """The readable description saved beside the parameters."""
        return {
            "architecture": self.architecture,
            "hyperparameters": self.hyperparameters,
            "species": list(self.species),
            "symbols": self.symbols,
            "cutoff_angstrom": self.cutoff,
            "dtype": self.dtype,
            "jaxdistill_version": __version__,
            "num_parameters": self.num_parameters,
            "metadata": self.metadata,
        }

    def save(self, path: str | Path, overwrite: bool = True) -> Path:
        """Write the student directory (Orbax parameters + ``student.json``).

        The parameters go to a temporary folder first and are moved into place
        afterwards, so an interrupted save never leaves a half-written student.
        """
        import orbax.checkpoint as ocp

        path = Path(path).absolute()
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path} exists (pass overwrite=True to replace it)")
        staging = path.with_name(path.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        # A student is a host-side file written by one process: in a multi-process run
        # (jax.distributed) only the calling process takes part in Orbax's barriers.
        process = jax.process_index()
        checkpointer = ocp.StandardCheckpointer(
            multiprocessing_options=ocp.options.MultiprocessingOptions(
                primary_host=process, active_processes={process}
            )
        )
        checkpointer.save(staging / PARAMS_DIR, jax.device_get(self.params))
        checkpointer.wait_until_finished()
        checkpointer.close()
        (staging / CONFIG_FILE).write_text(json.dumps(self.config(), indent=2) + "\n")
        if path.exists():
            shutil.rmtree(path)
        staging.rename(path)
        return path


def _init_params(model, species: tuple[int, ...], seed: int) -> Any:
    """Initialise parameters on a tiny two-atom graph (shapes do not depend on it)."""
    numbers = jnp.array([species[0], species[-1]], dtype=jnp.int32)
    vectors = jnp.array([[1.0, 0.2, 0.1], [-1.0, -0.2, -0.1]], dtype=jnp.float32)
    senders = jnp.array([1, 0], dtype=jnp.int32)
    receivers = jnp.array([0, 1], dtype=jnp.int32)
    mask = jnp.array([True, True])
    return model.init(jax.random.key(seed), numbers, vectors, senders, receivers, mask, mask)


def create_student(
    architecture: str = DEFAULT_ARCHITECTURE,
    species: Sequence[int | str] = ("Si",),
    cutoff: float = 5.0,
    seed: int = 0,
    dtype: str = "float32",
    **hyper: Any,
) -> Student:
    """An untrained but usable student.

    Args:
        architecture: "painn" (equivariant, accurate default) or "schnet" (invariant,
            fastest), or any registered name.
        species: elements as symbols or atomic numbers.
        cutoff: neighbour cutoff in Å.
        seed: initialisation seed.
        dtype: "float32" (default) or "float64".
        **hyper: architecture options, e.g. ``features=64, num_layers=3``.

    Example:
        >>> student = create_student("painn", ["H", "C", "O"], cutoff=5.0, features=32)
        >>> atoms.calc = StudentCalculator(student)
    """
    dtype = resolve_dtype(dtype)
    numbers = as_atomic_numbers(species)
    # A run-time choice, not an architecture option: kept out of the saved
    # hyper-parameters.
    message_passing = check_mode(hyper.pop("message_passing", "auto"))
    if architecture == "painn":
        # New PaiNN students are smooth where vector features vanish (models/painn.py);
        # saved with the setting, so they reload the same.
        from jaxdistill.models.painn import NORM_SOFTENING

        hyper.setdefault("norm_softening", NORM_SOFTENING)
    if not cutoff > 0:
        raise ValueError(f"cutoff must be positive, got {cutoff}")
    model = build_model(architecture, numbers, cutoff, **hyper)
    params = cast_params(_init_params(model, numbers, seed), dtype)
    return Student(
        architecture, numbers, float(cutoff), dict(hyper), params, dtype, {}, message_passing
    )


def load_student(path: str | Path, dtype: str | None = None) -> Student:
    """Read a student directory written by :meth:`Student.save`.

    Args:
        path: the directory.
        dtype: override the saved precision ("float32" or "float64").
    """
    import orbax.checkpoint as ocp

    path = Path(path).absolute()
    config_path = path / CONFIG_FILE
    if not path.is_dir():
        raise FileNotFoundError(f"student directory not found: {path} (not a jaxdistill student)")
    if not config_path.is_file():
        raise FileNotFoundError(f"{path} is not a jaxdistill student (no {CONFIG_FILE})")
    config = _read_student_config(config_path)
    saved_dtype = resolve_dtype(config["dtype"])
    try:
        model = build_model(
            config["architecture"],
            config["species"],
            config["cutoff_angstrom"],
            **config["hyperparameters"],
        )
        abstract = jax.eval_shape(
            lambda: cast_params(_init_params(model, tuple(config["species"]), 0), saved_dtype)
        )
    except (TypeError, ValueError, KeyError) as error:
        raise ValueError(f"{config_path} describes no model this version builds: {error}") from None
    if not (path / PARAMS_DIR).is_dir():
        raise FileNotFoundError(f"{path} has no parameters ({PARAMS_DIR}/ is missing)")
    checkpointer = ocp.StandardCheckpointer()
    try:
        params = checkpointer.restore(path / PARAMS_DIR, abstract)
    except Exception as error:  # orbax raises many kinds for a damaged checkpoint
        text = " ".join(str(error).split())[:300]
        raise ValueError(
            f"cannot read the parameters in {path / PARAMS_DIR} as {config_path} describes "
            f"them: {text}"
        ) from None
    finally:
        checkpointer.close()
    _check_params_match(params, abstract, config_path)
    # jax arrays, not numpy: numpy leaves captured under jit cannot be indexed by
    # traced values (a user's own jax-md loop jits over the parameters as constants)
    params = jax.tree_util.tree_map(jnp.asarray, params)
    student = Student(
        config["architecture"],
        tuple(config["species"]),
        float(config["cutoff_angstrom"]),
        dict(config["hyperparameters"]),
        params,
        saved_dtype,
        dict(config.get("metadata", {})),
    )
    return student.with_dtype(dtype) if dtype and dtype != saved_dtype else student


_CONFIG_TYPES = {
    "architecture": (str, "a string"),
    "species": (list, "a list of atomic numbers"),
    "cutoff_angstrom": ((int, float), "a number"),
    "hyperparameters": (dict, "a mapping"),
    "dtype": (str, "a string"),
}


def _read_student_config(config_path: Path) -> dict[str, Any]:
    """student.json, checked: valid JSON, every key a student needs, of its type."""
    try:
        config = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{config_path} is not valid JSON (truncated?): {error}") from None
    if not isinstance(config, dict):
        raise ValueError(f"{config_path} must hold a JSON object, got {type(config).__name__}")
    for key, (types, wanted) in _CONFIG_TYPES.items():
        if key not in config:
            raise ValueError(f"{config_path} lacks the key {key!r} (a student needs {key})")
        value = config[key]
        if isinstance(value, bool) or not isinstance(value, types):
            raise ValueError(f"{config_path}: {key} must be {wanted}, got {value!r}")
    species = config["species"]
    if not species or not all(isinstance(z, int) and 1 <= z <= 118 for z in species):
        raise ValueError(f"{config_path}: species must be atomic numbers 1..118, got {species!r}")
    if not config["cutoff_angstrom"] > 0:
        raise ValueError(
            f"{config_path}: cutoff_angstrom must be > 0, got {config['cutoff_angstrom']}"
        )
    if config["dtype"] not in DTYPES:
        raise ValueError(f"{config_path}: dtype must be one of {DTYPES}, got {config['dtype']!r}")
    if not isinstance(config.get("metadata", {}), dict):
        raise ValueError(f"{config_path}: metadata must be a mapping")
    return config


def _check_params_match(params: Any, abstract: Any, config_path: Path) -> None:
    """The saved parameters must be those student.json describes (same tree, shapes)."""
    saved = {
        jax.tree_util.keystr(k): np.shape(v) for k, v in jax.tree_util.tree_leaves_with_path(params)
    }
    wanted = {
        jax.tree_util.keystr(k): tuple(v.shape)
        for k, v in jax.tree_util.tree_leaves_with_path(abstract)
    }
    for key in sorted(set(saved) | set(wanted)):
        if saved.get(key) != wanted.get(key):
            raise ValueError(
                f"{config_path} disagrees with the saved parameters: {key} is "
                f"{saved.get(key, 'missing')} in params/ but {wanted.get(key, 'absent')} by "
                "student.json (was student.json edited?)"
            )


def as_student(student: Student | str | Path, dtype: str | None = None) -> Student:
    """A Student from a Student or a saved student's path, cast to ``dtype`` if given.

    The one place where the MD entry points (ASE calculator, jax-md adapter, run_md)
    accept "a student or its folder, at this precision".
    """
    if not isinstance(student, Student):
        student = load_student(student)
    if dtype is not None:
        dtype = resolve_dtype(dtype)
        if dtype != student.dtype:
            student = student.with_dtype(dtype)
    return student
