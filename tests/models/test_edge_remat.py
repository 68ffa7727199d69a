"""The students' per-edge work recomputed in the backward pass (``JAXDISTILL_EDGE_REMAT``,
jaxdistill.models.edges.edge_function) gives what the stored forward pass gives:
energies, forces, stress, the parameter gradients training takes, and Hessian-vector
products (a derivative of the forces), on an edge list and a receiver-major graph."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from structures import ethanol, silicon

from jaxdistill import create_student
from jaxdistill.graph import batch_graphs, neighbour_pairs, slots_for
from jaxdistill.models.edges import (
    EDGE_REMAT_AUTO_BACKENDS,
    EDGE_REMAT_ENV_VAR,
    recompute_edges,
)

CUTOFF = 4.0


def graphs(atoms):
    """The structure as an edge list and as a receiver-major graph (float64)."""
    plain = batch_graphs([atoms], CUTOFF, dtype=np.float64)
    slots = slots_for([neighbour_pairs(atoms, CUTOFF)]) + 2  # two padding slots a row
    rows = batch_graphs([atoms], CUTOFF, dtype=np.float64, slots_per_node=slots)
    return {"edge_list": plain, "receiver_major": rows}


def everything(student, graph):
    """Energy, forces, stress, a force loss's parameter gradient and, on an edge list
    (the layout Hessian-vector products take), one H·u."""
    potential = student.potential
    params = student.params
    prediction = potential.predict(params, graph)

    def force_loss(p):
        _, forces = potential.energy_and_forces(p, graph)
        return jnp.sum(forces**2)

    directions = jnp.asarray(
        np.random.default_rng(0).normal(size=graph.positions.shape), graph.positions.dtype
    )
    out = {
        "energy": prediction.energy,
        "forces": prediction.forces,
        "stress": prediction.stress,
        "parameter_gradient": jax.grad(force_loss)(params),
    }
    if graph.reverse_edges is None:
        out["hvp"] = potential.hessian_vector_product(params, graph, directions)
    return out


@pytest.mark.parametrize(("architecture", "system"), [("painn", "silicon"), ("schnet", "ethanol")])
def test_recomputed_edges_equal_stored(architecture, system, monkeypatch):
    jax.config.update("jax_enable_x64", True)
    atoms = silicon() if system == "silicon" else ethanol()
    species = sorted(set(atoms.get_chemical_symbols()))
    for layout, graph in graphs(atoms).items():
        results = {}
        for setting in ("off", "on"):
            monkeypatch.setenv(EDGE_REMAT_ENV_VAR, setting)
            assert recompute_edges() is (setting == "on")
            # A fresh student per setting (same seed, same parameters): the setting is
            # read when a function is traced, and JAX reuses a function's traces.
            student = create_student(
                architecture, species, cutoff=CUTOFF, features=16, num_layers=2, dtype="float64"
            )
            results[setting] = jax.jit(functools.partial(everything, student))(graph)
        stored, recomputed = results["off"], results["on"]
        assert np.abs(np.asarray(stored["forces"])).max() > 1e-3, "forces must not vanish"
        for name in stored:
            jax.tree_util.tree_map(
                lambda a, b, name=name, layout=layout: np.testing.assert_allclose(
                    a, b, rtol=1e-10, atol=1e-12, err_msg=f"{layout}: {name}"
                ),
                stored[name],
                recomputed[name],
            )


def test_recompute_is_traced_into_the_program(monkeypatch):
    """ "on" puts the per-edge work under jax.checkpoint (a remat in the jaxpr of the
    forces); "off" does not; "auto" follows the backend."""
    graph = graphs(silicon())["receiver_major"]

    def jaxpr_text():
        # a fresh student: JAX would reuse an earlier trace of the same function
        student = create_student("schnet", ["Si"], cutoff=CUTOFF, features=8, num_layers=1)
        return str(jax.make_jaxpr(student.potential.energy_and_forces)(student.params, graph))

    monkeypatch.setenv(EDGE_REMAT_ENV_VAR, "on")
    assert "remat" in jaxpr_text() or "checkpoint" in jaxpr_text()
    monkeypatch.setenv(EDGE_REMAT_ENV_VAR, "off")
    assert "remat" not in jaxpr_text() and "checkpoint" not in jaxpr_text()
    monkeypatch.setenv(EDGE_REMAT_ENV_VAR, "auto")
    assert recompute_edges() is (jax.default_backend() in EDGE_REMAT_AUTO_BACKENDS)


def test_bad_setting_names_the_variable(monkeypatch):
    monkeypatch.setenv(EDGE_REMAT_ENV_VAR, "yes")
    with pytest.raises(ValueError, match=EDGE_REMAT_ENV_VAR):
        recompute_edges()
