"""MD validation: RDFs, temperatures, drift, side-by-side runs."""

from __future__ import annotations

import ase
import ase.build
import numpy as np
import pytest
from ase.calculators.emt import EMT

from jaxdistill.config import MDValidationConfig
from jaxdistill.validation import (
    pair_distribution,
    rdf_difference,
    run_nvt,
    validate_md,
    validation_temperatures,
)


def test_unseen_temperature_is_added():
    assert validation_temperatures([300, 900, 1500], ()) == [300.0, 600.0, 900.0, 1500.0]
    assert validation_temperatures([300], ()) == [300.0, 450.0]
    assert validation_temperatures([300, 900], (500, 100)) == [100.0, 500.0]
    with pytest.raises(ValueError, match="no training temperatures"):
        validation_temperatures([], ())


def test_config_refuses_unknown_keys():
    assert MDValidationConfig.from_dict({"temperatures_kelvin": 450}).temperatures_kelvin == (
        450.0,
    )
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['nve_step'\]"):
        MDValidationConfig.from_dict({"nve_step": 10})


def test_rdf_of_ideal_gas_is_one_and_crystal_peaks_at_neighbours():
    rng = np.random.default_rng(0)
    gas = [
        ase.Atoms("Ar2000", positions=rng.uniform(0, 30, (2000, 3)), cell=[30] * 3, pbc=True)
        for _ in range(3)
    ]
    r, g = pair_distribution(gas, 8.0, 16)
    assert np.all(np.abs(g[4:] - 1) < 0.1)
    crystal = ase.build.bulk("Cu", "fcc", a=3.6, cubic=True) * (3, 3, 3)
    r, g = pair_distribution([crystal], 4.0, 80)
    assert r[np.argmax(g)] == pytest.approx(3.6 / np.sqrt(2), abs=0.05)
    assert g[r < 2.4].sum() == 0


def test_mixed_frames_measure_each_frame_with_its_own_images():
    """Periodic and molecular frames together give the distance distribution, each
    periodic frame's image pairs at their true distance (the image vectors used to be
    dropped there, putting every atom's own images at 0 Å)."""
    crystal = ase.build.bulk("Cu", "fcc", a=3.6)  # one atom: every pair is an image
    molecule = ase.build.molecule("CH3CH2OH")
    r, g = pair_distribution([crystal, molecule], 4.0, 40)
    assert np.sum(g) * (r[1] - r[0]) == pytest.approx(1.0)
    assert g[r < 0.9].sum() == 0  # nothing at 0 Å; the C-H bonds (1.09 Å) come first
    nearest = 3.6 / np.sqrt(2)
    alone, _ = np.histogram([nearest], bins=np.linspace(0.0, 4.0, 41))
    assert g[np.argmax(alone)] > 0  # the crystal's nearest images are counted there


def test_molecule_distance_distribution_is_normalised():
    r, g = pair_distribution([ase.build.molecule("CH3CH2OH")], 5.0, 50)
    assert np.sum(g) * (r[1] - r[0]) == pytest.approx(1.0)
    assert rdf_difference(g, g, r) == 0.0


def test_identical_models_agree_exactly(tmp_path):
    """The same calculator as student and teacher: same seeds give identical runs."""
    copper = ase.build.bulk("Cu", "fcc", a=3.61, cubic=True) * (2, 2, 2)
    config = MDValidationConfig(
        student_steps=60,
        teacher_steps=60,
        equilibration_steps=100,
        nve_steps=200,
        stride=5,
        friction_per_fs=0.05,
    )
    result = validate_md(copper, EMT, EMT, [300.0, 600.0], config, tmp_path)
    for entry in result["temperatures"]:
        assert entry["rdf_relative_difference"] == 0.0
        assert entry["student"]["mean_temperature_kelvin"] == pytest.approx(
            entry["teacher"]["mean_temperature_kelvin"]
        )
        assert entry["student_on_teacher_frames"]["force_mae_mev_per_angstrom"] < 1e-6
        assert entry["student_on_teacher_frames"]["mean_abs_teacher_force_mev_per_angstrom"] > 10
        assert (tmp_path / f"teacher_nvt_{entry['temperature_kelvin']:g}K.extxyz").is_file()
    hot, cold = result["temperatures"][1], result["temperatures"][0]
    assert hot["teacher"]["mean_temperature_kelvin"] > cold["teacher"]["mean_temperature_kelvin"]
    nve = result["nve"]
    assert abs(nve["drift_mev_per_atom_per_ps"]) < 1.0
    assert nve["mean_temperature_kelvin"] > 50


