"""The teacher protocol, shared helpers and ensembles.

A *teacher* labels structures with energy, forces and (for periodic cells) stress.
Every teacher, whatever its package, answers through the same small interface:

- ``teacher.label(frames) -> list[TeacherLabels]`` (one entry per frame, same order);
- ``teacher.provenance() -> dict`` (name, package version, weights and their SHA-256,
  precision, device), written into every label store;
- ``teacher.as_calculator() -> ase.calculators.calculator.Calculator`` so that ASE
  molecular dynamics (the sampler) can be driven by the teacher itself.

Units are ASE's: energy eV, forces eV/Å, stress eV/Å³ in Voigt order
``xx yy zz yz xz xy`` with ASE's sign (positive stress = the cell wants to shrink,
i.e. ``stress = (1/V) dE/dε``).

This module imports neither torch nor any teacher package: the adapters
(:mod:`jaxdistill.teachers.orb`, ``.fennol``, ``.sevennet``) import their package inside
the function that needs it, so ``import jaxdistill.teachers`` stays light.
"""

from __future__ import annotations

import abc
import hashlib
import importlib
import importlib.metadata
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import ase
import numpy as np
from ase.calculators.calculator import Calculator, all_changes

__all__ = [
    "BaseTeacher",
    "EnsembleTeacher",
    "Teacher",
    "TeacherCalculator",
    "TeacherLabels",
    "file_sha256",
    "package_version",
    "require_package",
]


@dataclass(frozen=True)
class TeacherLabels:
    """The labels of one structure.

    Attributes:
        energy: Total potential energy, eV.
        forces: Forces, eV/Å, shape ``[n_atoms, 3]`` (float64).
        stress: Stress, eV/Å³, shape ``[6]``, Voigt order ``xx yy zz yz xz xy``, ASE
            sign. All NaN when not labelled (non-periodic or partly periodic cell, or a
            teacher without stress).
        force_disagreement: For an ensemble, the spread of the members' forces, eV/Å:
            ``sqrt(mean_i mean_m |F_i^m - mean_m F_i^m|^2)``, i.e. the RMS over atoms
            ``i`` of the standard deviation over members ``m`` of the force vector
            (population std, summed over x, y, z). NaN for a single model.
        energy_disagreement: For an ensemble, the population standard deviation of the
            members' total energies, eV. NaN for a single model.
    """

    energy: float
    forces: np.ndarray
    stress: np.ndarray
    force_disagreement: float = math.nan
    energy_disagreement: float = math.nan

    @property
    def has_stress(self) -> bool:
        """Whether the stress was labelled (all six components finite)."""
        return bool(np.all(np.isfinite(self.stress)))


NAN_STRESS = np.full(6, np.nan)


@runtime_checkable
class Teacher(Protocol):
    """What every teacher provides (structural type: any object with these works)."""

    @property
    def name(self) -> str:
        """A short human-readable name, e.g. ``orb-v3-direct-20-omat``."""
        ...

    def label(self, frames: Sequence[ase.Atoms]) -> list[TeacherLabels]:
        """Label structures; one :class:`TeacherLabels` per frame, in order."""
        ...

    def provenance(self) -> dict[str, Any]:
        """JSON-serialisable description: name, package, version, weights, SHA-256..."""
        ...

    def as_calculator(self) -> Calculator:
        """An ASE calculator whose results are this teacher's labels."""
        ...


def wants_stress(atoms: ase.Atoms) -> bool:
    """Whether a structure should get a stress label: periodic in all three directions.

    Stress of a partly periodic cell (a slab) is ill-defined in the usual Voigt form, and
    most teachers refuse such cells, so only fully periodic cells with a non-zero volume
    get one.
    """
    return bool(np.all(atoms.pbc)) and abs(atoms.cell.volume) > 1e-12


def file_sha256(path: str | Path) -> str:
    """SHA-256 hex digest of a file, read in 1 MiB blocks.

    Args:
        path: The file.

    Returns:
        The 64-character lowercase hex digest.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def package_version(distribution: str) -> str:
    """Installed version of a distribution, or ``"unknown"``."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def require_package(module: str, extra: str, distribution: str | None = None) -> Any:
    """Import a teacher's package, or raise an ImportError that says how to install it.

    Args:
        module: Module to import, e.g. ``"orb_models.forcefield.pretrained"``.
        extra: The jaxdistill extra that installs it, e.g. ``"orb"``.
        distribution: The pip name, for the message (defaults to the top-level module).

    Returns:
        The imported module.

    Raises:
        ImportError: With a ``pip install 'jaxdistill[extra]'`` hint; the original
            import error is summarised in the message, not chained, so the user sees one
            short error rather than a deep traceback.
    """
    try:
        return importlib.import_module(module)
    except ImportError as error:
        name = distribution or module.split(".")[0]
        raise ImportError(
            f"this teacher needs the '{name}' package, which could not be imported "
            f"({error}). Install it with: pip install 'jaxdistill[{extra}]'"
        ) from None


