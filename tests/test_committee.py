"""Student committees: stacked members in one vmap, their mean and spread; the ASE
calculator with a committee, per-atom energies, pickling.

Compilation dominates on a CPU, so the tests share one structure (8-atom Si) and few
programs: every calculator of the same model description shares its compilations.
"""

from __future__ import annotations

import copy
import dataclasses
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from structures import silicon

from jaxdistill import StudentCalculator, create_student
from jaxdistill.committee import (
    StudentCommittee,
    as_model,
    load_committee,
    structure_disagreement,
)

SPECIES = ["H", "C", "O", "Si"]
ALL = ["energy", "forces", "stress"]


def _member(seed: int):
    return create_student(
        "painn", SPECIES, cutoff=4.0, seed=seed, dtype="float64", features=8, num_layers=1,
        num_radial=6,
    )  # fmt: skip


@pytest.fixture(scope="module")
def members():
    """Three members: one fresh student and two with perturbed parameters (cheaper than
    initialising more; differently seeded training gives the same kind of spread)."""
    first = _member(11)
    rng = np.random.default_rng(0)

    def perturbed():
        def leaf(x):
            x = np.asarray(x)
            return jnp.asarray(x * (1 + 0.2 * rng.standard_normal(x.shape))) if x.size else x

        return dataclasses.replace(first, params=jax.tree_util.tree_map(leaf, first.params))

    return [first, perturbed(), perturbed()]


@pytest.fixture(scope="module")
def committee(members):
    return load_committee(members)


def _results(model, atoms, properties=ALL) -> dict:
    calc = StudentCalculator(model, dtype="float64")
    calc.calculate(atoms.copy(), properties)
    return calc.results


def _numpy_spread(forces: np.ndarray) -> np.ndarray:
    """Per-atom force std over members, [K, n, 3] -> [n], written out in numpy."""
    deviations = forces - forces.mean(axis=0)
    return np.sqrt((deviations**2).sum(axis=-1).mean(axis=0))


def test_committee_of_one_equals_the_student_exactly(members):
    atoms = silicon(rattle=0.1)
    single, solo = _results(members[0], atoms), _results(load_committee(members[:1]), atoms)
    assert solo["energy"] == single["energy"]
    np.testing.assert_array_equal(solo["forces"], single["forces"])
    np.testing.assert_array_equal(solo["stress"], single["stress"])
    assert solo["max_force_std"] == 0.0 and solo["energy_std"] == 0.0


def test_calculator_mean_and_spread_equal_the_members_computed_separately(members, committee):
    atoms = silicon(rattle=0.1)
    each = [_results(m, atoms) for m in members]
    energies = np.array([r["energy"] for r in each])
    forces = np.stack([r["forces"] for r in each])
    results = _results(committee, atoms)
    assert results["energy"] == pytest.approx(energies.mean(), abs=1e-10)
    np.testing.assert_allclose(results["forces"], forces.mean(0), atol=1e-10)
    np.testing.assert_allclose(
        results["stress"], np.mean([r["stress"] for r in each], axis=0), atol=1e-12
    )
    spread = _numpy_spread(forces)
    assert np.min(spread) > 0  # random members do disagree
    np.testing.assert_allclose(results["force_std"], spread, atol=1e-10)
    assert results["force_std"].shape == (len(atoms),)
    assert results["max_force_std"] == pytest.approx(spread.max(), abs=1e-10)
    assert results["force_disagreement"] == pytest.approx(np.sqrt(np.mean(spread**2)))
    assert results["energy_std"] == pytest.approx(energies.std(), abs=1e-10)
    # a plain student's calculator does not offer committee properties
    assert "force_std" not in StudentCalculator(members[0]).implemented_properties
    assert "force_std" in StudentCalculator(committee).implemented_properties


