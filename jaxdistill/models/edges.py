"""Scatter-free edge operations for receiver-major neighbour lists.

A jax-md ``Dense`` neighbour list stores edges receiver-major: edge ``e = r * M + m``
has receiver ``r`` and sender ``idx[r, m]``, with ``M = n_edge // n_node`` slots per
node. On that layout the two scatters of message passing disappear:

* summing messages at receivers is a reshape and a sum over slots;
* the transpose of gathering node features at senders (a scatter-add to senders)
  is a gather at the *reverse* edge followed by the same sum over slots, because in
  a symmetric neighbour list the edges with sender ``j`` are in one-to-one
  correspondence with the slots of row ``j``.

In a student's whole MD step the scatters are what costs: profiled on an H100
(``benchmarks/step_profile.py``, 2026-12-06), the 14 scatter-adds of a PaiNN 64×3 force
evaluation took 3.5 of 4.8 ms per step at 4096 Si atoms, and the one that sums edge
gradients into forces (``[E, 3]`` into ``[N, 3]``, 40 edges per row contending for
the same addresses) 21 of 238 µs at 64 atoms. (A synthetic round trip on a ring graph,
``benchmarks/edge_ops.py``, had favoured the scatters: its edges were sorted and
local.) The students run on this layout when given an :class:`Edges` with a layout,
which the jax-md adapter builds from a ``Dense`` neighbour list. The functions here are
pure and jit/vmap-safe; everything static (``n_node``, the slot count) is read from
shapes.

The students' sums of sender features times edge filters (:meth:`Edges.neighbour_sum`)
can go further on this layout: their transpose can use the list's symmetry (a distance
filter is equal on an edge and its reverse), gathering node arrays at senders instead
of per-edge cotangents at reverse edges (:func:`symmetric_neighbour_sum`; PaiNN's
three sums a layer share one such transpose, ``models.painn.painn_symmetric_sums``).
On by default on GPUs, where it was faster, off on CPUs: :data:`PAIR_SYMMETRY_ENV_VAR`.

Reverse-mode derivatives of any order work (the gather and its transpose are each
other's backward pass). Forward-mode (``jax.jvp``/``jax.jacfwd``) through
:func:`gather_senders` is not supported by ``jax.custom_vjp``; use the reference
``x[senders]`` path there.
"""

from __future__ import annotations

import functools
import inspect
import os
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp


class ReceiverMajor(NamedTuple):
    """Where each edge's reverse lives in a receiver-major edge list.

    Attributes:
        reverse: [n_edge] int32. For the slot ``(j, m')`` (flat ``j * M + m'``) whose
            sender is ``k``, the flat index of a slot in row ``k`` whose sender is
            ``j``. Duplicate pairs (periodic images) are matched by occurrence rank,
            which keeps the map a bijection.
        reverse_mask: [n_edge] bool. False where row ``k`` holds no matching slot
            (padding, or an asymmetric list); those slots contribute nothing.
    """

    reverse: jax.Array
    reverse_mask: jax.Array


def slots_per_node(n_edge: int, n_node: int) -> int:
    """Slot count ``M`` of a receiver-major list; raises if the shapes disagree."""
    if n_node <= 0 or n_edge % n_node:
        raise ValueError(
            f"a receiver-major edge list needs n_edge divisible by n_node; got "
            f"n_edge={n_edge}, n_node={n_node}"
        )
    return n_edge // n_node


def receiver_major_layout(
    senders: jax.Array, n_node: int, unique_pairs: bool = False
) -> ReceiverMajor:
    """Reverse-edge map of a receiver-major edge list.

    Args:
        senders: [n_edge] int, ``n_edge = n_node * M``; edge ``r * M + m`` has
            receiver ``r``. Every sender must lie in ``[0, n_node)`` (point padding
            slots at a padding node, as jax-md does with index ``N``).
        n_node: number of nodes, padding node included.
        unique_pairs: promise that no row holds the same real sender twice (true of a
            jax-md list under the minimum-image convention; not of a small periodic
            cell, whose images repeat pairs). Skips the occurrence ranks (``O(M²)``
            per node fewer compares). Padding slots may repeat: they have no reverse.

    Returns:
        The :class:`ReceiverMajor` map. Cost is O(n_node * M²) compares, paid once per
        neighbour-list update rather than once per step.
    """
    n_slots = slots_per_node(senders.shape[0], n_node)
    table = senders.reshape(n_node, n_slots)
    rows = jnp.arange(n_node)[:, None, None]
    if unique_pairs:
        # A slot pointing at its own row is padding (jax-md pads with the padding node).
        match = (table[table] == rows) & (table != jnp.arange(n_node)[:, None])[:, :, None]
        reverse_slot = jnp.argmax(match, axis=-1)
        reverse = (table * n_slots + reverse_slot).reshape(-1).astype(jnp.int32)
        return ReceiverMajor(reverse=reverse, reverse_mask=jnp.any(match, axis=-1).reshape(-1))
    same = table[:, :, None] == table[:, None, :]
    earlier = jnp.tril(jnp.ones((n_slots, n_slots), bool), k=-1)
    # rank[r, m]: how many earlier slots of row r hold the same sender.
    rank = jnp.sum(same & earlier[None], axis=-1)
    # For slot (j, m') with sender k and rank c: the slot in row k with sender j, rank c.
    match = (table[table] == rows) & (rank[table] == rank[:, :, None])
    reverse_slot = jnp.argmax(match, axis=-1)
    reverse = (table * n_slots + reverse_slot).reshape(-1).astype(jnp.int32)
    return ReceiverMajor(reverse=reverse, reverse_mask=jnp.any(match, axis=-1).reshape(-1))


