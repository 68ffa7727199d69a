"""Student committees: K students of one architecture evaluated as one model.

A committee (an "ensemble" in the active-learning literature; the word is kept for
``nve``/``nvt``/``npt`` here) is K students with the same architecture,
hyper-parameters, species, cutoff and dtype, trained from different seeds. Their
parameters are stacked on a leading axis of length K and evaluated with ``jax.vmap``
over that axis in one jitted call: one graph, one compilation, K members.

The mean of the members is the prediction; the spread of their forces says where the
students are unsure (the configurations a teacher should label)::

    committee = load_committee(["runs/si/student-s0", "runs/si/student-s1", ...])
    out = committee.predict(atoms)
    out.forces      # [n_node, 3] eV/Å, the mean over members
    out.force_std   # [n_node] eV/Å, per-atom disagreement

Definitions (the same as the ensemble teachers', ``teachers.base.ensemble_labels``):

- per-atom force disagreement ``force_std_i = sqrt(mean_k |F_ik - mean_k F_ik|^2)``,
  eV/Å (population standard deviation of the force vector, ``ddof=0``);
- per structure: ``max_force_std`` = the largest ``force_std_i`` over its atoms (what
  MD thresholds: one badly described atom is enough) and ``force_disagreement`` = the
  RMS of ``force_std_i`` over its atoms (the ensemble teachers' per-frame number);
- ``energy_std``: the population standard deviation of the members' energies, eV.

A committee of one evaluates exactly as its single student (no vmap), with zero
disagreement.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import ase
import jax
import jax.numpy as jnp
import numpy as np

from jaxdistill.graph import Graph
from jaxdistill.potential import Potential
from jaxdistill.student import Student, as_student, load_student

#: What must agree between members for them to share one graph and one compilation.
_SHARED = ("architecture", "species", "cutoff", "hyperparameters", "dtype", "message_passing")


class CommitteePrediction(NamedTuple):
    """A committee's outputs for a batch; padding entries are zero.

    Attributes:
        energy: mean energy per graph, eV, ``[n_graph]``.
        forces: mean forces, eV/Å, ``[n_node, 3]``.
        stress: mean stress, eV/Å³, ``[n_graph, 3, 3]``.
        energy_std: standard deviation of the members' energies, eV, ``[n_graph]``.
        force_std: per-atom force disagreement, eV/Å, ``[n_node]``.
        member_forces: every member's forces, eV/Å, ``[K, n_node, 3]``.
    """

    energy: jax.Array
    forces: jax.Array
    stress: jax.Array
    energy_std: jax.Array
    force_std: jax.Array
    member_forces: jax.Array


def committee_size(params: Any) -> int:
    """K, the length of the leading (member) axis of stacked parameters."""
    return int(jax.tree_util.tree_leaves(params)[0].shape[0])


def member(params: Any, k: int) -> Any:
    """Member ``k``'s parameters out of stacked ones."""
    return jax.tree_util.tree_map(lambda x: x[k], params)


def over_members(function, params: Any, *args: Any) -> Any:
    """``function(member_params, *args)`` for every member, stacked on a leading axis.

    One ``jax.vmap`` over the members' parameters (the rest shared); a committee of one
    calls ``function`` directly, so it gives exactly the single student's numbers.
    """
    if committee_size(params) == 1:
        out = function(member(params, 0), *args)
        return jax.tree_util.tree_map(lambda x: x[None], out)
    return jax.vmap(function, in_axes=(0,) + (None,) * len(args))(params, *args)


def force_spread(member_forces: jax.Array) -> jax.Array:
    """Per-atom force disagreement ``sqrt(mean_k |F_k - <F>|^2)``, eV/Å.

    Args:
        member_forces: ``[K, n_atoms, 3]`` eV/Å.

    Returns:
        ``[n_atoms]`` eV/Å (zero for K = 1).
    """
    mean = jnp.mean(member_forces, axis=0)
    return jnp.sqrt(jnp.mean(jnp.sum((member_forces - mean) ** 2, axis=-1), axis=0))


def committee_predict(potential: Potential, params: Any, graph: Graph) -> CommitteePrediction:
    """Mean energy, forces and stress of stacked members, and their disagreement (pure).

    Args:
        potential: the members' (shared) potential, ``make_potential(model.apply)``.
        params: parameters stacked on a leading axis of length K.
        graph: the batch.
    """
    out = over_members(potential.predict, params, graph)
    return CommitteePrediction(
        energy=jnp.mean(out.energy, axis=0),
        forces=jnp.mean(out.forces, axis=0),
        stress=jnp.mean(out.stress, axis=0),
        energy_std=jnp.std(out.energy, axis=0),
        force_std=force_spread(out.forces),
        member_forces=out.forces,
    )


