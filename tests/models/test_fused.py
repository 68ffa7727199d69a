"""The fused message-passing path (jaxdistill.models.fused) against the reference path.

On a CPU the Pallas kernels run in interpret mode, so these tests check the same
kernel code that runs on the GPU. Shapes are kept small and compiled functions are
shared between tests: interpreting a kernel costs seconds of compilation per shape.
"""

from __future__ import annotations

import functools

import ase
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads
from structures import SPECIES, ethanol, silicon

from jaxdistill import create_student
from jaxdistill.models import fused as fz
from jaxdistill.models.fused import FusedPathError, check_mode, use_fused
from jaxdistill.potential import edge_vectors, make_potential

ARCHITECTURES = ("schnet", "painn")
# Sizes the GPU kernels accept too (powers of two, >= 16), so this file also runs there.
HYPER = dict(features=16, num_layers=2, num_radial=16)
CUTOFF = 3.5


def structures() -> list[ase.Atoms]:
    """A periodic cell with two species, a molecule, and a lone atom (no neighbours)."""
    crystal = silicon(rattle=0.1, seed=3)
    crystal.numbers[[1, 5]] = 6  # carbon substitutions: several species in one cell
    molecule = ethanol(seed=1)
    lone = ase.Atoms("O", positions=[[0.0, 0.0, 0.0]])
    return [crystal, molecule, lone]


@functools.cache
def students(architecture: str, dtype: str):
    student = create_student(architecture, SPECIES, cutoff=CUTOFF, seed=2, dtype=dtype, **HYPER)
    # Random, not-small weights everywhere, so no term of the model is vacuous.
    key = jax.random.key(7)
    leaves, tree = jax.tree_util.tree_flatten(student.params)
    keys = jax.random.split(key, len(leaves))
    leaves = [
        leaf + 0.3 * jax.random.normal(k, leaf.shape, leaf.dtype)
        for k, leaf in zip(keys, leaves, strict=True)
    ]
    student.params = jax.tree_util.tree_unflatten(tree, leaves)
    return student.with_message_passing("reference"), student.with_message_passing("fused")


@functools.cache
def graph(dtype: str):
    reference, _ = students("schnet", dtype)
    # Capacities well above the real counts: padding nodes, edges and a padding graph.
    return reference.graph(structures(), node_capacity=48, edge_capacity=768, graph_capacity=4)


@functools.cache
def predictions(architecture: str, dtype: str):
    reference, fused = students(architecture, dtype)
    g = graph(dtype)
    return jax.device_get(reference.predict(g)), jax.device_get(fused.predict(g))


def relative_error(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_fused_equals_reference(architecture, dtype):
    reference, fused = predictions(architecture, dtype)
    g = graph(dtype)
    assert int(np.sum(~np.asarray(g.edge_mask))) > 0 and int(np.sum(~g.node_mask)) > 0
    tolerance = 1e-10 if dtype == "float64" else 1e-5
    assert fused.forces.dtype == np.dtype(dtype)
    for name in ("energy", "forces", "stress"):
        ours, theirs = getattr(fused, name), getattr(reference, name)
        assert np.abs(theirs).max() > 1e-4, name  # not vacuous
        assert relative_error(ours, theirs) < tolerance, name
    # padding stays exactly zero; the lone atom feels no force
    assert np.all(fused.forces[~np.asarray(g.node_mask)] == 0)
    lone = int(np.sum(g.n_node[:2]))
    assert np.all(fused.forces[lone] == 0)


@functools.cache
def random_edges(dtype: str, n_node: int = 21, n_edge: int = 96, seed: int = 0):
    """Random graph with padding edges (to the last node), some beyond the cutoff."""
    rng = np.random.default_rng(seed)
    positions = rng.uniform(0.0, 5.0, (n_node, 3))
    senders = rng.integers(0, n_node - 2, n_edge)
    receivers = rng.integers(0, n_node - 2, n_edge)
    mask = (senders != receivers) & (rng.uniform(size=n_edge) < 0.9)
    senders = np.where(mask, senders, n_node - 1)
    receivers = np.where(mask, receivers, n_node - 1)
    vectors = np.where(mask[:, None], positions[senders] - positions[receivers], 0.0)
    return (
        jnp.asarray(vectors, dtype),
        jnp.asarray(mask),
        jnp.asarray(senders, jnp.int32),
        jnp.asarray(receivers, jnp.int32),
    )


def test_custom_vjp_of_schnet_layer_passes_check_grads():
    vectors, mask, senders, receivers = random_edges("float64")
    n, f, r = 21, 16, 16
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(n, f)))
    w1, b1 = jnp.asarray(rng.normal(size=(r, f))), jnp.asarray(rng.normal(size=f))
    w2, b2 = jnp.asarray(rng.normal(size=(f, f)) / 4), jnp.asarray(rng.normal(size=f))
    layout = fz.edge_layouts(vectors, mask, senders, receivers, n, CUTOFF)
    assert int(layout.by_receiver.offsets[-1]) < int(np.sum(np.asarray(mask)))  # skin edges

    def layer(x, vectors, w1, b2):
        return fz.schnet_messages(
            x, vectors, mask, w1, b1, w2, b2, senders, receivers, layout, CUTOFF, r
        )

    check_grads(layer, (x, vectors, w1, b2), order=1, modes=["rev"], atol=1e-6, rtol=1e-6)


