"""The Optax optimiser of a run: gradient clipping, Adam(W)/AMSGrad and a schedule.

The per-species ``atomic_shift`` and ``atomic_scale`` of the energy head are fitted
from the data before training (see :mod:`jaxdistill.train.reference`) and kept fixed:
their updates are set to zero, so the network only learns the interaction energy.
"""

from __future__ import annotations

from typing import Any

import jax
import optax

from jaxdistill.config.train import TrainConfig

FROZEN_PARAMETERS = ("atomic_shift", "atomic_scale")


def make_schedule(config: TrainConfig) -> optax.Schedule:
    """Learning rate per step: linear warm-up, then cosine, linear or constant.

    Warm-up rises from ``final_learning_rate`` to ``learning_rate`` over
    ``warmup_fraction * steps`` steps; the decay reaches ``final_learning_rate`` at
    ``steps``.
    """
    peak, final = float(config.learning_rate), float(config.final_learning_rate)
    warmup, total = config.warmup_steps, config.steps
    if config.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(
            init_value=final if warmup else peak,
            peak_value=peak,
            warmup_steps=warmup,
            decay_steps=max(total, warmup + 1),
            end_value=final,
        )
    warm = optax.linear_schedule(final, peak, max(warmup, 1))
    if config.schedule == "linear":
        rest = optax.linear_schedule(peak, final, max(total - warmup, 1))
    else:  # constant
        rest = optax.constant_schedule(peak)
    return optax.join_schedules([warm, rest], [warmup]) if warmup else rest


def trainable_labels(params: Any) -> Any:
    """A pytree like ``params`` with "frozen" on the head's fitted statistics, else "train"."""

    def label(path, _):
        names = {getattr(key, "key", None) for key in path}
        return "frozen" if names & set(FROZEN_PARAMETERS) else "train"

    return jax.tree_util.tree_map_with_path(label, params)


def make_optimizer(config: TrainConfig) -> optax.GradientTransformation:
    """Clip by global norm, then Adam/AdamW/AMSGrad with the schedule; fitted statistics frozen.

    Args:
        config: the run's config.
    """
    schedule = make_schedule(config)
    if config.optimizer == "adam":
        core = optax.adam(schedule)
    elif config.optimizer == "adamw":
        core = optax.adamw(schedule, weight_decay=config.weight_decay)
    else:
        core = optax.amsgrad(schedule)
    parts = [optax.clip_by_global_norm(config.grad_clip_norm)] if config.grad_clip_norm else []
    chain = optax.chain(*parts, core)
    return optax.multi_transform({"train": chain, "frozen": optax.set_to_zero()}, trainable_labels)
