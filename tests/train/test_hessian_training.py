"""Training on Hessian-vector labels: the batch carries the chosen directions, the
loss term is what the docs say, and a training run lowers the student's H·u error."""

from __future__ import annotations

import json

import ase.build
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from train_helpers import TINY, read_metrics

from jaxdistill.data import LabelStore
from jaxdistill.data.batching import make_batch, plan_capacity, precompute_neighbours
from jaxdistill.labelling import label
from jaxdistill.student import create_student
from jaxdistill.train import train
from jaxdistill.train.loss import hessian_counts, hessian_loss_and_sums, metrics_from_sums

EMT = "ase:ase.calculators.emt:EMT"


@pytest.fixture(scope="module")
def copper_store(tmp_path_factory):
    """16 rattled 4-atom Cu cells labelled by EMT with 3 Hessian directions each."""
    frames = []
    for i in range(16):
        atoms = ase.build.bulk("Cu", "fcc", a=3.61, cubic=True)
        atoms.rattle(0.08, seed=i)
        frames.append(atoms)
    path = tmp_path_factory.mktemp("hessian") / "cu.h5"
    label(EMT, frames, path, hessian_directions=3, progress=False)
    return path


def test_batch_carries_the_chosen_direction(copper_store):
    with LabelStore(copper_store) as store:
        arrays = store.arrays()
    frames = precompute_neighbours(arrays, 4.0)
    plan = plan_capacity([frames], 2, "single")
    batch = make_batch(
        frames, [[5, 2]], plan.capacity(frames, [[5, 2]]), np.float64,
        stacked=False, hessian_choice=[[1, 2]],
    )  # fmt: skip
    np.testing.assert_array_equal(batch.hessian_mask, [True, True, False])
    for slot, (frame, k) in enumerate([(5, 1), (2, 2)]):
        rows = slice(4 * slot, 4 * slot + 4)
        lo, hi = arrays.offsets[frame], arrays.offsets[frame + 1]
        np.testing.assert_array_equal(
            batch.hessian_directions[rows], arrays.hessian_directions[lo:hi, k]
        )
        np.testing.assert_array_equal(
            batch.hessian_products[rows], arrays.hessian_products[lo:hi, k]
        )
    assert not np.any(batch.hessian_directions[8:])  # padding
    # -1 leaves a frame out; a batch without choices has no Hessian fields.
    none = make_batch(frames, [[5, 2]], plan.capacity(frames, [[5, 2]]), np.float64,
                      stacked=False, hessian_choice=[[-1, 0]])  # fmt: skip
    np.testing.assert_array_equal(none.hessian_mask, [False, True, False])
    assert make_batch(frames, [[5]], plan.capacity(frames, [[5]])).hessian_mask is None


def test_loss_term_is_the_mean_squared_error_norm(copper_store):
    with LabelStore(copper_store) as store:
        arrays = store.arrays()
    student = create_student("painn", ["Cu"], cutoff=4.0, dtype="float64", features=8,
                             num_layers=1)  # fmt: skip
    frames = precompute_neighbours(arrays, student.cutoff)
    shards = [[0, 3, 7]]
    capacity = plan_capacity([frames], 3, "single").capacity(frames, shards)
    batch = make_batch(frames, shards, capacity, np.float64, stacked=False,
                       hessian_choice=[[0, 1, 2]])  # fmt: skip
    products = student.potential.hessian_vector_product(
        student.params, batch.graph, jnp.asarray(batch.hessian_directions)
    )
    loss, sums = hessian_loss_and_sums(products, batch, hessian_counts(batch), weight=0.5)
    diff = np.asarray(products)[:12] - batch.hessian_products[:12]
    per_frame = [np.sum(diff[4 * f : 4 * f + 4] ** 2) for f in range(3)]
    assert float(loss) == pytest.approx(0.5 * np.mean(per_frame), rel=1e-10)
    metrics = metrics_from_sums({**{k: 0.0 for k in ("n_graphs", "n_atoms", "n_stress")},
                                 **jax.device_get(sums)})  # fmt: skip
    assert metrics["hessian_rmse_eV_per_A2"] == pytest.approx(np.sqrt(np.mean(per_frame)))
    reference = np.sum(batch.hessian_products[:12] ** 2)
    assert metrics["hessian_relative_rmse"] == pytest.approx(np.sqrt(np.sum(per_frame) / reference))


def test_training_lowers_the_hessian_error(copper_store, tmp_path):
    """With the curvature term weighted up, the validation H·u error falls; with
    hessian_weight 0 the labels are ignored (no Hessian metrics, a different student)."""
    config = {**TINY, "steps": 60, "learning_rate": 5e-3, "validation_interval": 30,
              "forces_weight": 1.0, "hessian_weight": 1.0, "hessian_batch_size": 2,
              "split": {"train": 0.75, "validation": 0.25}}  # fmt: skip
    student = train(copper_store, tmp_path / "with", config, progress=False)
    lines = read_metrics(tmp_path / "with")
    first, last = lines[0]["validation"], lines[-1]["validation"]
    assert first["hessian_frames"] == 4
    assert last["hessian_rmse_eV_per_A2"] < 0.8 * first["hessian_rmse_eV_per_A2"], (first, last)
    assert "hessian_loss" in lines[-1]["train"]
    assert student.metadata["split"]["hessian_frames"] == 12
    assert student.metadata["split"]["hessian_weight"] == 1.0

    plain = train(copper_store, tmp_path / "without", {**config, "hessian_weight": 0.0},
                  progress=False)  # fmt: skip
    plain_lines = read_metrics(tmp_path / "without")
    assert "hessian_rmse_eV_per_A2" not in plain_lines[-1]["validation"]
    assert plain.metadata["split"]["hessian_weight"] == 0.0
    assert json.dumps(jax.tree.map(np.ndarray.tolist, plain.params)) != json.dumps(
        jax.tree.map(np.ndarray.tolist, student.params)
    )


def test_an_empty_shard_is_all_padding(copper_store):
    """The last validation chunk on two devices may leave one shard without frames."""
    with LabelStore(copper_store) as store:
        frames = precompute_neighbours(store.arrays(), 4.0)
    shards = [np.array([3]), np.zeros(0, np.int64)]
    capacity = plan_capacity([frames], 1, "single").capacity(frames, shards)
    batch = make_batch(frames, shards, capacity, hessian_choice=[[0], []])
    assert batch.graph.node_mask[0].sum() == 4 and not batch.graph.node_mask[1].any()
    assert not batch.graph.graph_mask[1].any() and not batch.hessian_mask[1].any()
