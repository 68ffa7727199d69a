"""The one MD driver: any ASE calculator through the ASE engine, one set of stability
rules, frames kept, and runs that continue one random stream."""

from __future__ import annotations

import ase.build
import numpy as np
import pytest
from ase.calculators.emt import EMT
from structures import ethanol

from jaxdistill.md import MDInstabilityError, StabilityRules, run_md
from jaxdistill.md.checks import FragmentCheck


def copper() -> ase.Atoms:
    atoms = ase.build.bulk("Cu", "fcc", a=3.61, cubic=True) * (2, 2, 2)
    atoms.rattle(0.02, seed=1)
    return atoms


COPPER = dict(ensemble="nvt", temperature_kelvin=300.0, timestep_fs=2.0, friction_per_fs=0.02)


def test_stability_rules_limits_and_reasons():
    rules = StabilityRules(max_temperature_factor=5.0)
    np.testing.assert_allclose(rules.temperature_limits(np.array([50.0, 300.0])), [500.0, 1500.0])
    ok = rules.check_thermo(np.array([400.0]), np.array([-1.0]), np.array([True]), [300.0])
    assert ok == (None, [])
    reason, bad = rules.check_thermo(
        np.array([400.0, 2000.0]), np.array([-1.0, -1.0]), np.array([True, True]), [300.0, 300.0]
    )
    assert "exceeds 1500 K" in reason and bad == [1]
    reason, bad = rules.check_thermo(
        np.array([400.0]), np.array([np.nan]), np.array([True]), [300.0]
    )
    assert reason == "non-finite positions or energy" and bad == [0]
    with pytest.raises(ValueError, match="max_temperature_factor"):
        StabilityRules(max_temperature_factor=0.5)
    with pytest.raises(ValueError, match="bond_factor"):
        StabilityRules(bond_factor=-1.0)


def test_fragment_check_flags_a_molecule_that_broke_apart():
    intact = ethanol()
    check = FragmentCheck(1.5, [intact])
    assert check([intact]) == (None, [])
    broken = intact.copy()
    broken.positions[-1] += [4.0, 0.0, 0.0]
    reason, bad = check([broken])
    assert "broke apart" in reason and bad == [0]
    assert FragmentCheck(None, [intact])([broken]) == (None, [])


def test_an_ase_calculator_runs_through_the_ase_engine():
    calculator = EMT()
    summary = run_md(calculator, copper(), engine="auto", steps=20, sample_every=5, **COPPER)
    assert summary.engine == "ase" and summary.steps_done == 20
    assert len(summary.thermo["step"]) == 5
    # the pressure comes from the stress EMT computed with the forces
    assert np.all(np.isfinite(summary.thermo["pressure_bar"]))
    with pytest.raises(ValueError, match="engine='ase'"):
        run_md(calculator, copper(), engine="jax-md", steps=10, **COPPER)


def test_kept_frames_hold_the_calculators_labels():
    summary = run_md(
        EMT(), copper(), engine="ase", steps=20, sample_every=5, keep_frames=True, **COPPER
    )
    (frames,) = summary.frames
    assert [f.info["step"] for f in frames] == [5, 10, 15, 20]
    for frame in frames:
        reference = frame.copy()
        reference.calc = EMT()
        np.testing.assert_allclose(frame.get_forces(), reference.get_forces(), atol=1e-12)
        assert frame.get_potential_energy() == pytest.approx(reference.get_potential_energy())
    assert summary.as_dict()["steps_done"] == 20  # frames stay out of the JSON summary


def test_consecutive_runs_continue_one_random_stream():
    """Two runs sharing a generator give the trajectory of one run of both lengths (how
    teacher sampling chains its melt, equilibration and production phases)."""
    start = copper()
    rng = np.random.default_rng(7)
    whole = run_md(EMT(), start, engine="ase", steps=30, sample_every=10, rng=rng, **COPPER)
    rng = np.random.default_rng(7)
    calculator = EMT()  # one calculator, as sampling passes (EMT keeps a neighbour list)
    first = run_md(calculator, start, engine="ase", steps=10, sample_every=10, rng=rng, **COPPER)
    second = run_md(
        calculator,
        first.atoms,
        engine="ase",
        steps=20,
        sample_every=10,
        rng=rng,
        initial_velocities="atoms",
        **COPPER,
    )
    np.testing.assert_array_equal(second.atoms.positions, whole.atoms.positions)
    np.testing.assert_array_equal(second.atoms.get_momenta(), whole.atoms.get_momenta())


def test_a_blow_up_carries_the_run_so_far():
    with pytest.raises(MDInstabilityError) as caught:
        run_md(
            EMT(),
            copper(),
            engine="ase",
            ensemble="nvt",
            temperature_kelvin=300.0,
            timestep_fs=60.0,  # far too long: the crystal explodes
            steps=400,
            sample_every=2,
            keep_frames=True,
            bond_factor=None,
        )
    error = caught.value
    summary = error.summary
    assert summary is not None and summary.steps_done == error.last_good_step
    assert summary.steps_done < error.step <= 400
    assert len(summary.frames[0]) == summary.steps_done // 2
    assert len(summary.thermo["step"]) == summary.steps_done // 2 + 1


def test_the_config_knows_the_drivers_engines():
    """config.active keeps its own copy (configs import without jax): it must match."""
    from jaxdistill.config.active import ENGINES as CONFIG_ENGINES
    from jaxdistill.md import ENGINES

    assert CONFIG_ENGINES == ENGINES
