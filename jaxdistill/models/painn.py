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
from jaxdistill.models.edges import (
    Edges,
    ReceiverMajor,
    broadcast_to_slots,
    edge_function,
    slots_per_node,
    sum_at_receivers,
)
from jaxdistill.models.fused import FusedEdges, SlotEdges, painn_messages
from jaxdistill.models.node_kernels import (
    UpdateWeights,
    painn_update_fused,
    painn_update_reference,
    use_node_kernels,
)


def _painn_sums(phi, v, filters, unit_vectors, from_senders, to_receivers):
    """A PaiNN layer's sums ``(ds, dv)`` (see :func:`painn_symmetric_sums`), with the
    gather of node arrays at senders and the sum of edge arrays at receivers given."""
    x = from_senders(phi) * filters
    if v is None:
        gate_s, gate_r = jnp.split(x, 2, axis=-1)
        dv_edge = unit_vectors[:, :, None] * gate_r[:, None, :]
    else:
        gate_v, gate_s, gate_r = jnp.split(x, 3, axis=-1)
        dv_edge = (
            from_senders(v) * gate_v[:, None, :] + unit_vectors[:, :, None] * gate_r[:, None, :]
        )
    return to_receivers(gate_s), to_receivers(dv_edge)


def _painn_sums_reference(phi, v, filters, senders, unit_vectors):
    n_node = phi.shape[0]
    return _painn_sums(
        phi,
        v,
        filters,
        unit_vectors,
        lambda nodes: nodes[senders],
        lambda messages: sum_at_receivers(messages, n_node),
    )


@jax.custom_vjp
def painn_symmetric_sums(
    phi: jax.Array,
    v: jax.Array | None,
    filters: jax.Array,
    senders: jax.Array,
    unit_vectors: jax.Array,
) -> tuple[jax.Array, jax.Array]:
    """A PaiNN layer's sums at receivers on a receiver-major list, transposed by the
    list's symmetry in one backward pass.

    ``ds[i] = sum_m phi_s[j] f_s[i,m]`` and
    ``dv[i] = sum_m v[j] phi_v[j] f_v[i,m] + u[i,m] phi_r[j] f_r[i,m]`` with
    ``j = senders[i,m]``. The backward pass needs, per node ``j``, sums over the edges
    ``j`` sends: the reverses of row ``j``'s slots, where each filter is the same and
    the unit vector changes sign (as in :func:`~jaxdistill.models.edges.symmetric_neighbour_sum`,
    which this does for the layer's three sums at once). It gathers the cotangents and
    the node features at senders once each; no per-edge array is gathered at reverse
    edges and only the filters and unit vectors are kept per edge.

    Requires a symmetric list (every real pair in both rows, vectors negated) and
    filters that are zero on padding slots.

    Args:
        phi: ``[N, 3F]`` gates ``(v, s, r)``, or ``[N, 2F]`` ``(s, r)`` where ``v`` is
            None (the first layer, whose vector features are zero).
        v: ``[N, 3, F]`` vector features, or None.
        filters: ``[E, 3F]`` (``[E, 2F]``), ``E = N * M``, in ``phi``'s column order.
        senders: ``[E]`` int, receiver-major.
        unit_vectors: ``[E, 3]`` from receiver to sender.

    Returns:
        ``(ds [N, F], dv [N, 3, F])``.
    """
    return _painn_sums_reference(phi, v, filters, senders, unit_vectors)


def _painn_sums_fwd(phi, v, filters, senders, unit_vectors):
    out = _painn_sums_reference(phi, v, filters, senders, unit_vectors)
    return out, (phi, v, filters, senders, unit_vectors)


def _painn_sums_bwd(residual, cotangent):
    phi, v, filters, senders, unit_vectors = residual
    cot_s, cot_v = cotangent  # [N, F], [N, 3, F]
    n_node, n_edge = phi.shape[0], filters.shape[0]
    n_slots = slots_per_node(n_edge, n_node)
    f = cot_s.shape[-1]
    u = unit_vectors[:, :, None]
    filter_s, filter_r = filters[:, -2 * f : -f], filters[:, -f:]
    phi_j = phi[senders]
    # Node side: row j's slots are the reverses of the edges j sends (same filter, the
    # unit vector negated), so these are sums over j's own slots of the cotangents at
    # their senders.
    cot_s_j, cot_v_j = cot_s[senders], cot_v[senders]
    d_phi = [
        sum_at_receivers(filter_s * cot_s_j, n_node),
        -sum_at_receivers(filter_r * jnp.sum(cot_v_j * u, axis=1), n_node),
    ]
    # Edge side: the receiver's own cotangent (a broadcast) and the sender's features.
    cot_s_i = broadcast_to_slots(cot_s, n_slots)
    cot_v_i = broadcast_to_slots(cot_v, n_slots)
    phi_s_j, phi_r_j = phi_j[:, -2 * f : -f], phi_j[:, -f:]
    d_filters = [cot_s_i * phi_s_j, jnp.sum(cot_v_i * u, axis=1) * phi_r_j]
    d_unit_vectors = jnp.sum(cot_v_i * (phi_r_j * filter_r)[:, None, :], axis=-1)
    d_v = None
    if v is not None:
        # sum over j's slots of filter_v times the cotangents at senders: [N, 3, F]
        along_v = sum_at_receivers(filters[:, None, :f] * cot_v_j, n_node)
        d_phi.insert(0, jnp.sum(along_v * v, axis=1))
        d_v = along_v * phi[:, None, :f]
        d_filters.insert(0, jnp.sum(cot_v_i * v[senders], axis=1) * phi_j[:, :f])
    return (
        jnp.concatenate(d_phi, axis=-1),
        d_v,
        jnp.concatenate(d_filters, axis=-1),
        None,
        d_unit_vectors,
    )


