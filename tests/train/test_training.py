"""Training on real teacher labels: accuracy gain, outputs, no recompilation."""

from __future__ import annotations

import itertools
import json

import jax
import numpy as np
import pytest
from train_helpers import SI_CONFIG, TINY, read_metrics

from jaxdistill import load_student
from jaxdistill.data.batching import make_batch, plan_capacity, precompute_neighbours
from jaxdistill.data.store import LabelStore
from jaxdistill.diagnostics import count_compilations
from jaxdistill.evaluate import evaluate
from jaxdistill.student import create_student
from jaxdistill.train import (
    LossWeights,
    TrainConfig,
    make_mesh,
    make_optimizer,
    make_train_step,
    train,
)
from jaxdistill.train.loop import EarlyStopping
from jaxdistill.train.step import init_state, replicated, sharded


def test_training_cuts_the_validation_force_error_threefold(si_run):
    _, student, lines = si_run
    assert [line["step"] for line in lines] == [0, 50, 100, 150, 200, 250, 300]
    start = lines[0]["validation"]["force_mae_meV_per_A"]
    best = student.metadata["training"]["best_validation_force_mae_meV_per_A"]
    assert best == min(line["validation"]["force_mae_meV_per_A"] for line in lines)
    assert best < start / 3, (start, best)
    assert (
        lines[-1]["validation"]["energy_mae_meV_per_atom"]
        < lines[0]["validation"]["energy_mae_meV_per_atom"]
    )
    assert (
        lines[-1]["validation"]["stress_mae_meV_per_A3"]
        < lines[0]["validation"]["stress_mae_meV_per_A3"]
    )
    for line in lines[1:]:
        train_metrics = line["train"]
        assert train_metrics["frames"] == 50 * 4
        for key in ("loss", "force_mae_meV_per_A", "force_rmse_meV_per_A", "grad_norm"):
            assert np.isfinite(train_metrics[key])
        assert line["learning_rate"] > 0


def test_run_directory_and_metadata(si_run, si_store):
    output, student, _ = si_run
    assert (output / "training" / "config.yaml").is_file()
    assert TrainConfig.from_yaml(output / "training" / "config.yaml") == TrainConfig.from_dict(
        SI_CONFIG
    )
    assert (output / "training" / "summary.json").is_file()
    assert any((output / "training" / "checkpoints").iterdir())
    loaded = load_student(output)
    for a, b in zip(
        jax.tree_util.tree_leaves(loaded.params), jax.tree_util.tree_leaves(student.params),
        strict=True,
    ):  # fmt: skip
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    meta = loaded.metadata
    assert meta["teacher"]["name"] == "7net-0"
    with LabelStore(si_store) as store:
        split = store.split(SI_CONFIG.get("split", TrainConfig().split), seed=0)
        mean_energy = float(np.mean(store.arrays(split["train"]).energy / 8))
    assert meta["split"]["sizes"] == {k: len(v) for k, v in split.items()}
    assert meta["split"]["seed"] == 0 and meta["split"]["n_frames"] == 48
    # One species: the least-squares reference is the mean energy per atom.
    assert meta["head_statistics"]["reference_energies_eV"]["Si"] == pytest.approx(mean_energy)
    shift = loaded.params["params"]["head"]["atomic_shift"]
    assert float(shift[0]) == pytest.approx(mean_energy, rel=1e-6)  # frozen during training
    summary = meta["training"]
    assert summary["finished"] and summary["steps_completed"] == 300
    assert summary["exported"] == "best_validation_ema"
    assert summary["config"]["steps"] == 300


def test_evaluation_of_the_validation_split_matches_training(si_run, si_store):
    output, student, lines = si_run
    result = evaluate(output, si_store, split="validation")
    best = [line for line in lines if line["step"] == student.metadata["training"]["best_step"]]
    validation = best[0]["validation"]
    assert result["frames"] == validation["frames"]
    assert result["forces"]["mae_meV_per_A"] == pytest.approx(
        validation["force_mae_meV_per_A"], rel=1e-4
    )
    assert result["energy"]["mae_meV_per_atom"] == pytest.approx(
        validation["energy_mae_meV_per_atom"], rel=1e-3, abs=1e-3
    )
    assert result["stress"]["mae_meV_per_A3"] == pytest.approx(
        validation["stress_mae_meV_per_A3"], rel=1e-3
    )


def test_a_finished_run_is_not_trained_again(si_run, si_store):
    output, student, lines = si_run
    again = train(si_store, output, SI_CONFIG, progress=False)
    for a, b in zip(
        jax.tree_util.tree_leaves(again.params), jax.tree_util.tree_leaves(student.params),
        strict=True,
    ):  # fmt: skip
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert read_metrics(output) == lines


