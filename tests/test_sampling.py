"""Sampling: configs, structure sources, generators, tags, reproducibility, coverage."""

from __future__ import annotations

import dataclasses
import math

import ase.build
import ase.io
import numpy as np
import pytest
import yaml

from jaxdistill.config import MDConfig, RattleConfig, SamplingConfig
from jaxdistill.sampling import (
    check_element_coverage,
    deduplicate,
    element_counts,
    load_structures,
    sample,
    sampler_counts,
)

EMT_SPEC = "ase:ase.calculators.emt:EMT"
CU = {"build": "bulk", "args": {"name": "Cu", "crystalstructure": "fcc", "a": 3.61, "cubic": True}}


def test_config_round_trip_and_strict_keys(tmp_path):
    data = {
        "seed": 7,
        "structures": [{**CU, "repeat": [2, 1, 1]}, {"file": "mol.xyz"}],
        "md": {"temperatures_kelvin": [300, 600], "frames_per_temperature": 3, "stride": 2},
        "rattle": {"count": 2, "sigma_angstrom": 0.1},
        "strain": {"count": 1, "max_strain": 0.02},
    }
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(data))
    cfg = SamplingConfig.from_yaml(tmp_path / "cfg.yaml")
    assert cfg.structures[1].file == str(tmp_path / "mol.xyz")  # relative to the YAML
    assert cfg.md == MDConfig(
        temperatures_kelvin=(300.0, 600.0), frames_per_temperature=3, stride=2
    )
    assert cfg.enabled_generators() == ("md", "rattle", "strain")
    assert SamplingConfig.from_dict(cfg.to_dict()) == cfg
    yaml.safe_dump(cfg.to_dict())  # serialisable as is
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.seed = 1  # type: ignore[misc]

    # A whole pipeline config with a 'sampling' section works too.
    (tmp_path / "pipeline.yaml").write_text(yaml.safe_dump({"sampling": data, "train": {}}))
    assert SamplingConfig.from_yaml(tmp_path / "pipeline.yaml") == cfg

    for bad, text in [
        ({**data, "temperature": 3}, "unknown key"),
        ({**data, "md": {"temperatures": [300]}}, "unknown key"),
        ({**data, "structures": [{"build": "bulkk", "args": {}}]}, "unknown ase.build"),
        ({**data, "structures": [{"file": "a.xyz", "build": "bulk"}]}, "exactly one"),
        ({**data, "md": {"temperatures_kelvin": [-5]}}, "positive"),
        ({**data, "structures": []}, "at least one structure"),
    ]:
        with pytest.raises(ValueError, match=text):
            SamplingConfig.from_dict(bad)


@pytest.mark.parametrize(
    ("name", "fmt"), [("s.extxyz", None), ("s.cif", None), ("POSCAR", "vasp"), ("s.pdb", None)]
)
def test_structures_from_files(tmp_path, name, fmt):
    atoms = ase.build.bulk("Cu", "fcc", a=3.61, cubic=True)
    ase.io.write(tmp_path / name, atoms, format=fmt)
    cfg = SamplingConfig.from_dict(
        {"structures": [{"file": name, "format": fmt}], "include_initial": True}, base_dir=tmp_path
    )
    (loaded,) = load_structures(cfg)
    assert loaded.get_chemical_formula() == "Cu4"
    np.testing.assert_allclose(loaded.cell.array, atoms.cell.array, atol=1e-3)


def test_builders_repeat_and_vacuum():
    cfg = SamplingConfig.from_dict(
        {
            "structures": [
                {**CU, "repeat": [2, 2, 1]},
                {"build": "molecule", "args": {"name": "CH3CH2OH"}, "vacuum_angstrom": 4.0},
            ],
            "include_initial": True,
        }
    )
    cu, ethanol = load_structures(cfg)
    assert len(cu) == 16 and all(cu.pbc)
    assert len(ethanol) == 9 and not any(ethanol.pbc)
    assert ethanol.positions.min() == pytest.approx(4.0)


def emt_md_config(**md):
    return SamplingConfig.from_dict(
        {
            "seed": 11,
            "structures": [{**CU, "repeat": [2, 2, 2]}],
            "md": {
                "temperatures_kelvin": [300, 900],
                "frames_per_temperature": 15,
                "stride": 10,
                "equilibration_steps": 150,
                "timestep_fs": 2.0,
                "friction_per_fs": 0.02,
                **md,
            },
        }
    )