def compacted_columns(keep: jax.Array, n_slots: int) -> tuple[jax.Array, jax.Array]:
    """Where each slot of a table goes when its rows are compacted to the kept slots.

    Args:
        keep: ``[n_row, M]`` bool, the slots to keep.
        n_slots: static width ``M'`` of the compacted table.

    Returns:
        ``(column, largest)``: ``[n_row, M]`` int32, a kept slot's column in the
        compacted row (its rank among the row's kept slots); every other slot, and a kept
        one past ``n_slots``, gets a distinct column ``>= n_slots`` (to be dropped), so a
        scatter by these columns has unique indices and needs no atomics. ``largest``, an
        int32 scalar, is the most slots any row keeps (where it exceeds ``n_slots`` the
        compaction lacks pairs and must not be used).
    """
    width = keep.shape[1]
    rank = jnp.cumsum(keep, axis=1, dtype=jnp.int32) - 1
    # (a kept slot past n_slots too: its rank could equal another slot's n_slots + m)
    column = jnp.where(keep & (rank < n_slots), rank, n_slots + jnp.arange(width, dtype=jnp.int32))
    return column, jnp.max(rank[:, -1]) + 1


def compact_rows(table: jax.Array, keep: jax.Array, n_slots: int, fill: int):
    """Move each row's kept slots to the front of a narrower table, in their order.

    A jax-md ``Dense`` list holds the pairs within ``cutoff + skin`` with head-room on
    top; at any one step only the pairs within the cutoff carry a message. Compacting
    the rows to those pairs before the model runs shrinks every per-edge array.

    Args:
        table: ``[n_row, M]`` int, a receiver-major table (row ``r``'s senders).
        keep: ``[n_row, M]`` bool, the slots to keep.
        n_slots: static width ``M'`` of the result.
        fill: the value of the result's empty slots (the padding node).

    Returns:
        ``(compacted, largest)``: ``[n_row, n_slots]`` with row ``r``'s kept senders
        first and ``fill`` after them, and ``largest`` of :func:`compacted_columns`.
    """
    column, largest = compacted_columns(keep, n_slots)
    n_row = table.shape[0]
    compacted = jnp.full((n_row, n_slots), fill, table.dtype)
    compacted = compacted.at[jnp.arange(n_row)[:, None], column].set(
        table, mode="drop", unique_indices=True
    )
    return compacted, largest


def sum_at_receivers(messages: jax.Array, n_node: int) -> jax.Array:
    """Sum edge messages at their receivers: [n_edge, ...] -> [n_node, ...]."""
    n_slots = slots_per_node(messages.shape[0], n_node)
    return messages.reshape(n_node, n_slots, *messages.shape[1:]).sum(axis=1)


def broadcast_to_slots(nodes: jax.Array, n_slots: int) -> jax.Array:
    """Each node's value at each of its row's slots: ``[n_node, ...] -> [n_edge, ...]``
    on a receiver-major list (``nodes[receivers]`` without a gather)."""
    n_node = nodes.shape[0]
    tiled = jnp.broadcast_to(nodes[:, None], (n_node, n_slots, *nodes.shape[1:]))
    return tiled.reshape(n_node * n_slots, *nodes.shape[1:])


def _masked_reverse_sum(values: jax.Array, layout: ReceiverMajor, n_node: int) -> jax.Array:
    mask = layout.reverse_mask.reshape(-1, *([1] * (values.ndim - 1)))
    return sum_at_receivers(jnp.where(mask, values[layout.reverse], 0), n_node)


