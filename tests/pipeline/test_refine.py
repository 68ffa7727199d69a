"""Active learning: frame selection, exploration with failures, and the refine stage."""

from __future__ import annotations

import dataclasses
import json

import ase
import ase.build
import jax
import numpy as np
import pytest
from test_runner import TINY

from jaxdistill import create_student, load_student
from jaxdistill.config import (
    FINE_TUNE_DEFAULTS,
    ActiveLearningConfig,
    DistillConfig,
    SamplingConfig,
    TrainConfig,
    stage_hashes,
)
from jaxdistill.pipeline import distill
from jaxdistill.pipeline.refine import (
    exploration_temperatures,
    explore,
    select_frames,
)

pytest.importorskip("jax_md")


def _frames(n: int) -> list[ase.Atoms]:
    return [ase.Atoms("H", info={"step": k}) for k in range(n)]


def _steps(frames) -> list[int]:
    return [f.info["step"] for f in frames]


def test_select_frames_spaces_evenly_and_keeps_the_end_of_a_failure():
    assert _steps(select_frames(_frames(5), False, 10, 3)) == [0, 1, 2, 3, 4]
    even = _steps(select_frames(_frames(100), False, 5, 3))
    assert len(even) == 5 and even[-1] == 99 and even[0] == 0
    assert np.all(np.diff(even) > 15)  # spread over the run, not bunched
    failed = _steps(select_frames(_frames(100), True, 8, 3))
    assert failed[-3:] == [97, 98, 99]  # the frames that led to the failure
    assert len(failed) == 8 and failed[0] == 0
    assert _steps(select_frames(_frames(4), True, 2, 3)) == [2, 3]  # capped by max_frames
    assert select_frames([], True, 5, 3) == []


def test_config_is_strict_and_fine_tuning_overrides_training():
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['round'\]"):
        ActiveLearningConfig.from_dict({"round": 2})
    with pytest.raises(ValueError, match="unknown key.*'lr'.*active_learning.train"):
        ActiveLearningConfig.from_dict({"train": {"lr": 1.0}})
    with pytest.raises(ValueError, match="max_force_disagreement must be positive"):
        ActiveLearningConfig(max_force_disagreement=0.0)
    with pytest.raises(ValueError, match="engine must be one of"):
        ActiveLearningConfig.from_dict({"engine": "lammps"})
    config = ActiveLearningConfig.from_dict({"temperatures_kelvin": 700, "train": {"steps": 9}})
    assert config.temperatures_kelvin == (700.0,)
    assert ActiveLearningConfig.from_dict(config.to_dict()) == config
    tuned = config.fine_tune_config(TrainConfig(steps=20000, energy_weight=3.0))
    assert tuned.steps == 9  # the section's own value wins
    assert tuned.learning_rate == FINE_TUNE_DEFAULTS["learning_rate"]
    assert tuned.energy_weight == 3.0  # everything else comes from the main config


def test_exploration_temperatures_default_to_the_sampling_ones():
    sampling = SamplingConfig.from_dict(
        {
            **TINY["sampling"],
            "md": {**TINY["sampling"]["md"], "melt": {"temperatures_kelvin": [1200, 300]}},
        }
    )
    assert exploration_temperatures(ActiveLearningConfig(), sampling) == [300.0, 900.0, 1200.0]
    chosen = ActiveLearningConfig(temperatures_kelvin=(450.0,))
    assert exploration_temperatures(chosen, sampling) == [450.0]
    no_md = dataclasses.replace(sampling, md=None)
    with pytest.raises(ValueError, match="needs temperatures_kelvin"):
        exploration_temperatures(ActiveLearningConfig(), no_md)


def test_exploration_records_a_failure_and_keeps_the_frames_before_it(tmp_path):
    # A nearly force-free student lets hot methanol fly apart within a few femtoseconds:
    # the fragmentation check stops the run, and the frames before it are kept.
    student = create_student(
        "schnet", ["H", "C", "O"], cutoff=4.0, seed=0, dtype="float64", features=8, num_layers=1
    )
    free = jax.tree_util.tree_map_with_path(
        lambda path, x: x * 1e-6 if "atomic_scale" in jax.tree_util.keystr(path) else x,
        student.params,
    )
    student = dataclasses.replace(student, params=free)
    sampling = SamplingConfig.from_dict(
        {
            "structures": [{"build": "molecule", "args": {"name": "CH3OH"}}],
            "md": {"temperatures_kelvin": [3000], "timestep_fs": 0.5},
        }
    )
    config = ActiveLearningConfig(
        steps=400, stride=2, max_frames_per_run=6, frames_before_failure=3
    )
    frames, runs = explore(student, sampling, config, tmp_path, round_index=1)
    (run,) = runs
    assert "broke apart" in run["failure"] and run["steps_done"] < 400
    assert run["frames_kept"] == len(frames) <= 6
    steps = [f.info["md_step"] for f in frames]
    assert steps == sorted(steps) and max(steps) < run["steps_done"]
    assert steps[-1] == run["steps_done"] - 2  # the last good frame ...
    assert steps[-3:] == [steps[-1] - 4, steps[-1] - 2, steps[-1]]  # ... and those before it
    assert all(f.info["sampler"] == "active" and f.info["round"] == 1 for f in frames)
    assert all(f.info["temperature_kelvin"] == 3000.0 for f in frames)


