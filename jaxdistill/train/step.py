"""The jitted training and evaluation steps, data-parallel over local devices.

A batch carries a leading shard axis (one shard per device, see
:mod:`jaxdistill.data.batching`). Inside ``jax.shard_map`` each device predicts its
own shard and differentiates its share of the loss (normalised by the counts of the
whole batch); the gradients are summed over devices with ``psum``, so every device
applies the same update to replicated parameters.

``check_vma=False``: with shard_map's varying-axes typing, autodiff with respect to a
device-invariant value inside the body sums its cotangent over the devices. That
would be right for the parameters, but wrong for the zero strain that
``potential.predict`` creates inside the body (``jnp.zeros``, device-invariant): each
structure's stress would be summed with those of the same slot on the other devices.
Without the typing every derivative stays per device and the gradients are summed
explicitly. On one device the same code runs
with a one-device mesh.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxdistill.data.batching import Batch
from jaxdistill.potential import Prediction
from jaxdistill.train.loss import (
    LossWeights,
    batch_counts,
    hessian_counts,
    hessian_loss_and_sums,
    loss_and_sums,
)

AXIS = "data"
PredictFn = Callable[[Any, Any], Prediction]
# (params, graph, directions [n_node, 3]) -> H·u [n_node, 3]
HessianVectorFn = Callable[[Any, Any, Any], Any]


class TrainState(NamedTuple):
    """Everything the optimisation carries from step to step (a pytree).

    Attributes:
        step: optimiser steps taken (int32 scalar).
        params: current parameters.
        ema_params: exponential moving average of the parameters.
        opt_state: Optax state.
    """

    step: jax.Array
    params: Any
    ema_params: Any
    opt_state: Any


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A one-axis ("data") mesh over ``devices`` (default: every device of every
    process, which in a single process are its local devices)."""
    devices = list(devices) if devices is not None else jax.devices()
    return Mesh(np.array(devices), (AXIS,))


def local_shards(mesh: Mesh) -> np.ndarray:
    """Positions along the mesh's shard axis of the devices this process addresses
    (all of them in a single process).

    Raises:
        ValueError: a multi-process mesh whose devices of this process are not one
            contiguous block (each process builds the shards of its block).
    """
    process = jax.process_index()
    mine = np.flatnonzero([d.process_index == process for d in mesh.devices.flat])
    if len(mine) == 0 or not np.array_equal(mine, np.arange(mine[0], mine[0] + len(mine))):
        raise ValueError(
            f"process {process} addresses mesh positions {mine.tolist()}: each process "
            "needs one contiguous block of the mesh (order devices by process)"
        )
    return mine


def _put(tree: Any, sharding: NamedSharding) -> Any:
    if sharding.is_fully_addressable:
        return jax.device_put(tree, sharding)
    # Several processes: each gives its own part (its shards, or the whole value when
    # replicated) and JAX assembles the global array.
    return jax.tree_util.tree_map(
        lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), tree
    )


def put_sharded(tree: Any, mesh: Mesh) -> Any:
    """Host arrays holding this process's shards (leading axis over
    :func:`local_shards`) as arrays split over the whole mesh."""
    return _put(tree, sharded(mesh))


def put_replicated(tree: Any, mesh: Mesh) -> Any:
    """A host value that every process holds alike, copied on every device."""
    return _put(tree, replicated(mesh))


def replicated(mesh: Mesh) -> NamedSharding:
    """Sharding of a value copied on every device."""
    return NamedSharding(mesh, P())


def sharded(mesh: Mesh) -> NamedSharding:
    """Sharding of a value split along its leading (shard) axis."""
    return NamedSharding(mesh, P(AXIS))


def init_state(params: Any, optimizer: optax.GradientTransformation) -> TrainState:
    """The state before the first step (EMA starts at the initial parameters)."""
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=jax.tree_util.tree_map(lambda x: jnp.array(x, copy=True), params),
        ema_params=jax.tree_util.tree_map(lambda x: jnp.array(x, copy=True), params),
        opt_state=optimizer.init(params),
    )


def ema_decay_at(step: jax.Array, decay: float) -> jax.Array:
    """Effective EMA decay after ``step`` updates: ``min(decay, (1 + t) / (10 + t))``."""
    t = step.astype(jnp.float32)
    return jnp.minimum(decay, (1.0 + t) / (10.0 + t))


def _unstack(batch: Batch) -> Batch:
    return jax.tree_util.tree_map(lambda x: x[0], batch)