painn_symmetric_sums.defvjp(_painn_sums_fwd, _painn_sums_bwd)


def painn_edge_messages(
    phi: jax.Array,
    v: jax.Array,
    kernel: jax.Array,
    bias: jax.Array,
    radial: jax.Array,
    envelope: jax.Array,
    unit_vectors: jax.Array,
    edges: Edges,
    vectors_zero: bool,
) -> tuple[jax.Array, jax.Array]:
    """A PaiNN layer's per-edge work, from node features to sums at receivers.

    Args:
        phi: ``[n_node, 3F]`` the senders' gates (the node MLP's output).
        v: ``[n_node, 3, F]`` vector features.
        kernel, bias: the filter's dense layer, ``[num_radial, 3F]`` and ``[3F]``.
        radial: ``[n_edge, num_radial]``; envelope ``[n_edge]``; unit_vectors
            ``[n_edge, 3]``.
        edges: senders, receivers and their layout.
        vectors_zero: ``v`` is zero (the first layer): its term and that third of the
            filter are left out.

    Returns:
        ``(ds [n_node, F], dv [n_node, 3, F])``.
    """
    n_node = phi.shape[0]
    f = v.shape[-1]
    if vectors_zero:
        # columns [F:3F] only: gate_v (the first F) would multiply v_j = 0
        kernel, bias, phi = kernel[:, f:], bias[f:], phi[:, f:]
    # The envelope multiplies after the dense layer so that its bias, too, goes
    # smoothly to zero at the cutoff (and is exactly zero on padding edges).
    filters = (radial @ kernel + bias) * envelope[:, None]
    vectors = None if vectors_zero else v
    if edges.transposed_by_symmetry():
        return painn_symmetric_sums(phi, vectors, filters, edges.senders, unit_vectors)
    return _painn_sums(
        phi,
        vectors,
        filters,
        unit_vectors,
        edges.from_senders,
        lambda messages: edges.to_receivers(messages, n_node),
    )


class PaiNNMessage(nn.Module):
    """Messages from neighbours j to centres i (invariant filter times features).

    ``vectors_zero``: the incoming vector features are zero (the first layer's are, by
    construction). Their message term ``v_j * gate_v`` is then zero, so the reference
    path leaves out that third of the filter and of the gathered features: the same
    results with a third less per-edge work in that layer, forward and backward (the
    ``gate_v`` parameters of that layer never had a gradient). The fused kernels take
    the general form.
    """

    features: int
    vectors_zero: bool = False

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
        phi = nn.Dense(3 * self.features)(nn.silu(nn.Dense(self.features)(s)))
        filter_layer = nn.Dense(3 * self.features)
        # A zero-row call creates (at init) and binds the filter's parameters; both paths
        # build each edge's filter from them themselves (the reference path in a pure
        # function, so that it can be recomputed in the backward pass).
        filter_layer(jnp.zeros((0, radial.shape[-1]), s.dtype))
        weights = filter_layer.variables["params"]
        if fused is not None:
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
        ds, dv = edge_function(painn_edge_messages, static_argnums=(8,))(
            phi,
            v,
            weights["kernel"],
            weights["bias"],
            radial,
            envelope,
            unit_vectors,
            edges,
            self.vectors_zero,
        )
        return s + ds, v + dv


#: The vector-norm softening of students saved before it was a setting: their norm
#: was sqrt(|w|² + 1e-8), so they load unchanged.
LEGACY_NORM_SOFTENING = 1e-4
#: The softening of new students (see :class:`PaiNN`).
NORM_SOFTENING = 1.0


class PaiNNUpdate(nn.Module):
    """Per-atom mixing of scalar and vector channels (see
    :func:`~jaxdistill.models.node_kernels.painn_update_reference`)."""

    features: int
    norm_softening: float = LEGACY_NORM_SOFTENING
    fused: bool = False

    @nn.compact
    def __call__(self, s, v):
        """Updated ``(s [n_node, F], v [n_node, 3, F])``; ``fused`` runs the node
        kernel of :mod:`jaxdistill.models.node_kernels` (same parameters)."""
        # The layers are created in the order (and so with the names) they always had;
        # zero-row calls create (at init) and bind their parameters, which the pure
        # functions below read.
        layers = (
            nn.Dense(self.features, use_bias=False),
            nn.Dense(self.features, use_bias=False),
            nn.Dense(3 * self.features),
            nn.Dense(self.features),
        )
        for layer, width in zip(layers, (1, 1, 1, 2), strict=True):
            layer(jnp.zeros((0, width * self.features), v.dtype))
        u, w, out, hidden = (layer.variables["params"] for layer in layers)
        weights = UpdateWeights(
            u=u["kernel"],
            w=w["kernel"],
            hidden=hidden["kernel"],
            hidden_bias=hidden["bias"],
            out=out["kernel"],
            out_bias=out["bias"],
        )
        update = painn_update_fused if self.fused else painn_update_reference
        return update(s, v, weights, self.norm_softening)


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
        fused_nodes = use_node_kernels(self.message_passing)
        for layer in range(self.num_layers):
            s, v = PaiNNMessage(self.features, vectors_zero=layer == 0, name=f"message_{layer}")(
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
            s, v = PaiNNUpdate(
                self.features, self.norm_softening, fused_nodes, name=f"update_{layer}"
            )(s, v)
        return self.readout(s, geometry, numbers, edge_vectors, edges, node_mask, edge_mask)