ACTIVE = {
    "rounds": 2,
    "temperatures_kelvin": [600],
    "steps": 60,
    "stride": 10,
    "max_frames_per_run": 4,
    "train": {"steps": 20, "validation_interval": 10, "checkpoint_interval": 10},
}


def test_refine_stage_adds_frames_fine_tunes_and_resumes(tmp_path):
    run_dir = tmp_path / "run"
    config = {**TINY, "active_learning": ACTIVE, "md_validation": False}
    record = distill(config, run_dir)
    assert list(record) == ["sample", "label", "train", "refine", "evaluate", "report"]
    rounds = record["refine"]["summary"]["rounds"]
    assert [r["round"] for r in rounds] == [1, 2]
    assert all(1 <= r["frames"] <= 4 for r in rounds)
    final = run_dir / "refine" / "round-2" / "student"
    assert record["refine"]["summary"]["student"] == str(final)
    # Each round trains on the main training split plus every round's frames so far;
    # the main store's validation and test frames are untouched.
    first = load_student(run_dir / "refine" / "round-1" / "student")
    second = load_student(final)
    assert first.metadata["split"]["extra_training_frames"] == rounds[0]["frames"]
    assert second.metadata["split"]["extra_training_frames"] == sum(r["frames"] for r in rounds)
    assert second.metadata["split"]["sizes"] == first.metadata["split"]["sizes"]
    assert second.metadata["training"]["steps_completed"] == 20
    # The last parameters, not the best on a validation split that has none of the new
    # frames (that can be step 0: the unchanged student).
    assert second.metadata["training"]["exported"] == "last_ema"
    leaves = zip(jax.tree.leaves(first.params), jax.tree.leaves(second.params), strict=True)
    assert any(not np.array_equal(a, b) for a, b in leaves)
    # The evaluated student is the refined one, on the original test split.
    evaluation = json.loads((run_dir / "evaluation" / "evaluation.json").read_text())
    assert evaluation["provenance"]["student"]["path"] == str(final.absolute())
    report = (run_dir / "report.md").read_text()
    assert "Active learning" in report and "round 2" in report

    # A rerun skips everything; a lost round summary is redone from its saved frames.
    explored = (run_dir / "refine" / "round-2" / "frames.extxyz").stat().st_mtime_ns
    (run_dir / "refine" / "round-2" / "round.json").unlink()
    again = distill(config, run_dir, stages=("sample", "label", "train"))
    assert again["train"]["seconds"] == record["train"]["seconds"]
    from jaxdistill.pipeline import refine

    cfg = DistillConfig.from_dict(config)
    redone = refine(
        run_dir / "student", run_dir / "labels.h5", "ase:ase.calculators.emt:EMT",
        cfg.sampling, cfg.train, cfg.active_learning, run_dir / "refine",
    )  # fmt: skip
    assert (run_dir / "refine" / "round-2" / "frames.extxyz").stat().st_mtime_ns == explored
    assert redone["rounds"][1]["frames"] == rounds[1]["frames"]

    # Raising `rounds` keeps the finished rounds and runs only the new one; the stages
    # after refine are redone with the new final student.
    finished = {
        k: (run_dir / "refine" / f"round-{k}" / "round.json").stat().st_mtime_ns for k in (1, 2)
    }
    more = {**config, "active_learning": {**ACTIVE, "rounds": 3}}
    third = distill(more, run_dir)
    assert third["train"]["seconds"] == record["train"]["seconds"]
    assert [r["round"] for r in third["refine"]["summary"]["rounds"]] == [1, 2, 3]
    for k, mtime in finished.items():
        assert (run_dir / "refine" / f"round-{k}" / "round.json").stat().st_mtime_ns == mtime
    final = run_dir / "refine" / "round-3" / "student"
    evaluation = json.loads((run_dir / "evaluation" / "evaluation.json").read_text())
    assert evaluation["provenance"]["student"]["path"] == str(final.absolute())
    # Lowering it again ends at round 1's student, still without redoing a round.
    fewer = distill({**config, "active_learning": {**ACTIVE, "rounds": 1}}, run_dir)
    assert fewer["refine"]["summary"]["student"] == str(run_dir / "refine" / "round-1" / "student")
    assert (run_dir / "refine" / "round-3" / "round.json").is_file()


