"""Neighbour search and padded batching."""

from __future__ import annotations

import ase
import ase.build
import numpy as np
import pytest
from ase.neighborlist import neighbor_list
from structures import ethanol, silicon, triclinic_si

from jaxdistill.graph import (
    batch_graphs,
    bucket_capacity,
    neighbour_pairs,
    slot_capacity,
    slots_for,
    validate_atoms,
)


def _pair_set(atoms, cutoff):
    nb = neighbour_pairs(atoms, cutoff)
    return sorted(
        zip(nb.receivers.tolist(), nb.senders.tolist(), map(tuple, nb.shifts.tolist()), strict=True)
    )


def _ase_pair_set(atoms, cutoff):
    i, j, shifts = neighbor_list("ijS", atoms, cutoff)
    return sorted(zip(i.tolist(), j.tolist(), map(tuple, shifts.tolist()), strict=True))


@pytest.mark.parametrize(
    "atoms",
    [
        ethanol(),
        silicon(),
        triclinic_si(),
        ase.build.fcc111("Cu", (2, 2, 3), vacuum=5.0),  # periodic in x, y only
        ase.Atoms("Cu", cell=[[2.0, 0, 0], [0.7, 2.1, 0], [0.3, 0.4, 1.9]], pbc=True),
    ],
    ids=["molecule", "cubic", "primitive-triclinic", "slab", "one-atom-tiny-cell"],
)
def test_neighbour_pairs_match_ase(atoms):
    cutoff = 5.0
    ours = _pair_set(atoms, cutoff)
    assert ours == _ase_pair_set(atoms, cutoff)
    assert len(ours) > 0


def test_small_cell_has_self_images():
    # A 1-atom cell of side 2 Å with cutoff 5 Å: the atom sees many images of itself.
    atoms = ase.Atoms("Cu", cell=np.eye(3) * 2.0, pbc=True)
    nb = neighbour_pairs(atoms, 5.0)
    assert np.all(nb.senders == 0) and np.all(nb.receivers == 0)
    assert len(nb.senders) == len({tuple(s) for s in nb.shifts.tolist()}) > 26


def test_bucket_capacity():
    assert [bucket_capacity(n) for n in (1, 8, 9, 12, 13, 17, 25, 100)] == [
        8,
        8,
        12,
        12,
        16,
        24,
        32,
        128,
    ]
    for n in range(1, 3000, 7):
        cap = bucket_capacity(n)
        assert n <= cap < 1.5 * n + 8


def test_fine_buckets_waste_at_most_an_eighth():
    assert [bucket_capacity(n, per_octave=8) for n in (65, 513, 649, 1001)] == [72, 576, 704, 1024]
    seen = set()
    for n in range(8, 20000, 3):
        cap = bucket_capacity(n, per_octave=8)
        assert n <= cap <= 1.125 * n
        seen.add(cap)
    assert len(seen) < 8 * 12  # still a few shapes per octave: 8 per doubling
    # a finer setting never pads more than a coarser one
    for n in range(8, 5000, 11):
        assert bucket_capacity(n, per_octave=8) <= bucket_capacity(n, per_octave=4)
        assert bucket_capacity(n, per_octave=4) <= bucket_capacity(n)
    with pytest.raises(ValueError, match="per_octave"):
        bucket_capacity(100, per_octave=3)


def test_batch_layout_and_padding():
    structures = [ethanol(), silicon(), triclinic_si()]
    graph = batch_graphs(structures, 4.0)
    n_real = sum(len(a) for a in structures)
    assert graph.node_mask.sum() == n_real and len(graph.node_mask) > n_real
    assert graph.graph_mask.sum() == 3 and len(graph.graph_mask) > 3
    assert graph.n_node[:3].tolist() == [len(a) for a in structures]
    padding_node = len(graph.node_mask) - 1
    padding_graph = len(graph.graph_mask) - 1
    assert np.all(graph.node_graph[~graph.node_mask] == padding_graph)
    assert np.all(graph.senders[~graph.edge_mask] == padding_node)
    assert np.all(graph.receivers[~graph.edge_mask] == padding_node)
    # every real edge stays inside its own structure
    real = graph.edge_mask
    assert np.all(graph.node_graph[graph.senders[real]] == graph.node_graph[graph.receivers[real]])
    assert np.array_equal(graph.numbers[: len(structures[0])], structures[0].numbers)


