"""Training students on teacher labels with Optax.

``train(store, output_dir, config)`` fits per-species reference energies, trains with
gradient clipping + Adam(W)/AMSGrad, a warm-up + decay schedule and an EMA of the
parameters, validates, checkpoints (resumable exactly) and exports the student.

The names below load on first use (PEP 562): importing the pure core
(``jaxdistill.train.loss``, ``.step``, ``.reference``) does not import the loop, and
with it h5py and the label store.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from jaxdistill._lazy import lazy_exports

#: public name -> the module that defines it
_EXPORTS = {
    "TrainConfig": "jaxdistill.config.train",
    "resolve_config": "jaxdistill.config.train",
    "BatchOrder": "jaxdistill.train.loop",
    "export_student": "jaxdistill.train.loop",
    "train": "jaxdistill.train.loop",
    "LossWeights": "jaxdistill.train.loss",
    "metrics_from_sums": "jaxdistill.train.loss",
    "make_optimizer": "jaxdistill.train.optimizer",
    "make_schedule": "jaxdistill.train.optimizer",
    "HeadStatistics": "jaxdistill.train.reference",
    "apply_head_statistics": "jaxdistill.train.reference",
    "fit_head_statistics": "jaxdistill.train.reference",
    "TrainState": "jaxdistill.train.step",
    "make_eval_step": "jaxdistill.train.step",
    "make_mesh": "jaxdistill.train.step",
    "make_train_step": "jaxdistill.train.step",
}

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


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())


if TYPE_CHECKING:  # for type checkers and IDEs: the same names, eagerly
    from jaxdistill.config.train import TrainConfig, resolve_config
    from jaxdistill.train.loop import BatchOrder, export_student, train
    from jaxdistill.train.loss import LossWeights, metrics_from_sums
    from jaxdistill.train.optimizer import make_optimizer, make_schedule
    from jaxdistill.train.reference import (
        HeadStatistics,
        apply_head_statistics,
        fit_head_statistics,
    )
    from jaxdistill.train.step import TrainState, make_eval_step, make_mesh, make_train_step