def test_train_step_compiles_once_per_capacity(si_store):
    """One shape for the whole run in "single" mode; one per bucket in "bucket" mode."""
    with LabelStore(si_store) as store:
        labels = store.arrays(range(12))
    config = TrainConfig.from_dict(TINY)
    student = create_student("schnet", ["Si"], cutoff=4.0, features=8, num_layers=1)
    frames = precompute_neighbours(labels, student.cutoff)
    mesh = make_mesh()
    optimizer = make_optimizer(config)
    step = make_train_step(
        student.potential.predict, optimizer, LossWeights(), config.ema_decay, mesh
    )
    state = jax.device_put(init_state(student.params, optimizer), replicated(mesh))
    plan = plan_capacity([frames], 2, "single")
    batches = [[[0, 1]], [[2, 3]], [[4]], [[5, 6]]]
    batch = make_batch(frames, batches[0], plan.fixed)
    state, _ = step(state, jax.device_put(batch, sharded(mesh)))
    with count_compilations() as compiled:
        for shards in batches[1:]:
            batch = jax.device_put(make_batch(frames, shards, plan.fixed), sharded(mesh))
            state, sums = step(state, batch)
        jax.block_until_ready(sums)
    assert compiled.count == 0

    bucket = plan_capacity([frames], 2, "bucket")
    shards_list = [[[0]], [[1]], [[2, 3]], [[4, 5]]]  # 8 atoms (bucket 12) or 16 (bucket 24)
    capacities = {bucket.capacity(frames, s) for s in shards_list}
    assert len(capacities) == 2
    with count_compilations() as compiled:
        for shards in shards_list:
            batch = make_batch(frames, shards, bucket.capacity(frames, shards))
            state, sums = step(state, jax.device_put(batch, sharded(mesh)))
        jax.block_until_ready(sums)
    assert compiled.count == len(capacities)


def test_receiver_major_training_follows_the_edge_list_run(si_store, tmp_path):
    """The same run with receiver-major batches (TrainConfig.edge_layout): the same
    losses and errors at every validation, up to float32 rounding."""
    config = {**TINY, "steps": 20, "validation_interval": 10, "checkpoint_interval": 20}
    runs, capacities = {}, {}
    for layout in ("edge_list", "receiver_major"):
        output = tmp_path / layout
        student = train(si_store, output, {**config, "edge_layout": layout}, progress=False)
        runs[layout] = read_metrics(output)
        capacities[layout] = student.metadata["training"]["capacity"]
    assert "slots_per_atom" not in capacities["edge_list"]
    assert capacities["receiver_major"]["slots_per_atom"] >= 4
    for a, b in zip(runs["edge_list"], runs["receiver_major"], strict=True):
        assert a["step"] == b["step"]
        for key in ("loss", "force_mae_meV_per_A", "energy_mae_meV_per_atom"):
            assert b["validation"][key] == pytest.approx(a["validation"][key], rel=2e-3), key
        if "train" in a:
            assert b["train"]["loss"] == pytest.approx(a["train"]["loss"], rel=2e-3)
    assert [line["step"] for line in runs["edge_list"]] == [0, 10, 20]


def test_early_stopping_bookkeeping():
    stopper = EarlyStopping(patience=2)
    assert stopper.update(0, 10.0) and stopper.step == 0
    assert not stopper.update(10, 11.0) and not stopper.should_stop
    assert stopper.update(20, 9.0) and stopper.bad_validations == 0
    assert not stopper.update(30, 9.0)
    assert not stopper.update(40, 9.5) and stopper.should_stop
    assert (stopper.metric, stopper.step) == (9.0, 20)
    restored = EarlyStopping.from_dict(2, json.loads(json.dumps(stopper.to_dict())))
    assert restored == stopper
    assert not EarlyStopping(None, 1.0, 0, 100).should_stop


def test_early_stopping_exports_the_best_parameters(ethanol_store, tmp_path):
    """With patience 1 a noisy run stops at the first validation that does not improve."""
    config = {
        **TINY,
        "architecture": "schnet",
        "model": {"features": 8, "num_layers": 1},
        "steps": 100,
        "validation_interval": 2,
        "patience": 1,
        "learning_rate": 5e-2,
    }
    student = train(ethanol_store, tmp_path / "student", config, progress=False)
    lines = read_metrics(tmp_path / "student")
    values = [line["validation"]["force_mae_meV_per_A"] for line in lines]
    summary = student.metadata["training"]
    assert summary["early_stopped"] and lines[-1]["step"] < 100
    assert summary["steps_completed"] == lines[-1]["step"]
    assert values[-1] >= min(values[:-1])
    assert all(b < a for a, b in itertools.pairwise(values[:-1]))
    assert summary["best_step"] == lines[int(np.argmin(values))]["step"]
    result = evaluate(student, ethanol_store, split="validation")
    assert result["forces"]["mae_meV_per_A"] == pytest.approx(min(values), rel=1e-4)
    assert result["stress"] is None


def test_export_choice_is_checked(si_store, tmp_path):
    with pytest.raises(ValueError, match="export must be 'best' or 'last'"):
        train(si_store, tmp_path / "s", TINY, export="first")
