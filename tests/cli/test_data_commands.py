"""`jaxdistill sample` and `jaxdistill label`, through a throwaway typer app."""

from __future__ import annotations

import ase.io
import numpy as np
import pytest
import typer
import yaml
from ase.calculators.emt import EMT
from typer.testing import CliRunner

from jaxdistill.cli.data import label_command, sample_command
from jaxdistill.cli.errors import USER_ERROR
from jaxdistill.data import LabelStore

EMT_SPEC = "ase:ase.calculators.emt:EMT"


@pytest.fixture(scope="module")
def app() -> typer.Typer:
    # The same registration jaxdistill.cli.main does.
    app = typer.Typer()
    app.command("sample")(sample_command)
    app.command("label")(label_command)
    return app


@pytest.fixture
def config(tmp_path):
    data = {
        "seed": 5,
        "structures": [
            {
                "build": "bulk",
                "args": {"name": "Cu", "crystalstructure": "fcc", "a": 3.61, "cubic": True},
                "repeat": [2, 1, 1],
            }
        ],
        "md": {"temperatures_kelvin": [300], "frames_per_temperature": 3, "stride": 2},
        "rattle": {"count": 2},
        "strain": {"count": 2},
    }
    path = tmp_path / "sampling.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_sample_then_label_then_resume(app, config, tmp_path):
    runner = CliRunner()
    frames_path = tmp_path / "frames.extxyz"
    result = runner.invoke(
        app, ["sample", str(config), "--output", str(frames_path), "--teacher", EMT_SPEC]
    )
    assert result.exit_code == 0, result.output
    for word in ("frames", "atoms", "elements", "Cu 56", "ms/frame", "md 3"):
        assert word in result.output
    frames = ase.io.read(frames_path, index=":")
    assert len(frames) == 7
    assert {a.info["sampler"] for a in frames} == {"md", "rattle", "strain"}

    store_path = tmp_path / "labels.h5"
    args = [
        "label",
        "--teacher",
        EMT_SPEC,
        "--input",
        str(frames_path),
        "--output",
        str(store_path),
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "7 new" in result.output and "ms/frame" in result.output
    with LabelStore(store_path) as store:
        assert len(store) == 7
        arr = store.arrays()
        assert arr.sampler.tolist() == [a.info["sampler"] for a in frames]
        for i, atoms in enumerate(frames):
            atoms.calc = EMT()
            assert arr.energy[i] == pytest.approx(atoms.get_potential_energy(), abs=1e-10)
        np.testing.assert_array_equal(arr.temperature_kelvin[:3], 300.0)

    again = runner.invoke(app, args)
    assert again.exit_code == 0, again.output
    assert "0 new, 7 already labelled" in again.output


def test_cli_errors_are_one_line_not_tracebacks(app, config, tmp_path):
    runner = CliRunner()
    missing = runner.invoke(
        app, ["label", "--teacher", EMT_SPEC, "-i", str(tmp_path / "no.extxyz"), "-o", "x.h5"]
    )
    assert missing.exit_code == USER_ERROR
    assert "not found" in missing.output and "Traceback" not in missing.output

    out = tmp_path / "f.extxyz"
    out.write_text("")
    exists = runner.invoke(app, ["sample", str(config), "-o", str(out), "--teacher", EMT_SPEC])
    assert exists.exit_code == USER_ERROR and "--overwrite" in exists.output

    no_teacher = runner.invoke(app, ["sample", str(config), "-o", str(tmp_path / "g.extxyz")])
    assert no_teacher.exit_code == USER_ERROR and "needs a teacher" in no_teacher.output

    bad_key = tmp_path / "bad.yaml"
    bad_key.write_text(yaml.safe_dump({"structures": ["a.xyz"], "rattel": {"count": 1}}))
    typo = runner.invoke(app, ["sample", str(bad_key), "-o", str(tmp_path / "h.extxyz")])
    assert typo.exit_code == USER_ERROR and "['rattel']" in typo.output

    bad_spec = runner.invoke(
        app, ["label", "--teacher", "magic:model", "-i", str(out), "-o", str(tmp_path / "s.h5")]
    )
    assert bad_spec.exit_code == USER_ERROR and "unknown teacher kind" in bad_spec.output


def test_sample_with_workers_gives_the_same_frames(app, config, tmp_path):
    runner = CliRunner()
    paths = {n: tmp_path / f"frames{n}.extxyz" for n in (1, 2)}
    for n, path in paths.items():
        result = runner.invoke(
            app,
            ["sample", str(config), "-o", str(path), "--teacher", EMT_SPEC, "--workers", str(n)],
        )
        assert result.exit_code == 0, result.output
    one, two = (ase.io.read(paths[n], index=":") for n in (1, 2))
    assert len(one) == len(two) == 7
    for a, b in zip(one, two, strict=True):
        np.testing.assert_allclose(a.positions, b.positions)
    assert not list(tmp_path.glob(".*.cache"))  # the trajectory cache is cleaned up