@jax.custom_vjp
def gather_senders(nodes: jax.Array, senders: jax.Array, layout: ReceiverMajor) -> jax.Array:
    """``nodes[senders]`` whose backward pass is a gather, not a scatter-add.

    Args:
        nodes: [n_node, ...] node features.
        senders: [n_edge] int, receiver-major (see :func:`receiver_major_layout`).
        layout: the reverse map of ``senders``.

    Returns:
        [n_edge, ...] sender features per edge.
    """
    return nodes[senders]


def _gather_fwd(nodes, senders, layout):
    # A zero-width array carries the static node count through the residuals.
    return nodes[senders], (senders, layout, jnp.zeros((nodes.shape[0], 0), nodes.dtype))


def _gather_bwd(residual, cotangent):
    senders, layout, node_shape = residual
    return scatter_to_senders(cotangent, senders, layout, node_shape.shape[0]), None, None


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def scatter_to_senders(
    edges: jax.Array, senders: jax.Array, layout: ReceiverMajor, n_node: int
) -> jax.Array:
    """Sum edge values at their senders, [n_edge, ...] -> [n_node, ...], scatter-free."""
    return _masked_reverse_sum(edges, layout, n_node)


def _scatter_fwd(edges, senders, layout, n_node):
    return _masked_reverse_sum(edges, layout, n_node), (senders, layout)


def _scatter_bwd(n_node, residual, cotangent):
    senders, layout = residual
    return gather_senders(cotangent, senders, layout), None, None


scatter_to_senders.defvjp(_scatter_fwd, _scatter_bwd)
gather_senders.defvjp(_gather_fwd, _gather_bwd)


#: Environment variable: how :meth:`Edges.neighbour_sum` is transposed on a
#: receiver-major list: "on" by the list's symmetry, "off" by the reverse-edge map (the
#: transposed gather of :func:`gather_senders`), "auto" (default) by symmetry on the
#: backends of :data:`PAIR_SYMMETRY_AUTO_BACKENDS`.
PAIR_SYMMETRY_ENV_VAR = "JAXDISTILL_PAIR_SYMMETRY"
#: Backends where "auto" transposes by symmetry. On an H100 (2026-12-07, paired,
#: ``benchmarks/pair_symmetry_gpu.sh``) a jax-md NVE step at 512 Si atoms on compacted
#: rows took 11 % (PaiNN 64x3) and 14 % (PaiNN 128x3 + ZBL) less time with it, and an ASE
#: call at 1000 Si atoms 7 % less (PaiNN); at 64 atoms the call was unchanged. On this
#: project's 2-core CPU, bound by arithmetic rather than memory traffic, the same step
#: was 6-11 % slower (docs/benchmarks.md).
PAIR_SYMMETRY_AUTO_BACKENDS: tuple[str, ...] = ("gpu",)


def _switch(variable: str, auto_backends: tuple[str, ...]) -> bool:
    """An "auto"/"on"/"off" environment variable, read now; "auto" (also when unset)
    is on for the backends named."""
    value = os.environ.get(variable, "").strip().lower() or "auto"
    if value not in ("auto", "on", "off"):
        raise ValueError(f"{variable} must be 'auto', 'on' or 'off', got {value!r}")
    if value == "auto":
        return jax.default_backend() in auto_backends
    return value == "on"


def use_pair_symmetry() -> bool:
    """Whether :meth:`Edges.neighbour_sum` transposes by symmetry (read at trace time
    from :data:`PAIR_SYMMETRY_ENV_VAR`)."""
    return _switch(PAIR_SYMMETRY_ENV_VAR, PAIR_SYMMETRY_AUTO_BACKENDS)


def _directed(values: jax.Array, directions: jax.Array | None) -> jax.Array:
    """``values [E, ..., F]`` times ``directions [E, D]`` as ``[E, D, F]`` (no axis
    added where ``directions`` is None)."""
    if directions is None:
        return values
    return directions[:, :, None] * values[:, None, :]


def _per_edge_weights(filters: jax.Array, nodes: jax.Array) -> jax.Array:
    """``filters [E, F]`` shaped to broadcast over the middle axes of ``nodes [N, ..., F]``
    gathered to edges."""
    return filters.reshape(filters.shape[0], *([1] * (nodes.ndim - 2)), filters.shape[-1])


def _neighbour_sum_reference(nodes, filters, senders, directions):
    messages = _directed(nodes[senders] * _per_edge_weights(filters, nodes), directions)
    return sum_at_receivers(messages, nodes.shape[0])


