"""run_md: ensembles, overflow redo, blow-up stop, replicas, trajectories, both engines."""

from __future__ import annotations

import dataclasses

import ase.io
import jax
import numpy as np
import pytest
from structures import ethanol, hydrogen_and_its_carbon, silicon

from jaxdistill import StudentCalculator
from jaxdistill.diagnostics import count_compilations
from jaxdistill.md import MDInstabilityError, MDSummary, run_md

pytest.importorskip("jax_md")

# Shared settings, so runs of the same system reuse one compiled program. An untrained
# student heats a molecule far above its start and can pull atoms out of a bonded
# network: allow both (these tests are about the integrators, not the student).
MOLECULE = dict(
    timestep_fs=0.5,
    sample_every=50,
    chunk_steps=500,
    max_temperature_factor=100.0,
    bond_factor=None,
)
SILICON_NVE = dict(
    ensemble="nve", timestep_fs=1.0, sample_every=50, chunk_steps=150, skin=0.3, bond_factor=None
)


def _fresh_energy(atoms, student):
    atoms = atoms.copy()
    atoms.calc = StudentCalculator(student, dtype="float64")
    return atoms.get_potential_energy()


def test_nve_conserves_energy_float64(tiny_student):
    summary = run_md(
        tiny_student,
        silicon(repeat=(2, 2, 2), rattle=0.05, seed=4),
        temperature_kelvin=600,
        steps=2100,
        seed=1,
        capacity_multiplier=2.0,
        **SILICON_NVE,
    )
    assert isinstance(summary, MDSummary)
    assert summary.steps == 2100 and len(summary.thermo["step"]) == 2100 // 50 + 1
    assert summary.mean_temperature_kelvin > 100  # atoms moved and exchanged energy
    assert summary.max_energy_deviation_ev_per_atom < 5e-5
    assert abs(summary.energy_drift_ev_per_atom) < 5e-5
    assert summary.us_per_step > 0 and summary.ns_per_day > 0
    assert summary.neighbor_list_rebuilds > 0
    # the final frame's stored energy is the calculator's (complete neighbour list)
    final = summary.atoms
    assert final.get_potential_energy() == pytest.approx(
        _fresh_energy(final, tiny_student), abs=1e-9
    )


def test_engines_agree_in_nve(tiny_student):
    """Same start, same velocity Verlet: jax-md and ASE trajectories coincide (units,
    masses and time step are converted consistently)."""
    runs = {
        engine: run_md(
            tiny_student,
            ethanol(),
            engine=engine,
            ensemble="nve",
            temperature_kelvin=300,
            # the untrained student pulls two H atoms together: by step 100 they are
            # closer than 0.1 Å, which the calculator refuses as coincident
            steps=40,
            seed=4,
            **MOLECULE,
        )
        for engine in ("jax-md", "ase")
    }
    np.testing.assert_allclose(
        runs["jax-md"].atoms.positions, runs["ase"].atoms.positions, atol=1e-7
    )
    np.testing.assert_allclose(
        runs["jax-md"].thermo["conserved_energy"], runs["ase"].thermo["conserved_energy"], atol=1e-8
    )


