"""SchNet-style invariant message passing: the cheapest student, for the fastest MD.

Schütt et al., "SchNet: a continuous-filter convolutional neural network for modeling
quantum interactions", NeurIPS 2017; here with a Bessel basis and a polynomial
envelope so that energies and forces are smooth at the cutoff.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdistill.models.base import StudentModule
from jaxdistill.models.edges import Edges, ReceiverMajor, edge_function
from jaxdistill.models.fused import FusedEdges, SlotEdges, schnet_messages


def schnet_edge_messages(
    x: jax.Array,
    inner_kernel: jax.Array,
    inner_bias: jax.Array,
    outer_kernel: jax.Array,
    outer_bias: jax.Array,
    radial: jax.Array,
    envelope: jax.Array,
    edges: Edges,
) -> jax.Array:
    """A continuous-filter convolution's per-edge work: ``[n_node, F]`` sums at the
    receivers of the senders' features ``x [n_node, F]`` times each edge's filter, the
    network ``outer(silu(inner(radial)))`` times the envelope.

    Args:
        x: ``[n_node, F]``.
        inner_kernel, inner_bias: ``[num_radial, F]``, ``[F]``.
        outer_kernel, outer_bias: ``[F, F]``, ``[F]``.
        radial: ``[n_edge, num_radial]``; envelope ``[n_edge]``.
        edges: senders, receivers and their layout.
    """
    hidden = nn.silu(radial @ inner_kernel + inner_bias)
    filters = (hidden @ outer_kernel + outer_bias) * envelope[:, None]
    return edges.neighbour_sum(x, filters)


class SchNetInteraction(nn.Module):
    """One continuous-filter convolution with a residual update."""

    features: int

    @nn.compact
    def __call__(
        self,
        h: jax.Array,
        radial: jax.Array,
        envelope: jax.Array,
        edges: Edges,
        fused: FusedEdges | SlotEdges | None = None,
        edge_vectors: jax.Array | None = None,
        edge_mask: jax.Array | None = None,
        cutoff: float | None = None,
    ) -> jax.Array:
        """Updated features ``[n_node, F]``.

        Args:
            h: ``[n_node, F]`` features.
            radial: ``[n_edge, num_radial]`` basis; envelope ``[n_edge]``.
            edges: senders, receivers and their layout.
            fused: layouts of the fused path, or None for the reference path; then
                ``edge_vectors`` (Å), ``edge_mask`` and ``cutoff`` (Å) are needed.
        """
        # Constructed outer-first, as the reference expression always did, so both
        # paths name the filter network's layers alike (Dense_0 outer, Dense_1 inner).
        outer = nn.Dense(self.features)
        inner = nn.Dense(self.features)
        x = nn.Dense(self.features, use_bias=False)(h)
        # Zero-row calls create (at init) and bind the filter network's parameters; both
        # paths build each edge's filter from them themselves (the reference path in a
        # pure function, so that it can be recomputed in the backward pass).
        inner(jnp.zeros((0, radial.shape[-1]), h.dtype))
        outer(jnp.zeros((0, self.features), h.dtype))
        w_in, w_out = inner.variables["params"], outer.variables["params"]
        if fused is None:
            messages = edge_function(schnet_edge_messages)(
                x,
                w_in["kernel"],
                w_in["bias"],
                w_out["kernel"],
                w_out["bias"],
                radial,
                envelope,
                edges,
            )
        else:
            messages = schnet_messages(
                x,
                edge_vectors,
                edge_mask,
                w_in["kernel"],
                w_in["bias"],
                w_out["kernel"],
                w_out["bias"],
                edges.senders,
                edges.receivers,
                fused,
                cutoff,
                radial.shape[-1],
            )
        return h + nn.Dense(self.features)(nn.silu(nn.Dense(self.features)(messages)))


class SchNet(StudentModule):
    """Invariant student: distances only, no angular information; settings in
    :class:`StudentModule` (``num_layers``: interaction blocks)."""

    @nn.compact
    def __call__(
        self,
        numbers,
        edge_vectors,
        senders,
        receivers,
        node_mask,
        edge_mask,
        layout: ReceiverMajor | None = None,
    ):
        """Per-atom energies ``[n_node]`` (eV) from atomic numbers and edge vectors (Å);
        ``layout``: the reverse map of a receiver-major edge list (see
        :class:`~jaxdistill.models.edges.Edges`), or None for any edge order."""
        edges, geometry, fused = self.edges_and_geometry(
            numbers, edge_vectors, senders, receivers, edge_mask, layout
        )
        h = nn.Embed(len(self.species), self.features, name="embedding")(geometry.species_index)
        for layer in range(self.num_layers):
            h = SchNetInteraction(self.features, name=f"interaction_{layer}")(
                h,
                geometry.radial,
                geometry.envelope,
                edges,
                fused,
                edge_vectors,
                edge_mask,
                self.cutoff,
            )
        return self.readout(h, geometry, numbers, edge_vectors, edges, node_mask, edge_mask)