def make_train_step(
    predict: PredictFn,
    optimizer: optax.GradientTransformation,
    weights: LossWeights,
    ema_decay: float,
    mesh: Mesh,
    hessian_vector_product: HessianVectorFn | None = None,
) -> Callable[..., tuple[TrainState, dict[str, jax.Array]]]:
    """A jitted ``step(state, batch) -> (state, sums)``; the state is donated.

    With ``hessian_vector_product``, the step is ``step(state, batch, hessian_batch)``:
    the loss adds ``weights.hessian`` times the Hessian-vector term of
    ``hessian_batch`` (a small batch made with ``hessian_choice``, see
    :func:`jaxdistill.train.loss.hessian_loss_and_sums`), so the cost of the curvature
    term is set by the size of that batch, not of the main one.

    Args:
        predict: ``(params, graph) -> Prediction`` (the student's potential).
        optimizer: the Optax transformation.
        weights: loss weights.
        ema_decay: EMA decay (see :func:`ema_decay_at`).
        mesh: devices; ``batch`` must have one shard per device.
        hessian_vector_product: the potential's ``(params, graph, u) -> H·u``, for a
            step that also learns from Hessian labels.

    Returns:
        The step; ``sums`` holds the batch's error sums (``loss_and_sums``, and the
        Hessian sums) plus ``loss`` and ``grad_norm``, all replicated.
    """

    def shard_grads(params, batch, totals, hessian_batch=None, hessian_totals=None):
        batch = _unstack(batch)
        if hessian_batch is not None:
            hessian_batch = _unstack(hessian_batch)

        def local_loss(p):
            loss, sums = loss_and_sums(predict(p, batch.graph), batch, totals, weights)
            if hessian_batch is not None:
                products = hessian_vector_product(
                    p, hessian_batch.graph, hessian_batch.hessian_directions
                )
                h_loss, h_sums = hessian_loss_and_sums(
                    products, hessian_batch, hessian_totals, weights.hessian
                )
                loss, sums = loss + h_loss, {**sums, **h_sums}
            return loss, sums

        (loss, sums), grads = jax.value_and_grad(local_loss, has_aux=True)(params)
        return jax.lax.psum((loss, sums, grads), AXIS)

    with_hessian = hessian_vector_product is not None
    sharded_grads = jax.shard_map(
        shard_grads,
        mesh=mesh,
        in_specs=(P(), P(AXIS), P(), P(AXIS), P()) if with_hessian else (P(), P(AXIS), P()),
        out_specs=(P(), P(), P()),
        check_vma=False,
    )

    def step(state: TrainState, batch: Batch, hessian_batch: Batch | None = None):
        totals = batch_counts(batch)
        if with_hessian:
            loss, sums, grads = sharded_grads(
                state.params, batch, totals, hessian_batch, hessian_counts(hessian_batch)
            )
        else:
            loss, sums, grads = sharded_grads(state.params, batch, totals)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        decay = ema_decay_at(state.step, ema_decay)
        ema = jax.tree_util.tree_map(
            lambda e, p: (decay * e + (1.0 - decay) * p).astype(e.dtype), state.ema_params, params
        )
        sums = {**sums, "loss": loss, "grad_norm": optax.tree.norm(grads)}
        return TrainState(state.step + 1, params, ema, opt_state), sums

    state_sharding = replicated(mesh)
    batch_shardings = (sharded(mesh), sharded(mesh)) if with_hessian else (sharded(mesh),)
    return jax.jit(
        step,
        in_shardings=(state_sharding, *batch_shardings),
        out_shardings=(state_sharding, state_sharding),
        donate_argnums=0,
    )


def make_eval_step(
    predict: PredictFn,
    weights: LossWeights,
    mesh: Mesh,
    hessian_vector_product: HessianVectorFn | None = None,
) -> Callable[[Any, Batch], dict[str, jax.Array]]:
    """A jitted ``evaluate(params, batch) -> sums`` (error sums of the whole batch).

    A batch made with ``hessian_choice`` also gets the Hessian sums (when
    ``hessian_vector_product`` is given); its ``loss`` stays that of energies, forces
    and stress, comparable with batches without Hessian labels.
    """

    def shard_sums(params, batch, totals):
        batch = _unstack(batch)
        loss, sums = loss_and_sums(predict(params, batch.graph), batch, totals, weights)
        if batch.hessian_mask is not None and hessian_vector_product is not None:
            products = hessian_vector_product(params, batch.graph, batch.hessian_directions)
            _, h_sums = hessian_loss_and_sums(
                products, batch, {"n_hessian": totals["n_hessian"]}, weights.hessian
            )
            sums = {**sums, **h_sums}
        return jax.lax.psum({**sums, "loss": loss}, AXIS)

    sharded_sums = jax.shard_map(
        shard_sums, mesh=mesh, in_specs=(P(), P(AXIS), P()), out_specs=P(), check_vma=False
    )

    def evaluate(params, batch: Batch):
        totals = batch_counts(batch)
        if batch.hessian_mask is not None:
            totals = {**totals, **hessian_counts(batch)}
        return sharded_sums(params, batch, totals)

    return jax.jit(
        evaluate, in_shardings=(replicated(mesh), sharded(mesh)), out_shardings=replicated(mesh)
    )
