"""Padded batches from label arrays: same graphs as batch_graphs, labels, capacities."""

from __future__ import annotations

import numpy as np
import pytest
from structures import ethanol, silicon, triclinic_si

from jaxdistill.data.arrays import LabelArrays
from jaxdistill.data.batching import (
    Capacity,
    make_batch,
    plan_capacity,
    precompute_neighbours,
    shard_indices,
    voigt_to_matrix,
)
from jaxdistill.graph import Graph, batch_graphs, bucket_capacity
from jaxdistill.train import BatchOrder


def label_arrays(frames, seed=0) -> LabelArrays:
    """LabelArrays of structures with random labels (stress only for periodic cells)."""
    rng = np.random.default_rng(seed)
    n = len(frames)
    counts = np.array([len(a) for a in frames])
    stress = rng.normal(size=(n, 6))
    stress[[not a.pbc.all() for a in frames]] = np.nan
    return LabelArrays(
        positions=np.concatenate([a.positions for a in frames]),
        numbers=np.concatenate([a.numbers for a in frames]).astype(np.int32),
        forces=rng.normal(size=(counts.sum(), 3)),
        offsets=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        cell=np.stack([a.cell.array for a in frames]),
        pbc=np.stack([a.pbc for a in frames]),
        energy=rng.normal(size=n),
        stress=stress,
        force_disagreement=np.full(n, np.nan),
        energy_disagreement=np.full(n, np.nan),
        sampler=np.array(["test"] * n),
        temperature_kelvin=np.full(n, np.nan),
        seed=np.full(n, -1),
        input_index=np.arange(n),
        frame_index=np.arange(n),
    )


@pytest.fixture(scope="module")
def mixed():
    frames = [silicon(seed=1), ethanol(seed=2), triclinic_si(), silicon((1, 1, 2), seed=3)]
    return frames, label_arrays(frames)


def test_batch_equals_batch_graphs(mixed):
    frames, labels = mixed
    graphs = precompute_neighbours(labels, 4.0)
    assert graphs.senders.dtype == np.int16 and graphs.shifts.dtype == np.int8
    idx = np.array([3, 0, 1, 2])
    reference = batch_graphs([frames[i] for i in idx], 4.0)
    capacity = Capacity(len(reference.positions), len(reference.senders), len(reference.graph_mask))
    batch = make_batch(graphs, [idx], capacity, np.float32, stacked=False)
    assert batch.graph.reverse_edges is None and reference.reverse_edges is None
    for name in Graph._fields:
        if name == "reverse_edges":
            continue
        np.testing.assert_array_equal(getattr(batch.graph, name), getattr(reference, name), name)
        assert getattr(batch.graph, name).dtype == getattr(reference, name).dtype, name

    n = labels.n_atoms[idx]
    rows = np.concatenate([np.arange(labels.offsets[i], labels.offsets[i + 1]) for i in idx])
    np.testing.assert_allclose(batch.forces[: n.sum()], labels.forces[rows], rtol=1e-6)
    assert not batch.forces[n.sum() :].any()
    np.testing.assert_allclose(batch.energy[:4], labels.energy[idx], rtol=1e-6)
    assert not batch.energy[4:].any()
    np.testing.assert_array_equal(batch.stress_mask, [True, True, False, True, False, False])
    np.testing.assert_allclose(batch.stress[0], voigt_to_matrix(labels.stress[3]), rtol=1e-6)
    assert not batch.stress[2].any()
    np.testing.assert_array_equal(batch.frame_index[:5], [3, 0, 1, 2, -1])


def test_voigt_to_matrix_inverts_voigt_order():
    from jaxdistill.potential import voigt_stress

    voigt = np.arange(1.0, 7.0)
    matrix = voigt_to_matrix(voigt)
    np.testing.assert_array_equal(matrix, matrix.T)
    np.testing.assert_array_equal(np.asarray(voigt_stress(matrix)), voigt)


def test_stacked_shards_and_capacity_plans(mixed):
    _, labels = mixed
    graphs = precompute_neighbours(labels, 4.0)
    shards = shard_indices([0, 1, 2, 3, 1], 2)
    assert [s.tolist() for s in shards] == [[0, 1, 2], [3, 1]]
    plan = plan_capacity([graphs], graphs_per_shard=3, mode="single")
    batch = make_batch(graphs, shards, plan.capacity(graphs, shards))
    assert batch.graph.positions.shape == (2, plan.fixed.nodes, 3)
    assert batch.graph.graph_mask.sum(axis=1).tolist() == [3, 2]
    # The single capacity fits the 3 largest frames together.
    assert plan.fixed.nodes > np.sort(graphs.n_atoms)[-3:].sum()
    assert plan.fixed.edges >= np.sort(graphs.n_edges)[-3:].sum()
    bucket = plan_capacity([graphs], graphs_per_shard=3, mode="bucket")
    capacity = bucket.capacity(graphs, shards)
    assert capacity.nodes == bucket_capacity(
        max(graphs.n_atoms[[0, 1, 2]].sum(), graphs.n_atoms[[3, 1]].sum()) + 1
    )
    assert capacity.edges == bucket_capacity(
        max(graphs.n_edges[[0, 1, 2]].sum(), graphs.n_edges[[3, 1]].sum()) + 1
    )
    with pytest.raises(ValueError, match="exceeds capacity"):
        make_batch(graphs, [[3, 3, 3]], Capacity(16, 64, 4))