def structure_disagreement(
    force_std: np.ndarray, node_graph: np.ndarray, n_graph: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per-structure ``max_force_std`` and ``force_disagreement`` (RMS) over its atoms.

    Args:
        force_std: ``[n_atoms]`` eV/Å, real atoms only.
        node_graph: ``[n_atoms]`` structure index of each atom.
        n_graph: number of structures.

    Returns:
        ``(max [n_graph], rms [n_graph])`` eV/Å (0 for a structure without atoms).
    """
    force_std = np.asarray(force_std, dtype=np.float64)
    node_graph = np.asarray(node_graph)
    largest = np.zeros(n_graph)
    np.maximum.at(largest, node_graph, force_std)
    counts = np.bincount(node_graph, minlength=n_graph)
    squares = np.bincount(node_graph, weights=force_std**2, minlength=n_graph)
    rms = np.sqrt(squares / np.maximum(counts, 1))
    return largest, rms


@dataclass(eq=False)
class StudentCommittee:
    """K students of one architecture, evaluated together (see the module docstring).

    Quacks like a :class:`~jaxdistill.student.Student` where MD needs it
    (``architecture``, ``species``, ``cutoff``, ``hyperparameters``, ``dtype``,
    ``model``, ``potential``, ``graph``), with ``params`` stacked on a leading member
    axis; :class:`~jaxdistill.StudentCalculator`, ``run_md`` and ``jax_md_potential``
    accept it and use the committee-mean energy (and so the mean forces).

    Attributes:
        members: the students, at least one; same architecture, hyper-parameters,
            species, cutoff, dtype and message-passing mode.
    """

    members: tuple[Student, ...]
    _cache: dict[str, Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.members = tuple(self.members)
        if not self.members:
            raise ValueError("a committee needs at least one student")
        first = self.members[0]
        for k, student in enumerate(self.members[1:], start=1):
            for name in _SHARED:
                if getattr(student, name) != getattr(first, name):
                    raise ValueError(
                        f"committee members must share {name}: member 0 has "
                        f"{getattr(first, name)!r}, member {k} has {getattr(student, name)!r}"
                    )
            shapes = jax.tree_util.tree_map(np.shape, student.params)
            if shapes != jax.tree_util.tree_map(np.shape, first.params):
                raise ValueError(
                    f"committee member {k}'s parameters differ in shape from member 0's"
                )

    def __len__(self) -> int:
        return len(self.members)

    @property
    def size(self) -> int:
        """K, the number of members."""
        return len(self.members)

    # Student-like read-only description (all members agree on it)
    architecture = property(lambda self: self.members[0].architecture)
    species = property(lambda self: self.members[0].species)
    cutoff = property(lambda self: self.members[0].cutoff)
    hyperparameters = property(lambda self: self.members[0].hyperparameters)
    dtype = property(lambda self: self.members[0].dtype)
    message_passing = property(lambda self: self.members[0].message_passing)
    symbols = property(lambda self: self.members[0].symbols)

    @property
    def num_parameters(self) -> int:
        """Scalar parameters over all members."""
        return sum(m.num_parameters for m in self.members)

    @property
    def metadata(self) -> dict[str, Any]:
        """``{"committee": [each member's metadata]}``."""
        return {"committee": [dict(m.metadata) for m in self.members]}

    @property
    def model(self):
        """The members' (shared) Flax module."""
        return self.members[0].model

    @property
    def potential(self) -> Potential:
        """The members' (shared) potential; call it with one member's parameters."""
        return self.members[0].potential

    @property
    def params(self) -> Any:
        """The members' parameters stacked on a leading axis of length K (JAX arrays)."""
        if "params" not in self._cache:
            self._cache["params"] = jax.tree_util.tree_map(
                lambda *leaves: jnp.stack([jnp.asarray(x) for x in leaves]),
                *[m.params for m in self.members],
            )
        return self._cache["params"]

    def with_dtype(self, dtype: str) -> StudentCommittee:
        """A copy whose members' parameters are cast to ``dtype``."""
        return StudentCommittee(tuple(m.with_dtype(dtype) for m in self.members))

    def graph(self, structures: ase.Atoms | Sequence[ase.Atoms], **kwargs) -> Graph:
        """Validate and batch structures at the committee's cutoff (as ``Student.graph``)."""
        return self.members[0].graph(structures, **kwargs)

    def predict(self, structures: ase.Atoms | Sequence[ase.Atoms] | Graph) -> CommitteePrediction:
        """Mean energies, forces, stresses and disagreement of structures, jitted."""
        graph = structures if isinstance(structures, Graph) else self.graph(structures)
        if "predict" not in self._cache:
            self._cache["predict"] = jax.jit(committee_predict, static_argnums=0)
        return self._cache["predict"](self.potential, self.params, graph)

    def __getstate__(self) -> dict[str, Any]:
        # Pickle and deepcopy without the stacked copy and the jitted function.
        return {"members": self.members}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.members = state["members"]
        self._cache = {}


#: A model the MD entry points run.
Model = Student | StudentCommittee
#: What they accept for one: a model, a student's directory, or a committee's members.
ModelLike = Student | StudentCommittee | str | Path | Sequence[Student | str | Path]


def load_committee(
    students: Sequence[Student | str | Path], dtype: str | None = None
) -> StudentCommittee:
    """A committee from students or saved student directories.

    Args:
        students: Students or paths (``Student.save``), at least one; train them from
            different seeds (``TrainConfig(seed=k)``, ``jaxdistill train --seed k``).
        dtype: cast every member ("float32" or "float64"); default their own.

    Raises:
        ValueError: no students, or members that differ in architecture,
            hyper-parameters, species, cutoff or dtype.
    """
    if isinstance(students, (str, Path, Student)):
        raise TypeError("load_committee takes a sequence of students or directories")
    members = [
        as_student(s, dtype) if isinstance(s, Student) else load_student(s, dtype) for s in students
    ]
    return StudentCommittee(tuple(members))


def as_model(model: ModelLike, dtype: str | None = None) -> Model:
    """A Student, or a StudentCommittee from a committee or a sequence of students/paths,
    cast to ``dtype`` if given: the MD entry points' "model" argument."""
    if isinstance(model, StudentCommittee):
        if dtype is not None and dtype != model.dtype:
            return model.with_dtype(dtype)
        return model
    if isinstance(model, (list, tuple)):
        return load_committee(model, dtype)
    return as_student(model, dtype)


def is_committee(model: Any) -> bool:
    """Whether ``model`` is a :class:`StudentCommittee`."""
    return isinstance(model, StudentCommittee)
