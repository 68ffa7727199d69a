"""The ASE calculator: consistency with the batched potential, MD, no recompilation."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from ase import units
from ase.calculators.calculator import PropertyNotImplementedError
from ase.md.velocitydistribution import Stationary, thermalize_momenta
from ase.md.verlet import VelocityVerlet
from structures import ethanol, silicon

from jaxdistill import StudentCalculator
from jaxdistill.diagnostics import count_compilations
from jaxdistill.potential import voigt_stress


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
    atoms.get_forces()  # compiles the forces-only program
    atoms.get_stress()  # and the one with the strain derivative
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


# -- changing cells, drop-in use with ASE's integrators and optimisers -----------------


def _fresh(atoms, student, skin=0.5):
    """Reference numbers from a new calculator (a neighbour list built for these positions).

    Same skin as the calculator under test, so the padded shapes usually match and
    nothing new compiles.
    """
    copy = atoms.copy()
    copy.calc = StudentCalculator(student, dtype="float64", skin=skin)
    return copy.get_potential_energy(), copy.get_forces(), copy.get_stress()


def test_list_survives_small_strain_and_stays_exact(small_student):
    atoms = silicon(repeat=(2, 1, 1))
    calc = StudentCalculator(small_student, dtype="float64", skin=0.6)
    atoms.calc = calc
    atoms.get_forces()
    rng = np.random.default_rng(3)
    reference_cell = atoms.cell.array.copy()
    for _ in range(12):
        # small random (also shear) strain plus small displacements, as NPT/cell filters do
        strain = np.eye(3) + rng.normal(scale=0.002, size=(3, 3))
        atoms.set_cell(reference_cell @ strain, scale_atoms=True)
        atoms.positions += rng.normal(scale=0.01, size=atoms.positions.shape)
        energy, forces, stress = _fresh(atoms, small_student, skin=0.6)
        assert atoms.get_potential_energy() == pytest.approx(energy, abs=1e-10)
        np.testing.assert_allclose(atoms.get_forces(), forces, atol=1e-10)
        np.testing.assert_allclose(atoms.get_stress(), stress, atol=1e-12)
    assert calc.neighbour_list_builds < 6  # reused across strained cells
    # a large strain must rebuild, and numbers stay right
    builds = calc.neighbour_list_builds
    atoms.set_cell(reference_cell * 0.85, scale_atoms=True)
    energy, forces, _ = _fresh(atoms, small_student, skin=0.6)
    np.testing.assert_allclose(atoms.get_forces(), forces, atol=1e-10)
    assert calc.neighbour_list_builds == builds + 1


def test_compression_rebuild_catches_pairs_entering_the_cutoff(small_student):
    """A strain that brings pairs inside the cutoff without moving any atom much."""
    # third neighbour shell at 4.50 Å: outside cutoff + skin (4.2 Å) at first, inside
    # the 4.0 Å cutoff after 12 % compression; no atom moves relative to the cell
    atoms = silicon(rattle=0.0)
    calc = StudentCalculator(small_student, dtype="float64", skin=0.2)
    atoms.calc = calc
    atoms.get_forces()
    for scale in (0.99, 0.97, 0.95, 0.92, 0.9, 0.88):
        atoms.set_cell(silicon(rattle=0.0).cell.array * scale, scale_atoms=True)
        energy, forces, stress = _fresh(atoms, small_student, skin=0.2)
        assert atoms.get_potential_energy() == pytest.approx(energy, abs=1e-10)
        np.testing.assert_allclose(atoms.get_forces(), forces, atol=1e-10)
        np.testing.assert_allclose(atoms.get_stress(), stress, atol=1e-12)


def test_change_of_atom_count_repads(small_student):
    calc = StudentCalculator(small_student, dtype="float64")
    for atoms in (silicon(repeat=(2, 2, 1)), silicon(), ethanol(), silicon(repeat=(2, 2, 1))):
        atoms.calc = calc
        reference = small_student.predict([atoms])
        np.testing.assert_allclose(
            atoms.get_forces(), np.asarray(reference.forces[: len(atoms)]), atol=1e-10
        )


def _thermalised(student, temperature=600):
    atoms = silicon(repeat=(2, 1, 1), rattle=0.02)
    atoms.calc = StudentCalculator(student, dtype="float64")
    thermalize_momenta(atoms, temperature_K=temperature, rng=np.random.default_rng(4))
    Stationary(atoms)
    return atoms


def test_langevin_runs_unchanged(small_student):
    from ase.md.langevin import Langevin

    atoms = _thermalised(small_student)
    dynamics = Langevin(
        atoms,
        1.0 * units.fs,
        temperature_K=500,
        friction=0.05 / units.fs,
        fixcm=False,
        rng=np.random.default_rng(0),
    )
    dynamics.run(1)
    with count_compilations() as compiled:
        dynamics.run(40)
    assert compiled.count == 0
    assert np.all(np.isfinite(atoms.positions)) and 50 < atoms.get_temperature() < 3000


def test_npt_integrators_run_unchanged(small_student):
    from ase.md.melchionna import MelchionnaNPT
    from ase.md.nose_hoover_chain import MTKNPT

    atoms = _thermalised(small_student)
    volume = atoms.get_volume()
    dynamics = MTKNPT(
        atoms,
        1.0 * units.fs,
        temperature_K=600,
        pressure_au=10_000 * units.bar,
        tdamp=50 * units.fs,
        pdamp=200 * units.fs,
    )
    dynamics.run(30)
    assert atoms.get_volume() != pytest.approx(volume, rel=1e-6)  # the cell moved
    energy, forces, stress = _fresh(atoms, small_student)
    assert atoms.get_potential_energy() == pytest.approx(energy, abs=1e-10)
    np.testing.assert_allclose(atoms.get_forces(), forces, atol=1e-10)
    np.testing.assert_allclose(atoms.get_stress(), stress, atol=1e-12)

    atoms = _thermalised(small_student)
    atoms.set_cell(np.triu(atoms.cell.array), scale_atoms=True)  # ase.md.npt wants upper triangular
    dynamics = MelchionnaNPT(
        atoms,
        1.0 * units.fs,
        temperature_K=600,
        externalstress=0.0,
        ttime=25 * units.fs,
        pfactor=(75 * units.fs) ** 2 * 100 * units.GPa,
    )
    dynamics.run(20)
    _, forces, stress = _fresh(atoms, small_student)
    np.testing.assert_allclose(atoms.get_forces(), forces, atol=1e-10)
    np.testing.assert_allclose(atoms.get_stress(), stress, atol=1e-12)


def test_bfgs_with_frechet_cell_filter(small_student):
    from ase.filters import FrechetCellFilter
    from ase.optimize import BFGS

    atoms = silicon(rattle=0.05, seed=5)
    atoms.set_cell(atoms.cell.array * 1.01, scale_atoms=True)
    calc = StudentCalculator(small_student, dtype="float64")
    atoms.calc = calc
    start_energy = atoms.get_potential_energy()
    optimiser = BFGS(FrechetCellFilter(atoms), logfile=None)
    optimiser.run(fmax=0.05, steps=8)  # scipy expm/logm of the filter dominate on 2 cores
    assert atoms.get_potential_energy() < start_energy
    energy, forces, stress = _fresh(atoms, small_student)
    assert atoms.get_potential_energy() == pytest.approx(energy, abs=1e-10)
    np.testing.assert_allclose(atoms.get_forces(), forces, atol=1e-10)
    np.testing.assert_allclose(atoms.get_stress(), stress, atol=1e-12)
    assert calc.neighbour_list_builds < optimiser.nsteps + 1


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_forces_only_and_full_paths_agree_with_the_student(small_student, dtype):
    """One packed buffer in, one packed vector out; the forces-only program (what ASE's
    integrators ask for) and the full one give the student's own numbers."""
    atoms = silicon(repeat=(2, 1, 1), rattle=0.1, seed=5)
    calc = StudentCalculator(small_student, dtype=dtype)
    reference = calc.student.predict([atoms])
    tolerance = {"float32": 2e-5, "float64": 1e-10}[dtype]
    atoms.calc = calc
    forces = atoms.get_forces()
    assert "stress" not in calc.results  # the strain derivative was skipped
    energy = atoms.get_potential_energy()
    stress = atoms.get_stress()  # a second call, with the strain derivative
    scale = max(1.0, float(np.abs(reference.forces).max()))
    np.testing.assert_allclose(
        forces, np.asarray(reference.forces[: len(atoms)]), atol=tolerance * scale
    )
    np.testing.assert_allclose(atoms.get_forces(), forces, atol=tolerance * scale)
    assert energy == pytest.approx(float(reference.energy[0]), rel=tolerance, abs=tolerance)
    expected_stress = np.asarray(voigt_stress(reference.stress[0]))
    np.testing.assert_allclose(
        stress, expected_stress, atol=tolerance * max(1.0, np.abs(expected_stress).max())
    )