def test_auto_capacity_prefers_one_shape_unless_sizes_differ_a_lot():
    same = [silicon(seed=i) for i in range(6)]
    graphs = precompute_neighbours(label_arrays(same), 4.0)
    assert plan_capacity([graphs], 2, "auto").mode == "single"
    uneven = [silicon(seed=i) for i in range(6)] + [silicon((3, 3, 3), seed=9)]
    graphs = precompute_neighbours(label_arrays(uneven), 4.0)
    assert plan_capacity([graphs], 2, "auto").mode == "bucket"


def test_batch_order_is_a_pure_function_of_seed_and_step():
    order = BatchOrder(10, 4, seed=3)
    batches = [order.indices(t) for t in range(5)]  # 20 positions = 2 epochs
    assert sorted(np.concatenate(batches[:2]).tolist() + batches[2][:2].tolist()) == list(range(10))
    assert sorted(np.concatenate([batches[2][2:], *batches[3:]]).tolist()) == list(range(10))
    again = BatchOrder(10, 4, seed=3)
    for t in (4, 0, 2):
        np.testing.assert_array_equal(again.indices(t), batches[t])
    other = BatchOrder(10, 4, seed=4)
    assert any(not np.array_equal(other.indices(t), batches[t]) for t in range(5))


def test_receiver_major_batches_give_the_loss_and_gradient_of_edge_lists(mixed):
    """Receiver-major training batches (TrainConfig.edge_layout): the same edges, so the
    same predictions, loss and parameter gradient (float64), for a batch of a small
    periodic cell, a triclinic one and a molecule."""
    import jax

    from jaxdistill import create_student
    from jaxdistill.train.loss import LossWeights, batch_counts, loss_and_sums

    _, labels = mixed
    graphs = precompute_neighbours(labels, 4.0)
    shards = [np.array([0, 1, 2, 3])]
    plain_plan = plan_capacity([graphs], 4, "single")
    major_plan = plan_capacity([graphs], 4, "single", receiver_major=True)
    assert major_plan.slots >= graphs.max_neighbours
    assert major_plan.fixed.edges == major_plan.fixed.nodes * major_plan.slots
    plain = make_batch(graphs, shards, plain_plan.capacity(graphs, shards), np.float64, False)
    major = make_batch(graphs, shards, major_plan.capacity(graphs, shards), np.float64, False)
    assert plain.graph.reverse_edges is None and major.graph.reverse_edges is not None
    assert major.graph.edge_mask.sum() == plain.graph.edge_mask.sum()
    student = create_student(
        "painn", ["H", "C", "O", "Si"], cutoff=4.0, seed=3, dtype="float64",
        features=8, num_layers=2, num_radial=6,
    )  # fmt: skip
    weights = LossWeights(energy=1.0, forces=10.0, stress=1.0)

    def loss(params, batch):
        prediction = student.potential.predict(params, batch.graph)
        return loss_and_sums(prediction, batch, batch_counts(batch), weights)[0]

    value_and_grad = jax.jit(jax.value_and_grad(loss))  # op by op it took ~25 s
    value_plain, grad_plain = value_and_grad(student.params, plain)
    value_major, grad_major = value_and_grad(student.params, major)
    assert float(value_major) == pytest.approx(float(value_plain), rel=1e-10)
    for a, b in zip(jax.tree.leaves(grad_plain), jax.tree.leaves(grad_major), strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-8, atol=1e-10)
    # Frames in another order: the ranks and reverses found once for the data set give
    # exactly the arrays of sorting this batch's own edges.
    from jaxdistill.graph import receiver_major_arrays

    shuffled = [np.array([2, 0, 3, 1])]
    plain = make_batch(graphs, shuffled, plain_plan.capacity(graphs, shuffled), np.float64, False)
    major = make_batch(graphs, shuffled, major_plan.capacity(graphs, shuffled), np.float64, False)
    real = np.asarray(plain.graph.edge_mask)
    expected = receiver_major_arrays(
        np.asarray(plain.graph.senders)[real],
        np.asarray(plain.graph.receivers)[real],
        np.asarray(plain.graph.shifts)[real],
        major.graph.positions.shape[0],
        major_plan.slots,
    )
    got = (major.graph.senders, major.graph.receivers, major.graph.shifts)
    got += (major.graph.edge_mask, major.graph.reverse_edges)
    for a, b in zip(expected, got, strict=True):
        np.testing.assert_array_equal(np.asarray(b), a)
    # bucket mode keeps the slots fixed, so batches of other sizes share them
    bucket = plan_capacity([graphs], 4, "bucket", receiver_major=True)
    small = bucket.capacity(graphs, [np.array([1])])
    assert small.slots == major_plan.slots and small.edges == small.nodes * small.slots
