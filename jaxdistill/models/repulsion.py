"""Short-range nuclear repulsion (ZBL) added to a student's learned energy.

A message-passing network is bounded as two atoms approach: nothing in its radial
basis forces the energy up, so a hot MD excursion into a pair distance the training
data never reached can fall into a spurious hole and the trajectory blows up. The
Ziegler-Biersack-Littmark universal screened Coulomb potential supplies the physics the
data lack there:

``E_ij = k Z_i Z_j / r · φ(r / a) · u(r / r_max)``, with ``k = e²/4πε₀ = 14.3996 eV Å``,
screening length ``a = 0.46850 Å / (Z_i^0.23 + Z_j^0.23)`` and
``φ(x) = 0.18175 e^{-3.1998x} + 0.50986 e^{-0.94229x} + 0.28022 e^{-0.4029x}
+ 0.02817 e^{-0.20162x}``. The polynomial envelope ``u`` switches it off smoothly
(value, slope and curvature zero) at ``r_max``, the sum of the two covalent radii,
so near equilibrium bonds the network alone describes the teacher and the repulsion
only acts on compressed pairs (as MACE and NequIP do).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from ase.data import covalent_radii

from jaxdistill.models.common import polynomial_envelope, safe_norm
from jaxdistill.models.edges import Edges

REPULSIONS = (None, "zbl")
COULOMB_EV_ANGSTROM = 14.399645
_PHI_COEFFICIENTS = (0.18175, 0.50986, 0.28022, 0.02817)
_PHI_EXPONENTS = (3.19980, 0.94229, 0.40290, 0.20162)


def check_repulsion(repulsion: str | None) -> str | None:
    """Validate a ``repulsion`` option ("zbl" or None/"none")."""
    if repulsion in (None, "none"):
        return None
    if repulsion not in REPULSIONS:
        raise ValueError(f"repulsion must be 'zbl' or None, got {repulsion!r}")
    return repulsion


def zbl_pair_energy(
    distance: jax.Array, z_i: jax.Array, z_j: jax.Array, r_max: jax.Array
) -> jax.Array:
    """ZBL energy of pairs, switched off at ``r_max``.

    Args:
        distance: ``[n]`` Å, positive.
        z_i, z_j: ``[n]`` atomic numbers.
        r_max: ``[n]`` Å where the envelope reaches zero.

    Returns:
        ``[n]`` eV per pair.
    """
    z_i = z_i.astype(distance.dtype)
    z_j = z_j.astype(distance.dtype)
    screening_length = 0.46850 / (z_i**0.23 + z_j**0.23)
    x = distance / screening_length
    phi = sum(c * jnp.exp(-e * x) for c, e in zip(_PHI_COEFFICIENTS, _PHI_EXPONENTS, strict=True))
    coulomb = COULOMB_EV_ANGSTROM * z_i * z_j / distance
    # The envelope is a polynomial of r / r_max, so it is evaluated per pair.
    envelope = polynomial_envelope(distance / r_max, 1.0)
    return coulomb * phi * envelope


def zbl_atomic_energies(
    numbers: jax.Array,
    edge_vectors: jax.Array,
    edges: Edges,
    edge_mask: jax.Array,
    species: Sequence[int],
) -> jax.Array:
    """Per-atom ZBL energies: half of each pair's energy to each of its two atoms.

    Edges come in both directions (i→j and j→i), so giving each receiver half of its
    edges' energies counts every pair once in the total.

    Args:
        numbers: ``[n_node]`` atomic numbers.
        edge_vectors: ``[n_edge, 3]`` Å.
        edges: senders and receivers (``[n_edge]`` node indices) and their layout.
        edge_mask: ``[n_edge]`` True for real edges.
        species: atomic numbers the student knows (bounds the covalent-radius table).

    Returns:
        ``[n_node]`` eV.
    """
    radii = np.zeros(119)
    radii[list(species)] = covalent_radii[list(species)]
    radii = jnp.asarray(radii, dtype=edge_vectors.dtype)
    distance = safe_norm(edge_vectors, edge_mask)
    z_s, z_r = numbers[edges.senders], numbers[edges.receivers]
    r_max = radii[z_s] + radii[z_r]
    # Padding edges get Z = 1 so nothing divides by zero; they are masked below.
    pair = zbl_pair_energy(
        distance,
        jnp.where(edge_mask, z_s, 1),
        jnp.where(edge_mask, z_r, 1),
        jnp.where(edge_mask & (r_max > 0), r_max, 1.0),
    )
    pair = jnp.where(edge_mask, pair, 0.0)
    return 0.5 * edges.to_receivers(pair, numbers.shape[0])
