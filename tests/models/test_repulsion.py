"""The ZBL short-range repulsion: its limits, and how students add it to their energy."""

from __future__ import annotations

import ase
import jax.numpy as jnp
import numpy as np
import pytest
from ase.data import covalent_radii
from structures import ethanol

from jaxdistill import create_student, load_student
from jaxdistill.models.repulsion import COULOMB_EV_ANGSTROM, zbl_pair_energy


def pair_energy(r, z1=14, z2=14, r_max=None) -> np.ndarray:
    r = np.atleast_1d(np.asarray(r, dtype=np.float64))
    r_max = covalent_radii[z1] + covalent_radii[z2] if r_max is None else r_max
    full = lambda value: jnp.full(r.shape, value)  # noqa: E731
    return np.asarray(zbl_pair_energy(jnp.asarray(r), full(z1), full(z2), full(r_max)))


def test_zbl_tends_to_bare_coulomb_at_contact():
    r = 1e-3
    bare = COULOMB_EV_ANGSTROM * 14 * 14 / r
    # φ(0) = sum of the four coefficients = 1 to 1e-5; the screening barely acts at 1 mÅ.
    assert pair_energy(r)[0] == pytest.approx(bare, rel=0.02)
    assert pair_energy(r)[0] < bare


def test_zbl_is_repulsive_and_vanishes_smoothly_at_the_covalent_distance():
    r_max = 2 * covalent_radii[14]
    r = np.linspace(0.2, r_max - 1e-3, 200)
    energy = pair_energy(r)
    assert np.all(energy > 0)
    assert np.all(np.diff(energy) < 0)
    beyond = pair_energy(np.array([r_max, r_max + 0.1, 5.0]))
    np.testing.assert_array_equal(beyond, 0.0)
    # The slope goes to zero at r_max too, so forces stay continuous.
    h = 1e-5
    slope = (pair_energy(r_max - h) - pair_energy(r_max - 3 * h)) / (2 * h)
    assert abs(slope[0]) < 1e-6


def test_screening_depends_on_both_elements():
    # Same distance, heavier pair: larger charges, shorter screening length.
    assert pair_energy(0.8, 6, 6, 1.5)[0] > pair_energy(0.8, 6, 1, 1.5)[0] > 0


def compressed_cluster() -> ase.Atoms:
    """Three Si atoms with two pairs inside the ZBL range and one outside."""
    return ase.Atoms(
        "Si3", positions=[[0, 0, 0], [1.6, 0, 0], [0.3, 1.9, 0.2]], cell=[15] * 3, pbc=False
    )


@pytest.mark.parametrize("architecture", ["painn", "schnet"])
def test_student_adds_each_pair_once(architecture):
    options = dict(cutoff=4.0, seed=3, dtype="float64", features=8, num_layers=1, num_radial=4)
    plain = create_student(architecture, ["Si"], **options)
    repulsive = create_student(architecture, ["Si"], repulsion="zbl", **options)
    atoms = compressed_cluster()
    difference = float(repulsive.predict(atoms).energy[0] - plain.predict(atoms).energy[0])
    distances = atoms.get_all_distances()[np.triu_indices(3, 1)]
    assert difference == pytest.approx(pair_energy(distances).sum(), rel=1e-10)
    assert difference > 1.0  # two compressed pairs: the test is not vacuous


def test_student_forces_with_repulsion_equal_finite_differences():
    student = create_student(
        "painn",
        ["Si"],
        cutoff=4.0,
        seed=3,
        dtype="float64",
        features=8,
        num_layers=1,
        repulsion="zbl",
    )
    atoms = compressed_cluster()
    forces = np.asarray(student.predict(atoms).forces)
    h = 1e-5
    for i in range(3):
        for k in range(3):
            plus, minus = atoms.copy(), atoms.copy()
            plus.positions[i, k] += h
            minus.positions[i, k] -= h
            numeric = -(
                float(student.predict(plus).energy[0]) - float(student.predict(minus).energy[0])
            ) / (2 * h)
            assert forces[i, k] == pytest.approx(numeric, rel=1e-6, abs=1e-6)
    # The atoms at 1.6 Å are pushed apart.
    assert forces[1, 0] > 1.0 > -1.0 > forces[0, 0]


def test_repulsion_survives_save_and_load(tmp_path):
    student = create_student("painn", ["H", "C", "O"], features=8, num_layers=1, repulsion="zbl")
    loaded = load_student(student.save(tmp_path / "student"))
    assert loaded.hyperparameters["repulsion"] == "zbl"
    atoms = ethanol()
    atoms.positions[1] = atoms.positions[0] + [0.6, 0.0, 0.0]  # squeeze a C-C pair
    np.testing.assert_allclose(
        loaded.predict(atoms).energy, student.predict(atoms).energy, rtol=1e-6
    )


def test_unknown_repulsion_is_refused():
    with pytest.raises(ValueError, match="repulsion"):
        create_student("painn", ["Si"], repulsion="lj")
