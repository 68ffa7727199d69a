"""bonded_fragments: covalent pieces of molecules and solids, periodic images included."""

from __future__ import annotations

import ase
import ase.build
import numpy as np
from structures import ethanol, hydrogen_and_its_carbon, silicon

from jaxdistill.md.topology import bonded_fragments


def test_intact_molecule_and_crystal_are_one_piece():
    assert bonded_fragments(ethanol()) == 1
    assert bonded_fragments(silicon(repeat=(2, 2, 2), rattle=0.1)) == 1


def test_a_departed_atom_is_a_second_piece():
    atoms = ethanol()
    hydrogen, carbon = hydrogen_and_its_carbon(atoms)
    direction = atoms.positions[hydrogen] - atoms.positions[carbon]
    atoms.positions[hydrogen] += 3.0 * direction / np.linalg.norm(direction)
    assert bonded_fragments(atoms) == 2


def test_separate_molecules_count_separately():
    water = ase.build.molecule("H2O")
    pair = water + water
    pair.positions[3:] += [5.0, 0.0, 0.0]
    assert bonded_fragments(pair) == 2


def test_bond_across_the_periodic_boundary():
    # H2 split by the cell face: 0.74 Å apart through the boundary, 9.26 Å inside.
    atoms = ase.Atoms("H2", positions=[[0.1, 5, 5], [9.36, 5, 5]], cell=[10, 10, 10], pbc=True)
    assert bonded_fragments(atoms) == 1
    atoms.pbc = False
    assert bonded_fragments(atoms) == 2


def test_factor_sets_the_bond_length():
    # C-H covalent radii sum 0.76 + 0.31 = 1.07 Å; a C-H bond stretched to 1.5 Å.
    atoms = ase.Atoms("CH", positions=[[0, 0, 0], [1.5, 0, 0]])
    assert bonded_fragments(atoms, factor=1.5) == 1  # limit 1.605 Å
    assert bonded_fragments(atoms, factor=1.2) == 2  # limit 1.284 Å
