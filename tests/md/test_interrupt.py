"""Stopping MD early (Ctrl-C, SIGTERM) keeps the run: trajectory, log and summary agree."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import ase.io
import pytest
from structures import ethanol, silicon
from test_run import MOLECULE  # sample every 50 steps, chunks of 500

from jaxdistill.md import run_md
from jaxdistill.md.signals import StopOnSignal

pytest.importorskip("jax_md")


def _interrupt_at(call: int, signum: int = signal.SIGINT):
    """A progress callback (run after each chunk) that sends this process ``signum``
    (Ctrl-C by default) on its ``call``-th call."""
    calls = []

    def callback(progress):
        calls.append(progress.step)
        if len(calls) == call:
            os.kill(os.getpid(), signum)

    return callback, calls


@pytest.fixture
def ctrl_c_raises():
    """Python's own Ctrl-C handler for the test: a shell starts background jobs (a CI
    script's, ``nohup ... &``) with SIGINT ignored, and Python keeps it ignored."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.mark.parametrize("engine", ["jax-md", "ase"])
def test_an_interrupted_run_returns_what_it_did(tiny_student, tmp_path, engine):
    callback, calls = _interrupt_at(2, signal.SIGINT if engine == "ase" else signal.SIGTERM)
    trajectory = tmp_path / "run.extxyz"
    summary = run_md(
        tiny_student,
        ethanol(),
        engine=engine,
        ensemble="nvt",
        temperature_kelvin=300,
        steps=100_000,
        seed=1,
        trajectory=trajectory,
        callback=callback,
        keep_on_interrupt=True,
        **MOLECULE,
    )
    # the jax-md engine reports after each chunk of 500 steps, ASE after each sample
    per_call = 500 if engine == "jax-md" else 50
    assert calls == [per_call, 2 * per_call]
    assert summary.interrupted and summary.steps == 100_000
    assert summary.steps_done == 2 * per_call
    samples = summary.steps_done // 50 + 1
    assert len(summary.thermo["step"]) == samples
    assert summary.thermo["step"][-1] == summary.steps_done
    assert len(ase.io.read(trajectory, ":")) == samples
    assert summary.mean_temperature_kelvin > 0 and summary.us_per_step > 0
    assert f"interrupted after {summary.steps_done} of 100000 steps" in summary.describe()


def test_without_keep_on_interrupt_the_interrupt_propagates(tiny_student, tmp_path, ctrl_c_raises):
    # what pipeline stages rely on: a cut run must not look finished
    callback, _ = _interrupt_at(1)
    trajectory = tmp_path / "run.extxyz"
    with pytest.raises(KeyboardInterrupt):
        run_md(
            tiny_student,
            ethanol(),
            ensemble="nvt",
            temperature_kelvin=300,
            steps=100_000,
            trajectory=trajectory,
            callback=callback,
            **MOLECULE,
        )
    assert len(ase.io.read(trajectory, ":")) == 500 // 50 + 1  # written so far, closed


def test_a_signal_only_asks_to_stop_and_a_second_one_stops_at_once(ctrl_c_raises):
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with StopOnSignal(True) as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested  # the handler ran; nothing was raised
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before
    with StopOnSignal(False) as stop, pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGINT)  # not enabled: Python's own Ctrl-C
    assert not stop.requested


def test_md_command_saves_its_summary_when_terminated(tiny_student, tmp_path):
    """`timeout` or a batch system's limit sends SIGTERM: the summary is still written."""
    student = tiny_student.save(tmp_path / "student")
    structure = tmp_path / "si.extxyz"
    ase.io.write(structure, silicon(repeat=(2, 2, 2)))  # NVE: the untrained student stays cool
    log, summary_json = tmp_path / "md.log", tmp_path / "summary.json"
    command = [
        sys.executable, "-m", "jaxdistill.cli", "md", "--student", str(student),
        "--structure", str(structure), "--ensemble", "nve", "--temperature", "300",
        "--timestep-fs", "1.0", "--steps", "100000000", "--sample-every", "50",
        "--output", str(tmp_path / "md.extxyz"), "--log", str(log),
        "--summary-json", str(summary_json), "--no-progress", "--no-fragment-check",
    ]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300
        # wait until samples after the first are logged: the MD loop is running
        while not (log.is_file() and len(log.read_text().splitlines()) >= 4):
            assert process.poll() is None, process.stdout.read().decode()
            assert time.monotonic() < deadline, "MD did not start"
            time.sleep(0.5)
        process.send_signal(signal.SIGTERM)
        output = process.communicate(timeout=120)[0].decode()
    finally:
        process.kill()
    assert process.returncode == 130, output
    summary = json.loads(summary_json.read_text())
    assert summary["interrupted"] is True and summary["steps"] == 100_000_000
    assert summary["steps_done"] > 0 and summary["steps_done"] % 50 == 0
    frames = ase.io.read(tmp_path / "md.extxyz", ":")
    assert len(frames) == summary["steps_done"] // 50 + 1
    assert "interrupted after" in output
