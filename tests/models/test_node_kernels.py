"""The fused PaiNN update block (``models.node_kernels``) against its pure-JAX oracle.

On the CPU the Pallas kernels run interpreted: the same kernel code the GPU compiles.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads
from structures import SPECIES, ethanol, silicon

from jaxdistill import create_student
from jaxdistill.models import node_kernels as nk
from jaxdistill.models.node_kernels import (
    UpdateWeights,
    painn_update_fused,
    painn_update_reference,
    use_node_kernels,
)


def relative_error(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


@functools.cache
def block_inputs(dtype: str, n_node: int = 21, features: int = 16):
    """Random features and not-small weights: 21 atoms, so the last block of 16 rows is
    partly past the end."""
    f = features
    keys = jax.random.split(jax.random.key(0), 8)
    shapes = [(f, f), (f, f), (2 * f, f), (f,), (f, 3 * f), (3 * f,)]
    weights = UpdateWeights(
        *(0.3 * jax.random.normal(k, shape, dtype) for k, shape in zip(keys, shapes, strict=False))
    )
    s = jax.random.normal(keys[6], (n_node, f), dtype)
    v = jax.random.normal(keys[7], (n_node, 3, f), dtype)
    return s, v, weights


def loss(update, softening):
    def total(s, v, weights):
        s_new, v_new = update(s, v, weights, softening)
        return jnp.sum(jnp.sin(s_new)) + jnp.sum(jnp.sin(v_new) * jnp.cos(s_new)[:, None, :])

    return total


@pytest.mark.parametrize(
    ("dtype", "blocks", "softening"),
    [("float64", None, 1.0), ("float32", None, 1.0), ("float64", "32,4", 1e-4)],
)
def test_fused_update_and_its_gradients_equal_reference(dtype, blocks, softening, monkeypatch):
    if blocks is not None:
        monkeypatch.setenv(nk.BLOCKS_ENV_VAR, blocks)
    s, v, weights = block_inputs(dtype)
    tolerance = 1e-10 if dtype == "float64" else 1e-5
    ours = painn_update_fused(s, v, weights, softening)
    theirs = painn_update_reference(s, v, weights, softening)
    for a, b in zip(ours, theirs, strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert relative_error(a, b) < tolerance
    # Gradients of the features (the kernel) and of the weights (the reference formula).
    grads = [
        jax.grad(loss(update, softening), argnums=(0, 1, 2))(s, v, weights)
        for update in (painn_update_fused, painn_update_reference)
    ]
    for a, b in zip(*(jax.tree_util.tree_leaves(g) for g in grads), strict=True):
        assert np.abs(b).max() > 1e-3  # not vacuous
        assert relative_error(a, b) < tolerance


def test_fused_update_passes_check_grads_and_its_second_derivative_equals_reference():
    s, v, weights = block_inputs("float64")
    check_grads(
        lambda s, v: painn_update_fused(s, v, weights, 1.0),
        (s, v),
        order=1,
        modes=["rev"],
        atol=1e-6,
        rtol=1e-6,
    )

    # A force loss differentiates the backward: d/dW of a function of d/dv.
    def second(update):
        def of_weights(weights):
            dv = jax.grad(loss(update, 1.0), argnums=1)(s, v, weights)
            return jnp.sum(dv**2)

        return jax.grad(of_weights)(weights)

    ours, theirs = second(painn_update_fused), second(painn_update_reference)
    for a, b in zip(
        jax.tree_util.tree_leaves(ours), jax.tree_util.tree_leaves(theirs), strict=True
    ):
        assert relative_error(a, b) < 1e-10


def test_node_kernels_are_opt_in(monkeypatch):
    monkeypatch.delenv(nk.ENV_VAR, raising=False)
    # measured slower than XLA's kernels on an H100: off unless asked, on any backend
    monkeypatch.setattr(nk.jax, "default_backend", lambda: "gpu")
    assert not use_node_kernels("auto")
    monkeypatch.setenv(nk.ENV_VAR, "on")
    assert use_node_kernels("auto") and use_node_kernels("fused")
    assert not use_node_kernels("reference")  # training and any derivative order
    monkeypatch.setenv(nk.ENV_VAR, "fast")
    with pytest.raises(ValueError, match=nk.ENV_VAR):
        use_node_kernels("auto")
    monkeypatch.setenv(nk.ENV_VAR, "on")
    s, v, weights = block_inputs("float64", features=24)
    with pytest.raises(ValueError, match=nk.ENV_VAR):
        painn_update_fused(s, v, weights, 1.0)
    # on a GPU, more features than fit its shared memory get a clear error
    monkeypatch.setattr(nk, "_interpret", lambda: False)
    s, v, weights = block_inputs("float32", features=128)
    with pytest.raises(ValueError, match="shared memory"):
        painn_update_fused(s, v, weights, 1.0)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_painn_student_with_node_kernels_equals_reference(dtype, monkeypatch):
    """A whole PaiNN student on a receiver-major graph (crystal with two species, a
    molecule, padding slots, nodes and a graph): energies, forces and stress."""
    student = create_student(
        "painn", SPECIES, cutoff=3.5, seed=2, dtype=dtype, features=16, num_layers=2,
        message_passing="auto",
    )  # fmt: skip
    crystal = silicon(rattle=0.1, seed=3)
    crystal.numbers[[1, 5]] = 6
    graph = student.graph(
        [crystal, ethanol(seed=1)], node_capacity=40, slots_per_node=40, graph_capacity=3
    )
    assert graph.reverse_edges is not None

    def predict(setting):
        monkeypatch.setenv(nk.ENV_VAR, setting)
        # A new function each time: the choice is read when the program is traced.
        return jax.device_get(
            jax.jit(lambda p, g: student.potential.predict(p, g))(student.params, graph)
        )

    ours, theirs = predict("on"), predict("off")
    tolerance = 1e-10 if dtype == "float64" else 1e-5
    for name in ("energy", "forces", "stress"):
        assert np.abs(getattr(theirs, name)).max() > 1e-4, name
        assert relative_error(getattr(ours, name), getattr(theirs, name)) < tolerance, name

    # The kernel really ran: the traced program holds Pallas calls only with it on.
    def kernels(setting):
        monkeypatch.setenv(nk.ENV_VAR, setting)
        program = jax.jit(lambda p, g: student.potential.predict(p, g))
        return str(program.trace(student.params, graph).jaxpr).count("pallas_call")

    assert kernels("on") >= 2 * 2 and kernels("off") == 0
