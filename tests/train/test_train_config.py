"""TrainConfig: defaults, YAML round trip, clear errors."""

from __future__ import annotations

import dataclasses

import pytest

from jaxdistill.train import TrainConfig, make_schedule, resolve_config


def test_defaults_are_valid_and_round_trip_through_yaml(tmp_path):
    config = TrainConfig()
    assert config.architecture == "painn" and config.dtype == "float32"
    assert config.split == {"train": 0.8, "validation": 0.1, "test": 0.1}
    path = config.to_yaml(tmp_path / "train.yaml")
    assert TrainConfig.from_yaml(path) == config
    assert resolve_config(str(path)) == config
    assert resolve_config(None) == config
    assert resolve_config(config.to_dict()) == config


def test_yaml_may_hold_a_train_section(tmp_path):
    path = tmp_path / "pipeline.yaml"
    path.write_text("train:\n  steps: 123\n  model: {features: 32}\n")
    config = TrainConfig.from_yaml(path)
    assert config.steps == 123 and config.model == {"features": 32}


def test_unknown_keys_raise_with_a_hint():
    with pytest.raises(ValueError, match=r"unknown training config key.*'learning_rat'.*rate"):
        TrainConfig.from_dict({"learning_rat": 1e-3})
    with pytest.raises(ValueError, match="unknown model option.*'depth'"):
        TrainConfig.from_dict({"model": {"depth": 3}})


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"architecture": "mace"}, "architecture must be one of"),
        ({"steps": 0}, "steps must be an integer >= 1"),
        ({"batch_size": 2.5}, "batch_size must be an integer"),
        ({"schedule": "step"}, "schedule must be one of"),
        ({"optimizer": "sgd"}, "optimizer must be one of"),
        ({"ema_decay": 1.0}, "ema_decay must be in"),
        ({"split": {"train": 0.5, "test": 0.4}}, "add up to 1"),
        ({"split": {"train": 0.9, "holdout": 0.1}}, "unknown part"),
        ({"dtype": "float16"}, "dtype must be one of"),
        ({"energy_weight": 0, "forces_weight": 0, "stress_weight": 0}, "at least one loss weight"),
        ({"patience": 0}, "patience must be"),
        ({"capacity": "huge"}, "capacity must be one of"),
        ({"edge_layout": "dense"}, "edge_layout must be one of"),
    ],
)
def test_invalid_values_raise(changes, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig.from_dict(changes)


def test_config_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        TrainConfig().steps = 5  # type: ignore[misc]


@pytest.mark.parametrize("schedule", ["cosine", "linear", "constant"])
def test_schedules_warm_up_and_decay(schedule):
    config = TrainConfig(
        steps=1000, learning_rate=1e-3, final_learning_rate=1e-5, warmup_fraction=0.1,
        schedule=schedule,
    )  # fmt: skip
    lr = make_schedule(config)
    assert float(lr(0)) == pytest.approx(1e-5)
    assert float(lr(100)) == pytest.approx(1e-3, rel=1e-3)
    assert float(lr(50)) < 1e-3
    if schedule == "constant":
        assert float(lr(1000)) == pytest.approx(1e-3)
    else:
        assert float(lr(1000)) == pytest.approx(1e-5, rel=1e-3)
        assert 1e-5 < float(lr(550)) < 1e-3


def test_edge_layout_is_left_out_of_the_resolved_config_while_unset():
    """Runs made before the key existed keep their stage hashes."""
    assert "edge_layout" not in TrainConfig().to_dict()
    assert not TrainConfig().receiver_major
    config = TrainConfig(edge_layout="receiver_major")
    assert config.to_dict()["edge_layout"] == "receiver_major" and config.receiver_major