def test_blow_up_is_recorded_not_raised(tmp_path):
    """A far too long time step heats the run; the result says so and the rest goes on."""
    copper = ase.build.bulk("Cu", "fcc", a=3.61, cubic=True) * (2, 2, 2)
    config = MDValidationConfig(
        student_steps=200,
        teacher_steps=10,
        equilibration_steps=0,
        nve_steps=0,
        stride=2,
        timestep_fs=1.0,
    )
    stable = validate_md(copper, EMT, EMT, [300.0], config, tmp_path)
    assert stable["temperatures"][0]["student"]["blew_up_at_step"] is None
    unstable_config = MDValidationConfig(
        student_steps=200,
        teacher_steps=10,
        equilibration_steps=0,
        nve_steps=0,
        stride=2,
        timestep_fs=60.0,
    )
    result = validate_md(copper, EMT, EMT, [300.0], unstable_config, tmp_path)
    entry = result["temperatures"][0]
    assert entry["student"]["blew_up_at_step"] is not None
    assert entry["student"]["blew_up_at_step"] <= 200


def test_frames_of_a_molecule_hold_the_models_own_forces():
    """Held-out frames carry the calculator's forces, unchanged by any constraint: with
    unequal masses (ethanol) ASE's FixCom would alter them although they sum to zero."""
    ethanol = ase.build.molecule("CH3CH2OH")
    ethanol.center(vacuum=5.0)
    config = MDValidationConfig(equilibration_steps=10, stride=5, timestep_fs=0.5)
    # EMT is no molecular potential: it tears ethanol apart and heats it, so neither the
    # fragment check nor the usual temperature limit here.
    run, _ = run_nvt(
        ethanol, EMT, 300.0, config, 20, bond_factor=None, max_temperature_factor=100.0
    )
    assert len(run.frames) == 4
    for frame in run.frames:
        reference = ase.Atoms(frame.numbers, frame.positions, cell=frame.cell)
        reference.calc = EMT()
        expected = reference.get_forces()
        np.testing.assert_allclose(frame.calc.results["forces"], expected, atol=1e-10)
        assert np.abs(expected).max() > 0.1  # a real check: the forces are not tiny


def test_the_student_jax_md_step_is_timed_where_jax_md_can_run():
    pytest.importorskip("jax_md")
    from jaxdistill import create_student
    from jaxdistill.validation import time_student_jaxmd

    student = create_student(
        "schnet", ["H", "C", "O", "Cu"], cutoff=4.0, features=8, num_layers=1, num_radial=4
    )
    config = MDValidationConfig(student_steps=200, timestep_fs=1.0, stride=50)
    cell = ase.build.bulk("Cu", "fcc", a=3.61, cubic=True)
    timed = time_student_jaxmd(student, cell * (3, 3, 3), 300.0, config)
    assert timed["engine"] == "jax-md" and timed["us_per_step"] > 0
    assert timed["steps"] == 1000  # at least 1000 steps, whatever the config says
    # one conventional cell (3.61 Å) is too small for jax-md's minimum image
    skipped = time_student_jaxmd(student, cell, 300.0, config)
    assert "narrower than twice the cutoff" in skipped["skipped"]
    # this untrained student pulls ethanol apart: reported, not timed
    broken = time_student_jaxmd(student, ase.build.molecule("CH3CH2OH"), 300.0, config)
    assert "blew up" in broken["skipped"] and "broke apart" in broken["skipped"]
