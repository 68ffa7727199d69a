"""PaiNN's message block: the first layer's shortcut (vector features known to be zero)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdistill.models.edges import Edges, receiver_major_layout
from jaxdistill.models.painn import PaiNNMessage

FEATURES, RADIAL = 8, 6


def _edge_list(rng, n_node=7, n_edge=23) -> Edges:
    senders = rng.integers(0, n_node, n_edge)
    receivers = rng.integers(0, n_node, n_edge)
    return Edges(jnp.asarray(senders), jnp.asarray(receivers))


def _receiver_major(rng, n_node=5) -> Edges:
    # every node sends to every other: a symmetric list, n_node - 1 slots per row
    rows = [[j for j in range(n_node) if j != i] for i in range(n_node)]
    senders = jnp.asarray(np.array(rows).reshape(-1))
    receivers = jnp.repeat(jnp.arange(n_node), n_node - 1)
    return Edges(senders, receivers, receiver_major_layout(senders, n_node))


@pytest.mark.parametrize("make_edges", [_edge_list, _receiver_major])
def test_first_layer_shortcut_equals_general_form(make_edges):
    """With v = 0 the message without the ``v_j * gate_v`` term (and without that third
    of the filter) gives the same features and the same gradients of every input and
    parameter as the general form, in float64 (the ``gate_v`` columns' gradients are
    zero in both)."""
    # float64 throughout (tests/conftest.py enables x64)
    rng = np.random.default_rng(0)
    edges = make_edges(rng)
    n_node = int(edges.receivers.max()) + 1
    n_edge = edges.senders.shape[0]
    s = jnp.asarray(rng.standard_normal((n_node, FEATURES)))
    v = jnp.zeros((n_node, 3, FEATURES))
    radial = jnp.asarray(rng.standard_normal((n_edge, RADIAL)))
    envelope = jnp.asarray(rng.uniform(0.1, 1.0, n_edge))
    directions = rng.standard_normal((n_edge, 3))
    unit_vectors = jnp.asarray(directions / np.linalg.norm(directions, axis=1)[:, None])
    general = PaiNNMessage(FEATURES)
    shortcut = PaiNNMessage(FEATURES, vectors_zero=True)
    inputs = (s, v, radial, envelope, unit_vectors)
    params = general.init(jax.random.key(1), *inputs, edges)
    assert jax.tree.structure(shortcut.init(jax.random.key(1), *inputs, edges)) == (
        jax.tree.structure(params)
    )

    def loss(module, params, s, radial, envelope, unit_vectors):
        ds, dv = module.apply(params, s, v, radial, envelope, unit_vectors, edges)
        weights = jnp.cos(jnp.arange(ds.size + dv.size, dtype=ds.dtype))
        return jnp.dot(jnp.concatenate([ds.ravel(), dv.ravel()]), weights)

    args = (params, s, radial, envelope, unit_vectors)
    out_general = general.apply(params, *inputs, edges)
    out_shortcut = shortcut.apply(params, *inputs, edges)
    for a, b in zip(out_general, out_shortcut, strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-13)
    assert float(jnp.abs(out_general[1]).max()) > 1e-3  # the vector message is not empty
    grads = jax.grad(loss, argnums=(1, 2, 3, 4, 5))
    for a, b in zip(
        jax.tree.leaves(grads(general, *args)),
        jax.tree.leaves(grads(shortcut, *args)),
        strict=True,
    ):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)
