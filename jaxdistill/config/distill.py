"""The whole ``jaxdistill distill`` configuration and the hash of each stage's part.

Imports no jax: reading and checking a YAML stays cheap (building the ``train`` section
asks the model registry about the architecture, which imports it).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jaxdistill.config.active import ActiveLearningConfig
from jaxdistill.config.keys import check_keys, read_yaml
from jaxdistill.config.sampling import SamplingConfig
from jaxdistill.config.train import TrainConfig, resolve_config
from jaxdistill.config.validation import MDValidationConfig

STAGES = ("sample", "label", "train", "refine", "evaluate", "md", "report")


@dataclass(frozen=True)
class DistillConfig:
    """A whole distillation (the YAML file given to ``jaxdistill distill``).

    Attributes:
        name: run name; the default run directory is ``runs/<name>``.
        teacher: teacher spec (``sevennet:7net-0``, ``fennol:/path/model.fnx``,
            ``orb:orb-v3-conservative-inf-omat[@weights.ckpt]``, ``ase:module:factory``).
        teacher_options: keyword arguments of :func:`jaxdistill.load_teacher`
            (e.g. ``{precision: float32-high}`` for Orb).
        device: device of torch teachers: "cpu", "cuda" or "auto" (CUDA when torch sees
            a GPU).
        sampling: the :class:`~jaxdistill.config.sampling.SamplingConfig` section.
        label_batch_size: frames per teacher call while labelling (None: the teacher's
            own default).
        train: the :class:`~jaxdistill.train.config.TrainConfig` section.
        evaluate_split: held-out frames to evaluate on ("test", "validation", "all").
        md_validation: the :class:`~jaxdistill.validation.MDValidationConfig` section,
            or None to skip MD validation.
        active_learning: the :class:`~jaxdistill.config.ActiveLearningConfig` section
            (the ``refine`` stage), or None (default) for none.
        sample_workers: teacher MD trajectories run side by side in worker processes
            (GPU teachers on small systems: several times faster); the frames are the
            same whatever the number, so it is not part of the sample stage's hash.
    """

    name: str
    teacher: str
    sampling: SamplingConfig
    train: TrainConfig
    teacher_options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    device: str = "auto"
    label_batch_size: int | None = None
    evaluate_split: str = "test"
    md_validation: MDValidationConfig | None = dataclasses.field(default_factory=MDValidationConfig)
    active_learning: ActiveLearningConfig | None = None
    sample_workers: int = 1

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any], base_dir: str | Path | None = None
    ) -> DistillConfig:
        """Build from a mapping (parsed YAML); unknown keys raise ValueError naming them."""
        if not isinstance(data, Mapping):
            raise ValueError(f"a distill config must be a mapping, got {type(data).__name__}")
        check_keys(cls, data, "the distill config")
        for key in ("name", "teacher", "sampling"):
            if key not in data:
                raise ValueError(f"the distill config needs '{key}'")
        values = dict(data)
        values["sampling"] = SamplingConfig.from_dict(data["sampling"], base_dir=base_dir)
        values["train"] = resolve_config(dict(data.get("train") or {}))
        md = data.get("md_validation", {})
        values["md_validation"] = None if md is False else MDValidationConfig.from_dict(md)
        values["teacher_options"] = dict(data.get("teacher_options") or {})
        active = data.get("active_learning")
        values["active_learning"] = (
            None if active is None or active is False else ActiveLearningConfig.from_dict(active)
        )
        if int(values.get("sample_workers", 1)) < 1:
            raise ValueError(f"sample_workers must be >= 1, got {values['sample_workers']}")
        if values.get("device", "auto") not in ("auto", "cpu", "cuda") and not str(
            values["device"]
        ).startswith("cuda:"):
            raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {values['device']!r}")
        return cls(**values)

    @classmethod
    def from_yaml(cls, path: str | Path) -> DistillConfig:
        """Load a YAML file (relative structure paths resolve against its folder)."""
        path = Path(path)
        data = read_yaml(path, "config")
        if data is None:
            raise ValueError(f"config {path} is empty")
        return cls.from_dict(data, base_dir=path.parent)

    def to_dict(self) -> dict[str, Any]:
        """A plain dict that :meth:`from_dict` reads back."""
        return {
            "name": self.name,
            "teacher": self.teacher,
            "teacher_options": dict(self.teacher_options),
            "device": self.device,
            "sampling": self.sampling.to_dict(),
            "label_batch_size": self.label_batch_size,
            "train": self.train.to_dict(),
            "evaluate_split": self.evaluate_split,
            "md_validation": (
                _plain(dataclasses.asdict(self.md_validation)) if self.md_validation else False
            ),
            "active_learning": (
                _plain(self.active_learning.to_dict()) if self.active_learning else None
            ),
            "sample_workers": self.sample_workers,
        }

    def stage_sections(self) -> dict[str, Any]:
        """The configuration each stage depends on directly (hashed for resumption)."""
        config = self.to_dict()
        return {
            "sample": [config["sampling"], config["teacher"], config["teacher_options"]],
            "label": [config["teacher"], config["teacher_options"]],
            "train": config["train"],
            # The sampling config too: exploration starts from its structures.
            "refine": (
                [config["active_learning"], config["sampling"], config["label_batch_size"]]
                if config["active_learning"]
                else None
            ),
            "evaluate": config["evaluate_split"],
            "md": config["md_validation"],
            "report": None,
        }


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def stage_hashes(config: DistillConfig) -> dict[str, str]:
    """Hash of each stage's own section chained with the previous stage's hash.

    Chaining makes a change upstream (say, the sampling) invalidate everything after it.
    A run without active learning leaves ``refine`` out of the chain, so runs made
    before that stage existed keep their hashes.
    """
    hashes, previous = {}, ""
    for stage, section in config.stage_sections().items():
        if stage == "refine" and section is None:
            hashes[stage] = previous
            continue
        text = previous + json.dumps(section, sort_keys=True, default=str)
        previous = hashlib.sha256(text.encode()).hexdigest()[:16]
        hashes[stage] = previous
    return hashes
