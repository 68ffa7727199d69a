"""The run directory of ``jaxdistill distill``: where each stage writes, and the record
of finished stages (``stages.json``: config hash, summary, seconds per stage)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import yaml

from jaxdistill.config.distill import STAGES, DistillConfig

__all__ = ["RunDirectory"]


class RunDirectory:
    """Paths of a run and its record of finished stages."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.frames = self.path / "frames.extxyz"
        self.sample_cache = self.path / "sample_cache"
        self.labels = self.path / "labels.h5"
        self.student = self.path / "student"
        self.refine = self.path / "refine"
        self.evaluation = self.path / "evaluation"
        self.md = self.path / "md"
        self.phonons = self.path / "phonons"
        self.vibrations = self.path / "vibrations"
        self.report = self.path / "report.md"
        self.record_file = self.path / "stages.json"

    def outputs(self, stage: str) -> list[Path]:
        """What a stage writes (deleted when the stage is redone)."""
        return {
            "sample": [self.frames, self.sample_cache],
            "label": [self.labels],
            "train": [self.student],
            "refine": [self.refine],
            "evaluate": [self.evaluation],
            "md": [self.md],
            "phonons": [self.phonons],
            "vibrations": [self.vibrations],
            "report": [self.report],
        }[stage]

    def config(self) -> DistillConfig | None:
        """The configuration this run directory last ran with (None if none or unreadable)."""
        path = self.path / "config.yaml"
        try:
            return DistillConfig.from_yaml(path)
        except (FileNotFoundError, ValueError, TypeError, yaml.YAMLError):
            return None

    def record(self) -> dict[str, Any]:
        if self.record_file.is_file():
            return json.loads(self.record_file.read_text())
        return {}

    def mark_done(self, stage: str, config_hash: str, summary: dict[str, Any], seconds: float):
        record = self.record()
        record[stage] = {"config_hash": config_hash, "summary": summary, "seconds": seconds}
        temporary = self.record_file.with_suffix(".tmp")
        temporary.write_text(json.dumps(record, indent=2, default=str) + "\n")
        temporary.replace(self.record_file)  # atomic: a kill never leaves half a record

    def forget_from(self, stage: str) -> None:
        """Remove a stage's and every later stage's outputs and records."""
        record = self.record()
        for later in STAGES[STAGES.index(stage) :]:
            record.pop(later, None)
            for output in self.outputs(later):
                if output.is_dir():
                    shutil.rmtree(output)
                elif output.exists():
                    output.unlink()
        self.record_file.write_text(json.dumps(record, indent=2, default=str) + "\n")
