"""Initial conditions of an MD run: the cell in standard form, starting momenta."""

from __future__ import annotations

import ase
import numpy as np
from ase.md.velocitydistribution import Stationary, thermalize_momenta


def standard_form(atoms: ase.Atoms) -> ase.Atoms:
    """A copy with the cell rotated to ASE's lower-triangular standard form.

    jax-md's general periodic space wants an upper-triangular box (columns = lattice
    vectors), the transpose of this. Positions and momenta rotate with the cell.
    """
    atoms = atoms.copy()
    cell = atoms.cell.array
    if np.linalg.det(cell) < 0:
        raise ValueError("left-handed cells are not supported: reorder the cell vectors")
    standard = np.asarray(atoms.cell.standard_form()[0])
    standard = np.where(np.abs(standard) < 1e-12, 0.0, standard)
    if np.allclose(standard, cell, rtol=0, atol=1e-12):
        return atoms
    rotation = np.linalg.solve(cell, standard)  # row vectors: x_new = x_old @ rotation
    momenta = atoms.get_momenta() @ rotation
    atoms.set_cell(standard, scale_atoms=True)
    atoms.set_momenta(momenta, apply_constraint=False)
    return atoms


def initial_momenta(
    atoms: ase.Atoms,
    temperature: float,
    seed: int,
    initial_velocities: str,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Starting momenta: zero, the atoms' own, or Maxwell-Boltzmann at ``temperature``
    (K) with the centre-of-mass motion removed, drawn from ``rng`` (default: a fresh
    generator seeded by ``seed``)."""
    if initial_velocities not in ("auto", "maxwell", "atoms", "zero"):
        raise ValueError("initial_velocities must be 'auto', 'maxwell', 'atoms' or 'zero'")
    momenta = atoms.get_momenta()
    if initial_velocities == "zero":
        return np.zeros_like(momenta)
    if initial_velocities == "atoms" or (initial_velocities == "auto" and np.any(momenta != 0.0)):
        return momenta
    work = atoms.copy()
    rng = rng if rng is not None else np.random.default_rng(seed)
    thermalize_momenta(work, temperature_K=temperature, rng=rng)
    if len(work) > 1:
        Stationary(work)
    return work.get_momenta()
