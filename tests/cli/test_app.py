"""The command-line entry point."""

from __future__ import annotations

from typer.testing import CliRunner

import jaxdistill
from jaxdistill.cli import app

runner = CliRunner()


def test_version_and_help():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and jaxdistill.__version__ in result.output
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0 and "demo" in result.output


def test_demo_runs_and_saves(tmp_path):
    result = runner.invoke(
        app,
        ["demo", "--architecture", "schnet", "--steps", "5", "--output", str(tmp_path / "student")],
    )
    assert result.exit_code == 0, result.output
    assert "5 steps" in result.output
    assert (tmp_path / "student" / "student.json").is_file()
    result = runner.invoke(app, ["info", str(tmp_path / "student")])
    assert result.exit_code == 0 and "schnet" in result.output


def test_import_does_not_import_torch():
    import subprocess
    import sys

    code = (
        "import sys, jaxdistill, ase.build; "
        "jaxdistill.graph_from_atoms(ase.build.bulk('Si'), 5.0); print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