def test_only_a_change_of_rounds_keeps_finished_rounds():
    from jaxdistill.pipeline.runner import _only_rounds_changed

    def config(**active):
        return DistillConfig.from_dict({**TINY, "active_learning": {**ACTIVE, **active}})

    previous = config()
    done = {"config_hash": stage_hashes(previous)["refine"]}
    assert _only_rounds_changed(previous, config(rounds=5), done)
    assert not _only_rounds_changed(previous, config(rounds=5, stride=7), done)
    assert not _only_rounds_changed(previous, config(temperatures_kelvin=[500]), done)
    # a record made by some other configuration than the run directory's last one
    assert not _only_rounds_changed(previous, config(rounds=5), {"config_hash": "0" * 16})
    assert not _only_rounds_changed(None, config(rounds=5), done)
    other_sampling = {**TINY["sampling"], "seed": 1}
    changed = DistillConfig.from_dict(
        {**TINY, "sampling": other_sampling, "active_learning": {**ACTIVE, "rounds": 5}}
    )
    assert not _only_rounds_changed(previous, changed, done)


def test_without_active_learning_the_hashes_are_unchanged():
    plain = stage_hashes(DistillConfig.from_dict(TINY))
    assert plain["refine"] == plain["train"]  # left out of the chain
    active = stage_hashes(DistillConfig.from_dict({**TINY, "active_learning": ACTIVE}))
    assert active["train"] == plain["train"]
    assert active["refine"] != plain["refine"] and active["evaluate"] != plain["evaluate"]


def test_auto_engine_falls_back_to_ase_for_small_cells():
    from jaxdistill.md import choose_engine as _engine

    small = ase.build.bulk("Si", "diamond", a=5.43, cubic=True)
    assert _engine("auto", small, 5.0) == "ase"  # 5.43 Å < 2 x 5 Å
    assert _engine("auto", small * (2, 2, 2), 5.0) == "jax-md"
    assert _engine("auto", ase.build.molecule("CH3OH"), 5.0) == "jax-md"
    assert _engine("ase", small * (2, 2, 2), 5.0) == "ase"


def _store_with_disagreements(path, disagreements):
    from jaxdistill.data.store import LabelStore
    from jaxdistill.teachers.base import TeacherLabels

    frames, labels = [], []
    for k, value in enumerate(disagreements):
        atoms = ase.build.molecule("CH3OH")
        atoms.rattle(0.05, seed=k)
        atoms.info.update(sampler="active", temperature_kelvin=900.0, seed=k)
        frames.append(atoms)
        labels.append(
            TeacherLabels(
                energy=-10.0 - k,
                forces=np.full((len(atoms), 3), 0.1 * k),
                stress=np.full(6, np.nan),
                force_disagreement=value,
                energy_disagreement=0.01 * k,
            )
        )
    with LabelStore.create(path, teacher={"name": "ensemble"}) as store:
        store.append(frames, labels)
    return path


def test_frames_the_teacher_is_unsure_of_are_not_trained_on(tmp_path):
    from jaxdistill.data.store import LabelStore
    from jaxdistill.pipeline.refine import _keep_confident

    source = _store_with_disagreements(tmp_path / "labels.h5", [0.2, 5.0, 0.4, 1.5])
    dropped = _keep_confident(source, tmp_path / "confident.h5", limit=1.0)
    assert dropped == 2
    with LabelStore(tmp_path / "confident.h5") as kept, LabelStore(source) as full:
        assert len(kept) == 2
        a, b = kept.arrays(), full.arrays([0, 2])
        np.testing.assert_array_equal(a.energy, b.energy)
        np.testing.assert_array_equal(a.forces, b.forces)
        np.testing.assert_array_equal(a.force_disagreement, [0.2, 0.4])
        assert list(a.sampler) == ["active", "active"] and list(a.seed) == [0, 2]
        assert kept.teacher == full.teacher
    # A single teacher (no disagreement known) keeps everything.
    single = _store_with_disagreements(tmp_path / "single.h5", [float("nan")] * 3)
    assert _keep_confident(single, tmp_path / "single-kept.h5", limit=1.0) == 0