def test_md_temperatures_follow_the_thermostat():
    frames = sample(emt_md_config(), teacher=EMT_SPEC)
    assert sampler_counts(frames) == {"md": 30}
    kinetic = {}
    for target in (300.0, 900.0):
        chosen = [a for a in frames if a.info["temperature_kelvin"] == target]
        assert len(chosen) == 15
        kinetic[target] = np.mean([a.get_temperature() for a in chosen])
        # 32 atoms: one frame's kinetic temperature fluctuates by ~15 %; 15 frames average.
        assert kinetic[target] == pytest.approx(target, rel=0.2)
    assert 2.3 < kinetic[900.0] / kinetic[300.0] < 3.9
    steps = [a.info["md_step"] for a in frames[:15]]
    assert steps == list(range(160, 310, 10))
    assert len({a.info["seed"] for a in frames}) == 2  # one trajectory per temperature


def test_rattle_and_strain_generators_and_tags():
    cfg = SamplingConfig.from_dict(
        {
            "seed": 3,
            "structures": [{**CU, "repeat": [3, 3, 3]}],
            "rattle": {"count": 4, "sigma_angstrom": 0.1},
            "strain": {"count": 4, "max_strain": 0.05},
            "include_initial": True,
        }
    )
    frames = sample(cfg)
    assert sampler_counts(frames) == {"initial": 1, "rattle": 4, "strain": 4}
    initial = frames[0]
    assert "_generators" not in initial.info
    for atoms in frames:
        assert set(atoms.info) >= {"sampler", "temperature_kelvin", "seed", "structure_index"}
        assert math.isnan(atoms.info["temperature_kelvin"])
    displacement = np.concatenate(
        [a.positions - initial.positions for a in frames if a.info["sampler"] == "rattle"]
    )
    displacement -= np.round(displacement / 3.61 / 3) * 3.61 * 3  # undo wrapping
    assert np.std(displacement) == pytest.approx(0.1, rel=0.1)
    for atoms in (a for a in frames if a.info["sampler"] == "strain"):
        strain = np.linalg.solve(initial.cell.array, atoms.cell.array) - np.eye(3)
        np.testing.assert_allclose(strain, strain.T, atol=1e-12)  # no rotation
        assert 0 < np.abs(strain).max() <= 0.05
        frac_new = atoms.get_scaled_positions()
        frac_old = initial.get_scaled_positions()
        np.testing.assert_allclose(frac_new, frac_old, atol=1e-9)  # atoms moved with the cell


def test_everything_follows_from_the_seed():
    cfg = emt_md_config(temperatures_kelvin=[500], frames_per_temperature=3, equilibration_steps=5)
    cfg = dataclasses.replace(cfg, rattle=RattleConfig(count=10, sigma_angstrom=0.05))
    a, b = sample(cfg, teacher=EMT_SPEC), sample(cfg, teacher=EMT_SPEC)
    c = sample(dataclasses.replace(cfg, seed=12), teacher=EMT_SPEC)
    assert len(a) == len(b) == len(c) == 13
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x.positions, y.positions)
        assert x.info == y.info
    assert not np.allclose(a[0].positions, c[0].positions)
    # A frame's seed reproduces it alone: rattle frame 2 from its recorded seed.
    frame = [f for f in a if f.info["sampler"] == "rattle"][2]
    start = load_structures(cfg)[0]
    rng = np.random.default_rng(frame.info["seed"])
    redone = start.positions + rng.normal(0, 0.05, size=start.positions.shape)
    diff = start.cell.scaled_positions(redone) - frame.get_scaled_positions(wrap=False)
    np.testing.assert_allclose(diff - np.round(diff), 0.0, atol=1e-12)  # equal up to wrapping


def test_exact_duplicates_are_removed():
    cfg = SamplingConfig.from_dict(
        {
            "structures": [CU, CU],  # the same structure twice
            "include_initial": True,
            "rattle": {"count": 2, "sigma_angstrom": 0.0},  # zero-sigma rattles duplicate it
        }
    )
    with pytest.warns(UserWarning, match="removed 5 exact duplicate"):
        frames = sample(cfg)
    assert len(frames) == 1
    no_dedup = sample(dataclasses.replace(cfg, deduplicate=False))
    assert len(no_dedup) == 6
    moved = no_dedup[1].copy()
    moved.positions[0, 0] += 1e-12
    assert len(deduplicate([*no_dedup, moved])) == 2


def test_missing_element_is_refused():
    cfg = SamplingConfig.from_dict(
        {
            "structures": [
                CU,
                {"build": "molecule", "args": {"name": "H2O"}, "generators": []},
            ],
            "rattle": {"count": 3},
        }
    )
    with pytest.raises(ValueError, match=r"element\(s\) \['H', 'O'\].*never appear"):
        sample(cfg)
    frames = sample(dataclasses.replace(cfg, check_coverage=False))
    assert element_counts(frames) == {"Cu": 12}
    with pytest.raises(ValueError, match="'Si'"):
        check_element_coverage(frames, {"Cu", "Si"})


