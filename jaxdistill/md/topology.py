"""Covalent connectivity: how many bonded pieces a structure is in.

A molecule in vacuum that breaks apart keeps its temperature (the thermostat does not
notice), so a temperature check cannot see it. Counting the connected pieces of the
covalent bond graph can: when the count rises above the starting structure's, a bond
broke for good.
"""

from __future__ import annotations

import ase
import numpy as np
from ase.data import covalent_radii
from ase.neighborlist import neighbor_list
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

__all__ = ["DEFAULT_BOND_FACTOR", "bonded_fragments"]

#: Two atoms count as bonded when closer than this multiple of the sum of their
#: covalent radii. 1.5 keeps hot vibrating bonds (C-H at 600 K stays below 1.3 Å, the
#: limit is 1.6 Å) while a dissociated atom leaves it within a few tens of femtoseconds.
DEFAULT_BOND_FACTOR = 1.5


def bonded_fragments(atoms: ase.Atoms, factor: float = DEFAULT_BOND_FACTOR) -> int:
    """Number of connected pieces of the covalent bond graph (periodic images included).

    Args:
        atoms: the structure (any periodicity).
        factor: atoms ``i, j`` are bonded when ``d_ij < factor * (r_i + r_j)`` with
            ``r`` the covalent radii of ``ase.data.covalent_radii``, Å.

    Returns:
        The number of pieces (1 for an intact molecule or a connected solid).
    """
    n = len(atoms)
    if n == 0:
        return 0
    radii = factor * covalent_radii[atoms.numbers]
    i, j = neighbor_list("ij", atoms, radii.tolist(), self_interaction=False)
    graph = coo_matrix((np.ones(len(i), dtype=np.int8), (i, j)), shape=(n, n))
    count, _ = connected_components(graph, directed=False)
    return int(count)
