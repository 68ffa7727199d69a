"""A stopped or killed run resumes exactly: same losses, same final parameters."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from train_helpers import SI_CONFIG, read_metrics

from jaxdistill import load_student
from jaxdistill.train import train


def without_times(lines: list[dict]) -> list[dict]:
    return [{k: v for k, v in line.items() if k != "time_s"} for line in lines]


def assert_same_params(a, b) -> None:
    leaves_a, tree_a = jax.tree_util.tree_flatten(a)
    leaves_b, tree_b = jax.tree_util.tree_flatten(b)
    assert tree_a == tree_b
    for x, y in zip(leaves_a, leaves_b, strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_stop_and_resume_equals_an_uninterrupted_run(si_store, si_run, tmp_path):
    _, reference, reference_lines = si_run
    output = tmp_path / "student"
    partial = train(si_store, output, SI_CONFIG, stop_after=133, progress=False)
    summary = partial.metadata["training"]
    assert summary["steps_completed"] == 133 and not summary["finished"]
    assert load_student(output).metadata["training"]["steps_completed"] == 133
    assert without_times(read_metrics(output)) == without_times(reference_lines[:3])

    # Resume from the step-133 checkpoint; the logging interval may change on resume.
    resumed = train(si_store, output, {**SI_CONFIG, "log_interval": 7}, progress=False)
    assert resumed.metadata["training"]["steps_completed"] == 300
    assert_same_params(resumed.params, reference.params)
    assert without_times(read_metrics(output)) == without_times(reference_lines)


def test_two_runs_with_one_seed_are_identical_to_the_bit(si_store, si_run, tmp_path):
    """Same data, config and seed: the same parameters and metrics, to the bit (CPU)."""
    _, reference, reference_lines = si_run
    again = train(si_store, tmp_path / "student", SI_CONFIG, progress=False)
    assert_same_params(again.params, reference.params)
    assert without_times(read_metrics(tmp_path / "student")) == without_times(reference_lines)


def test_resume_refuses_a_different_run_and_restart_starts_afresh(si_store, tmp_path):
    output = tmp_path / "student"
    train(si_store, output, SI_CONFIG, stop_after=5, progress=False)
    with pytest.raises(ValueError, match=r"(?s)cannot resume.*config seed: checkpoint 0, now 1"):
        train(si_store, output, {**SI_CONFIG, "seed": 1}, progress=False)
    fresh = train(
        si_store, output, {**SI_CONFIG, "seed": 1}, stop_after=3, resume=False, progress=False
    )
    assert fresh.metadata["training"]["steps_completed"] == 3
    assert [line["step"] for line in read_metrics(output)] == [0]


KILLED_RUN = """
import importlib, sys, time
# not "import jaxdistill.train.checkpoint as ...": jaxdistill.train (the attribute) is
# the train function that jaxdistill exports, which shadows the subpackage there
checkpoint = importlib.import_module("jaxdistill.train.checkpoint")
from jaxdistill.train import train

save = checkpoint.RunCheckpoints.save
def slow_save(self, step, tree, meta):
    save(self, step, tree, meta)
    print("saved", step, flush=True)
    time.sleep(30)  # the parent kills us here (or anywhere)
checkpoint.RunCheckpoints.save = slow_save
train(sys.argv[1], sys.argv[2], {config!r}, progress=False)
"""


@pytest.mark.slow
def test_sigkill_then_resume_equals_an_uninterrupted_run(si_store, si_run, tmp_path):
    """A real SIGKILL after the first checkpoint; resuming gives the same final student."""
    _, reference, reference_lines = si_run
    output = tmp_path / "student"
    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent(KILLED_RUN.format(config=SI_CONFIG)))
    process = subprocess.Popen(
        [sys.executable, str(script), str(si_store), str(output)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "JAX_ENABLE_X64": "1"},
    )
    try:
        line = process.stdout.readline()
        assert line.startswith("saved 100"), line
        time.sleep(0.5)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == -signal.SIGKILL
    assert not (output / "student.json").exists()
    assert [p.name for p in (output / "training" / "checkpoints").iterdir() if p.name.isdigit()]
    resumed = train(si_store, output, SI_CONFIG, progress=False)
    assert_same_params(resumed.params, reference.params)
    assert without_times(read_metrics(output)) == without_times(reference_lines)
    assert Path(output / "student.json").is_file()