def test_custom_vjp_of_painn_layer_passes_check_grads():
    vectors, mask, senders, receivers = random_edges("float64")
    n, f, r = 21, 16, 16
    rng = np.random.default_rng(2)
    phi = jnp.asarray(rng.normal(size=(n, 3 * f)))
    v = jnp.asarray(rng.normal(size=(n, 3, f)))
    w, b = jnp.asarray(rng.normal(size=(r, 3 * f))), jnp.asarray(rng.normal(size=3 * f))
    layout = fz.edge_layouts(vectors, mask, senders, receivers, n, CUTOFF)

    def layer(phi, v, vectors, w):
        return fz.painn_messages(phi, v, vectors, mask, w, b, senders, receivers, layout, CUTOFF, r)

    # (second order, the backward's own derivative, is checked through the whole model
    # in test_derivative_of_forces_reverse_works_forward_raises)
    check_grads(layer, (phi, v, vectors, w), order=1, modes=["rev"], atol=1e-6, rtol=1e-6)


@functools.cache
def receiver_major_graph(dtype: str):
    reference, _ = students("painn", dtype)
    # 40 slots a node (the crystal's atoms have up to ~30 neighbours): padding slots in
    # every row, a padding node, a padding graph, and rows longer than one slot tile.
    return reference.graph(structures(), node_capacity=48, slots_per_node=40, graph_capacity=4)


@pytest.mark.parametrize(
    ("architecture", "dtype", "blocks"),
    [
        ("painn", "float64", None),
        ("painn", "float32", "16,8,4"),
        ("schnet", "float64", "16,8,4"),
        ("schnet", "float32", None),
    ],
)
def test_slot_kernels_equal_reference_on_receiver_major_graphs(
    architecture, dtype, blocks, monkeypatch
):
    """The fused path on a receiver-major graph runs the slot kernels (no sorting);
    blocks "16,8,4" make several slot tiles per row and two feature blocks per node."""
    monkeypatch.setenv(fz.FUSED_LAYOUT_ENV_VAR, "slots")
    if blocks is not None:
        monkeypatch.setenv(fz.SLOT_BLOCKS_ENV_VAR, blocks)
    reference, fused = students(architecture, dtype)
    g = receiver_major_graph(dtype)
    assert g.reverse_edges is not None and g.senders.shape[0] == 40 * 48
    # The reference on the same receiver-major graph, and on a plain edge list.
    ours = jax.device_get(jax.jit(fused.potential.predict)(fused.params, g))
    theirs = jax.device_get(jax.jit(reference.potential.predict)(reference.params, g))
    plain = reference.predict(graph(dtype))
    tolerance = 1e-10 if dtype == "float64" else 1e-5
    for name in ("energy", "forces", "stress"):
        assert relative_error(getattr(ours, name), getattr(theirs, name)) < tolerance, name
        assert relative_error(getattr(ours, name), getattr(plain, name)) < tolerance, name
    lone = int(np.sum(g.n_node[:2]))
    assert np.all(ours.forces[lone] == 0)

    # No sort in the program: the slot kernels read the list as it is (on an edge list
    # the fused path sorts the edges by receiver and by sender).
    def sorts(student, graph):
        # A new function each time: the choice is read when the program is traced.
        program = jax.jit(lambda params, graph: student.potential.predict(params, graph))
        return program.lower(student.params, graph).as_text().count("stablehlo.sort")

    assert sorts(fused, g) == 0 and sorts(fused, graph(dtype)) > 0
    # By default (the slot kernels measured slower) a receiver-major list is sorted.
    monkeypatch.delenv(fz.FUSED_LAYOUT_ENV_VAR)
    assert sorts(fused, g) > 0


