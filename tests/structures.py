"""Small real structures shared by the tests."""

from __future__ import annotations

from pathlib import Path

import ase
import ase.build
import numpy as np
import pytest

SPECIES = ("H", "C", "O", "Si")
SHARED = Path(__file__).resolve().parents[2] / "shared"


def shared_path(*parts: str) -> Path:
    """A path in ../shared beside the checkout, or skip the test with the reason."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} not found: ../shared (teachers, device files) is absent here")
    return path


def silicon(repeat=(1, 1, 1), rattle: float = 0.05, seed: int = 0, cubic: bool = True) -> ase.Atoms:
    """Diamond silicon, rattled so forces are non-zero."""
    atoms = ase.build.bulk("Si", "diamond", a=5.43, cubic=cubic) * repeat
    if rattle:
        atoms.rattle(rattle, seed=seed)
    return atoms


def ethanol(seed: int = 0) -> ase.Atoms:
    """A slightly distorted ethanol molecule (H, C, O; no cell)."""
    atoms = ase.build.molecule("CH3CH2OH")
    atoms.rattle(0.05, seed=seed)
    return atoms


def hydrogen_and_its_carbon(atoms: ase.Atoms) -> tuple[int, int]:
    """The first hydrogen of a molecule and the carbon nearest to it (indices)."""
    hydrogen = int(np.where(atoms.numbers == 1)[0][0])
    carbons = np.where(atoms.numbers == 6)[0]
    distances = np.linalg.norm(atoms.positions[carbons] - atoms.positions[hydrogen], axis=1)
    return hydrogen, int(carbons[np.argmin(distances)])


def triclinic_si() -> ase.Atoms:
    """The 2-atom primitive Si cell (triclinic, smaller than twice the cutoff)."""
    atoms = ase.build.bulk("Si", "diamond", a=5.43)
    atoms.positions[1] += np.array([0.07, -0.03, 0.05])
    return atoms