@jax.custom_vjp
def symmetric_neighbour_sum(
    nodes: jax.Array,
    filters: jax.Array,
    senders: jax.Array,
    directions: jax.Array | None,
) -> jax.Array:
    """Sum over each receiver's slots of the sender's features times the edge's filter
    (and direction), on a receiver-major list, transposed by the list's symmetry.

    ``out[i] = sum_m nodes[senders[i, m]] * filters[i, m]`` (times
    ``directions[i, m, :, None]`` where given). The backward pass needs, for each node
    ``j``, the sum over the edges that ``j`` *sends*. In a symmetric list those are the
    reverses of row ``j``'s own slots, and a filter that depends on the pair's distance
    alone is the same on an edge and its reverse, while a direction (a unit vector)
    changes sign. So the transpose is again a sum over row ``j``'s slots of node
    features gathered at their senders: no per-edge array is gathered at reverse
    edges, and no reverse-edge map is read. On the backward pass the per-edge
    intermediates are the filters themselves (kept from the forward pass), not their
    products with the gathered features.

    Requires a symmetric list (every real pair in both rows, with negated vectors: true
    of a jax-md ``Dense`` list, of ``Graph.reverse_edges`` graphs and of rows
    compacted to the cutoff) and filters that are zero on padding slots.

    Args:
        nodes: ``[N, ..., F]`` node features (``[N, F]`` where ``directions`` is given).
        filters: ``[E, F]``, ``E = N * M``, symmetric under edge reversal.
        senders: ``[E]`` int, receiver-major.
        directions: ``[E, D]`` antisymmetric under edge reversal, or None.

    Returns:
        ``[N, ..., F]``, or ``[N, D, F]`` with directions.
    """
    return _neighbour_sum_reference(nodes, filters, senders, directions)


def _neighbour_sum_fwd(nodes, filters, senders, directions):
    out = _neighbour_sum_reference(nodes, filters, senders, directions)
    return out, (nodes, filters, senders, directions)


def _neighbour_sum_bwd(residual, cotangent):
    nodes, filters, senders, directions = residual
    n_node, n_edge = nodes.shape[0], filters.shape[0]
    # cotangent [N, ..., F] (or [N, D, F]); at each edge, the sender's and the
    # receiver's cotangent
    at_senders = cotangent[senders]
    at_receivers = broadcast_to_slots(cotangent, slots_per_node(n_edge, n_node))
    if directions is None:
        nodes_cot = sum_at_receivers(at_senders * _per_edge_weights(filters, nodes), n_node)
        filter_cot = at_receivers * nodes[senders]
        filter_cot = filter_cot.reshape(n_edge, -1, filters.shape[-1]).sum(axis=1)
        return nodes_cot, filter_cot, None, None
    # Reversal negates the direction: sum_m filters[j,m] * sum_d cot[s, d] * -dir[j,m,d]
    # (element-wise products and sums, not einsum: a batched matrix product per edge is
    # what a GPU does worst, and these fuse into their neighbours)
    projected = jnp.sum(at_senders * directions[:, :, None], axis=1)
    nodes_cot = -sum_at_receivers(projected * filters, n_node)
    along = jnp.sum(at_receivers * directions[:, :, None], axis=1)
    gathered = nodes[senders]
    filter_cot = along * gathered
    direction_cot = jnp.sum(at_receivers * (gathered * filters)[:, None, :], axis=-1)
    return nodes_cot, filter_cot, None, direction_cot


symmetric_neighbour_sum.defvjp(_neighbour_sum_fwd, _neighbour_sum_bwd)


#: Environment variable that sets whether the students' per-edge work is recomputed in
#: the backward pass (:func:`edge_function`): "auto" (default), "on" or "off".
EDGE_REMAT_ENV_VAR = "JAXDISTILL_EDGE_REMAT"
#: Backends where "auto" recomputes: none. In jax-md NVE steps on an H100 (2026-12-07)
#: recomputing cost 3-20 % on full neighbour rows and nothing on compacted ones, on a
#: 2-core CPU 4-22 % (docs/benchmarks.md).
EDGE_REMAT_AUTO_BACKENDS: tuple[str, ...] = ()


def recompute_edges() -> bool:
    """Whether :func:`edge_function` recomputes the per-edge work in the backward pass
    (read at trace time from :data:`EDGE_REMAT_ENV_VAR`; "auto": where
    :data:`EDGE_REMAT_AUTO_BACKENDS` names the backend)."""
    return _switch(EDGE_REMAT_ENV_VAR, EDGE_REMAT_AUTO_BACKENDS)


