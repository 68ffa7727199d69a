"""Training students on teacher labels with Optax.

``train(store, output_dir, config)`` fits per-species reference energies, trains with
gradient clipping + Adam(W)/AMSGrad, a warm-up + decay schedule and an EMA of the
parameters, validates, checkpoints (resumable exactly) and exports the student.
"""

from jaxdistill.train.config import TrainConfig, resolve_config
from jaxdistill.train.loop import BatchOrder, export_student, train
from jaxdistill.train.loss import LossWeights, metrics_from_sums
from jaxdistill.train.optimizer import make_optimizer, make_schedule
from jaxdistill.train.reference import (
    HeadStatistics,
    apply_head_statistics,
    fit_head_statistics,
)
from jaxdistill.train.step import TrainState, make_eval_step, make_mesh, make_train_step

__all__ = [
    "BatchOrder",
    "HeadStatistics",
    "LossWeights",
    "TrainConfig",
    "TrainState",
    "apply_head_statistics",
    "export_student",
    "fit_head_statistics",
    "make_eval_step",
    "make_mesh",
    "make_optimizer",
    "make_schedule",
    "make_train_step",
    "metrics_from_sums",
    "resolve_config",
    "train",
]