def test_device_choice(small_student):
    atoms = silicon()
    atoms.calc = StudentCalculator(small_student, dtype="float64", device="cpu")
    atoms.get_forces()
    assert atoms.calc.jax_device.platform == "cpu"
    with pytest.raises(ValueError, match="device must be one of"):
        StudentCalculator(small_student, device="tpu0")
    if not any(d.platform == "gpu" for d in jax.devices()):
        atoms.calc = StudentCalculator(small_student, dtype="float64", device="gpu")
        with pytest.raises(ValueError, match="device='cpu'"):
            atoms.get_forces()


def test_what_the_student_reads_decides_a_recalculation(small_student):
    """check_state compares positions, numbers, cell and pbc exactly (cheaper than
    ASE's generic checks): a moved atom or a strained cell recalculates, info does not."""
    atoms = silicon()
    atoms.calc = StudentCalculator(small_student, dtype="float64")
    energy = atoms.get_potential_energy()
    atoms.info["tag"] = 1
    assert atoms.calc.check_state(atoms) == []
    atoms.positions[0] += 0.05  # in place, as integrators do
    assert atoms.calc.check_state(atoms) == ["positions"]
    moved = atoms.get_potential_energy()
    assert moved != energy
    fresh = atoms.copy()
    fresh.calc = StudentCalculator(small_student, dtype="float64")
    assert moved == pytest.approx(fresh.get_potential_energy(), abs=1e-10)
    atoms.set_cell(atoms.cell.array * 1.01, scale_atoms=True)
    assert set(atoms.calc.check_state(atoms)) == {"positions", "cell"}
    assert atoms.get_potential_energy() != moved


