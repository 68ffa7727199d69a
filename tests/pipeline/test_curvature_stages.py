"""The optional ``phonons`` and ``vibrations`` stages of ``jaxdistill distill`` and their
report sections, on a saved untrained student and EMT (copper crystal, water)."""

from __future__ import annotations

import json

from jaxdistill import create_student
from jaxdistill.pipeline import distill

CONFIG = {
    "name": "curvature",
    "teacher": "ase:ase.calculators.emt:EMT",
    "device": "cpu",
    "sampling": {
        "structures": [
            {"build": "bulk", "args": {"name": "Cu", "crystalstructure": "fcc", "a": 3.61}},
            {"build": "molecule", "args": {"name": "H2O"}},
        ]
    },
    "train": {"architecture": "schnet", "cutoff_angstrom": 4.0},
    "md_validation": False,
    "phonons": {"supercell": [2, 2, 2], "dos_mesh": [6, 6, 6]},  # the sampling's crystal
    "vibrations": {"max_optimisation_steps": 5},  # the sampling's molecule
}


def test_curvature_stages_run_and_are_reported(tmp_path):
    run_dir = tmp_path / "run"
    # the stages validate whatever student the run has: an untrained one will do
    create_student("schnet", ["H", "O", "Si", "Cu"], cutoff=4.0, features=8, num_layers=1).save(
        run_dir / "student"
    )
    record = distill(CONFIG, run_dir, stages=("phonons", "vibrations", "report"))
    assert list(record) == ["phonons", "vibrations", "report"]
    assert record["phonons"]["summary"]["band_mae_thz"] > 0
    assert record["vibrations"]["summary"]["modes"] == 3
    phonons = json.loads((run_dir / "phonons" / "results.json").read_text())
    assert phonons["formula"] == "Cu" and "Γ" in phonons["metrics"]["points"]
    vibrations = json.loads((run_dir / "vibrations" / "results.json").read_text())
    assert vibrations["molecules"][0]["name"] == "H2O"
    for png in ("phonons/phonons.png", "vibrations/vibrations.png"):
        assert (run_dir / png).stat().st_size > 10_000
    report = (run_dir / "report.md").read_text()
    assert "## Phonons: student vs teacher (Cu, primitive cell of 1 atom)" in report
    assert "![phonons](phonons/phonons.png)" in report
    assert "## Molecular vibrations" in report and "| H2O | 3 |" in report
    assert "not configured" not in report

    # without the sections the stages are skipped and the report says so
    plain = {k: v for k, v in CONFIG.items() if k not in ("phonons", "vibrations")}
    distill(plain, run_dir, stages=("phonons", "vibrations", "report"))
    report = (run_dir / "report.md").read_text()
    assert "Curvature checks not configured: phonons" in report and "vibrations" in report
    assert "## Phonons" not in report