def check_file(path: str | Path, what: str) -> Path:
    """Return ``path`` as a Path, or raise FileNotFoundError naming the missing file."""
    resolved = Path(path).expanduser()
    if not resolved.is_file():
        raise FileNotFoundError(f"{what} not found: {resolved}")
    return resolved


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class BaseTeacher(abc.ABC):
    """Shared machinery for teachers: batching, provenance, ASE-calculator view.

    Subclasses implement :meth:`_label_batch` (and usually set ``batch_size`` > 1 only
    when their package evaluates several structures in one call).

    Attributes:
        batch_size: Frames handed to one :meth:`_label_batch` call.
    """

    batch_size: int = 1

    def __init__(self, name: str, provenance: dict[str, Any]) -> None:
        self._name = name
        self._provenance = dict(provenance)
        self._provenance.setdefault("name", name)

    @property
    def name(self) -> str:
        """Short human-readable name of the teacher."""
        return self._name

    def provenance(self) -> dict[str, Any]:
        """A copy of the provenance dictionary (JSON-serialisable)."""
        return dict(self._provenance)

    def label(self, frames: Sequence[ase.Atoms]) -> list[TeacherLabels]:
        """Label frames with energy (eV), forces (eV/Å) and stress (eV/Å³).

        Args:
            frames: Structures; they are not modified.

        Returns:
            One :class:`TeacherLabels` per frame, in order.
        """
        frames = list(frames)
        labels: list[TeacherLabels] = []
        for chunk in _chunks(frames, max(1, int(self.batch_size))):
            out = self._label_batch(chunk)
            if len(out) != len(chunk):
                raise RuntimeError(
                    f"teacher {self.name} returned {len(out)} labels for {len(chunk)} frames"
                )
            labels.extend(out)
        return labels

    @abc.abstractmethod
    def _label_batch(self, frames: Sequence[ase.Atoms]) -> list[TeacherLabels]:
        """Label at most ``batch_size`` frames."""

    def as_calculator(self) -> TeacherCalculator:
        """An ASE calculator driven by this teacher (used for teacher MD)."""
        return TeacherCalculator(self)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


