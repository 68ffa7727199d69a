"""Training configuration: one frozen dataclass, loadable from YAML or a dict.

Every key has a unit (in its name or its docstring) and a default chosen for accuracy
per unit of compute on a distillation data set of a few hundred to a few thousand
frames. Unknown keys raise, so a typo never silently falls back to a default. This
dataclass is also the ``train`` section of the ``jaxdistill distill`` pipeline config.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jaxdistill.config.keys import check_types, read_yaml

SCHEDULES = ("cosine", "linear", "constant")
OPTIMIZERS = ("adam", "adamw", "amsgrad")
CAPACITY_MODES = ("auto", "single", "bucket")
DTYPES = ("float32", "float64")
# Keys that do not change what a run computes; a resumed run may change them.
RESUMABLE_KEYS = frozenset({"log_interval", "checkpoint_interval"})
# Weight of the Hessian-vector term when the data has Hessian labels and the config
# names none, (eV/Å²)⁻²: with the default force weight (10 (eV/Å)⁻²) a student's force
# error of ~20 meV/Å and a Hessian-vector error of ~0.5 eV/Å² weigh about alike.
DEFAULT_HESSIAN_WEIGHT = 0.01
# Keys left out of to_dict() while None, so runs made before they existed keep their
# stage hashes and checkpoints.
OPTIONAL_KEYS = ("force_disagreement_limit", "hessian_weight", "hessian_batch_size", "edge_layout")
#: Values of ``edge_layout`` (None is "edge_list").
EDGE_LAYOUTS = ("edge_list", "receiver_major")


def _default_split() -> dict[str, float]:
    return {"train": 0.8, "validation": 0.1, "test": 0.1}


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of a training run (all have defaults).

    Attributes:
        architecture: student architecture ("painn" or "schnet", or a registered name).
        model: architecture options, e.g. ``{"features": 64, "num_layers": 3,
            "num_radial": 16}``; empty means the architecture's defaults.
        cutoff_angstrom: neighbour cutoff of the student, Å.
        dtype: "float32" (default) or "float64" for parameters, positions and labels.
        steps: optimiser steps of the whole run (the schedule spans them).
        batch_size: structures per optimiser step (split across devices).
        learning_rate: peak learning rate after warm-up.
        final_learning_rate: learning rate at the last step (cosine/linear schedules).
        schedule: "cosine" (warm-up then cosine decay), "linear" (warm-up then linear
            decay) or "constant" (warm-up then constant).
        warmup_fraction: fraction of ``steps`` spent warming up linearly from
            ``final_learning_rate`` to ``learning_rate``.
        optimizer: "adam", "adamw" (decoupled weight decay) or "amsgrad".
        weight_decay: decoupled weight decay of "adamw" (per step, times the learning
            rate); ignored by the others.
        grad_clip_norm: clip the global gradient norm to this value (None: no clipping).
        ema_decay: decay of the exponential moving average of the parameters used for
            validation and export; the effective decay at step t is
            ``min(ema_decay, (1 + t) / (10 + t))`` so early averages are not stale.
        energy_weight: weight of the mean squared energy-per-atom error, (eV/atom)^-2.
        forces_weight: weight of the mean squared force-component error, (eV/Å)^-2.
        stress_weight: weight of the mean squared virial-per-atom error
            (stress × volume / atoms, eV/atom), (eV/atom)^-2; only frames with a stress
            label count.
        force_disagreement_limit: for ensemble teachers, eV/Å: frames whose members'
            forces disagree by more than this train on their forces alone, weighted
            ``(limit / disagreement)**2``; their energies and stresses are left out
            (see :func:`jaxdistill.train.loss.disagreement_weights`). None: every frame
            weighs fully.
        hessian_weight: weight of the Hessian-vector term, (eV/Å²)⁻²: the mean over
            frames of ``|H_student·u - H_teacher·u|²`` for one of the frame's stored
            unit directions ``u`` per step (see :mod:`jaxdistill.train.loss`). Used
            only when training frames carry Hessian labels (``jaxdistill label
            --hessian-directions K``); None: 0.01 then; 0: ignore the labels.
        hessian_batch_size: frames with Hessian labels per step, in a batch of their
            own beside the main one (a Hessian-vector product and its gradient cost a
            few force evaluations, so a quarter of ``batch_size`` keeps a step under
            twice a force-only one); None: ``max(1, batch_size // 4)``.
        fit_reference_energies: fit per-species reference energies by least squares on
            the training frames before training (stored in the head's atomic_shift and
            kept fixed), and set atomic_scale to the training force RMS.
        validation_interval: steps between validations (with the EMA parameters).
        checkpoint_interval: steps between checkpoints (one is also written at the end).
        patience: stop after this many validations without a lower validation force
            MAE (None: never stop early).
        log_interval: steps between progress-bar updates (each one syncs the device).
        seed: seed of parameter initialisation and of the batch order.
        split: fractions of the store's frames for "train", "validation" and "test".
        split_seed: seed of the split (kept apart from ``seed`` so that runs with
            different seeds share one held-out test set).
        capacity: "single" pads every batch to one capacity (one compilation),
            "bucket" pads each batch to the next capacity bucket (a few compilations,
            less padding), "auto" picks "single" unless it would waste more than half.
        edge_layout: how training batches lay out their edges: None or "edge_list"
            (the default) or "receiver_major" (every atom owns the slots of the
            largest neighbour count in the data; no scatter-add in the loss or its
            gradient, as in the GPU MD paths). Validation batches of data with Hessian
            labels, and the Hessian batches, stay edge lists (their Hessian-vector
            products use forward mode, which the receiver-major gathers lack).
            Measured slower for training on an H100 (docs/training.md), hence not
            the default.
    """

    architecture: str = "painn"
    model: dict[str, Any] = field(default_factory=dict)
    cutoff_angstrom: float = 5.0
    dtype: str = "float32"
    steps: int = 20000
    batch_size: int = 4
    learning_rate: float = 1e-3
    final_learning_rate: float = 1e-5
    schedule: str = "cosine"
    warmup_fraction: float = 0.02
    optimizer: str = "adam"
    weight_decay: float = 0.0
    grad_clip_norm: float | None = 10.0
    ema_decay: float = 0.999
    energy_weight: float = 1.0
    forces_weight: float = 10.0
    stress_weight: float = 1.0
    force_disagreement_limit: float | None = None
    hessian_weight: float | None = None
    hessian_batch_size: int | None = None
    fit_reference_energies: bool = True
    validation_interval: int = 250
    checkpoint_interval: int = 1000
    patience: int | None = 20
    log_interval: int = 50
    seed: int = 0
    split: dict[str, float] = field(default_factory=_default_split)
    split_seed: int = 0
    capacity: str = "auto"
    edge_layout: str | None = None

    def __post_init__(self) -> None:
        errors: list[str] = []

        def check(condition: bool, message: str) -> None:
            if not condition:
                errors.append(message)

        from jaxdistill.models import ARCHITECTURES

        check(
            self.architecture in ARCHITECTURES,
            f"architecture must be one of {sorted(ARCHITECTURES)}, got {self.architecture!r}",
        )
        if not isinstance(self.model, Mapping):
            errors.append(f"model must be a mapping of architecture options, got {self.model!r}")
        else:
            object.__setattr__(self, "model", dict(self.model))
            if self.architecture in ARCHITECTURES:
                fields = ARCHITECTURES[self.architecture].__dataclass_fields__
                allowed = set(fields) - {"species", "cutoff", "parent", "name"}
                unknown = sorted(set(self.model) - allowed)
                check(
                    not unknown,
                    f"unknown model option(s) {unknown} for {self.architecture!r}; "
                    f"allowed: {sorted(allowed)}",
                )
        check(self.cutoff_angstrom > 0, f"cutoff_angstrom must be > 0, got {self.cutoff_angstrom}")
        check(self.dtype in DTYPES, f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        for name in ("steps", "batch_size", "validation_interval", "checkpoint_interval"):
            value = getattr(self, name)
            check(
                isinstance(value, int) and not isinstance(value, bool) and value >= 1,
                f"{name} must be an integer >= 1, got {value!r}",
            )
        check(
            isinstance(self.log_interval, int) and self.log_interval >= 1,
            f"log_interval must be an integer >= 1, got {self.log_interval!r}",
        )
        check(self.learning_rate > 0, f"learning_rate must be > 0, got {self.learning_rate}")
        check(
            self.final_learning_rate >= 0,
            f"final_learning_rate must be >= 0, got {self.final_learning_rate}",
        )
        check(self.schedule in SCHEDULES, f"schedule must be one of {SCHEDULES}")
        check(
            0 <= self.warmup_fraction < 1,
            f"warmup_fraction must be in [0, 1), got {self.warmup_fraction}",
        )
        check(self.optimizer in OPTIMIZERS, f"optimizer must be one of {OPTIMIZERS}")
        check(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}")
        check(
            self.grad_clip_norm is None or self.grad_clip_norm > 0,
            f"grad_clip_norm must be > 0 or null, got {self.grad_clip_norm}",
        )
        check(0 <= self.ema_decay < 1, f"ema_decay must be in [0, 1), got {self.ema_decay}")
        for name in ("energy_weight", "forces_weight", "stress_weight"):
            check(getattr(self, name) >= 0, f"{name} must be >= 0, got {getattr(self, name)}")
        check(
            self.energy_weight + self.forces_weight + self.stress_weight > 0,
            "at least one loss weight must be positive",
        )
        check(
            self.force_disagreement_limit is None or self.force_disagreement_limit > 0,
            f"force_disagreement_limit must be > 0 or null, got {self.force_disagreement_limit}",
        )
        check(
            self.hessian_weight is None or self.hessian_weight >= 0,
            f"hessian_weight must be >= 0 or null, got {self.hessian_weight}",
        )
        check(
            self.hessian_batch_size is None
            or (
                isinstance(self.hessian_batch_size, int)
                and not isinstance(self.hessian_batch_size, bool)
                and self.hessian_batch_size >= 1
            ),
            f"hessian_batch_size must be an integer >= 1 or null, got {self.hessian_batch_size!r}",
        )
        check(
            self.patience is None or (isinstance(self.patience, int) and self.patience >= 1),
            f"patience must be an integer >= 1 or null, got {self.patience!r}",
        )
        check(self.capacity in CAPACITY_MODES, f"capacity must be one of {CAPACITY_MODES}")
        check(
            self.edge_layout is None or self.edge_layout in EDGE_LAYOUTS,
            f"edge_layout must be one of {EDGE_LAYOUTS} or null, got {self.edge_layout!r}",
        )
        if not isinstance(self.split, Mapping):
            errors.append(f"split must be a mapping of fractions, got {self.split!r}")
        else:
            split = {str(k): float(v) for k, v in self.split.items()}
            object.__setattr__(self, "split", split)
            unknown = sorted(set(split) - {"train", "validation", "test"})
            check(not unknown, f"split has unknown part(s) {unknown}; use train/validation/test")
            check(split.get("train", 0) > 0, "split must give a positive 'train' fraction")
            check(
                all(v >= 0 for v in split.values()) and math.isclose(sum(split.values()), 1.0),
                f"split fractions must be >= 0 and add up to 1, got {split}",
            )
        if errors:
            raise ValueError("invalid training config:\n  " + "\n  ".join(errors))

    # ----------------------------------------------------------------- loading
    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> TrainConfig:
        """Build a config from a mapping; unknown keys raise ValueError naming them."""
        values = dict(values or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            import difflib

            hints = []
            for key in unknown:
                close = difflib.get_close_matches(key, known, n=1)
                hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
            raise ValueError(
                f"unknown training config key(s): {', '.join(hints)}; known keys: {sorted(known)}"
            )
        check_types(cls, values, "the training config")
        return cls(**values)

    @classmethod
    def from_yaml(cls, path: str | Path) -> TrainConfig:
        """Read a YAML file: either the keys at top level, or under a ``train:`` section."""
        path = Path(path)
        values = read_yaml(path, "training config") or {}
        if not isinstance(values, Mapping):
            raise ValueError(f"{path} must hold a mapping of training config keys")
        if set(values) == {"train"} and isinstance(values["train"], Mapping):
            values = values["train"]
        return cls.from_dict(values)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/YAML-serialisable dict of every key (the resolved config).

        The keys of :data:`OPTIONAL_KEYS` are left out while unset, so that runs made
        before they existed keep their stage hashes and checkpoints.
        """
        values = {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}
        for key in OPTIONAL_KEYS:
            if values[key] is None:
                del values[key]
        return values

    def to_yaml(self, path: str | Path) -> Path:
        """Write the resolved config as YAML."""
        import yaml

        path = Path(path)
        path.write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))
        return path

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with some keys changed (validated again)."""
        return dataclasses.replace(self, **changes)

    @property
    def receiver_major(self) -> bool:
        """Whether training batches are receiver-major (``edge_layout``)."""
        return self.edge_layout == "receiver_major"

    @property
    def effective_hessian_weight(self) -> float:
        """The Hessian-vector weight used when the data has Hessian labels."""
        return DEFAULT_HESSIAN_WEIGHT if self.hessian_weight is None else self.hessian_weight

    @property
    def effective_hessian_batch_size(self) -> int:
        """Frames with Hessian labels per step."""
        if self.hessian_batch_size is not None:
            return self.hessian_batch_size
        return max(1, self.batch_size // 4)

    @property
    def warmup_steps(self) -> int:
        """Warm-up length in steps."""
        return round(self.warmup_fraction * self.steps)


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def resolve_config(config: TrainConfig | Mapping[str, Any] | str | Path | None) -> TrainConfig:
    """A TrainConfig from a TrainConfig, a dict, a YAML path or None (defaults)."""
    if config is None:
        return TrainConfig()
    if isinstance(config, TrainConfig):
        return config
    if isinstance(config, (str, Path)):
        return TrainConfig.from_yaml(config)
    if isinstance(config, Mapping):
        return TrainConfig.from_dict(config)
    raise TypeError(f"config must be a TrainConfig, a dict or a YAML path, got {type(config)!r}")
