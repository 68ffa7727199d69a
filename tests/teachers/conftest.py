"""Helpers for the teacher tests: the shared-folder locator and a finite-difference stress."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import ase
import numpy as np
import pytest

# ../shared beside the checkout (repo root = parents[2] of this file).
SHARED = Path(__file__).resolve().parents[2] / ".." / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The shared folder, or skip when it is absent (as on a user's machine)."""
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED.resolve()} not found: the shared teachers folder is absent here")
    return SHARED.resolve()


@pytest.fixture(scope="session")
def fennol_ani1x(shared_dir: Path) -> Path:
    """Folder of the FeNNol ANI-1x ensemble (ani1x_model0..7.fnx), or skip."""
    folder = shared_dir / "teachers" / "fennol-ani1x"
    if not (folder / "ani1x_model0.fnx").is_file():
        pytest.skip(f"{folder}/ani1x_model0.fnx not found: FeNNol ANI-1x models absent here")
    return folder


def finite_difference_stress(
    energies: Callable[[list[ase.Atoms]], Sequence[float]], atoms: ase.Atoms, delta: float = 1e-3
) -> np.ndarray:
    """Stress (eV/Å³, Voigt xx yy zz yz xz xy, ASE sign) = (1/V) dE/dε by central differences.

    The strain is applied symmetrically, x' = (1 + ε) x, with atoms moving with the cell.
    ``energies`` gets all 12 strained structures in one list (so a teacher can batch).
    """
    voigt = [(0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1)]
    strained = []
    for i, j in voigt:
        for sign in (1.0, -1.0):
            eps = np.zeros((3, 3))
            eps[i, j] += 0.5 * sign * delta
            eps[j, i] += 0.5 * sign * delta
            new = atoms.copy()
            new.set_cell(atoms.cell.array @ (np.eye(3) + eps), scale_atoms=True)
            strained.append(new)
    values = np.asarray(energies(strained), dtype=np.float64).reshape(6, 2)
    return (values[:, 0] - values[:, 1]) / (2 * delta) / atoms.get_volume()


@pytest.fixture(scope="session")
def fd_stress() -> Callable[..., np.ndarray]:
    """The :func:`finite_difference_stress` helper."""
    return finite_difference_stress
