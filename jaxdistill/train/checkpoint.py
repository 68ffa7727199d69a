"""Orbax checkpoints of a training run, for exact resumption.

A checkpoint holds the whole state of a run at a step: parameters, EMA parameters,
Optax state, step, the best validation result so far (its EMA parameters, metric,
step and the patience counter), and a JSON part with the resolved config and a
fingerprint of the data. The batch order is a pure function of ``(seed, step)`` (see
:func:`jaxdistill.train.loop.batch_frame_indices`), so step and seed are its whole
random state. Checkpoints are written synchronously into ``<run>/checkpoints/<step>``
(Orbax finalises each one atomically; the last two are kept).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import numpy as np


class RunCheckpoints:
    """Save and restore ``(tree, meta)`` pairs by step in a directory.

    Args:
        directory: where the step folders go.
        max_to_keep: how many recent checkpoints to keep.
    """

    def __init__(self, directory: str | Path, max_to_keep: int = 2) -> None:
        import orbax.checkpoint as ocp

        self._ocp = ocp
        self.directory = Path(directory).absolute()
        self.directory.mkdir(parents=True, exist_ok=True)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, enable_async_checkpointing=False, create=True
        )
        self._manager = ocp.CheckpointManager(
            self.directory, options=options, item_names=("state", "meta")
        )

    def latest_step(self) -> int | None:
        """Step of the newest complete checkpoint, or None."""
        return self._manager.latest_step()

    def save(self, step: int, tree: Any, meta: dict[str, Any]) -> None:
        """Write a checkpoint for ``step`` (replacing one already there)."""
        ocp = self._ocp
        if step in self._manager.all_steps():
            self._manager.delete(step)
        self._manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(jax.device_get(tree)),
                meta=ocp.args.JsonSave(meta),
            ),
            force=True,
        )
        self._manager.wait_until_finished()

    def restore_meta(self, step: int) -> dict[str, Any]:
        """Only the JSON part of a checkpoint."""
        ocp = self._ocp
        restored = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return dict(restored["meta"])

    def restore(self, step: int, like: Any) -> tuple[Any, dict[str, Any]]:
        """Read a checkpoint into a tree shaped like ``like`` (host numpy arrays)."""
        ocp = self._ocp
        target = jax.tree_util.tree_map(lambda x: np.zeros(np.shape(x), np.asarray(x).dtype), like)
        restored = self._manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()
            ),
        )
        return restored["state"], dict(restored["meta"])

    def close(self) -> None:
        """Release the manager."""
        self._manager.close()