def test_committee_predict_of_a_batch(members, committee):
    """The pure committee_predict (jitted in ``predict``) over a two-structure batch."""
    structures = [silicon(rattle=0.1), silicon(rattle=0.2, seed=3)]
    forces = np.stack(
        [np.concatenate([_results(m, a)["forces"] for a in structures]) for m in members]
    )
    out = committee.predict(structures)
    n = 16
    np.testing.assert_allclose(np.asarray(out.forces)[:n], forces.mean(0), atol=1e-10)
    np.testing.assert_allclose(np.asarray(out.member_forces)[:, :n], forces, atol=1e-10)
    spread = _numpy_spread(forces)
    np.testing.assert_allclose(np.asarray(out.force_std)[:n], spread, atol=1e-10)
    assert not np.any(np.asarray(out.force_std)[n:])  # padding
    graph = committee.graph(structures)
    real = np.asarray(graph.node_mask)
    largest, rms = structure_disagreement(
        np.asarray(out.force_std)[real], np.asarray(graph.node_graph)[real], 2
    )
    assert largest == pytest.approx([spread[:8].max(), spread[8:].max()])
    assert rms == pytest.approx(
        [np.sqrt(np.mean(spread[:8] ** 2)), np.sqrt(np.mean(spread[8:] ** 2))]
    )


def test_per_atom_energies_sum_to_the_energy(members, committee):
    atoms = silicon(rattle=0.1)
    each = []
    for model in (*members, committee):
        results = _results(model, atoms, ["energy", "forces", "energies"])
        assert results["energies"].shape == (len(atoms),)
        assert results["energies"].sum() == pytest.approx(results["energy"], abs=1e-10)
        each.append(results["energies"])
    # the committee's per-atom energies are the members' means
    np.testing.assert_allclose(each[-1], np.mean(each[:-1], axis=0), atol=1e-12)
    # through ASE's own accessor
    atoms.calc = StudentCalculator(committee, dtype="float64")
    np.testing.assert_allclose(atoms.get_potential_energies(), each[-1], atol=1e-12)


@pytest.mark.parametrize("kind", ["student", "committee"])
def test_calculator_pickles_and_deep_copies(kind, members, committee):
    model = members[0] if kind == "student" else committee
    atoms = silicon(rattle=0.1)
    calc = StudentCalculator(model, dtype="float64", skin=0.4)
    calc.calculate(atoms, ALL)
    expected = calc.results
    for clone in (pickle.loads(pickle.dumps(calc)), copy.deepcopy(calc)):
        assert clone.skin == 0.4 and clone.committee == (kind == "committee")
        assert clone.jax_device is None  # device state is rebuilt on the next call
        moved = atoms.copy()
        clone.calculate(moved, ALL)
        assert clone.results.keys() == expected.keys()
        for key, value in expected.items():
            np.testing.assert_array_equal(clone.results[key], value)
        # and it keeps working as the structure moves
        moved.positions[0] += 0.05
        clone.calculate(moved, ALL)
        assert clone.results["energy"] != expected["energy"]
    # the student alone pickles too (without its cached closures)
    student = pickle.loads(pickle.dumps(members[0]))
    assert _results(student, atoms)["energy"] == _results(members[0], atoms)["energy"]


def test_members_must_agree(members):
    first = members[0]
    with pytest.raises(ValueError, match="cutoff"):
        StudentCommittee((first, dataclasses.replace(first, cutoff=4.5)))
    wider = {**first.hyperparameters, "features": 16}
    with pytest.raises(ValueError, match="hyperparameters"):
        StudentCommittee((first, dataclasses.replace(first, hyperparameters=wider)))
    with pytest.raises(ValueError, match="at least one"):
        load_committee([])
    with pytest.raises(TypeError, match="sequence"):
        load_committee("runs/si/student")


def test_committee_from_saved_directories(tmp_path, members, committee):
    paths = [m.save(tmp_path / f"student-{k}") for k, m in enumerate(members)]
    loaded = load_committee(paths)
    assert len(loaded) == 3 and loaded.cutoff == 4.0 and loaded.dtype == "float64"
    assert loaded.metadata == {"committee": [{}, {}, {}]}
    # a list of paths is a committee wherever a model is taken
    assert isinstance(as_model([str(p) for p in paths]), StudentCommittee)
    atoms = silicon(rattle=0.1)
    calc = StudentCalculator(paths, dtype="float64")
    calc.calculate(atoms, ALL)
    np.testing.assert_array_equal(
        calc.results["force_std"], _results(committee, atoms)["force_std"]
    )