def test_replicas_equal_separate_runs(tiny_student, tmp_path):
    temperatures = [300.0, 500.0, 800.0]
    together = run_md(
        tiny_student,
        ethanol(),
        ensemble="nvt",
        temperature_kelvin=temperatures,
        replicas=3,
        steps=200,
        seed=7,
        trajectory=tmp_path / "replicas.extxyz",
        **MOLECULE,
    )
    assert together.n_replicas == 3 and len(together.atoms) == 3
    assert together.thermo["temperature_kelvin"].shape == (200 // 50 + 1, 3)
    for k in range(3):
        frames = ase.io.read(tmp_path / f"replicas.r{k:03d}.extxyz", index=":")
        assert len(frames) == 200 // 50 + 1
    for k, temperature in enumerate(temperatures):
        with count_compilations() as compiled:
            alone = run_md(
                tiny_student,
                ethanol(),
                ensemble="nvt",
                temperature_kelvin=temperature,
                steps=200,
                seed=7 + k,
                trajectory=tmp_path / f"alone{k}.traj" if k == 0 else None,
                **MOLECULE,
            )
        if k > 0:  # the same system again: nothing compiles
            assert compiled.count == 0
        np.testing.assert_allclose(alone.atoms.positions, together.atoms[k].positions, atol=1e-8)
    frames = ase.io.read(tmp_path / "alone0.traj", index=":")
    assert len(frames) == 5 and frames[-1].info.get("step", 200) == 200


def test_overflow_is_detected_and_the_chunk_redone(tiny_student):
    """A list allocated without head-room overflows as atoms move; the chunk is redone
    from its start with a larger list, giving exactly the trajectory of a roomy list."""
    atoms = silicon(repeat=(2, 2, 2), rattle=0.1, seed=3)
    common = dict(temperature_kelvin=1500, steps=300, seed=2, **SILICON_NVE)
    tight = run_md(tiny_student, atoms, capacity_multiplier=1.0, **common)
    roomy = run_md(tiny_student, atoms, capacity_multiplier=2.0, **common)
    assert tight.neighbor_reallocations >= 1 and tight.chunks_redone >= 1
    assert roomy.neighbor_reallocations == 0
    np.testing.assert_allclose(tight.atoms.positions, roomy.atoms.positions, atol=1e-8)
    assert tight.atoms.get_potential_energy() == pytest.approx(
        _fresh_energy(tight.atoms, tiny_student), abs=1e-9
    )


def _stiff(student, factor: float):
    """The same student with every atomic energy scaled: a violently stiff potential."""
    params = jax.tree_util.tree_map_with_path(
        lambda path, x: x * factor if "atomic_scale" in jax.tree_util.keystr(path) else x,
        student.params,
    )
    return dataclasses.replace(student, params=params)


def test_blow_up_stops_with_last_good_frame(tiny_student, tmp_path):
    trajectory = tmp_path / "run.extxyz"
    with pytest.raises(MDInstabilityError, match="unstable") as caught:
        run_md(
            _stiff(tiny_student, 3e4),  # same architecture: reuses the compiled program
            silicon(repeat=(2, 2, 2), rattle=0.1, seed=3),
            temperature_kelvin=600,
            steps=2100,
            capacity_multiplier=2.0,
            trajectory=trajectory,
            **SILICON_NVE,
        )
    error = caught.value
    assert error.last_good_step < error.step
    assert error.path is not None and error.path.exists()
    saved = ase.io.read(error.path)
    assert np.all(np.isfinite(saved.positions))
    assert saved.info["step"] == error.last_good_step
    np.testing.assert_allclose(saved.positions, error.atoms.positions, atol=1e-6)
    # the trajectory holds the good frames only, ending with the last good one
    frames = ase.io.read(trajectory, index=":")
    assert frames[-1].info["step"] == error.last_good_step


@pytest.mark.slow
def test_npt_changes_volume_and_keeps_list_complete(tiny_student):
    atoms = silicon(repeat=(2, 2, 2), rattle=0.05, seed=1)
    summary = run_md(
        tiny_student,
        atoms,
        ensemble="npt",
        temperature_kelvin=600,
        pressure_bar=1.0,
        barostat_time_fs=200,
        thermostat_time_fs=50,
        timestep_fs=1.0,
        steps=400,
        sample_every=50,
        chunk_steps=200,
        bond_factor=None,  # the random student lets the box swell and atoms drift apart
    )
    volumes = summary.thermo["volume"][:, 0]
    assert np.ptp(volumes) > 1e-3 * volumes[0]  # the box moved
    assert summary.mean_pressure_bar is not None
    assert summary.max_energy_deviation_ev_per_atom < 5e-3
    final = summary.atoms  # energy on the final (strained) cell equals a fresh calculation
    assert final.get_potential_energy() == pytest.approx(
        _fresh_energy(final, tiny_student), abs=1e-9
    )


def test_ase_engine_writes_trajectory_and_log(tiny_student, tmp_path):
    summary = run_md(
        tiny_student,
        silicon(rattle=0.05),
        engine="ase",
        ensemble="nvt",
        thermostat="nose-hoover",
        temperature_kelvin=500,
        timestep_fs=1.0,
        steps=30,
        sample_every=10,
        trajectory=tmp_path / "ase.extxyz",
        log_file=tmp_path / "md.log",
    )
    frames = ase.io.read(tmp_path / "ase.extxyz", index=":")
    assert [f.info["step"] for f in frames] == [0, 10, 20, 30]
    assert frames[-1].get_potential_energy() == pytest.approx(
        _fresh_energy(frames[-1], tiny_student), abs=1e-9
    )
    lines = (tmp_path / "md.log").read_text().splitlines()
    assert lines[0].startswith("#") and len(lines) == 5
    assert summary.energy_drift_ev_per_atom is not None  # Nose-Hoover has an invariant
    assert summary.mean_pressure_bar is not None


def test_clear_errors_for_unsupported_inputs(tiny_student):
    slab = silicon()
    slab.pbc = (True, True, False)
    with pytest.raises(ValueError, match="partly periodic"):
        run_md(tiny_student, slab, steps=1)
    with pytest.raises(ValueError, match="too small for jax-md"):
        run_md(tiny_student, silicon(), steps=1)  # 5.43 Å < 2 x 4 Å
    with pytest.raises(ValueError, match="NPT needs"):
        run_md(tiny_student, ethanol(), ensemble="npt", steps=1)
    with pytest.raises(ValueError, match="ensemble"):
        run_md(tiny_student, ethanol(), ensemble="nph", steps=1)


@pytest.mark.parametrize("engine", ["jax-md", "ase"])
def test_fragmentation_stops_the_run(tiny_student, engine, tmp_path):
    # Nearly force-free student: a hydrogen launched away from its carbon at 0.1 Å/fs
    # is 1 Å further out after 10 fs, beyond 1.5 x the C-H covalent radii (1.6 Å).
    free = _stiff(tiny_student, 1e-6)
    atoms = ethanol()
    hydrogen, carbon = hydrogen_and_its_carbon(atoms)
    direction = atoms.positions[hydrogen] - atoms.positions[carbon]
    velocities = np.zeros_like(atoms.positions)
    velocities[hydrogen] = 0.1 * direction / np.linalg.norm(direction)  # Å/fs
    atoms.set_velocities(velocities / ase.units.fs)
    options = dict(
        engine=engine,
        ensemble="nve",
        initial_velocities="atoms",
        timestep_fs=0.5,
        steps=60,
        sample_every=10,
        chunk_steps=60,
        max_temperature_factor=1e6,
    )
    with pytest.raises(
        MDInstabilityError, match="broke apart: 2 covalently bonded pieces"
    ) as caught:
        run_md(free, atoms, trajectory=tmp_path / "run.extxyz", **options)
    assert caught.value.step == 20  # 10 fs
    assert caught.value.reason.startswith("the structure broke apart")
    assert caught.value.last_good_step == 10
    # Switched off, the same run completes.
    summary = run_md(free, atoms, bond_factor=None, **options)
    assert summary.steps == 60


def test_jaxmd_mean_temperature_counts_every_step(tiny_student):
    """The jax-md mean temperature is over every step, not the sparse samples: sampled
    every step it equals the samples' mean, and sampling every 50 steps (the same
    trajectory) leaves it unchanged while the samples' mean differs."""
    common = dict(ensemble="nvt", temperature_kelvin=400.0, steps=400, seed=3, replicas=2)
    dense = run_md(tiny_student, ethanol(), **{**MOLECULE, **common, "sample_every": 1})
    sparse = run_md(tiny_student, ethanol(), **{**MOLECULE, **common})
    every_step = dense.thermo["temperature_kelvin"][1:]
    assert dense.mean_temperature_kelvin == pytest.approx(float(np.mean(every_step)), rel=1e-5)
    np.testing.assert_allclose(sparse.atoms[1].positions, dense.atoms[1].positions, atol=1e-5)
    assert sparse.mean_temperature_kelvin == pytest.approx(dense.mean_temperature_kelvin, rel=1e-4)
    sampled = float(np.mean(sparse.thermo["temperature_kelvin"][1:]))
    assert abs(sampled - sparse.mean_temperature_kelvin) > 1e-3 * sparse.mean_temperature_kelvin


@pytest.mark.parametrize("ensemble", ["nve", "npt"])
def test_compacted_rows_run_the_same_dynamics(tiny_student, ensemble):
    """run_md on a dense list with its rows compacted to the pairs within the cutoff
    follows the same trajectory as on the list as allocated (float64)."""
    atoms = silicon(repeat=(2, 2, 2), rattle=0.05, seed=2)
    common = dict(
        ensemble=ensemble,
        temperature_kelvin=600,
        pressure_bar=1.0,
        barostat_time_fs=200,
        thermostat_time_fs=50,
        timestep_fs=1.0,
        steps=300,
        sample_every=50,
        chunk_steps=150,
        neighbor_format="dense",
        capacity_multiplier=1.5,
        bond_factor=None,
    )
    full = run_md(tiny_student, atoms, compact_rows=False, **common)
    compact = run_md(tiny_student, atoms, compact_rows=True, **common)
    assert full.neighbor_list_rebuilds > 0  # pairs crossed the skin during the run
    for key in ("potential_energy", "temperature_kelvin"):
        np.testing.assert_allclose(compact.thermo[key], full.thermo[key], rtol=1e-9)
    np.testing.assert_allclose(compact.atoms.positions, full.atoms.positions, atol=1e-9)


#: Two replicas of a rattled Si cell, NVT at two temperatures: the run that the
#: compacted replica runs below must reproduce.
REPLICA_RUN = dict(
    ensemble="nvt",
    temperature_kelvin=[500.0, 900.0],
    replicas=2,
    timestep_fs=1.0,
    steps=200,
    sample_every=50,
    chunk_steps=100,
    neighbor_format="dense",
    capacity_multiplier=1.5,
    bond_factor=None,
    seed=7,
)


@pytest.fixture(scope="module")
def replicas_on_the_full_list(tiny_student):
    """:data:`REPLICA_RUN` on the list as allocated (run once for both margins)."""
    atoms = silicon(repeat=(2, 2, 2), rattle=0.05, seed=4)
    return atoms, run_md(tiny_student, atoms, compact_rows=False, **REPLICA_RUN)


@pytest.mark.parametrize("margin", [None, 0.8])
def test_replicas_on_compacted_rows_run_the_same_dynamics(
    tiny_student, replicas_on_the_full_list, monkeypatch, margin
):
    """Replicas (one vmapped run) take a compacted width fixed per chunk, sized from the
    pairs they have: the same trajectories as on the list as allocated (float64). With
    a width too narrow from the start (a margin of 0.8 under the pairs counted), the
    first chunk finds it out and is redone wider, and the run still equals the full
    list's."""
    from jaxdistill.md import jaxmd, jaxmd_loop

    atoms, full = replicas_on_the_full_list
    monkeypatch.setattr(jaxmd_loop, "_CACHE", {})  # this test's engines and chunks only
    if margin is not None:
        monkeypatch.setattr(jaxmd, "REPLICA_WIDTH_MARGIN", margin)
    compact = run_md(tiny_student, atoms, compact_rows=True, **REPLICA_RUN)
    assert full.chunks_redone == 0
    assert (compact.chunks_redone >= 1) if margin else (compact.chunks_redone == 0)
    # the chunks compiled, by width (None: the full list); every one narrower than the
    # list's, so the compacted run did run compacted
    widths = {key[-1] for compiled in jaxmd_loop._CACHE.values() for key in compiled.chunks}
    slots = {key[3] for compiled in jaxmd_loop._CACHE.values() for key in compiled.chunks}
    compacted = sorted(w for w in widths if w is not None)
    assert compacted and compacted[-1] < min(slots)
    assert len(compacted) == 1 + compact.chunks_redone
    for key in ("potential_energy", "temperature_kelvin"):
        np.testing.assert_allclose(compact.thermo[key], full.thermo[key], rtol=1e-9)
    for mine, theirs in zip(compact.atoms, full.atoms, strict=True):
        np.testing.assert_allclose(mine.positions, theirs.positions, atol=1e-9)


def test_replica_counts_share_an_engine_not_a_program(tiny_student):
    """Runs of one student and structure with another replica count reuse the engine
    but compile their own chunk: a second count in one process used to be handed the
    first count's compiled program (a TypeError naming mismatched argument types)."""
    common = dict(ensemble="nvt", temperature_kelvin=300.0, steps=20, sample_every=10, seed=1)
    for replicas in (2, 3):
        summary = run_md(tiny_student, ethanol(), replicas=replicas, **{**MOLECULE, **common})
        assert len(summary.atoms) == replicas
        assert np.all(np.isfinite([a.positions for a in summary.atoms]))
