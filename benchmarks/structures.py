"""Benchmark structures: diamond Si cells, a water box and 1-hexanol (21 atoms)."""

from __future__ import annotations

import ase
import ase.build
import numpy as np


def silicon_cell(n_atoms: int) -> ase.Atoms:
    """Cubic diamond Si with n_atoms = 8 k^3 (64, 512, 4096, ...)."""
    k = round((n_atoms / 8) ** (1 / 3))
    if 8 * k**3 != n_atoms:
        raise ValueError(f"{n_atoms} is not 8 k^3")
    return ase.build.bulk("Si", "diamond", a=5.43, cubic=True) * (k, k, k)


def hexanol() -> ase.Atoms:
    """1-Hexanol, C6H13OH (21 atoms): an all-trans zigzag chain, unrelaxed.

    C-C 1.53 Å, C-H 1.09 Å, C-O 1.43 Å, O-H 0.96 Å, tetrahedral-ish angles; good enough
    as a timing and sampling start (teacher MD relaxes it).
    """
    symbols, positions = [], []
    dx, dy = 1.26, 0.87
    chain = [np.array([k * dx, (k % 2) * dy, 0.0]) for k in range(7)]  # C0..C5 then O
    for k in range(6):
        c = chain[k]
        outward = -1.0 if k % 2 == 0 else 1.0
        symbols.append("C")
        positions.append(c)
        for z in (0.89, -0.89):
            symbols.append("H")
            positions.append(c + np.array([0.0, 0.63 * outward, z]))
    symbols.append("H")  # third H on the methyl end
    positions.append(chain[0] + np.array([-1.03, 0.36, 0.0]))
    o = chain[5] + (chain[6] - chain[5]) / np.linalg.norm(chain[6] - chain[5]) * 1.43
    symbols.append("O")
    positions.append(o)
    symbols.append("H")
    positions.append(o + np.array([0.32, -0.90, 0.0]))
    atoms = ase.Atoms("".join(symbols), positions=positions)
    atoms.center(vacuum=5.0)
    atoms.pbc = False
    return atoms


def water_box(n_molecules: int = 216, density_g_cm3: float = 1.0, seed: int = 0) -> ase.Atoms:
    """A periodic cubic box of randomly oriented water molecules on a grid."""
    rng = np.random.default_rng(seed)
    mass = n_molecules * 18.015 / 6.02214076e23  # g
    side = (mass / density_g_cm3) ** (1 / 3) * 1e8  # Å
    per_side = int(np.ceil(n_molecules ** (1 / 3)))
    spacing = side / per_side
    water = ase.build.molecule("H2O")
    water.positions -= water.get_center_of_mass()
    atoms = ase.Atoms(cell=[side] * 3, pbc=True)
    count = 0
    for i in range(per_side):
        for j in range(per_side):
            for k in range(per_side):
                if count == n_molecules:
                    break
                molecule = water.copy()
                molecule.rotate(rng.uniform(0, 360), rng.normal(size=3), center=(0, 0, 0))
                molecule.positions += (np.array([i, j, k]) + 0.5) * spacing
                atoms += molecule
                count += 1
    return atoms
