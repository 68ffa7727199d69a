"""Any ASE calculator as a teacher (EMT, SevenNet, MACE, FeNNol's calculator, ...).

Labels are read from the calculator exactly as an ASE script would read them, one
structure per call, so they equal ``atoms.get_potential_energy()``,
``atoms.get_forces(apply_constraint=False)`` and ``atoms.get_stress()`` with that
calculator attached.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from typing import Any

import ase
import numpy as np
from ase.calculators.calculator import Calculator, PropertyNotImplementedError

from jaxdistill.teachers.base import (
    NAN_STRESS,
    BaseTeacher,
    TeacherLabels,
    package_version,
    wants_stress,
)

__all__ = ["AseTeacher", "load_ase_teacher"]


class AseTeacher(BaseTeacher):
    """Wrap an ASE calculator as a teacher.

    Args:
        calculator: The calculator. It is shared between calls (so calculators that
            keep state between similar structures, like neighbour lists, stay fast).
        name: Teacher name (default: the calculator's class name).
        device: Recorded in the provenance.
        provenance: Extra provenance keys (``package``, ``version``, ``weights``,
            ``weights_sha256``, ``precision``, ``spec`` ...), overriding the defaults.
    """

    def __init__(
        self,
        calculator: Calculator,
        *,
        name: str | None = None,
        device: str = "cpu",
        provenance: dict[str, Any] | None = None,
    ) -> None:
        cls = type(calculator)
        top = cls.__module__.split(".")[0]
        prov: dict[str, Any] = {
            "package": top,
            "version": package_version(top),
            "calculator": f"{cls.__module__}.{cls.__qualname__}",
            "weights": [],
            "weights_sha256": [],
            "precision": "float64" if top == "ase" else "unknown",
            "device": device,
            "ase_version": ase.__version__,
        }
        prov.update(provenance or {})
        super().__init__(name or cls.__name__, prov)
        self.calculator = calculator

    def _before_call(self, atoms: ase.Atoms) -> None:
        """Hook for adapters that must reset upstream state between structures."""

    def _label_one(self, atoms: ase.Atoms) -> TeacherLabels:
        calc = self.calculator
        work = atoms.copy()
        # Attaching calls calc.set_atoms when the calculator has it (SevenNet uses it to
        # refuse elements it does not know), exactly as a user's script would.
        work.calc = calc
        self._before_call(work)
        stress = NAN_STRESS
        # Ask for the most complete property first: calculators compute energy and
        # forces together with the stress, so the later requests hit the cache.
        if wants_stress(work) and "stress" in calc.implemented_properties:
            try:
                stress = np.asarray(calc.get_property("stress", work), dtype=np.float64)
            except PropertyNotImplementedError:
                stress = NAN_STRESS
            if stress.shape == (3, 3):
                stress = np.array(
                    [
                        stress[0, 0],
                        stress[1, 1],
                        stress[2, 2],
                        stress[1, 2],
                        stress[0, 2],
                        stress[0, 1],
                    ]
                )
        forces = np.asarray(calc.get_property("forces", work), dtype=np.float64).reshape(
            len(work), 3
        )
        energy = float(calc.get_property("energy", work))
        return TeacherLabels(
            energy=energy, forces=forces, stress=np.array(stress, dtype=np.float64)
        )

    def _label_batch(self, frames: Sequence[ase.Atoms]) -> list[TeacherLabels]:
        return [self._label_one(atoms) for atoms in frames]


def load_ase_teacher(body: str, device: str = "cpu", **kwargs: Any) -> AseTeacher:
    """Build a teacher from ``<module>:<factory>`` (the part after ``ase:``).

    Args:
        body: E.g. ``"ase.calculators.emt:EMT"``; ``factory(**kwargs)`` must return an
            ASE Calculator.
        device: Recorded in the provenance.
        **kwargs: Passed to the factory.

    Returns:
        An :class:`AseTeacher`.
    """
    module_name, sep, factory_name = body.rpartition(":")
    if not sep or not module_name or not factory_name:
        raise ValueError(f"ase teacher spec must be ase:<module>:<factory>, got ase:{body!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ImportError(
            f"cannot import module {module_name!r} for teacher ase:{body} ({error})"
        ) from None
    factory: Callable[..., Any] | None = getattr(module, factory_name, None)
    if factory is None or not callable(factory):
        raise ValueError(
            f"module {module_name!r} has no callable {factory_name!r} (teacher ase:{body})"
        )
    calculator = factory(**kwargs)
    if not isinstance(calculator, Calculator) and not hasattr(calculator, "get_property"):
        raise TypeError(f"ase:{body} returned {type(calculator)!r}, not an ASE calculator")
    top = module_name.split(".")[0]
    prov = {
        "spec": f"ase:{body}",
        "factory_kwargs": {k: repr(v) for k, v in kwargs.items()},
        "package": top,
        "version": package_version(top),
    }
    return AseTeacher(calculator, name=factory_name, device=device, provenance=prov)