def test_one_snapshot_updated_in_place(small_student):
    """The calculator keeps one host copy of the atoms it last computed (updated in
    place while only positions and cell change, instead of a full copy per call): never
    the caller's object, always what was computed, so two Atoms sharing it do not mix."""
    first, second = silicon(), silicon()
    second.positions[0] += 0.1
    calc = StudentCalculator(small_student, dtype="float64")
    energy_first = calc.get_potential_energy(first)
    snapshot = calc.atoms
    assert snapshot is not first
    energy_second = calc.get_potential_energy(second)
    assert calc.atoms is snapshot  # the same copy, updated
    np.testing.assert_array_equal(calc.atoms.positions, second.positions)
    assert energy_second != energy_first
    assert calc.get_potential_energy(first) == pytest.approx(energy_first, abs=1e-12)
    # other elements at the same atom count: a fresh copy, and the right energy
    carbon = first.copy()
    carbon.numbers[0] = 6
    reference = small_student.predict([carbon])
    assert calc.get_potential_energy(carbon) == pytest.approx(float(reference.energy[0]), abs=1e-10)
    assert calc.atoms is not snapshot
    assert calc.atoms.numbers[0] == 6


def test_result_memory_setting(small_student, monkeypatch):
    """A GPU call's result goes to pinned host memory by default; on a CPU the plain
    program serves, and a wrong value of the variable is named."""
    from jaxdistill.md import ase_calculator

    cpu = jax.devices("cpu")[0]
    assert ase_calculator._program_for(cpu, "pinned_host") is ase_calculator._program
    monkeypatch.setenv(ase_calculator.RESULT_MEMORY_ENV, "gpu_memory")
    atoms = silicon()
    atoms.calc = StudentCalculator(small_student, dtype="float64", device="cpu")
    with pytest.raises(ValueError, match="JAXDISTILL_RESULT_MEMORY"):
        atoms.get_forces()


def test_host_wait_setting(small_student, monkeypatch):
    """A GPU call polls for its result by default, a CPU call always blocks; the
    environment variable overrides "auto", and a wrong value is named either way."""
    import pickle

    from jaxdistill.md import ase_calculator

    assert ase_calculator._spins("auto", "gpu") == (ase_calculator.HOST_WAIT["gpu"] == "spin")
    assert ase_calculator._spins("spin", "gpu") is True
    assert ase_calculator._spins("block", "gpu") is False
    assert ase_calculator._spins("spin", "cpu") is False  # the backend's threads compute
    monkeypatch.setenv(ase_calculator.HOST_WAIT_ENV, "block")
    assert ase_calculator._spins("auto", "gpu") is False
    assert ase_calculator._spins("spin", "gpu") is True  # an explicit choice wins
    monkeypatch.setenv(ase_calculator.HOST_WAIT_ENV, "busy")
    with pytest.raises(ValueError, match="JAXDISTILL_HOST_WAIT"):
        ase_calculator._spins("auto", "gpu")
    monkeypatch.delenv(ase_calculator.HOST_WAIT_ENV)
    with pytest.raises(ValueError, match="host_wait must be one of"):
        StudentCalculator(small_student, host_wait="poll")

    # the polling fetch returns what the blocking one does
    value = jax.numpy.arange(7.0, dtype=jax.numpy.float32) / 3
    for spin in (False, True):
        out = ase_calculator.fetch(value, spin)
        assert out.dtype == np.float64
        np.testing.assert_array_equal(out, np.asarray(value, dtype=np.float64))
    # a host array (what a benchmark's stand-in program returns) is simply ready
    np.testing.assert_array_equal(ase_calculator.fetch(np.ones(3, np.float32), True), np.ones(3))

    class NeverReady:
        """A result whose polling never succeeds: the fetch stops polling and blocks."""

        polls = 0

        def is_ready(self):
            NeverReady.polls += 1
            return False

        def __array__(self, dtype=None, copy=None):
            return np.arange(3.0)

    np.testing.assert_array_equal(ase_calculator.fetch(NeverReady(), True), np.arange(3.0))
    assert NeverReady.polls > 1

    atoms = silicon()
    forces = {}
    for wait in ("block", "spin"):
        atoms.calc = StudentCalculator(small_student, dtype="float64", device="cpu", host_wait=wait)
        forces[wait] = atoms.get_forces()
        assert atoms.calc._spin is False  # a CPU call blocks whatever was asked
    np.testing.assert_array_equal(forces["block"], forces["spin"])
    copy = pickle.loads(pickle.dumps(atoms.calc))
    assert copy.host_wait == "spin"
    np.testing.assert_array_equal(copy.get_forces(atoms), forces["spin"])
