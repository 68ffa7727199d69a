"""Scatter-free receiver-major edge operations (jaxdistill.models.edges) against the
plain gather/segment_sum path, on periodic silicon (duplicate image pairs) and a
molecule, with padding slots."""

from __future__ import annotations

import ase
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase.neighborlist import neighbor_list
from jax.test_util import check_grads
from structures import ethanol, silicon

from jaxdistill.models import edges

CUTOFF = 3.5


def receiver_major_graph(atoms: ase.Atoms, extra_slots: int = 2):
    """A receiver-major edge list of ``atoms`` plus one padding node (index N).

    Returns senders, receivers, shifts [n_edge, 3] Å, real-edge mask and node count.
    """
    i, j, shift = neighbor_list("ijS", atoms, CUTOFF)
    n_atoms = len(atoms)
    rows = [np.flatnonzero(i == r) for r in range(n_atoms)]
    n_slots = max(len(r) for r in rows) + extra_slots
    n_node = n_atoms + 1
    senders = np.full((n_node, n_slots), n_atoms)
    shifts = np.zeros((n_node, n_slots, 3))
    for r, edge_ids in enumerate(rows):
        senders[r, : len(edge_ids)] = j[edge_ids]
        shifts[r, : len(edge_ids)] = shift[edge_ids] @ np.asarray(atoms.cell)
    senders = senders.reshape(-1)
    receivers = np.repeat(np.arange(n_node), n_slots)
    mask = (senders != n_atoms) & (receivers != n_atoms)
    return senders, receivers, shifts.reshape(-1, 3), mask, n_node


def pair_energy(positions, weights, graph, use_edges: bool):
    """A smooth many-body-ish energy built from both a sender gather and a receiver sum."""
    senders, receivers, shifts, mask, n_node = graph
    positions = jnp.concatenate([positions, jnp.zeros((1, 3), positions.dtype)])
    if use_edges:
        layout = edges.receiver_major_layout(jnp.asarray(senders), n_node)
        sender_positions = edges.gather_senders(positions, jnp.asarray(senders), layout)
    else:
        sender_positions = positions[senders]
    vectors = sender_positions + jnp.asarray(shifts, positions.dtype) - positions[receivers]
    distance2 = jnp.sum(vectors**2, axis=-1)
    message = jnp.where(mask, jnp.exp(-distance2 / 4.0), 0.0)[:, None] * weights
    if use_edges:
        density = edges.sum_at_receivers(message, n_node)
    else:
        density = jax.ops.segment_sum(message, receivers, num_segments=n_node)
    return jnp.sum(jnp.tanh(density[:-1]) ** 2)


SYSTEMS = {
    "silicon-primitive": lambda: silicon(cubic=False),  # many duplicate image pairs
    "silicon-cubic": lambda: silicon(),
    "ethanol": lambda: ethanol(),
}


@pytest.mark.parametrize("system", SYSTEMS)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_energy_and_forces_match_reference(system, dtype):
    atoms = SYSTEMS[system]()
    graph = receiver_major_graph(atoms)
    positions = jnp.asarray(atoms.positions, dtype)
    weights = jnp.asarray(np.random.default_rng(0).normal(size=(len(graph[0]), 4)), dtype)
    tolerance = 1e-5 if dtype == jnp.float32 else 1e-10
    for order in (0, 1):
        fn = jax.grad if order else (lambda f: f)
        ref = fn(lambda x: pair_energy(x, weights, graph, False))(positions)
        new = fn(lambda x: pair_energy(x, weights, graph, True))(positions)
        assert new.dtype == dtype
        np.testing.assert_allclose(new, ref, rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize("system", ["silicon-primitive", "ethanol"])
def test_force_derivatives_match_reference(system):
    """Training differentiates forces: grad of a force loss must agree (reverse over reverse)."""
    atoms = SYSTEMS[system]()
    graph = receiver_major_graph(atoms)
    rng = np.random.default_rng(1)
    positions = jnp.asarray(atoms.positions)
    weights = jnp.asarray(rng.normal(size=(len(graph[0]), 4)))
    target = jnp.asarray(rng.normal(size=positions.shape))

    def force_loss(w, use_edges):
        forces = -jax.grad(pair_energy)(positions, w, graph, use_edges)
        return jnp.sum((forces - target) ** 2)

    ref = jax.grad(force_loss)(weights, False)
    new = jax.grad(force_loss)(weights, True)
    np.testing.assert_allclose(new, ref, rtol=1e-10, atol=1e-10)
    check_grads(
        lambda x: pair_energy(x, weights, graph, True), (positions,), order=2, modes=["rev"]
    )


def test_reverse_map_is_a_bijection_on_real_edges():
    graph = receiver_major_graph(silicon(cubic=False))
    senders, receivers, _, mask, n_node = graph
    layout = edges.receiver_major_layout(jnp.asarray(senders), n_node)
    reverse = np.asarray(layout.reverse)[mask]
    assert np.asarray(layout.reverse_mask)[mask].all()
    assert sorted(reverse) == sorted(np.flatnonzero(mask))
    np.testing.assert_array_equal(receivers[reverse], senders[mask])
    np.testing.assert_array_equal(senders[reverse], receivers[mask])


def test_jit_and_vmap_over_configurations():
    atoms = silicon()
    graph = receiver_major_graph(atoms)
    weights = jnp.ones((len(graph[0]), 4), jnp.float32)
    batch = jnp.stack([jnp.asarray(atoms.positions, jnp.float32) + 0.01 * k for k in range(3)])
    new = jax.jit(jax.vmap(jax.grad(lambda x: pair_energy(x, weights, graph, True))))(batch)
    ref = jax.vmap(jax.grad(lambda x: pair_energy(x, weights, graph, False)))(batch)
    np.testing.assert_allclose(new, ref, rtol=1e-5, atol=1e-5)


def test_shape_mismatch_names_the_sizes():
    with pytest.raises(ValueError, match="n_edge=10, n_node=3"):
        edges.receiver_major_layout(jnp.zeros(10, jnp.int32), 3)