def edge_function(function: Callable, static_argnums: tuple[int, ...] = ()) -> Callable:
    """``function`` (a layer's per-edge work: node features in, sums at receivers out),
    under ``jax.checkpoint`` where :func:`recompute_edges` says so.

    Reverse mode otherwise keeps the per-edge intermediates (gathered features,
    filters, products: ``[n_edge, 3F]`` arrays) from the forward pass to the backward
    one, written to and read back from memory; recomputed, they are built again
    inside the backward pass's own kernels from the node features, which are small.
    The values are the same either way.
    """
    if not recompute_edges():
        return function
    return jax.checkpoint(function, static_argnums=static_argnums)


class Edges(NamedTuple):
    """A graph's edges and how messages move along them.

    The students' message passing goes through :meth:`from_senders` and
    :meth:`to_receivers`, so one model serves both layouts: a plain edge list
    (``layout`` None: a gather and ``segment_sum``, any edge order) and a
    receiver-major one (``layout`` a :class:`ReceiverMajor`: sums over slots, and the
    backward pass of the gather is a gather at the reverse edge; no scatter anywhere).

    Attributes:
        senders: ``[n_edge]`` int, the neighbour ``j`` of each edge.
        receivers: ``[n_edge]`` int, the centre ``i``.
        layout: the reverse map of a receiver-major list, or None.
    """

    senders: jax.Array
    receivers: jax.Array
    layout: ReceiverMajor | None = None

    def from_senders(self, nodes: jax.Array) -> jax.Array:
        """``nodes[senders]``: ``[n_node, ...] -> [n_edge, ...]``."""
        if self.layout is None:
            return nodes[self.senders]
        return gather_senders(nodes, self.senders, self.layout)

    def to_receivers(self, messages: jax.Array, n_node: int) -> jax.Array:
        """Sum edge values at their receivers: ``[n_edge, ...] -> [n_node, ...]``.

        On the receiver-major layout a padding slot is summed into its row, so its
        value must be zero (the students' messages carry the cutoff envelope, which is
        zero on padding edges).
        """
        if self.layout is None:
            return jax.ops.segment_sum(messages, self.receivers, num_segments=n_node)
        return sum_at_receivers(messages, n_node)

    def transposed_by_symmetry(self) -> bool:
        """Whether :meth:`neighbour_sum` runs its backward pass by the list's symmetry
        (a receiver-major list, and :func:`use_pair_symmetry`; read at trace time)."""
        return self.layout is not None and use_pair_symmetry()

    def neighbour_sum(
        self, nodes: jax.Array, filters: jax.Array, directions: jax.Array | None = None
    ) -> jax.Array:
        """Sum at each receiver of its senders' features times the edge filters:
        ``to_receivers(from_senders(nodes) * filters)``, and with ``directions`` each
        term times the edge's direction as well.

        On a receiver-major list the backward pass can run by the list's symmetry
        (:func:`symmetric_neighbour_sum`, where :func:`use_pair_symmetry` says so), so
        ``filters`` must be symmetric under edge reversal (a function of the distance)
        and ``directions`` antisymmetric (unit vectors), both zero on padding edges.

        Args:
            nodes: ``[n_node, ..., F]`` (``[n_node, F]`` with directions).
            filters: ``[n_edge, F]``, broadcast over the middle axes of ``nodes``.
            directions: ``[n_edge, D]`` or None.

        Returns:
            ``[n_node, ..., F]``, or ``[n_node, D, F]`` with directions.
        """
        if self.transposed_by_symmetry():
            return symmetric_neighbour_sum(nodes, filters, self.senders, directions)
        messages = _directed(
            self.from_senders(nodes) * _per_edge_weights(filters, nodes), directions
        )
        return self.to_receivers(messages, nodes.shape[0])

    def from_receivers(self, nodes: jax.Array) -> jax.Array:
        """``nodes[receivers]``: on the receiver-major layout a broadcast over slots,
        whose backward pass is a sum (no scatter)."""
        if self.layout is None:
            return nodes[self.receivers]
        return broadcast_to_slots(nodes, slots_per_node(self.senders.shape[0], nodes.shape[0]))


def layout_from_reverse(reverse: jax.Array, edge_mask: jax.Array) -> ReceiverMajor:
    """The :class:`ReceiverMajor` map of a graph that stores its reverse edges
    (``Graph.reverse_edges``: padding slots map to themselves)."""
    return ReceiverMajor(reverse=reverse.astype(jnp.int32), reverse_mask=edge_mask)


def accepts_layout(module) -> bool:
    """Whether a student module's ``__call__`` takes the receiver-major ``layout``
    argument (jaxdistill's students do; an architecture registered by a user may not,
    and then gets the plain edge arrays of the same graph)."""
    try:
        return "layout" in inspect.signature(type(module).__call__).parameters
    except (TypeError, ValueError):
        return False
