"""The ASE calculator: consistency with the batched potential, MD, no recompilation."""

from __future__ import annotations

import numpy as np
import pytest
from ase import units
from ase.calculators.calculator import PropertyNotImplementedError
from ase.md.velocitydistribution import Stationary, thermalize_momenta
from ase.md.verlet import VelocityVerlet
from structures import ethanol, silicon

from jaxdistill import StudentCalculator, create_student
from jaxdistill.diagnostics import count_compilations
from jaxdistill.potential import voigt_stress


@pytest.fixture(scope="module")
def small_student():
    return create_student(
        "painn",
        ["H", "C", "O", "Si"],
        cutoff=4.0,
        seed=2,
        dtype="float64",
        features=16,
        num_layers=2,
        num_radial=8,
    )


def test_calculator_equals_batched_potential(small_student):
    for atoms in (silicon(), ethanol()):
        atoms.calc = StudentCalculator(small_student, dtype="float64")
        reference = small_student.predict([atoms])
        n = len(atoms)
        assert atoms.get_potential_energy() == pytest.approx(float(reference.energy[0]), abs=1e-10)
        assert atoms.get_potential_energy(force_consistent=True) == atoms.get_potential_energy()
        np.testing.assert_allclose(atoms.get_forces(), np.asarray(reference.forces[:n]), atol=1e-10)
        if atoms.pbc.all():
            np.testing.assert_allclose(
                atoms.get_stress(), np.asarray(voigt_stress(reference.stress[0])), atol=1e-12
            )
        else:
            with pytest.raises(PropertyNotImplementedError):
                atoms.get_stress()


def test_calculator_from_saved_path(tmp_path, small_student):
    path = small_student.save(tmp_path / "student")
    atoms = silicon()
    atoms.calc = StudentCalculator(path, dtype="float64")
    reference = small_student.predict([atoms])
    assert atoms.get_potential_energy() == pytest.approx(float(reference.energy[0]), abs=1e-10)


def test_skin_reuse_and_changes_of_system(small_student):
    atoms = silicon()
    calc = StudentCalculator(small_student, dtype="float64", skin=0.6)
    atoms.calc = calc
    atoms.get_forces()
    atoms.positions[0, 0] += 0.2  # below half the skin: neighbour list reused
    forces_reused = atoms.get_forces()
    assert calc.neighbour_list_builds == 1
    fresh = atoms.copy()
    fresh.calc = StudentCalculator(small_student, dtype="float64", skin=0.0)
    np.testing.assert_allclose(forces_reused, fresh.get_forces(), atol=1e-10)
    atoms.positions[1, 0] += 0.4  # beyond half the skin: rebuilt
    atoms.get_forces()
    assert calc.neighbour_list_builds == 2
    # a different number of atoms re-pads and still gives the right numbers
    bigger = silicon(repeat=(2, 1, 1))
    bigger.calc = calc
    reference = small_student.predict([bigger])
    np.testing.assert_allclose(
        bigger.get_forces(), np.asarray(reference.forces[: len(bigger)]), atol=1e-10
    )
    # a new cell (strain) is noticed
    strained = bigger.copy()
    strained.set_cell(bigger.cell.array * 1.01, scale_atoms=True)
    strained.calc = calc
    reference = small_student.predict([strained])
    assert strained.get_potential_energy() == pytest.approx(float(reference.energy[0]), abs=1e-10)


def test_no_recompilation_when_atoms_move(small_student):
    atoms = silicon(repeat=(2, 1, 1))
    atoms.calc = StudentCalculator(small_student, dtype="float64")
    atoms.get_forces()  # compiles
    rng = np.random.default_rng(0)
    with count_compilations() as compiled:
        for _ in range(5):
            atoms.positions += rng.normal(scale=0.02, size=atoms.positions.shape)
            atoms.get_forces()
            atoms.get_stress()
    assert compiled.count == 0
    with count_compilations() as compiled:  # the counter itself works: a new size compiles
        other = silicon(repeat=(3, 2, 1))
        other.calc = StudentCalculator(small_student, dtype="float64")
        other.get_forces()
    assert compiled.count >= 1


def test_velocity_verlet_conserves_energy(small_student):
    atoms = silicon(rattle=0.0)
    atoms.calc = StudentCalculator(small_student, dtype="float64")
    thermalize_momenta(atoms, temperature_K=600, rng=np.random.default_rng(1))
    Stationary(atoms)
    dynamics = VelocityVerlet(atoms, timestep=0.5 * units.fs)
    energies = []
    for _ in range(300):
        dynamics.run(1)
        energies.append(atoms.get_total_energy())
    energies = np.array(energies) / len(atoms)
    # atoms really moved and exchanged energy, yet the total is conserved
    assert atoms.get_temperature() > 50
    assert np.ptp(energies) < 1e-4  # eV/atom
    assert abs(energies[-1] - energies[0]) < 5e-5


def test_float32_calculator_runs(small_student):
    atoms = silicon()
    atoms.calc = StudentCalculator(small_student, dtype="float32")
    forces = atoms.get_forces()
    assert forces.dtype == np.float64 and np.all(np.isfinite(forces))
    reference = small_student.predict([atoms]).forces[: len(atoms)]
    np.testing.assert_allclose(forces, np.asarray(reference), atol=1e-4)
