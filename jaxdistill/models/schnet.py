"""SchNet-style invariant message passing: the cheapest student, for the fastest MD.

Schütt et al., "SchNet: a continuous-filter convolutional neural network for modeling
quantum interactions", NeurIPS 2017; here with a Bessel basis and a polynomial
envelope so that energies and forces are smooth at the cutoff.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdistill.models.common import (
    AtomicEnergyHead,
    bessel_basis,
    polynomial_envelope,
    safe_norm,
    species_index_table,
)
from jaxdistill.models.repulsion import zbl_atomic_energies


class SchNetInteraction(nn.Module):
    """One continuous-filter convolution with a residual update."""

    features: int

    @nn.compact
    def __call__(self, h, radial, envelope, senders, receivers):
        filters = nn.Dense(self.features)(nn.silu(nn.Dense(self.features)(radial)))
        filters = filters * envelope[:, None]
        x = nn.Dense(self.features, use_bias=False)(h)
        messages = jax.ops.segment_sum(x[senders] * filters, receivers, num_segments=h.shape[0])
        return h + nn.Dense(self.features)(nn.silu(nn.Dense(self.features)(messages)))


class SchNet(nn.Module):
    """Invariant student: distances only, no angular information.

    Attributes:
        species: atomic numbers the student knows.
        cutoff: radial cutoff, Å.
        features: feature channels.
        num_layers: interaction blocks.
        num_radial: Bessel functions in the radial basis.
        repulsion: "zbl" adds the ZBL screened nuclear repulsion for compressed
            pairs (see ``jaxdistill.models.repulsion``); None for none.
    """

    species: Sequence[int]
    cutoff: float
    features: int = 64
    num_layers: int = 3
    num_radial: int = 16
    repulsion: str | None = None

    @nn.compact
    def __call__(self, numbers, edge_vectors, senders, receivers, node_mask, edge_mask):
        """Per-atom energies ``[n_node]`` (eV) from atomic numbers and edge vectors (Å)."""
        species_index = jnp.asarray(species_index_table(self.species))[numbers]
        distances = safe_norm(edge_vectors, edge_mask)
        envelope = polynomial_envelope(distances, self.cutoff) * edge_mask
        radial = bessel_basis(distances, self.cutoff, self.num_radial)
        h = nn.Embed(len(self.species), self.features, name="embedding")(species_index)
        for layer in range(self.num_layers):
            h = SchNetInteraction(self.features, name=f"interaction_{layer}")(
                h, radial, envelope, senders, receivers
            )
        energies = AtomicEnergyHead(len(self.species), self.features // 2, name="head")(
            h, species_index
        )
        if self.repulsion == "zbl":
            energies = energies + zbl_atomic_energies(
                numbers, edge_vectors, senders, receivers, edge_mask, self.species
            )
        return energies * node_mask