class TeacherCalculator(Calculator):
    """ASE calculator view of a teacher: results are exactly ``teacher.label([atoms])``.

    ``results`` holds ``energy``/``free_energy`` (eV), ``forces`` (eV/Å), ``stress``
    (eV/Å³, Voigt, only for fully periodic cells) and, for ensembles,
    ``force_disagreement`` (eV/Å) and ``energy_disagreement`` (eV).
    """

    implemented_properties = ["energy", "free_energy", "forces", "stress"]  # noqa: RUF012

    def __init__(self, teacher: Teacher, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.teacher = teacher

    def calculate(
        self,
        atoms: ase.Atoms | None = None,
        properties: Sequence[str] | None = None,
        system_changes: Sequence[str] = tuple(all_changes),
    ) -> None:
        super().calculate(atoms, properties, system_changes)
        labels = self.teacher.label([self.atoms])[0]
        self.results = {
            "energy": labels.energy,
            "free_energy": labels.energy,
            "forces": labels.forces.copy(),
        }
        if labels.has_stress:
            self.results["stress"] = labels.stress.copy()
        if math.isfinite(labels.force_disagreement):
            self.results["force_disagreement"] = labels.force_disagreement
            self.results["energy_disagreement"] = labels.energy_disagreement


def combine_ensemble(member_labels: Sequence[TeacherLabels]) -> TeacherLabels:
    """Mean labels of an ensemble and their disagreement.

    Args:
        member_labels: One structure's labels from each member (at least one).

    Returns:
        Labels whose energy, forces and stress are the member means, with
        ``force_disagreement`` = RMS over atoms of the per-atom standard deviation
        (over members) of the force vector, eV/Å, and ``energy_disagreement`` = the
        standard deviation of the members' energies, eV (population std, ``ddof=0``).
    """
    forces = np.stack([m.forces for m in member_labels])  # [M, n, 3]
    energies = np.array([m.energy for m in member_labels])
    stresses = np.stack([m.stress for m in member_labels])
    mean_forces = forces.mean(axis=0)
    # Per-atom variance of the force vector: mean over members of |F^m - <F>|^2.
    per_atom_var = ((forces - mean_forces) ** 2).sum(axis=-1).mean(axis=0)
    force_disagreement = float(np.sqrt(per_atom_var.mean())) if per_atom_var.size else 0.0
    return TeacherLabels(
        energy=float(energies.mean()),
        forces=mean_forces,
        stress=stresses.mean(axis=0),
        force_disagreement=force_disagreement,
        energy_disagreement=float(energies.std()),
    )


class EnsembleTeacher(BaseTeacher):
    """Several teachers labelling the same frames; labels are the members' mean.

    The per-structure disagreement (see :func:`combine_ensemble`) estimates how far the
    teacher itself can be trusted on a structure.

    Args:
        members: The member teachers (at least one).
        name: Name of the ensemble (default: first member's name + ``-ensemble``).
        provenance: Extra provenance keys; the members' provenances are recorded under
            ``members``, and ``weights``/``weights_sha256`` concatenate theirs.
    """

    def __init__(
        self,
        members: Sequence[Teacher],
        name: str | None = None,
        provenance: dict[str, Any] | None = None,
    ) -> None:
        if not members:
            raise ValueError("an ensemble needs at least one member teacher")
        self.members = list(members)
        member_prov = [m.provenance() for m in self.members]
        prov: dict[str, Any] = {
            "package": member_prov[0].get("package", "unknown"),
            "version": member_prov[0].get("version", "unknown"),
            "weights": [w for p in member_prov for w in p.get("weights", [])],
            "weights_sha256": [w for p in member_prov for w in p.get("weights_sha256", [])],
            "precision": member_prov[0].get("precision", "unknown"),
            "device": member_prov[0].get("device", "unknown"),
            "ensemble_size": len(self.members),
            "members": member_prov,
        }
        prov.update(provenance or {})
        super().__init__(name or f"{self.members[0].name}-ensemble", prov)
        self.batch_size = max(getattr(m, "batch_size", 1) for m in self.members)

    def _label_batch(self, frames: Sequence[ase.Atoms]) -> list[TeacherLabels]:
        per_member = [member.label(frames) for member in self.members]
        return [combine_ensemble([labels[i] for labels in per_member]) for i in range(len(frames))]

    @property
    def hessian_vector_products(self) -> Any:
        """The members' mean autodiff ``H·u``, present only when every member has it.

        The ensemble's energy is the members' mean, so its Hessian is their mean
        Hessian. When a member lacks the method this attribute is absent
        (``AttributeError``: ``hasattr``/``getattr(..., None)`` see no method), so
        Hessian labels fall back to finite differences of the mean forces.
        """
        methods = [getattr(member, "hessian_vector_products", None) for member in self.members]
        if not all(callable(method) for method in methods):
            raise AttributeError(
                f"not every member of {self.name} has autodiff hessian_vector_products"
            )

        def mean_hvp(atoms: ase.Atoms, directions: np.ndarray) -> np.ndarray:
            """Mean over members of ``H_m·u_k``: ``[K, n_atoms, 3]`` float64, eV/Å²."""
            return np.mean(
                [np.asarray(method(atoms, directions), dtype=np.float64) for method in methods],
                axis=0,
            )

        return mean_hvp

    @property
    def label_with_hessian(self) -> Any:
        """Labels (:func:`combine_ensemble`) and the members' mean ``H·u`` of one
        structure from each member's ``label_with_hessian``; present only when every
        member has it (as :attr:`hessian_vector_products`)."""
        methods = [getattr(member, "label_with_hessian", None) for member in self.members]
        if not all(callable(method) for method in methods):
            raise AttributeError(f"not every member of {self.name} has label_with_hessian")

        def labels_and_mean_hvp(
            atoms: ase.Atoms, directions: np.ndarray
        ) -> tuple[TeacherLabels, np.ndarray]:
            """``(labels, mean H·u [K, n_atoms, 3] float64 eV/Å²)``."""
            per_member = [method(atoms, directions) for method in methods]
            labels = combine_ensemble([labels for labels, _ in per_member])
            products = np.mean([np.asarray(p, dtype=np.float64) for _, p in per_member], axis=0)
            return labels, products

        return labels_and_mean_hvp
