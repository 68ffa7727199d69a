"""``jaxdistill md`` through a throwaway typer app (cli.py registers the same function)."""

from __future__ import annotations

import json

import ase.io
import pytest
import typer
from structures import ethanol, silicon
from typer.testing import CliRunner

from jaxdistill.cli.md import md_command

app = typer.Typer()
app.command("md")(md_command)


@app.callback()
def _main() -> None:
    """Keep ``md`` a sub-command, as in the real app."""


runner = CliRunner()


@pytest.fixture(scope="module")
def saved_student(tmp_path_factory, tiny_student):
    return tiny_student.save(tmp_path_factory.mktemp("cli") / "student")


def test_md_command_ase_engine(saved_student, tmp_path):
    structure = tmp_path / "si.extxyz"
    ase.io.write(structure, silicon(rattle=0.05))
    result = runner.invoke(
        app,
        [
            "md",
            "--student",
            str(saved_student),
            "--structure",
            str(structure),
            "--engine",
            "ase",
            "--ensemble",
            "nvt",
            "--temperature",
            "400",
            "--timestep-fs",
            "1.0",
            "--steps",
            "20",
            "--sample-every",
            "10",
            "--output",
            str(tmp_path / "out.extxyz"),
            "--summary-json",
            str(tmp_path / "summary.json"),
            "--no-progress",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "µs/step" in result.output and "ns/day" in result.output
    assert "mean" in result.output
    assert len(ase.io.read(tmp_path / "out.extxyz", index=":")) == 3
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["engine"] == "ase" and summary["steps"] == 20


def test_md_command_jax_md_engine_with_progress(saved_student, tmp_path):
    structure = tmp_path / "ethanol.xyz"
    ase.io.write(structure, ethanol())
    result = runner.invoke(
        app,
        [
            "md",
            "--student",
            str(saved_student),
            "--structure",
            str(structure),
            "--engine",
            "jax-md",
            "--ensemble",
            "nve",
            "--timestep-fs",
            "0.5",
            "--steps",
            "100",
            "--sample-every",
            "50",
            "--output",
            str(tmp_path / "out.traj"),
            # The random student tears ethanol apart within 50 steps.
            "--no-fragment-check",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "drift" in result.output and "meV/atom" in result.output
    assert len(ase.io.read(tmp_path / "out.traj", index=":")) == 3


def test_md_command_reports_bad_input(saved_student, tmp_path):
    structure = tmp_path / "si.extxyz"
    ase.io.write(structure, silicon())  # 5.43 Å: too small a box for jax-md
    result = runner.invoke(
        app, ["md", "--student", str(saved_student), "--structure", str(structure)]
    )
    assert result.exit_code == 2
    assert "too small" in result.output
