"""run_md with a student committee: the mean forces drive the MD, the disagreement is
logged per sample, and a threshold stops the run or records the frames (both engines)."""

from __future__ import annotations

import dataclasses

import ase.io
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from structures import ethanol, silicon

from jaxdistill import StudentCalculator
from jaxdistill.committee import load_committee
from jaxdistill.md import MDInstabilityError, MDUncertaintyError, run_md


@pytest.fixture(scope="module")
def committee(tiny_student):
    """tiny_student and two copies with perturbed parameters (K = 3)."""
    rng = np.random.default_rng(0)

    def perturbed():
        def leaf(x):
            x = np.asarray(x)
            return jnp.asarray(x * (1 + 0.2 * rng.standard_normal(x.shape))) if x.size else x

        params = jax.tree_util.tree_map(leaf, tiny_student.params)
        return dataclasses.replace(tiny_student, params=params)

    return load_committee([tiny_student, perturbed(), perturbed()])


def _threshold_crossed_at(values: np.ndarray) -> tuple[float, int]:
    """A threshold first exceeded at sample j > 0 (between the earlier maximum and it)."""
    running = np.maximum.accumulate(values)
    later = np.where(values[1:] > running[:-1])[0]
    assert later.size, f"the disagreement never grew: {values}"
    j = int(later[0]) + 1
    return 0.5 * (running[j - 1] + values[j]), j


def _check_thresholds(committee, atoms, tmp_path, **options):
    """Log only, then record, then stop, on the same (deterministic) run."""
    logged = run_md(committee, atoms, log_file=tmp_path / "md.log", keep_frames=True, **options)
    values = logged.thermo["max_force_std"][:, 0]
    assert values.shape == (len(logged.thermo["step"]),) and np.all(values > 0)
    assert logged.max_force_std_ev_per_angstrom == pytest.approx(values.max())
    assert logged.uncertain_frames == 0 and logged.uncertain_file is None
    assert "max_F_std_eV_A" in (tmp_path / "md.log").read_text().splitlines()[0]
    frame = logged.frames[0][-1]
    assert frame.arrays["force_std"].shape == (len(atoms),)
    assert frame.info["max_force_std"] == pytest.approx(values[-1])
    assert "committee disagreement" in logged.describe()

    threshold, j = _threshold_crossed_at(values)
    recorded = run_md(
        committee,
        atoms,
        uncertainty_threshold=threshold,
        on_uncertain="record",
        trajectory=tmp_path / "record.extxyz",
        **options,
    )
    above = np.where(values > threshold)[0]
    assert recorded.steps_done == options["steps"]
    assert recorded.uncertain_frames == len(above)
    assert recorded.uncertain_file == str(tmp_path / "record.uncertain.extxyz")
    saved = ase.io.read(recorded.uncertain_file, ":")
    steps = logged.thermo["step"]
    assert [f.info["step"] for f in saved] == steps[above].tolist()
    assert all(f.info["max_force_std"] > threshold for f in saved)
    assert saved[0].arrays["force_std"].shape == (len(atoms),)
    assert saved[0].get_forces().shape == (len(atoms), 3)  # the committee's labels

    with pytest.raises(MDUncertaintyError, match="committee disagrees") as caught:
        run_md(
            committee,
            atoms,
            uncertainty_threshold=threshold,
            uncertain_file=tmp_path / "stop.extxyz",
            **options,
        )
    error = caught.value
    assert isinstance(error, MDInstabilityError)  # callers that stop on blow-ups stop here
    assert error.step == steps[j] and error.last_good_step == steps[j - 1]
    assert error.uncertain[0].info["step"] == steps[j]
    assert error.uncertain_path == tmp_path / "stop.extxyz"
    assert len(ase.io.read(tmp_path / "stop.extxyz", ":")) == 1
    assert error.summary.steps_done == steps[j - 1]
    assert error.summary.uncertain_frames == 1
    return logged


def test_ase_engine_logs_and_acts_on_disagreement(committee, tmp_path):
    atoms = silicon(rattle=0.1)
    options = dict(
        engine="ase", ensemble="nvt", temperature_kelvin=1500.0, timestep_fs=2.0, steps=80,
        sample_every=10, seed=1, max_temperature_factor=100.0, bond_factor=None,
    )  # fmt: skip
    logged = _check_thresholds(committee, atoms, tmp_path, **options)
    # step 0 is the calculator's own disagreement
    calc = StudentCalculator(committee, dtype="float64")
    calc.calculate(atoms.copy(), ["energy", "forces"])
    assert logged.thermo["max_force_std"][0, 0] == pytest.approx(calc.results["max_force_std"])


def test_threshold_needs_a_committee(tiny_student):
    with pytest.raises(ValueError, match="committee"):
        run_md(tiny_student, ethanol(), steps=10, uncertainty_threshold=0.1)
    with pytest.raises(ValueError, match="on_uncertain"):
        run_md([tiny_student], ethanol(), steps=10, uncertainty_threshold=0.1, on_uncertain="x")


@pytest.mark.slow
def test_jaxmd_engine_logs_and_acts_on_disagreement(committee, tmp_path):
    """The same on the jax-md engine (a molecule in free space), and its step-0 mean
    forces and disagreement equal the ASE calculator's."""
    pytest.importorskip("jax_md")
    atoms = ethanol()
    options = dict(
        engine="jax-md", ensemble="nvt", temperature_kelvin=1500.0, timestep_fs=0.5,
        steps=200, sample_every=25, chunk_steps=200, seed=1, max_temperature_factor=100.0,
        bond_factor=None,
    )  # fmt: skip
    logged = _check_thresholds(committee, atoms, tmp_path, **options)
    calc = StudentCalculator(committee, dtype="float64")
    calc.calculate(atoms.copy(), ["energy", "forces"])
    assert logged.thermo["max_force_std"][0, 0] == pytest.approx(
        calc.results["max_force_std"], rel=1e-9
    )
    assert logged.thermo["potential_energy"][0, 0] == pytest.approx(calc.results["energy"])


def test_committee_on_compacted_rows_equals_the_full_list(committee):
    """The members' vmap over parameters keeps the compaction's branch a branch: the
    mean energy and forces on compacted rows equal those on the list as allocated."""
    pytest.importorskip("jax_md")
    from jax_md import quantity, space

    from jaxdistill.md import jaxmd

    atoms = silicon(repeat=(2, 2, 2), rattle=0.1, seed=5)
    box = jnp.asarray(np.diag(atoms.cell.array))
    displacement_fn, _ = space.periodic(box)
    R = jnp.asarray(atoms.positions)
    results = []
    for compact_rows in (False, True):
        neighbor_fn, energy_fn = jaxmd.jax_md_potential(
            committee, displacement_fn, box, atoms.numbers, format="dense",
            capacity_multiplier=1.5, compact_rows=compact_rows,
        )  # fmt: skip
        nbrs = neighbor_fn.allocate(R)
        evaluate = jax.jit(
            lambda R, nbrs, f=energy_fn: (f(R, nbrs), quantity.force(f)(R, neighbor=nbrs))
        )
        results.append(evaluate(R, nbrs))
    (e_full, f_full), (e_compact, f_compact) = results
    assert float(e_compact) == pytest.approx(float(e_full), rel=1e-12)
    assert float(jnp.max(jnp.abs(f_full))) > 0
    np.testing.assert_allclose(f_compact, f_full, rtol=0, atol=1e-10)
