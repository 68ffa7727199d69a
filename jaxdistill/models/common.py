"""Building blocks shared by the students: radial bases, cutoff envelope, species."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


def safe_norm(vectors: jax.Array, mask: jax.Array) -> jax.Array:
    """Length of each vector, with masked (padding, zero-length) ones set to 1.

    ``jnp.linalg.norm`` has an infinite gradient at zero; padding edges have zero
    length, so their length is replaced before the square root. Their contributions
    are masked later, so the value 1 never reaches an energy.

    Args:
        vectors: ``[n, 3]``.
        mask: ``[n]`` bool, True for real vectors.

    Returns:
        ``[n]`` lengths.
    """
    squared = jnp.sum(vectors**2, axis=-1)
    return jnp.sqrt(jnp.where(mask & (squared > 0), squared, 1.0))


def polynomial_envelope(distance: jax.Array, cutoff: float, exponent: int = 6) -> jax.Array:
    """Smooth cutoff u(r) of DimeNet: 1 at r=0, value, slope and curvature 0 at r=cutoff.

    Energies and forces are therefore continuous (and forces smooth) as a neighbour
    crosses the cutoff, which keeps NVE energy conserved.
    """
    p = exponent
    x = distance / cutoff
    u = (
        1.0
        - (p + 1) * (p + 2) / 2 * x**p
        + p * (p + 2) * x ** (p + 1)
        - p * (p + 1) / 2 * x ** (p + 2)
    )
    return jnp.where(x < 1.0, u, 0.0)


def bessel_basis(distance: jax.Array, cutoff: float, num_radial: int) -> jax.Array:
    """Radial Bessel functions sqrt(2/c) sin(nπr/c)/r, n = 1..num_radial, ``[n, num_radial]``."""
    n = jnp.arange(1, num_radial + 1, dtype=distance.dtype)
    r = distance[:, None]
    return jnp.sqrt(2.0 / cutoff) * jnp.sin(n * jnp.pi * r / cutoff) / r


def species_index_table(species: Sequence[int]) -> np.ndarray:
    """Table mapping atomic number (0..118) to the student's species index.

    Unknown elements map to 0; callers validate elements on the host before this.
    """
    table = np.zeros(119, dtype=np.int32)
    for index, number in enumerate(species):
        table[int(number)] = index
    return table


class AtomicEnergyHead(nn.Module):
    """Per-atom energy from scalar features, then per-species scale and shift.

    ``E_i = scale[s_i] * MLP(h_i) + shift[s_i]``. The shift holds per-species reference
    energies (fitted by least squares before training) and the scale the typical
    size of the interaction energy, so the network itself works with numbers of order
    one.
    """

    num_species: int
    hidden: int

    @nn.compact
    def __call__(self, features: jax.Array, species_index: jax.Array) -> jax.Array:
        x = nn.silu(nn.Dense(self.hidden, name="hidden")(features))
        x = nn.Dense(1, name="out")(x)[:, 0]
        scale = self.param("atomic_scale", nn.initializers.ones, (self.num_species,))
        shift = self.param("atomic_shift", nn.initializers.zeros, (self.num_species,))
        return x * scale[species_index] + shift[species_index]