def test_md_without_teacher_and_empty_configs_are_refused():
    with pytest.raises(ValueError, match="needs a teacher"):
        sample(emt_md_config())
    with pytest.raises(ValueError, match="no frames"):
        sample({"structures": [CU]})
    # md.teacher in the config is enough.
    cfg = emt_md_config(
        teacher=EMT_SPEC,
        temperatures_kelvin=[100],
        frames_per_temperature=1,
        equilibration_steps=0,
        stride=1,
    )
    assert len(sample(cfg)) == 1


def test_charge_and_spin_are_carried_to_frames(tmp_path):
    water = ase.build.molecule("H2O")
    water.info.update(charge=0, spin=1, note="dropped")
    ase.io.write(tmp_path / "w.extxyz", water)
    frames = sample({"structures": [str(tmp_path / "w.extxyz")], "rattle": {"count": 2}})
    for atoms in frames:
        assert atoms.info["charge"] == 0 and atoms.info["spin"] == 1
        assert "note" not in atoms.info


def _displacement_from_lattice(frames, lattice: ase.Atoms) -> float:
    """Mean squared minimum-image displacement from the ideal sites, Å²."""
    from ase.geometry import find_mic

    values = []
    for frame in frames:
        vectors, _ = find_mic(frame.positions - lattice.positions, frame.cell, pbc=True)
        values.append(np.mean(np.sum(vectors**2, axis=1)))
    return float(np.mean(values))


def test_melt_trajectories_are_disordered_at_their_target():
    config = emt_md_config(
        temperatures_kelvin=[600],
        frames_per_temperature=10,
        melt={"temperatures_kelvin": [600], "melt_kelvin": 4000, "steps": 1000},
    )
    frames = sample(config, teacher=EMT_SPEC)
    assert sampler_counts(frames) == {"md": 10, "md-melt": 10}
    crystal = [f for f in frames if f.info["sampler"] == "md"]
    melted = [f for f in frames if f.info["sampler"] == "md-melt"]
    assert melted[0].info["md_step"] == 1000 + 150 + 10
    assert all(f.info["temperature_kelvin"] == 600.0 for f in melted)
    # Back at the target after the melt: 10 frames of 32 atoms average within ~25 %.
    assert np.mean([f.get_temperature() for f in melted]) == pytest.approx(600, rel=0.3)
    lattice = load_structures(config)[0]
    assert _displacement_from_lattice(crystal, lattice) < 0.1
    assert _displacement_from_lattice(melted, lattice) > 1.0  # atoms left their sites


def test_config_without_melt_keeps_its_dict():
    # Configs written before md.melt existed must hash as before (finished runs stay done).
    assert "melt" not in emt_md_config().to_dict()["md"]
    with_melt = emt_md_config(melt={"temperatures_kelvin": [900]})
    assert SamplingConfig.from_dict(with_melt.to_dict()) == with_melt
    with pytest.raises(ValueError, match="md.melt"):
        emt_md_config(melt={"temperature": 900})


def test_finished_trajectories_are_read_back_not_rerun(tmp_path):
    config = emt_md_config(frames_per_temperature=5)
    first = sample(config, teacher=EMT_SPEC, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("md-*.extxyz"))) == 2
    # Every trajectory is cached, so the teacher is never loaded: a spec that cannot
    # load proves it.
    again = sample(config, teacher="ase:no_such_module:Nothing", cache_dir=tmp_path)
    assert len(again) == len(first)
    for a, b in zip(first, again, strict=True):
        np.testing.assert_allclose(a.positions, b.positions, atol=1e-6)
        assert a.info["sampler"] == b.info["sampler"] and a.info["seed"] == b.info["seed"]
        assert a.info["md_step"] == b.info["md_step"]
    # A changed MD setting does not reuse them.
    with pytest.raises(Exception, match="no_such_module"):
        sample(
            emt_md_config(frames_per_temperature=6),
            teacher="ase:no_such_module:Nothing",
            cache_dir=tmp_path,
        )


def test_parallel_workers_give_the_same_frames(tmp_path):
    config = emt_md_config(
        frames_per_temperature=4, melt={"temperatures_kelvin": [600], "steps": 20}
    )
    serial = sample(config, teacher=EMT_SPEC)
    parallel = sample(config, teacher=EMT_SPEC, cache_dir=tmp_path, workers=2)
    assert len(list(tmp_path.glob("*.extxyz"))) == 3  # one file per trajectory
    assert [f.info["sampler"] for f in parallel] == [f.info["sampler"] for f in serial]
    for a, b in zip(serial, parallel, strict=True):
        np.testing.assert_allclose(a.positions, b.positions, atol=1e-6)
        assert a.info["seed"] == b.info["seed"]
    with pytest.raises(ValueError, match="needs a cache_dir"):
        sample(config, teacher=EMT_SPEC, workers=2)
