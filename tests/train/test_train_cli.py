"""The `train` and `evaluate` commands, through a throwaway typer app."""

from __future__ import annotations

import json

import typer
import yaml
from train_helpers import TINY
from typer.testing import CliRunner

from jaxdistill import load_student
from jaxdistill.cli.train import evaluate_command, train_command

app = typer.Typer()
app.command("train")(train_command)
app.command("evaluate")(evaluate_command)
runner = CliRunner()


def test_train_then_evaluate(ethanol_store, tmp_path):
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump({**TINY, "steps": 1000, "validation_interval": 10}))
    output = tmp_path / "student"
    args = ["train", "--data", str(ethanol_store), "--output", str(output)]
    result = runner.invoke(app, [*args, "--config", str(config), "--max-steps", "20"])
    assert result.exit_code == 0, result.output
    output_text = " ".join(result.output.split())
    assert "20 steps" in output_text and "best validation force MAE" in output_text
    student = load_student(output)
    assert student.metadata["training"]["config"]["steps"] == 20
    assert student.symbols == ["H", "C", "O"]

    result = runner.invoke(
        app, ["evaluate", "--student", str(output), "--data", str(ethanol_store)]
    )
    assert result.exit_code == 0, result.output
    assert "force MAE" in result.output
    report = json.loads((output / "evaluation-test" / "evaluation.json").read_text())
    assert report["split"] == "test" and report["frames"] == 4
    assert (output / "evaluation-test" / "parity_forces.png").is_file()


def test_clear_errors(ethanol_store, tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("learning_rat: 0.1\n")
    result = runner.invoke(
        app,
        [
            "train",
            "--data",
            str(ethanol_store),
            "--output",
            str(tmp_path / "s"),
            "--config",
            str(config),
        ],
    )
    assert result.exit_code != 0 and "learning_rat" in result.output
    result = runner.invoke(
        app, ["train", "--data", str(tmp_path / "missing.h5"), "--output", str(tmp_path / "s")]
    )
    assert result.exit_code != 0 and "not found" in result.output
    # the ranks of a multi-process run without its coordinator
    result = runner.invoke(
        app,
        [
            *("train", "--data", str(ethanol_store), "--output", str(tmp_path / "s")),
            *("--num-processes", "2", "--process-id", "1"),
        ],
    )
    assert result.exit_code != 0 and "--coordinator" in result.output
