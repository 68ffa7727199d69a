"""`import`, `export`, `info` and the shared flags (`--seed`, `--device`, `--log-file`)
through the real CLI app: labels computed by a real calculator (EMT) go in, a student
trained on them comes out, is described and exported."""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path

import ase.build
import ase.io
import numpy as np
import pytest
import yaml
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from typer.testing import CliRunner

from jaxdistill import load_student
from jaxdistill.cli.errors import USER_ERROR
from jaxdistill.cli.main import app

runner = CliRunner()


def invoke(*args: object, code: int = 0) -> str:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == code, result.output + repr(result.exception)
    assert "Traceback" not in result.output
    # a table's cells as words: "│ frames │ 10 │" -> "frames 10"
    return " ".join(re.sub("[\u2500-\u257f]", " ", result.output).split())


def one_error_line(output: str, *names: str) -> None:
    assert output.count("error:") == 1, output
    for name in names:
        assert name in output, (name, output)


@pytest.fixture(scope="module")
def labelled_file(tmp_path_factory) -> Path:
    """Ten rattled Cu cells labelled by EMT, written by ASE as extxyz."""
    frames = []
    for seed in range(10):
        atoms = ase.build.bulk("Cu", "fcc", a=3.61, cubic=True)
        atoms.rattle(0.08, seed=seed)
        atoms.calc = EMT()
        atoms.calc = SinglePointCalculator(
            atoms,
            energy=atoms.get_potential_energy(),
            forces=atoms.get_forces(),
            stress=atoms.get_stress(),
        )
        frames.append(atoms)
    path = tmp_path_factory.mktemp("import") / "cu.extxyz"
    ase.io.write(path, frames)
    return path


def test_import_train_info_export(labelled_file, tmp_path):
    store = tmp_path / "cu.h5"
    output = invoke("import", labelled_file, store)
    assert "frames 10" in output and "Cu 40" in output

    info = invoke("info", store)
    assert "frames 10" in info and "imported" in info and "10 of 10 frames" in info

    config = tmp_path / "train.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "model": {"features": 8, "num_layers": 1, "num_radial": 6},
                "cutoff_angstrom": 4.0,
                "batch_size": 2,
                "validation_interval": 2,
            }
        )
    )
    student_dir, log = tmp_path / "student", tmp_path / "logs" / "train.log"
    trained = invoke(
        "train", "--data", store, "--output", student_dir, "--config", config,
        "--max-steps", 3, "--seed", 7, "--device", "cpu", "--log-file", log,
    )  # fmt: skip
    assert "3 steps" in trained
    student = load_student(student_dir)
    assert student.metadata["training"]["config"]["seed"] == 7
    assert student.metadata["teacher"]["name"] == "imported"
    text = log.read_text()
    assert text.startswith("# ") and "jaxdistill train --data" in text.splitlines()[0]
    assert "3 steps" in " ".join(text.split()) and "\x1b[" not in text
    assert "training 3/3 (100 %)" in text and text.rstrip().endswith("done")

    described = invoke("info", student_dir)
    for expected in ("painn", "parameters", "Cu", "4 Å", "float32", "imported", "3 of 3"):
        assert expected in described, (expected, described)
    assert "{" not in described  # a summary, not a Python dict

    exported = tmp_path / "cu.jaxexport"
    assert "exported" in invoke("export", student_dir, exported, "--platform", "cpu")
    with zipfile.ZipFile(exported) as archive:
        metadata = json.loads(archive.read("metadata.json"))
    assert metadata["platforms"] == ["cpu"] and metadata["symbols"] == ["Cu"]
    from jaxdistill.portable import load_exported

    model = load_exported(exported)
    graph = student.graph(ase.io.read(labelled_file, 0))
    out = model(*(np.asarray(x) for x in graph))
    np.testing.assert_allclose(out["forces"], student.predict(graph).forces, atol=1e-5)
    one_error_line(invoke("export", student_dir, exported, code=USER_ERROR), "cu.jaxexport")


def test_clear_errors(labelled_file, tmp_path):
    store = tmp_path / "cu.h5"
    invoke("import", labelled_file, store)
    one_error_line(invoke("import", labelled_file, store, code=USER_ERROR), "cu.h5", "--overwrite")
    one_error_line(
        invoke("import", labelled_file, tmp_path / "x.h5", "--energy-key", "dft", code=USER_ERROR),
        "frame 0 of",
        "cu.extxyz",
        "'dft'",
    )
    one_error_line(invoke("info", tmp_path / "nothing", code=USER_ERROR), "nothing")
    one_error_line(invoke("export", tmp_path / "nothing", "x", code=USER_ERROR), "nothing")
    one_error_line(
        invoke("train", "--data", store, "--output", tmp_path / "s", "--device", "tpu", code=2),
        "--device",
    )
    one_error_line(
        invoke("evaluate", "--student", tmp_path, "--data", store, "--device", "gpu", code=2),
        "--device gpu",
    )
    assert not (tmp_path / "x.h5").exists()