def test_custom_vjp_of_painn_slot_layer_passes_check_grads():
    g = receiver_major_graph("float64")
    n, f, r = g.positions.shape[0], 16, 16
    senders, receivers = jnp.asarray(g.senders), jnp.asarray(g.receivers)
    mask = jnp.asarray(g.edge_mask)
    vectors, _ = edge_vectors(jnp.asarray(g.positions), g)
    rng = np.random.default_rng(5)
    phi = jnp.asarray(rng.normal(size=(n, 3 * f)))
    v = jnp.asarray(rng.normal(size=(n, 3, f)))
    w, b = jnp.asarray(rng.normal(size=(r, 3 * f))), jnp.asarray(rng.normal(size=3 * f))
    reverse = jnp.asarray(g.reverse_edges)
    slots = fz.slot_edges(senders, reverse, mask, mask)

    def layer(phi, v, vectors, w):
        return fz.painn_messages(phi, v, vectors, mask, w, b, senders, receivers, slots, CUTOFF, r)

    def reference(phi, v, vectors, w):
        return fz.painn_messages_reference(
            phi, v, vectors, mask, w, b, senders, receivers, CUTOFF, r
        )

    inputs = (phi, v, vectors, w)
    cotangent = (jnp.asarray(rng.normal(size=(n, f))), jnp.asarray(rng.normal(size=(n, 3, f))))
    ours, ours_vjp = jax.vjp(layer, *inputs)
    theirs, theirs_vjp = jax.vjp(reference, *inputs)
    for a, e in zip((*ours, *ours_vjp(cotangent)), (*theirs, *theirs_vjp(cotangent)), strict=True):
        assert relative_error(a, e) < 1e-12
    # Finite differences too; the rattled molecule has a 0.18 Å pair (a steep 1/r basis),
    # whose differences carry ~1e-6 relative error.
    check_grads(layer, inputs, order=1, modes=["rev"], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("architecture", [pytest.param("schnet", marks=pytest.mark.slow), "painn"])
def test_derivative_of_forces_reverse_works_forward_raises(architecture):
    # ~35 s on 2 CPU cores (interpreting a second-order kernel graph): painn by default.
    reference, fused = students(architecture, "float64")
    g = graph("float64")

    def force_loss(student):
        predict = make_potential(student.model.apply).predict

        def loss(params):
            return jnp.sum(predict(params, g).forces ** 2)

        return loss

    # A training loss on forces: the derivative of the forces in the parameters.
    ours = jax.jit(jax.grad(force_loss(fused)))(fused.params)
    theirs = jax.jit(jax.grad(force_loss(reference)))(reference.params)
    for a, b in zip(
        jax.tree_util.tree_leaves(ours), jax.tree_util.tree_leaves(theirs), strict=True
    ):
        np.testing.assert_allclose(a, b, rtol=1e-8, atol=1e-10 * float(np.abs(b).max() + 1))

    # Forward mode (jvp of the forces, as in jax.hessian) is not available on the fused
    # path: JAX refuses jvp of a custom_vjp (its message cannot be changed from here;
    # the docs and the error of Student.with_message_passing name the reference path).
    predict = make_potential(fused.model.apply).predict
    tangent = jax.tree_util.tree_map(jnp.ones_like, fused.params)
    with pytest.raises(TypeError, match="forward-mode"):
        jax.jvp(lambda p: predict(p, g).forces, (fused.params,), (tangent,))


def test_jit_and_vmap_through_the_fused_path():
    reference, fused = students("painn", "float32")
    g = graph("float32")
    rng = np.random.default_rng(4)
    shifts = rng.normal(scale=0.05, size=(3, *np.shape(g.positions))).astype(np.float32)
    batch = g._replace(positions=jnp.asarray(g.positions)[None] + shifts)
    in_axes = g._replace(**{k: None for k in g._fields})._replace(positions=0)

    def run(student):
        return jax.jit(jax.vmap(student.potential.predict, in_axes=(None, in_axes)))(
            student.params, batch
        )

    ours, theirs = run(fused), run(reference)
    # float32 sums in another order: an untrained student's energies here span 1-1e7 eV.
    for name in ("energy", "forces", "stress"):
        assert relative_error(getattr(ours, name), getattr(theirs, name)) < 3e-5, name


def test_mode_option():
    assert check_mode("FUSED") == "fused"
    with pytest.raises(ValueError, match="message_passing"):
        check_mode("fast")
    assert use_fused("fused", jnp.float32, 16, 16)
    assert not use_fused("reference", jnp.float32, 64, 16)
    on_gpu = jax.default_backend() == "gpu"
    assert use_fused("auto", jnp.float32, 64, 16, n_node=4097) == on_gpu
    assert not use_fused("auto", jnp.float32, 64, 16, n_node=65)  # slower there (H200)
    assert not use_fused("auto", jnp.float64, 64, 16)
    assert not use_fused("auto", jnp.float32, 48, 16)  # not a power of two
    if on_gpu:
        with pytest.raises(FusedPathError, match="reference"):
            use_fused("fused", jnp.float32, 48, 16)


def test_auto_keeps_the_receiver_major_reference_path_where_it_measured_faster(monkeypatch):
    from jaxdistill.models import PaiNN, SchNet

    monkeypatch.setattr(fz.jax, "default_backend", lambda: "gpu")
    assert use_fused("auto", jnp.float32, 64, 16, n_node=4097)
    assert not use_fused("auto", jnp.float32, 64, 16, n_node=4097, receiver_major=True)
    assert use_fused(
        "auto", jnp.float32, 64, 16, n_node=4097, receiver_major=True, wins_on_receiver_major=True
    )
    # forced either way, the layout does not matter
    assert use_fused("fused", jnp.float32, 64, 16, n_node=65, receiver_major=True)
    assert PaiNN(species=(14,), cutoff=5.0, features=64).fused_wins_on_receiver_major()
    assert not PaiNN(species=(14,), cutoff=5.0, features=128).fused_wins_on_receiver_major()
    assert not SchNet(species=(14,), cutoff=5.0).fused_wins_on_receiver_major()


def test_environment_variable_decides_auto(monkeypatch):
    monkeypatch.setenv(fz.ENV_VAR, "fused")
    assert use_fused("auto", jnp.float64, 64, 16)
    assert not use_fused("reference", jnp.float64, 64, 16)
    monkeypatch.setenv(fz.ENV_VAR, "reference")
    assert not use_fused("auto", jnp.float32, 64, 16)
    monkeypatch.setenv(fz.ENV_VAR, "bogus")
    with pytest.raises(ValueError, match=fz.ENV_VAR):
        use_fused("auto", jnp.float32, 64, 16)


def test_compacted_rows_take_the_reference_path_unless_told(monkeypatch):
    monkeypatch.delenv(fz.ENV_VAR, raising=False)
    assert fz.mode_on_compacted_rows("auto") == "reference"
    assert fz.mode_on_compacted_rows("fused") == "fused"
    assert fz.mode_on_compacted_rows("reference") == "reference"
    monkeypatch.setenv(fz.ENV_VAR, "fused")  # the variable still decides what auto means
    assert fz.mode_on_compacted_rows("auto") == "auto"
    monkeypatch.setenv(fz.ENV_VAR, "bogus")
    with pytest.raises(ValueError, match=fz.ENV_VAR):
        fz.mode_on_compacted_rows("auto")
    with pytest.raises(ValueError, match="message_passing"):
        fz.mode_on_compacted_rows("fast")


def test_student_option_is_not_saved_and_keeps_parameters(tmp_path):
    student = create_student("schnet", ["Si"], cutoff=CUTOFF, message_passing="reference", **HYPER)
    assert student.message_passing == "reference"
    assert "message_passing" not in student.hyperparameters
    fused = student.with_message_passing("fused")
    assert fused.params is student.params
    assert fused.model.message_passing == "fused"
    assert fused.with_dtype("float64").message_passing == "fused"
    with pytest.raises(ValueError, match="message_passing"):
        student.with_message_passing("fast")
