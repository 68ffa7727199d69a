"""A drop-in ASE Calculator for students.

An existing ASE script changes one line::

    atoms.calc = jaxdistill.StudentCalculator("runs/si/student")

Per call the calculator does one jitted evaluation and one device-to-host transfer.
The neighbour list is built with a skin (cutoff + skin) and reused until some atom has
moved more than half the skin since it was built, or the cell, the periodicity or the
atoms change. Node and edge counts are padded to capacity buckets that only grow, so
an MD run compiles once (more only if the neighbour count grows past a bucket).
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import ase
import jax
import jax.numpy as jnp
import numpy as np
from ase.calculators.calculator import Calculator, PropertyNotImplementedError, all_changes

from jaxdistill.graph import Graph, batch_graphs, bucket_capacity, neighbour_pairs, validate_atoms
from jaxdistill.potential import voigt_stress
from jaxdistill.student import Student, load_student, resolve_dtype


class StudentCalculator(Calculator):
    """ASE calculator of a jaxdistill student.

    Args:
        student: a :class:`~jaxdistill.Student` or the path of a saved one.
        dtype: "float32" (default, fast) or "float64" (for energy-conservation checks;
            switches JAX to 64-bit mode).
        skin: extra neighbour-list radius in Å; larger means fewer rebuilds but more
            edges per call.

    Properties: energy and free_energy (eV), forces (eV/Å), stress (eV/Å³, Voigt order
    xx yy zz yz xz xy, only for cells periodic in all three directions).
    """

    implemented_properties: ClassVar[list[str]] = ["energy", "free_energy", "forces", "stress"]

    def __init__(
        self, student: Student | str | Path, dtype: str = "float32", skin: float = 0.5, **kwargs
    ):
        super().__init__(**kwargs)
        dtype = resolve_dtype(dtype)
        if not isinstance(student, Student):
            student = load_student(student)
        self.student = student.with_dtype(dtype) if student.dtype != dtype else student
        self.dtype = dtype
        self.skin = float(skin)
        self._predict = jax.jit(self.student.potential.predict)
        self._graph: Graph | None = None  # device-resident, positions replaced per call
        self._reference: tuple | None = None  # what the neighbour list was built for
        self._node_capacity = 0
        self._edge_capacity = 0
        self.neighbour_list_builds = 0

    def _needs_rebuild(self, atoms: ase.Atoms) -> bool:
        if self._reference is None:
            return True
        positions, cell, pbc, numbers = self._reference
        if (
            len(numbers) != len(atoms)
            or not np.array_equal(numbers, atoms.numbers)
            or not np.array_equal(pbc, atoms.pbc)
            or not np.array_equal(cell, atoms.cell.array)
        ):
            return True
        displacement = np.max(np.sum((atoms.positions - positions) ** 2, axis=1))
        return bool(displacement > (0.5 * self.skin) ** 2)

    def _rebuild(self, atoms: ase.Atoms) -> None:
        neighbours = neighbour_pairs(atoms, self.student.cutoff + self.skin)
        # Capacities only grow: a shrinking neighbour count must not trigger a compile.
        self._node_capacity = max(self._node_capacity, bucket_capacity(len(atoms) + 1))
        self._edge_capacity = max(self._edge_capacity, bucket_capacity(len(neighbours.senders) + 1))
        graph = batch_graphs(
            [atoms],
            self.student.cutoff,
            neighbours=[neighbours],
            node_capacity=self._node_capacity,
            edge_capacity=self._edge_capacity,
            graph_capacity=2,
            dtype=self.dtype,
        )
        self._graph = jax.tree_util.tree_map(jnp.asarray, graph)
        self._reference = (
            atoms.positions.copy(),
            atoms.cell.array.copy(),
            atoms.pbc.copy(),
            atoms.numbers.copy(),
        )
        self.neighbour_list_builds += 1

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms
        if "stress" in properties and not np.all(atoms.pbc):
            raise PropertyNotImplementedError("stress needs a cell periodic in all directions")
        validate_atoms(atoms, self.student.species)
        if self._needs_rebuild(atoms):
            self._rebuild(atoms)
        n_atoms = len(atoms)
        positions = np.zeros((self._node_capacity, 3), dtype=self.dtype)
        positions[:n_atoms] = atoms.positions
        graph = self._graph._replace(positions=jnp.asarray(positions))
        prediction = self._predict(self.student.params, graph)
        energy, forces, stress = jax.device_get(
            (prediction.energy[0], prediction.forces[:n_atoms], voigt_stress(prediction.stress[0]))
        )
        energy = float(energy)
        self.results = {
            "energy": energy,
            "free_energy": energy,
            "forces": np.asarray(forces, dtype=np.float64),
        }
        if np.all(atoms.pbc):
            self.results["stress"] = np.asarray(stress, dtype=np.float64)
