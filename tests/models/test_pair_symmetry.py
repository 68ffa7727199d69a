"""Neighbour sums transposed by the list's symmetry (``Edges.neighbour_sum`` on a
receiver-major list, ``JAXDISTILL_PAIR_SYMMETRY``) give what the plain edge list and the
reverse-edge map give: the sums, their derivatives with respect to node features, filters
and directions, the students' energies, forces and stress, and the parameter gradients
of a force loss (reverse over reverse), on periodic silicon with duplicate image pairs
and on a molecule, with padding slots and a padding node."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads
from structures import ethanol, silicon

from jaxdistill import create_student
from jaxdistill.graph import batch_graphs, neighbour_pairs, slots_for
from jaxdistill.models.edges import (
    PAIR_SYMMETRY_AUTO_BACKENDS,
    PAIR_SYMMETRY_ENV_VAR,
    Edges,
    layout_from_reverse,
    use_pair_symmetry,
)
from jaxdistill.models.painn import _painn_sums_reference, painn_symmetric_sums

CUTOFF = 4.0
SYSTEMS = {
    "silicon-primitive": lambda: silicon(cubic=False),  # a pair seen through many images
    "ethanol": ethanol,
}


@pytest.fixture(autouse=True)
def symmetric_transpose(monkeypatch):
    """Transposes by symmetry unless a test says otherwise ("auto" may not)."""
    monkeypatch.setenv(PAIR_SYMMETRY_ENV_VAR, "on")


def receiver_major(atoms, dtype=np.float64):
    """The structure as a receiver-major graph with two padding slots a row."""
    slots = slots_for([neighbour_pairs(atoms, CUTOFF)]) + 2
    return batch_graphs([atoms], CUTOFF, dtype=dtype, slots_per_node=slots)


def edges_of(graph, layout: bool) -> Edges:
    reverse = layout_from_reverse(jnp.asarray(graph.reverse_edges), graph.edge_mask)
    return Edges(graph.senders, graph.receivers, reverse if layout else None)


def unit_vectors_and_filters(positions, graph, n_features: int):
    """Each edge's unit vector ``[E, 3]`` (antisymmetric under reversal) and smooth
    filters of its length ``[E, n_features]`` (symmetric), both zero on padding edges."""
    cell_offsets = jnp.asarray(graph.shifts, positions.dtype) @ jnp.asarray(
        graph.cell[0], positions.dtype
    )
    vectors = positions[graph.senders] - positions[graph.receivers] + cell_offsets
    mask = graph.edge_mask
    distance = jnp.sqrt(jnp.sum(vectors**2, axis=-1) + jnp.where(mask, 0.0, 1.0))
    unit = vectors / distance[:, None] * mask[:, None]
    scale = jnp.linspace(0.5, 2.0, n_features, dtype=positions.dtype)
    filters = jnp.cos(distance[:, None] * scale) * jnp.exp(-distance[:, None]) * mask[:, None]
    return unit, filters


def sums(positions, nodes, vectors_in, graph, layout: bool):
    """A smooth scalar of the three kinds of neighbour sum a student makes: scalar
    features times a filter, vector features times a filter, scalar features times a
    filter along the edge's direction."""
    edges = edges_of(graph, layout)
    unit, filters = unit_vectors_and_filters(positions, graph, nodes.shape[-1])
    a = edges.neighbour_sum(nodes, filters)
    b = edges.neighbour_sum(nodes, filters, directions=unit)
    c = edges.neighbour_sum(vectors_in, filters)
    return jnp.sum(jnp.sin(a)) + jnp.sum(jnp.cos(b) * b) + jnp.sum(c**2) + jnp.sum(b * c)


def inputs(graph, features=5, seed=0):
    rng = np.random.default_rng(seed)
    n_node = graph.positions.shape[0]
    dtype = graph.positions.dtype
    nodes = jnp.asarray(rng.normal(size=(n_node, features)), dtype)
    vectors_in = jnp.asarray(rng.normal(size=(n_node, 3, features)), dtype)
    return jnp.asarray(graph.positions), nodes, vectors_in


