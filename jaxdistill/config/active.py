"""The ``active_learning`` section: rounds of student exploration, labelling, fine-tuning."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from jaxdistill.config.keys import as_temperatures, check_keys
from jaxdistill.config.train import TrainConfig

ENGINES = ("jax-md", "ase")  # run_md's engines (md.types.ENGINES; a test keeps them equal)

#: Fine-tuning settings applied over the main ``train`` section (a short, gentle run
#: from the previous student); ``active_learning.train`` overrides them.
FINE_TUNE_DEFAULTS: dict[str, Any] = {
    "steps": 4000,
    "learning_rate": 3e-4,
    "final_learning_rate": 1e-5,
    "warmup_fraction": 0.05,
    "patience": None,
}


@dataclass(frozen=True)
class ActiveLearningConfig:
    """The ``active_learning`` section of a distill config.

    Attributes:
        rounds: explore-label-fine-tune rounds.
        temperatures_kelvin: exploration temperatures, K; empty = the sampling MD
            temperatures (plain and melt). Hotter than the target finds weak spots
            sooner.
        steps: student MD steps per run (one run per starting structure and
            temperature).
        stride: steps between candidate frames.
        timestep_fs: MD time step, fs (None: the sampling MD's).
        friction_per_fs: Langevin friction, 1/fs (None: the sampling MD's).
        engine: ``run_md`` engine: "auto" (jax-md, or ASE for a periodic cell too small
            for jax-md's minimum image), "jax-md" or "ase".
        max_frames_per_run: at most this many frames kept from one run (evenly spaced).
        frames_before_failure: of a run that failed, its last good frames kept in any
            case.
        train: fine-tuning overrides of the ``train`` section (over
            :data:`FINE_TUNE_DEFAULTS`).
        seed: seed of the exploration runs (velocities and Langevin noise).
    """

    rounds: int = 2
    temperatures_kelvin: tuple[float, ...] = ()
    steps: int = 4000
    stride: int = 40
    timestep_fs: float | None = None
    friction_per_fs: float | None = None
    engine: str = "auto"
    max_frames_per_run: int = 40
    frames_before_failure: int = 10
    max_force_disagreement: float | None = None
    train: Mapping[str, Any] = field(default_factory=dict)
    seed: int = 0

    def __post_init__(self) -> None:
        problems = []
        for name in ("rounds", "steps", "stride", "max_frames_per_run"):
            if int(getattr(self, name)) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_force_disagreement is not None and self.max_force_disagreement <= 0:
            problems.append(
                f"max_force_disagreement must be positive, got {self.max_force_disagreement}"
            )
        if self.frames_before_failure < 0:
            problems.append(f"frames_before_failure must be >= 0, got {self.frames_before_failure}")
        if any(t <= 0 for t in self.temperatures_kelvin):
            problems.append(f"temperatures_kelvin must be positive, got {self.temperatures_kelvin}")
        if self.engine not in ("auto", *ENGINES):
            problems.append(f"engine must be one of {('auto', *ENGINES)}, got {self.engine!r}")
        for name in ("timestep_fs", "friction_per_fs"):
            value = getattr(self, name)
            if (value is not None and value < 0) or (name == "timestep_fs" and value == 0):
                problems.append(f"{name} must be positive, got {value}")
        unknown = set(self.train) - {f.name for f in dataclasses.fields(TrainConfig)}
        if unknown:
            problems.append(f"unknown key(s) {sorted(unknown)} in active_learning.train")
        if problems:
            raise ValueError("active_learning: " + "; ".join(problems))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> ActiveLearningConfig:
        """Build from a mapping (parsed YAML); unknown keys raise ValueError naming them."""
        data = dict(data or {})
        check_keys(cls, data, "active_learning")
        if "temperatures_kelvin" in data:
            data["temperatures_kelvin"] = as_temperatures(data["temperatures_kelvin"])
        data["train"] = dict(data.get("train") or {})
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        """A plain dict that :meth:`from_dict` reads back."""
        data = dataclasses.asdict(self)
        data["temperatures_kelvin"] = list(self.temperatures_kelvin)
        data["train"] = dict(self.train)
        return data

    def fine_tune_config(self, base: TrainConfig) -> TrainConfig:
        """The training config of a round: ``base`` with the fine-tuning settings."""
        return base.replace(**{**FINE_TUNE_DEFAULTS, **self.train})
