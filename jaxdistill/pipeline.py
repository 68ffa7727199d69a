"""``jaxdistill distill``: sample → label → train → (refine) → evaluate → MD validation →
report.

Every stage writes into one run directory and records its completion (with a hash of
the configuration it ran with) in ``stages.json``. Re-running the same command skips
finished stages; an interrupted stage resumes (labelling and training are resumable
themselves); a stage whose configuration changed is redone, with every stage after
it.

    run_dir/
      config.yaml         the resolved configuration
      stages.json         finished stages: config hash, summary, seconds
      frames.extxyz       sampled configurations (sample; sample_cache/ while running)
      labels.h5           teacher labels (label)
      student/            the trained student (train; checkpoints in student/training)
      refine/             active-learning rounds, when configured (refine; the last
                          round's student is the one evaluated and validated)
      evaluation/         metrics on held-out frames, parity plots (evaluate)
      md/                 MD validation: trajectories, results.json (md)
      report.md, *.png    the report (report)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console

from jaxdistill.active import ActiveLearningConfig
from jaxdistill.config_keys import check_keys
from jaxdistill.sampling import SamplingConfig
from jaxdistill.train.config import TrainConfig, resolve_config
from jaxdistill.validation import MDValidationConfig

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
        sampling: the :class:`~jaxdistill.sampling.SamplingConfig` section.
        label_batch_size: frames per teacher call while labelling (None: the teacher's
            own default).
        train: the :class:`~jaxdistill.train.config.TrainConfig` section.
        evaluate_split: held-out frames to evaluate on ("test", "validation", "all").
        md_validation: the :class:`~jaxdistill.validation.MDValidationConfig` section,
            or None to skip MD validation.
        active_learning: the :class:`~jaxdistill.active.ActiveLearningConfig` section
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
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        with open(path) as handle:
            return cls.from_dict(yaml.safe_load(handle), base_dir=path.parent)

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


def _only_rounds_changed(
    previous: DistillConfig | None, config: DistillConfig, done: Mapping[str, Any]
) -> bool:
    """Whether the finished refine stage differs from ``config`` in ``rounds`` alone.

    ``previous`` is the configuration the run directory last ran with; its refine hash
    must be the recorded one (so it is the configuration that made those rounds).
    """
    if previous is None or previous.active_learning is None or config.active_learning is None:
        return False
    if stage_hashes(previous)["refine"] != done["config_hash"]:
        return False
    same_rounds = dataclasses.replace(
        previous,
        active_learning=dataclasses.replace(
            previous.active_learning, rounds=config.active_learning.rounds
        ),
    )
    return stage_hashes(same_rounds)["refine"] == stage_hashes(config)["refine"]


def resolve_device(device: str) -> str:
    """ "auto" → "cuda" when torch is installed and sees a GPU, else "cpu"."""
    if device != "auto":
        return device
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    except ImportError:
        return "cpu"


def distill(
    config: DistillConfig | Mapping[str, Any] | str | Path,
    run_dir: str | Path | None = None,
    *,
    stages: tuple[str, ...] = STAGES,
    console: Console | None = None,
) -> dict[str, Any]:
    """Run (or resume) a whole distillation.

    Args:
        config: a :class:`DistillConfig`, a mapping, or a YAML path.
        run_dir: the run directory (default ``runs/<name>``).
        stages: the stages to run, in order (earlier ones must be done already).
        console: where progress and the summary go.

    Returns:
        The record of every finished stage (``stages.json``'s content).
    """
    from jaxdistill.report import write_report
    from jaxdistill.stages import STAGE_FUNCTIONS, StageContext

    if not isinstance(config, DistillConfig):
        config = (
            DistillConfig.from_dict(config)
            if isinstance(config, Mapping)
            else DistillConfig.from_yaml(config)
        )
    console = console or Console()
    run = RunDirectory(run_dir or Path("runs") / config.name)
    run.path.mkdir(parents=True, exist_ok=True)
    previous_config = run.config()
    (run.path / "config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    hashes = stage_hashes(config)
    context = StageContext(
        config=config, run=run, console=console, device=resolve_device(config.device)
    )
    functions: dict[str, Callable[[StageContext], dict[str, Any]]] = {
        **STAGE_FUNCTIONS,
        "report": write_report,
    }
    unknown = set(stages) - set(STAGES)
    if unknown:
        raise ValueError(f"unknown stage(s) {sorted(unknown)}; stages are {list(STAGES)}")
    for stage in STAGES:
        if stage not in stages:
            continue
        if (stage == "md" and config.md_validation is None) or (
            stage == "refine" and config.active_learning is None
        ):
            continue
        done = run.record().get(stage)
        if done and done["config_hash"] == hashes[stage]:
            console.print(f"[green]✓[/] {stage}: done already (skipped)")
            continue
        if done and stage == "refine" and _only_rounds_changed(previous_config, config, done):
            # refine() skips finished rounds: raising `rounds` adds rounds, lowering it
            # ends at an earlier one; either way no finished round is thrown away.
            console.print(
                f"[yellow]![/] refine: rounds {previous_config.active_learning.rounds} → "
                f"{config.active_learning.rounds}; finished rounds are kept, later stages redone"
            )
            run.forget_from(STAGES[STAGES.index(stage) + 1])
        elif done:
            console.print(
                f"[yellow]![/] {stage}: configuration changed, redoing it and later stages"
            )
            run.forget_from(stage)
        console.rule(f"[bold]{stage}")
        start = time.perf_counter()
        summary = functions[stage](context)
        seconds = time.perf_counter() - start
        run.mark_done(stage, hashes[stage], summary, seconds)
        console.print(f"[green]✓[/] {stage} finished in {seconds:.1f} s")
    return run.record()