@pytest.mark.parametrize("system", SYSTEMS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sums_and_their_gradients_match_the_edge_list(system, dtype, monkeypatch):
    jax.config.update("jax_enable_x64", True)
    graph = receiver_major(SYSTEMS[system](), dtype)
    args = inputs(graph)
    tolerance = 1e-5 if dtype == np.float32 else 1e-10
    value_and_grads = jax.jit(jax.value_and_grad(sums, argnums=(0, 1, 2)), static_argnums=(4,))
    plain = value_and_grads(*args, graph, False)
    for setting in ("on", "off"):  # by symmetry, and by the reverse-edge map
        monkeypatch.setenv(PAIR_SYMMETRY_ENV_VAR, setting)
        rows = value_and_grads(*args, graph, True)
        for ref, new in zip(jax.tree.leaves(plain), jax.tree.leaves(rows), strict=True):
            assert new.dtype == dtype
            assert np.abs(np.asarray(ref)).max() > 1e-3, "a vanishing check proves nothing"
            np.testing.assert_allclose(new, ref, rtol=tolerance, atol=tolerance, err_msg=setting)


def test_second_derivatives_match_the_edge_list():
    """Training differentiates forces: reverse over reverse through the symmetric
    transpose must agree with the plain edge list."""
    jax.config.update("jax_enable_x64", True)
    graph = receiver_major(silicon(cubic=False))
    positions, nodes, vectors_in = inputs(graph, seed=1)

    @functools.partial(jax.jit, static_argnums=1)
    def force_loss_gradient(nodes, layout):
        def force_loss(nodes):
            forces = -jax.grad(sums)(positions, nodes, vectors_in, graph, layout)
            return jnp.sum(forces**2)

        return jax.grad(force_loss)(nodes)

    ref = force_loss_gradient(nodes, False)
    assert np.abs(np.asarray(ref)).max() > 1e-3
    np.testing.assert_allclose(force_loss_gradient(nodes, True), ref, rtol=1e-10, atol=1e-10)


def test_custom_vjp_passes_check_grads():
    """The transpose against finite differences, in every input (filters and directions
    symmetric and antisymmetric by construction, as the transpose assumes)."""
    jax.config.update("jax_enable_x64", True)
    graph = receiver_major(silicon(cubic=False))
    positions, nodes, vectors_in = inputs(graph, features=3, seed=2)

    def scalar(positions, nodes, vectors_in):
        return sums(positions, nodes, vectors_in, graph, True)

    check_grads(scalar, (positions, nodes, vectors_in), order=1, modes=["rev"])


def painn_layer_sums(positions, phi, v, graph, symmetric: bool):
    """A smooth scalar of one PaiNN layer's sums (``painn_symmetric_sums`` or its plain
    autodiff), with filters and unit vectors built from the positions."""
    unit, filters = unit_vectors_and_filters(positions, graph, phi.shape[-1])
    layer_sums = painn_symmetric_sums if symmetric else _painn_sums_reference
    ds, dv = layer_sums(phi, v, filters, jnp.asarray(graph.senders), unit)
    return jnp.sum(jnp.sin(ds)) + jnp.sum(jnp.cos(dv) * dv) + jnp.sum(ds[:, None, :] * dv)


@pytest.mark.parametrize("vectors_zero", [False, True], ids=["layer-2", "layer-1"])
def test_painn_layer_sums_match_their_plain_gradient(vectors_zero):
    """PaiNN's one-VJP form of a layer's three sums: the gradient in positions, gates
    and vector features equals plain autodiff of the same sums, and finite differences."""
    jax.config.update("jax_enable_x64", True)
    graph = receiver_major(silicon(cubic=False))
    positions, _, v = inputs(graph, features=4, seed=3)
    n_gates = 2 if vectors_zero else 3
    phi = jnp.asarray(np.random.default_rng(4).normal(size=(v.shape[0], n_gates * 4)))
    v = None if vectors_zero else v
    argnums = (0, 1) if vectors_zero else (0, 1, 2)
    grads = jax.jit(
        jax.grad(lambda x, p, v, symmetric: painn_layer_sums(x, p, v, graph, symmetric), argnums),
        static_argnums=3,
    )
    plain = grads(positions, phi, v, False)
    for ref, new in zip(plain, grads(positions, phi, v, True), strict=True):
        assert np.abs(np.asarray(ref)).max() > 1e-3, "a vanishing check proves nothing"
        np.testing.assert_allclose(new, ref, rtol=1e-10, atol=1e-10)
    check_grads(
        lambda *args: painn_layer_sums(*args[:2], v if vectors_zero else args[2], graph, True),
        (positions, phi) if vectors_zero else (positions, phi, v),
        order=1,
        modes=["rev"],
    )


def test_jit_and_vmap_over_configurations():
    graph = receiver_major(silicon(), np.float32)
    positions, nodes, vectors_in = inputs(graph)
    batch = jnp.stack([positions + 0.01 * k for k in range(3)])

    def forces(layout):
        return jax.vmap(jax.grad(lambda x: sums(x, nodes, vectors_in, graph, layout)))(batch)

    np.testing.assert_allclose(jax.jit(lambda: forces(True))(), forces(False), rtol=1e-5, atol=1e-5)

    phi = jnp.concatenate([nodes, jnp.cos(nodes), jnp.sin(nodes)], axis=-1)  # PaiNN's 3F

    def painn_forces(symmetric):
        def energy(x):
            return painn_layer_sums(x, phi, vectors_in, graph, symmetric)

        return jax.vmap(jax.grad(energy))(batch)

    reference = painn_forces(False)
    assert np.abs(np.asarray(reference)).max() > 1e-3
    np.testing.assert_allclose(
        jax.jit(lambda: painn_forces(True))(), reference, rtol=1e-5, atol=1e-5
    )


def everything(student, graph):
    """Energy, forces, stress and a force loss's parameter gradient."""
    potential = student.potential
    prediction = potential.predict(student.params, graph)

    def force_loss(p):
        _, forces = potential.energy_and_forces(p, graph)
        return jnp.sum(forces**2)

    return {
        "energy": prediction.energy,
        "forces": prediction.forces,
        "stress": prediction.stress,
        "parameter_gradient": jax.grad(force_loss)(student.params),
    }


@pytest.mark.parametrize(
    ("architecture", "system", "repulsion"),
    [
        ("painn", "silicon-primitive", "zbl"),
        ("schnet", "ethanol", None),
    ],
)
def test_students_match_the_edge_list(architecture, system, repulsion, monkeypatch):
    jax.config.update("jax_enable_x64", True)
    atoms = SYSTEMS[system]()
    species = sorted(set(atoms.get_chemical_symbols()))
    # (the reverse-map path is the students' former one: tests/models/test_edge_remat.py
    # holds it to the edge list)
    graphs = {
        "edge_list": batch_graphs([atoms], CUTOFF, dtype=np.float64),
        "symmetric": receiver_major(atoms),
    }
    results = {}
    for name, graph in graphs.items():
        # A fresh student per graph (same seed, same parameters): JAX reuses a
        # function's traces, and the setting is read when one is traced.
        student = create_student(
            architecture,
            species,
            cutoff=CUTOFF,
            features=8,
            num_layers=2,
            repulsion=repulsion,
            dtype="float64",
        )
        results[name] = jax.jit(functools.partial(everything, student))(graph)
    reference = results.pop("edge_list")
    assert np.abs(np.asarray(reference["forces"])).max() > 1e-3, "forces must not vanish"
    for name, result in results.items():
        for key in reference:
            jax.tree_util.tree_map(
                lambda a, b, key=key, name=name: np.testing.assert_allclose(
                    b, a, rtol=1e-10, atol=1e-12, err_msg=f"{name}: {key}"
                ),
                reference[key],
                result[key],
            )


def test_the_setting_decides_the_traced_program(monkeypatch):
    graph = receiver_major(silicon(), np.float32)

    def jaxpr_text():
        # a fresh student: JAX would reuse an earlier trace of the same function
        student = create_student("schnet", ["Si"], cutoff=CUTOFF, features=8, num_layers=1)
        # (the energy's: in a derivative's the call is replaced by its rules)
        return str(jax.make_jaxpr(student.potential.energy)(student.params, graph))

    monkeypatch.setenv(PAIR_SYMMETRY_ENV_VAR, "on")
    assert use_pair_symmetry()
    text = jaxpr_text()
    assert "name=symmetric_neighbour_sum" in text
    monkeypatch.setenv(PAIR_SYMMETRY_ENV_VAR, "off")
    text = jaxpr_text()
    assert "name=symmetric_neighbour_sum" not in text
    monkeypatch.delenv(PAIR_SYMMETRY_ENV_VAR)  # "auto" follows the backend
    assert use_pair_symmetry() is (jax.default_backend() in PAIR_SYMMETRY_AUTO_BACKENDS)


def test_bad_setting_names_the_variable(monkeypatch):
    monkeypatch.setenv(PAIR_SYMMETRY_ENV_VAR, "yes")
    with pytest.raises(ValueError, match=PAIR_SYMMETRY_ENV_VAR):
        use_pair_symmetry()