def test_forced_capacities_and_errors():
    graph = batch_graphs([silicon()], 4.0, node_capacity=64, edge_capacity=4096, graph_capacity=4)
    assert graph.positions.shape == (64, 3) and graph.senders.shape == (4096,)
    with pytest.raises(ValueError, match="too small"):
        batch_graphs([silicon()], 4.0, node_capacity=8)
    with pytest.raises(ValueError, match="empty"):
        batch_graphs([], 4.0)


def test_validation_errors_name_the_problem():
    atoms = ethanol()
    with pytest.raises(ValueError, match=r"element\(s\) O unknown to this student"):
        validate_atoms(atoms, known_numbers=[1, 6])
    bad = atoms.copy()
    bad.positions[3, 1] = np.nan
    with pytest.raises(ValueError, match=r"atoms \[3\].*NaN"):
        validate_atoms(bad)
    bad.positions[3, 1] = np.inf
    with pytest.raises(ValueError, match="infinite"):
        validate_atoms(bad)
    flat = silicon()
    flat.cell[2] = flat.cell[0] + flat.cell[1]
    with pytest.raises(ValueError, match="singular"):
        validate_atoms(flat)
    validate_atoms(silicon(), known_numbers=[14])  # a good structure passes


def _edge_set(graph):
    mask = np.asarray(graph.edge_mask)
    shifts = np.rint(np.asarray(graph.shifts)[mask]).astype(int)
    rows = zip(graph.receivers[mask], graph.senders[mask], map(tuple, shifts), strict=True)
    return sorted((int(i), int(j), s) for i, j, s in rows)


def test_receiver_major_graph_holds_the_same_edges_with_their_reverses():
    structures = [
        ase.build.bulk("Si", "diamond", a=5.43),  # 2 atoms: pairs repeat through images
        ase.build.molecule("CH3CH2OH"),
    ]
    neighbours = [neighbour_pairs(atoms, 4.0) for atoms in structures]
    plain = batch_graphs(structures, 4.0, neighbours=neighbours)
    slots = slots_for(neighbours)
    major = batch_graphs(structures, 4.0, neighbours=neighbours, slots_per_node=slots)
    n_node = len(major.positions)
    assert len(major.senders) == n_node * slots
    assert _edge_set(major) == _edge_set(plain)
    real = np.flatnonzero(major.edge_mask)
    # every real edge sits in its receiver's row
    np.testing.assert_array_equal(major.receivers[real], real // slots)
    reverse = major.reverse_edges
    np.testing.assert_array_equal(major.senders[reverse[real]], major.receivers[real])
    np.testing.assert_array_equal(major.receivers[reverse[real]], major.senders[real])
    np.testing.assert_array_equal(major.shifts[reverse[real]], -major.shifts[real])
    np.testing.assert_array_equal(reverse[reverse], np.arange(len(reverse)))
    padding = np.flatnonzero(~major.edge_mask)
    np.testing.assert_array_equal(reverse[padding], padding)
    np.testing.assert_array_equal(major.senders[padding], n_node - 1)


def test_receiver_major_graph_refuses_too_few_slots_and_half_lists():
    atoms = ase.build.molecule("CH3CH2OH")
    neighbours = neighbour_pairs(atoms, 4.0)
    with pytest.raises(ValueError, match="slots per atom"):
        batch_graphs([atoms], 4.0, neighbours=[neighbours], slots_per_node=2)
    half = neighbours.receivers < neighbours.senders
    one_way = type(neighbours)(
        neighbours.senders[half], neighbours.receivers[half], neighbours.shifts[half]
    )
    with pytest.raises(ValueError, match="not symmetric"):
        batch_graphs([atoms], 4.0, neighbours=[one_way], slots_per_node=slots_for([neighbours]))


@pytest.mark.parametrize("largest", [1, 3, 8, 28, 34, 35, 37, 100])
def test_slot_capacity_is_a_tight_multiple_of_four_with_headroom(largest):
    slots = slot_capacity(largest)
    assert slots % 4 == 0
    assert slots >= 1.1 * largest and slots > largest
    assert slots - 4 < max(1.1 * largest, 1)  # the smallest such multiple
    if largest == 34:  # 1000 Si atoms within 5.5 Å: power-of-two buckets gave 48
        assert slots == 40
