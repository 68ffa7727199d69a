"""Energy, forces and stress of a batched graph: the one place they are computed.

Forces are ``-dE/dR`` and stress ``(1/V) dE/dε`` at zero strain, both by automatic
differentiation of the same scalar, so every student conserves energy by
construction and its stress is consistent with its forces. The Hessian-vector product
``H·u`` (``H = d²E/dR²``) is the forward-mode derivative of the same gradient along
``u``, so the curvature a student learns from Hessian labels is that of its own energy.

The strain acts on positions and cell together, ``r -> r (1 + ε)`` and
``cell -> cell (1 + ε)`` (row vectors, as ASE stores them), with ε symmetrised so the
stress tensor is symmetric. This is ASE's sign convention: a compressed crystal has
negative stress, positive pressure ``-trace(σ)/3``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp

from jaxdistill.graph import Graph
from jaxdistill.models.edges import Edges, accepts_layout, layout_from_reverse

# (params, numbers, edge_vectors, senders, receivers, node_mask, edge_mask) -> [n_node]
AtomicEnergyFn = Callable[..., jax.Array]


class Prediction(NamedTuple):
    """Outputs for a batch; padding entries are zero.

    Attributes:
        energy: total energy per graph, eV, ``[n_graph]``.
        forces: eV/Å, ``[n_node, 3]``.
        stress: eV/Å³, ``[n_graph, 3, 3]``; zero for graphs not periodic in all
            three directions.
    """

    energy: jax.Array
    forces: jax.Array
    stress: jax.Array


class Potential(NamedTuple):
    """Functions of ``(params, graph)``; jit them.

    Attributes:
        energy: per-graph energies, eV, ``[n_graph]``.
        predict: energies, forces and stress (a :class:`Prediction`).
        energy_and_forces: energies ``[n_graph]`` and forces ``[n_node, 3]`` without
            the strain derivative (cheaper: what MD needs at a fixed cell).
        hessian_vector_product: ``(params, graph, directions [n_node, 3]) -> [n_node,
            3]``: ``H·u`` in eV/Å² (per unit of ``u``) for every graph of the batch at
            once (graphs are independent, so the batch's Hessian is block diagonal and
            one product gives each graph's own); zero on padding. Needs an edge-list
            graph (a forward-mode derivative, which the receiver-major gathers lack).
        atomic_energies: per-atom energies ``[n_node]``, eV, zero on padding: the
            terms the model sums into each graph's energy.
    """

    energy: Callable[[Any, Graph], jax.Array]
    predict: Callable[[Any, Graph], Prediction]
    energy_and_forces: Callable[[Any, Graph], tuple[jax.Array, jax.Array]]
    hessian_vector_product: Callable[[Any, Graph, jax.Array], jax.Array]
    atomic_energies: Callable[[Any, Graph], jax.Array]


def graph_edges(graph: Graph) -> Edges:
    """The :class:`~jaxdistill.models.edges.Edges` of a graph: with its reverse map on
    a receiver-major graph (``graph.reverse_edges``), else a plain edge list."""
    if graph.reverse_edges is None:
        return Edges(graph.senders, graph.receivers)
    return Edges(
        graph.senders, graph.receivers, layout_from_reverse(graph.reverse_edges, graph.edge_mask)
    )


def _row_times_matrix(rows: jax.Array, matrices: jax.Array) -> jax.Array:
    """``rows[k] @ matrices[k]`` for every k: ``[K, 3]``, ``[K, 3, 3]`` -> ``[K, 3]``.

    Written as a product and a sum over three terms rather than a batched
    ``dot_general``: one 1×3·3×3 product per edge as a batched matrix product is what
    a GPU does worst (tens of thousands of tiny products), while the element-wise form
    fuses into the kernels around it.
    """
    return jnp.sum(rows[:, :, None] * matrices, axis=1)


def edge_vectors(
    positions: jax.Array, graph: Graph, strain: jax.Array | None = None
) -> tuple[jax.Array, jax.Array]:
    """Edge vectors ``r_ij = R_j - R_i + shift · cell`` of a graph, optionally strained.

    Args:
        positions: ``[n_node, 3]`` Å (separate from ``graph`` so it can be
            differentiated).
        graph: the batch.
        strain: ``[n_graph, 3, 3]`` or None.

    Returns:
        ``(vectors [n_edge, 3], cell [n_graph, 3, 3])`` with the strain applied.
    """
    cell = graph.cell
    if strain is not None:
        deformation = jnp.eye(3, dtype=positions.dtype) + 0.5 * (
            strain + jnp.swapaxes(strain, -1, -2)
        )
        positions = _row_times_matrix(positions, deformation[graph.node_graph])
        cell = jnp.einsum("gij,gjk->gik", cell, deformation)
    edges = graph_edges(graph)
    edge_cell = edges.from_receivers(cell[graph.node_graph])
    offsets = _row_times_matrix(graph.shifts.astype(positions.dtype), edge_cell)
    vectors = edges.from_senders(positions) - edges.from_receivers(positions) + offsets
    return vectors, cell


def compact_graph(graph: Graph, cutoff: float, width: int) -> tuple[Graph, jax.Array]:
    """A graph with its edges compacted to the pairs within ``cutoff``.

    A calculator's graph holds the pairs within ``cutoff + skin`` (reused over many
    calls) with head-room on top; only pairs within the cutoff carry a message, so the
    student can run on a narrower graph holding just those. Which pairs are kept is a
    discrete choice made under ``stop_gradient``: energies, forces and stress of the
    compacted graph are those of the full one, to float rounding, whenever
    ``largest <= width``.

    - Receiver-major (``reverse_edges`` set, ``M`` slots per node): each row is
      compacted to ``width`` slots, its kept pairs first in their order. A pair is kept
      both ways or neither (its two edges' lengths are compared as one), so the reverse
      map stays a bijection on the kept edges and is carried over.
    - Edge list: the kept edges move to the front of a list of ``width`` edges.

    Args:
        graph: the full graph.
        cutoff: the student's cutoff, Å.
        width: static size of the result: slots per node (receiver-major) or edges.

    Returns:
        ``(compacted, largest)``: the graph with ``n_node * width`` or ``width`` edges
        (padding edges join the padding node to itself, as built), and an int32
        scalar: the most pairs any row keeps (receiver-major) or the pairs kept (edge
        list). Where ``largest > width`` pairs are missing and the compacted graph must
        not be used.
    """
    from jaxdistill.models.edges import compacted_columns

    n_node = graph.positions.shape[0]
    n_edge = graph.senders.shape[0]
    frozen = jax.tree_util.tree_map(jax.lax.stop_gradient, graph)
    vectors, _ = edge_vectors(jnp.asarray(frozen.positions), frozen)
    within = graph.edge_mask & (jnp.sum(vectors**2, axis=-1) < cutoff**2)
    # Edges dropped (or past the width) go to distinct indices past the end: unique.
    if graph.reverse_edges is None:
        # one row of n_edge slots: dropped edges already get distinct columns >= width
        keep = within
        n_compacted = width
        column, largest = compacted_columns(keep[None], width)
        position = column[0]
    else:
        keep = within | within[graph.reverse_edges]
        n_slots = n_edge // n_node
        n_compacted = n_node * width
        column, largest = compacted_columns(keep.reshape(n_node, n_slots), width)
        rows = jnp.arange(n_node, dtype=jnp.int32)[:, None]
        past_end = n_compacted + jnp.arange(n_edge, dtype=jnp.int32).reshape(n_node, n_slots)
        position = jnp.where(column < width, rows * width + column, past_end).reshape(-1)
    padding_node = n_node - 1

    def place(values: jax.Array, fill) -> jax.Array:
        out = jnp.full((n_compacted, *values.shape[1:]), fill, values.dtype)
        return out.at[position].set(values, mode="drop", unique_indices=True)

    reverse = None
    if graph.reverse_edges is not None:
        # A kept edge's reverse is kept, so its new index is the reverse's new index.
        reverse = (
            jnp.arange(n_compacted, dtype=jnp.int32)
            .at[position]
            .set(position[graph.reverse_edges], mode="drop", unique_indices=True)
        )
    compacted = graph._replace(
        senders=place(graph.senders, padding_node),
        receivers=place(graph.receivers, padding_node),
        shifts=place(graph.shifts, 0),
        edge_mask=place(keep, False),
        reverse_edges=reverse,
    )
    return compacted, largest


def check_graph(graph: Graph) -> None:
    """The Graph contract (docs/architecture.md) at the entry of the pure core: shapes
    agree with one another, indices are integers, positions floats. chex assertions on
    static shapes run once per trace, so a jitted call pays nothing for them."""
    n_node, n_edge, n_graph = graph.positions.shape[0], graph.senders.shape[0], graph.cell.shape[0]
    chex.assert_shape(graph.positions, (n_node, 3))
    chex.assert_shape([graph.numbers, graph.node_graph, graph.node_mask], (n_node,))
    chex.assert_shape([graph.senders, graph.receivers, graph.edge_mask], (n_edge,))
    chex.assert_shape(graph.shifts, (n_edge, 3))
    chex.assert_shape(graph.cell, (n_graph, 3, 3))
    chex.assert_shape(graph.pbc, (n_graph, 3))
    chex.assert_shape([graph.n_node, graph.graph_mask], (n_graph,))
    chex.assert_type([graph.numbers, graph.senders, graph.receivers, graph.node_graph], int)
    chex.assert_type([graph.positions, graph.cell], float)
    if graph.reverse_edges is not None:
        chex.assert_shape(graph.reverse_edges, (n_edge,))
        if n_edge % n_node:
            raise ValueError(
                f"a receiver-major graph needs n_edge divisible by n_node; got "
                f"n_edge={n_edge}, n_node={n_node}"
            )


def make_potential(atomic_energy_fn: AtomicEnergyFn) -> Potential:
    """Build energy/force/stress functions from a per-atom energy function.

    Args:
        atomic_energy_fn: ``(params, numbers, edge_vectors, senders, receivers,
            node_mask, edge_mask) -> [n_node]`` energies in eV (a student's
            ``module.apply``). If it is the ``apply`` of a module that takes a
            ``layout`` argument (jaxdistill's students), a receiver-major graph's
            layout is passed on, so its message passing runs scatter-free too.

    Returns:
        A :class:`Potential`.
    """
    module = getattr(atomic_energy_fn, "__self__", None)
    takes_layout = module is not None and accepts_layout(module)

    def node_energies(params, graph: Graph, positions, strain) -> jax.Array:
        check_graph(graph)
        vectors, _ = edge_vectors(positions, graph, strain)
        layout = graph_edges(graph).layout
        atomic = atomic_energy_fn(
            params,
            graph.numbers,
            vectors,
            graph.senders,
            graph.receivers,
            graph.node_mask,
            graph.edge_mask,
            **({"layout": layout} if takes_layout and layout is not None else {}),
        )
        return jnp.where(graph.node_mask, atomic, 0.0)

    def graph_energies(params, graph: Graph, positions, strain) -> jax.Array:
        atomic = node_energies(params, graph, positions, strain)
        return jax.ops.segment_sum(atomic, graph.node_graph, num_segments=graph.cell.shape[0])

    def atomic_energies(params, graph: Graph) -> jax.Array:
        return node_energies(params, graph, jnp.asarray(graph.positions), None)

    def energy(params, graph: Graph) -> jax.Array:
        positions = jnp.asarray(graph.positions)
        return graph_energies(params, graph, positions, None)

    def predict(params, graph: Graph) -> Prediction:
        positions = jnp.asarray(graph.positions)
        # Derived from the cell (not a fresh constant) so that under shard_map the
        # strain is per-device data and its gradient stays with its own structures.
        strain = jnp.zeros_like(graph.cell, dtype=positions.dtype)

        def total(positions, strain):
            energies = graph_energies(params, graph, positions, strain)
            # Graphs are independent, so the gradient of the sum gives each graph's own
            # derivatives; padding graphs are masked out of the sum.
            return jnp.sum(jnp.where(graph.graph_mask, energies, 0.0)), energies

        (_, energies), (d_positions, d_strain) = jax.value_and_grad(
            total, argnums=(0, 1), has_aux=True
        )(positions, strain)
        periodic = jnp.all(graph.pbc, axis=-1) & graph.graph_mask
        volume = jnp.abs(jnp.linalg.det(jnp.where(periodic[:, None, None], graph.cell, jnp.eye(3))))
        stress = jnp.where(periodic[:, None, None], d_strain / volume[:, None, None], 0.0)
        forces = jnp.where(graph.node_mask[:, None], -d_positions, 0.0)
        return Prediction(
            energy=jnp.where(graph.graph_mask, energies, 0.0), forces=forces, stress=stress
        )

    def energy_and_forces(params, graph: Graph) -> tuple[jax.Array, jax.Array]:
        def total(positions):
            energies = graph_energies(params, graph, positions, None)
            return jnp.sum(jnp.where(graph.graph_mask, energies, 0.0)), energies

        (_, energies), d_positions = jax.value_and_grad(total, has_aux=True)(
            jnp.asarray(graph.positions)
        )
        forces = jnp.where(graph.node_mask[:, None], -d_positions, 0.0)
        return jnp.where(graph.graph_mask, energies, 0.0), forces

    def hessian_vector_product(params, graph: Graph, directions: jax.Array) -> jax.Array:
        if graph.reverse_edges is not None:
            raise ValueError(
                "Hessian-vector products need an edge-list graph (a forward-mode "
                "derivative, which the receiver-major layout's gathers lack): build the "
                "graph without slots_per_node (edge_layout 'edge_list')"
            )

        def total(positions):
            energies = graph_energies(params, graph, positions, None)
            return jnp.sum(jnp.where(graph.graph_mask, energies, 0.0))

        positions = jnp.asarray(graph.positions)
        tangent = jnp.where(graph.node_mask[:, None], directions, 0.0).astype(positions.dtype)
        # Forward over reverse: one extra forward sweep through the gradient, the
        # cheapest way to a Hessian-vector product.
        _, product = jax.jvp(jax.grad(total), (positions,), (tangent,))
        return jnp.where(graph.node_mask[:, None], product, 0.0)

    return Potential(
        energy=energy,
        predict=predict,
        energy_and_forces=energy_and_forces,
        hessian_vector_product=hessian_vector_product,
        atomic_energies=atomic_energies,
    )


def voigt_stress(stress: jax.Array) -> jax.Array:
    """3×3 stress tensor(s) to ASE's Voigt order (xx, yy, zz, yz, xz, xy)."""
    s = stress
    return jnp.stack(
        [s[..., 0, 0], s[..., 1, 1], s[..., 2, 2], s[..., 1, 2], s[..., 0, 2], s[..., 0, 1]],
        axis=-1,
    )
