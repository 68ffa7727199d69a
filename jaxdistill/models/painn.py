"""PaiNN: equivariant message passing with scalar and vector features.

Schütt, Unke, Gastegger, "Equivariant message passing for the prediction of tensorial
properties and molecular spectra", ICML 2021. Vector features ``v`` ([n_node, 3, F])
only ever meet rotation-equivariant operations (scaling by invariants, linear maps over
the feature axis, dot products), so energies are exactly invariant and forces exactly
equivariant.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdistill.models.base import StudentModule
from jaxdistill.models.edges import Edges, ReceiverMajor
from jaxdistill.models.fused import FusedEdges, SlotEdges, painn_messages


class PaiNNMessage(nn.Module):
    """Messages from neighbours j to centres i (invariant filter times features)."""

    features: int

    @nn.compact
    def __call__(
        self,
        s: jax.Array,
        v: jax.Array,
        radial: jax.Array,
        envelope: jax.Array,
        unit_vectors: jax.Array,
        edges: Edges,
        fused: FusedEdges | SlotEdges | None = None,
        edge_vectors: jax.Array | None = None,
        edge_mask: jax.Array | None = None,
        cutoff: float | None = None,
    ) -> tuple[jax.Array, jax.Array]:
        """Updated ``(s [n_node, F], v [n_node, 3, F])``.

        Args:
            s, v: scalar and vector features.
            radial: ``[n_edge, num_radial]`` basis; envelope ``[n_edge]``;
                unit_vectors ``[n_edge, 3]``.
            edges: senders, receivers and their layout.
            fused: layouts of the fused path, or None for the reference path; then
                ``edge_vectors`` (Å), ``edge_mask`` and ``cutoff`` (Å) are needed.
        """
        n_node = s.shape[0]
        phi = nn.Dense(3 * self.features)(nn.silu(nn.Dense(self.features)(s)))
        filter_layer = nn.Dense(3 * self.features)
        if fused is not None:
            # A dummy call creates (at init) and binds the filter's parameters; the
            # kernel builds each edge's filter itself.
            filter_layer(jnp.zeros((1, radial.shape[-1]), s.dtype))
            weights = filter_layer.variables["params"]
            ds, dv = painn_messages(
                phi,
                v,
                edge_vectors,
                edge_mask,
                weights["kernel"],
                weights["bias"],
                edges.senders,
                edges.receivers,
                fused,
                cutoff,
                radial.shape[-1],
            )
            return s + ds, v + dv
        # The envelope multiplies after the dense layer so that its bias, too, goes
        # smoothly to zero at the cutoff (and is exactly zero on padding edges).
        filters = filter_layer(radial) * envelope[:, None]
        x = edges.from_senders(phi) * filters
        gate_v, gate_s, gate_r = jnp.split(x, 3, axis=-1)
        ds = edges.to_receivers(gate_s, n_node)
        dv_edge = (
            edges.from_senders(v) * gate_v[:, None, :]
            + unit_vectors[:, :, None] * gate_r[:, None, :]
        )
        dv = edges.to_receivers(dv_edge, n_node)
        return s + ds, v + dv


#: The vector-norm softening of students saved before it was a setting: their norm
#: was sqrt(|w|² + 1e-8), so they load unchanged.
LEGACY_NORM_SOFTENING = 1e-4
#: The softening of new students (see :class:`PaiNN`).
NORM_SOFTENING = 1.0


class PaiNNUpdate(nn.Module):
    """Per-atom mixing of scalar and vector channels."""

    features: int
    norm_softening: float = LEGACY_NORM_SOFTENING

    @nn.compact
    def __call__(self, s, v):
        u_layer = nn.Dense(self.features, use_bias=False)
        w_layer = nn.Dense(self.features, use_bias=False)
        # U and V read the same input: one matrix product with their kernels side by
        # side instead of two (a kernel fewer forward and backward per layer, which
        # counts at small sizes, where a step is bound by its number of kernels). The
        # zero-row calls create (at init) and bind the two layers' parameters.
        empty = jnp.zeros((0, v.shape[-1]), v.dtype)
        u_layer(empty)
        w_layer(empty)
        kernel = jnp.concatenate(
            [u_layer.variables["params"]["kernel"], w_layer.variables["params"]["kernel"]],
            axis=1,
        )
        u_v, w_v = jnp.split(v @ kernel, 2, axis=-1)
        # A softened norm sqrt(|w|² + c²): at a site whose symmetry leaves no invariant
        # vector (an atom of a perfect crystal) the vector features vanish, and with a
        # small c the energy has a |x|-like cusp there (phonons and vibrations come out
        # wrong, even imaginary); c = 1 keeps it smooth.
        w_norm = jnp.sqrt(jnp.sum(w_v**2, axis=1) + self.norm_softening**2)
        a = nn.Dense(3 * self.features)(
            nn.silu(nn.Dense(self.features)(jnp.concatenate([s, w_norm], axis=-1)))
        )
        a_vv, a_sv, a_ss = jnp.split(a, 3, axis=-1)
        dv = a_vv[:, None, :] * u_v
        ds = a_sv * jnp.sum(u_v * w_v, axis=1) + a_ss
        return s + ds, v + dv


class PaiNN(StudentModule):
    """Equivariant student (the accurate default); settings in :class:`StudentModule`
    (``features``: channels of the scalar and of the vector features), plus
    ``norm_softening``: the ``c`` of the softened vector norm ``sqrt(|w|² + c²)`` in
    each update block. New students use :data:`NORM_SOFTENING` (1.0, smooth at sites
    where the vector features vanish by symmetry); a student saved without the setting
    loads with :data:`LEGACY_NORM_SOFTENING`, the value it was trained with.
    """

    norm_softening: float = LEGACY_NORM_SOFTENING

    def fused_wins_on_receiver_major(self) -> bool:
        # H100, 4096 Si atoms (benchmarks/results/md_speed_paths_h100.json): 64 features
        # fused 1945 µs/step against 2318 receiver-major; 128 features 5460 against 4022.
        return self.features <= 64

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
        unit_vectors = edge_vectors / geometry.distances[:, None]
        s = nn.Embed(len(self.species), self.features, name="embedding")(geometry.species_index)
        v = jnp.zeros((s.shape[0], 3, self.features), dtype=s.dtype)
        for layer in range(self.num_layers):
            s, v = PaiNNMessage(self.features, name=f"message_{layer}")(
                s,
                v,
                geometry.radial,
                geometry.envelope,
                unit_vectors,
                edges,
                fused,
                edge_vectors,
                edge_mask,
                self.cutoff,
            )
            s, v = PaiNNUpdate(self.features, self.norm_softening, name=f"update_{layer}")(s, v)
        return self.readout(s, geometry, numbers, edge_vectors, edges, node_mask, edge_mask)
