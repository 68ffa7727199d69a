"""SchNet-style invariant message passing: the cheapest student, for the fastest MD.

Schütt et al., "SchNet: a continuous-filter convolutional neural network for modeling
quantum interactions", NeurIPS 2017; here with a Bessel basis and a polynomial
envelope so that energies and forces are smooth at the cutoff.
"""

from __future__ import annotations

import flax.linen as nn
import jax

from jaxdistill.models.base import StudentModule, edge_geometry


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


class SchNet(StudentModule):
    """Invariant student: distances only, no angular information; settings in
    :class:`StudentModule` (``num_layers``: interaction blocks)."""

    @nn.compact
    def __call__(self, numbers, edge_vectors, senders, receivers, node_mask, edge_mask):
        """Per-atom energies ``[n_node]`` (eV) from atomic numbers and edge vectors (Å)."""
        geometry = edge_geometry(
            numbers, edge_vectors, edge_mask, self.species, self.cutoff, self.num_radial
        )
        h = nn.Embed(len(self.species), self.features, name="embedding")(geometry.species_index)
        for layer in range(self.num_layers):
            h = SchNetInteraction(self.features, name=f"interaction_{layer}")(
                h, geometry.radial, geometry.envelope, senders, receivers
            )
        return self.readout(
            h, geometry, numbers, edge_vectors, senders, receivers, node_mask, edge_mask
        )
