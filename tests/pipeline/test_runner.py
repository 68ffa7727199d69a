"""The whole pipeline on a tiny config (EMT copper teacher, seconds per stage)."""

from __future__ import annotations

import json

import ase.build
import pytest
import yaml
from rich.console import Console

from jaxdistill import load_student
from jaxdistill.config import DistillConfig, stage_hashes
from jaxdistill.pipeline import RunDirectory, distill

TINY = {
    "name": "tiny-cu",
    "teacher": "ase:ase.calculators.emt:EMT",
    "device": "cpu",
    "sampling": {
        "seed": 0,
        "structures": [
            {
                "build": "bulk",
                "args": {"name": "Cu", "crystalstructure": "fcc", "a": 3.61, "cubic": True},
            }
        ],
        "md": {
            "temperatures_kelvin": [300, 900],
            "frames_per_temperature": 12,
            "stride": 3,
            "equilibration_steps": 10,
            "timestep_fs": 2.0,
        },
        "rattle": {"count": 6, "sigma_angstrom": 0.05},
    },
    "train": {
        "architecture": "schnet",
        "model": {"features": 16, "num_layers": 2},
        "cutoff_angstrom": 4.0,
        "steps": 60,
        "batch_size": 4,
        "validation_interval": 30,
        "checkpoint_interval": 30,
        "log_interval": 10,
        "patience": None,
    },
    "md_validation": {
        "student_steps": 20,
        "teacher_steps": 20,
        "equilibration_steps": 10,
        "nve_steps": 40,
        "stride": 5,
        "timestep_fs": 2.0,
    },
}


def test_tiny_distillation_runs_resumes_and_reports(tmp_path):
    run_dir = tmp_path / "run"
    record = distill(TINY, run_dir)
    assert list(record) == ["sample", "label", "train", "evaluate", "md", "report"]
    assert record["sample"]["summary"]["frames"] == 2 * 12 + 6
    assert record["sample"]["summary"]["temperatures_kelvin"] == [300.0, 900.0]
    student = load_student(run_dir / "student")
    assert student.architecture == "schnet"
    evaluation = json.loads((run_dir / "evaluation" / "evaluation.json").read_text())
    assert evaluation["frames"] > 0 and evaluation["forces"]["mae_meV_per_A"] > 0
    md = json.loads((run_dir / "md" / "results.json").read_text())
    assert [t["temperature_kelvin"] for t in md["temperatures"]] == [300.0, 600.0, 900.0]
    assert md["unseen_temperatures_kelvin"] == [600.0]
    # the 4-atom cell is too small for jax-md: the report says so instead of a ratio
    assert "narrower than twice the cutoff" in md["student_jaxmd"]["skipped"]
    report = (run_dir / "report.md").read_text()
    assert "Student jax-md step not timed" in report
    assert "force MAE" in report and "| 600 | no |" in report
    assert (run_dir / "rdf.png").stat().st_size > 1000
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["name"] == "tiny-cu"

    # Where jax-md can run, the report sets the student's jax-md step against the
    # teacher's ASE step (here a 108-atom cell, timed for real, written into the record).
    from jaxdistill.config import MDValidationConfig
    from jaxdistill.pipeline.stages import StageContext, report_stage
    from jaxdistill.validation import time_student_jaxmd

    results = json.loads((run_dir / "md" / "results.json").read_text())
    teacher_seconds = [entry["teacher"]["seconds_per_step"] for entry in results["temperatures"]]
    cell = ase.build.bulk("Cu", "fcc", a=3.61, cubic=True) * (3, 3, 3)
    results["student_jaxmd"] = time_student_jaxmd(
        student, cell, 300.0, MDValidationConfig(), teacher_seconds
    )
    (run_dir / "md" / "results.json").write_text(json.dumps(results))
    config = DistillConfig.from_dict(TINY)
    run = RunDirectory(run_dir)
    report_stage(StageContext(config=config, run=run, console=Console(), device="cpu"))
    report = (run_dir / "report.md").read_text()
    us = results["student_jaxmd"]["us_per_step"]
    assert f"{us:.1f} µs/step" in report and "faster than the teacher's ASE step" in report
    assert len(results["student_jaxmd"]["speedup_vs_teacher_ase"]) == 3

    # a re-run skips every stage: nothing is recomputed
    mtime = (run_dir / "labels.h5").stat().st_mtime_ns
    again = distill(TINY, run_dir)
    assert again["train"]["seconds"] == record["train"]["seconds"]
    assert (run_dir / "labels.h5").stat().st_mtime_ns == mtime

    # changing the MD validation redoes that stage and the report only
    changed = {**TINY, "md_validation": {**TINY["md_validation"], "temperatures_kelvin": [500]}}
    third = distill(changed, run_dir)
    assert third["train"]["seconds"] == record["train"]["seconds"]
    md = json.loads((run_dir / "md" / "results.json").read_text())
    assert [t["temperature_kelvin"] for t in md["temperatures"]] == [500.0]


def test_stage_hashes_chain():
    base = DistillConfig.from_dict(TINY)
    other = DistillConfig.from_dict({**TINY, "train": {**TINY["train"], "steps": 61}})
    a, b = stage_hashes(base), stage_hashes(other)
    assert a["sample"] == b["sample"] and a["label"] == b["label"]
    assert a["train"] != b["train"] and a["md"] != b["md"]


def test_config_errors_name_the_key():
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['sampler'\]"):
        DistillConfig.from_dict({**TINY, "sampler": {}})
    with pytest.raises(ValueError, match="needs 'teacher'"):
        DistillConfig.from_dict({k: v for k, v in TINY.items() if k != "teacher"})
    with pytest.raises(FileNotFoundError, match="config file not found"):
        DistillConfig.from_yaml("/nonexistent.yaml")


@pytest.mark.parametrize(
    "name", ["quickstart.yaml", "si-sevennet.yaml", "molecules-fennol.yaml", "orb.yaml"]
)
def test_shipped_configs_parse(name):
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "configs" / name
    config = DistillConfig.from_yaml(path)
    assert config.name and config.teacher
    assert config.sampling.structures
    # and they round-trip through the resolved form written into every run directory
    assert DistillConfig.from_dict(config.to_dict()).to_dict() == config.to_dict()
