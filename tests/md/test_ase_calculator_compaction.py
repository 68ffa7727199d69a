"""The ASE calculator's graph compacted to the pairs within the cutoff (``compact_rows``:
each atom's slots on a receiver-major graph, the whole list on an edge list) gives what
the full graph gives: for small cells with repeated periodic images, molecules, stress
and committees; when atoms gain pairs faster than the compacted size allows (the call
runs again, larger); without recompiling in MD."""

from __future__ import annotations

import numpy as np
import pytest
from structures import ethanol, silicon

from jaxdistill import StudentCalculator
from jaxdistill.diagnostics import count_compilations
from jaxdistill.graph import batch_graphs, neighbour_pairs, slots_for
from jaxdistill.md import ase_calculator
from jaxdistill.potential import compact_graph


def _two_ethanols():
    """Two ethanol molecules 6 Å apart, no cell: pairs between them lie in the skin."""
    first, second = ethanol(seed=0), ethanol(seed=1)
    second.positions += [6.0, 0.0, 0.0]
    return first + second


def _largest_within(atoms, cutoff: float) -> int:
    """The most pairs within ``cutoff`` of any atom."""
    pairs = neighbour_pairs(atoms, cutoff)
    return int(np.bincount(pairs.receivers).max())


LAYOUTS = ["receiver_major", "edge_list"]


def _calculate(atoms, model, compact, skin, layout, properties=("energy", "forces", "energies")):
    atoms = atoms.copy()
    calc = StudentCalculator(
        model, dtype="float64", device="cpu", edge_layout=layout,
        compact_rows=compact, skin=skin,
    )  # fmt: skip
    atoms.calc = calc
    out = {"energy": atoms.get_potential_energy(), "forces": atoms.get_forces()}
    if "energies" in properties:
        out["energies"] = atoms.get_potential_energies()
    if atoms.pbc.all():
        out["stress"] = atoms.get_stress()
    return out, calc


def _assert_same(compacted: dict, full: dict) -> None:
    assert compacted.keys() == full.keys()
    for key in full:
        np.testing.assert_allclose(compacted[key], full[key], rtol=0, atol=1e-10, err_msg=key)


@pytest.mark.parametrize(
    "atoms",
    [
        silicon(cubic=False, rattle=0.05),  # 2 atoms: each pair seen through many images
        silicon(repeat=(2, 2, 2), rattle=0.05),
        _two_ethanols(),
    ],
    ids=["si-primitive", "si-64", "two-ethanols"],
)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_compacted_graph_equals_full_graph(small_student, atoms, layout):
    full, full_calc = _calculate(atoms, small_student, False, 1.5, layout)
    compacted, calc = _calculate(atoms, small_student, True, 1.5, layout)
    assert full_calc._compact_width is None
    # the compaction ran, on a graph smaller than the list's
    size = calc._slots if layout == "receiver_major" else calc._edge_capacity
    assert calc._compact_width is not None and calc._compact_width < size
    assert calc.compaction_overflows == 0
    _assert_same(compacted, full)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_committee_on_compacted_graph(small_student, layout):
    from jaxdistill import create_student

    other = create_student(
        "painn", ["H", "C", "O", "Si"], cutoff=4.0, seed=9, dtype="float64",
        features=16, num_layers=2, num_radial=8,
    )  # fmt: skip
    atoms = silicon(repeat=(2, 1, 1), rattle=0.05)
    keys = ("energy", "forces", "stress", "force_std", "energy_std")
    results = {}
    for compact in (False, True):
        copy = atoms.copy()
        copy.calc = StudentCalculator(
            [small_student, other], dtype="float64", edge_layout=layout,
            compact_rows=compact, skin=1.5,
        )  # fmt: skip
        copy.get_stress()
        assert (copy.calc._compact_width is not None) == compact
        results[compact] = copy.calc.results
    for key in keys:
        np.testing.assert_allclose(results[True][key], results[False][key], atol=1e-10)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_atoms_gaining_pairs_run_again_larger(small_student, layout):
    # Compressing the crystal 12 % brings its third shell (4.50 Å) inside the 4 Å
    # cutoff: 28 pairs per atom where the build saw 16. The strain keeps the list (a
    # 2 Å skin covers it), so the compacted graph sized at the build is too small.
    atoms = silicon(repeat=(2, 2, 2), rattle=0.02)
    atoms.calc = StudentCalculator(
        small_student, dtype="float64", device="cpu", edge_layout=layout,
        compact_rows=True, skin=2.0,
    )  # fmt: skip
    atoms.get_forces()
    per_atom = 1 if layout == "receiver_major" else len(atoms)
    full_size = atoms.calc._slots if layout == "receiver_major" else atoms.calc._edge_capacity
    assert atoms.calc._compact_width < 28 * per_atom
    atoms.set_cell(atoms.cell.array * 0.88, scale_atoms=True)
    forces, stress = atoms.get_forces(), atoms.get_stress()
    assert atoms.calc.neighbour_list_builds == 1  # the list was kept
    assert atoms.calc.compaction_overflows == 1
    assert 28 * per_atom <= atoms.calc._compact_width < full_size
    full, _ = _calculate(atoms, small_student, False, 2.0, layout, properties=())
    np.testing.assert_allclose(forces, full["forces"], rtol=0, atol=1e-10)
    np.testing.assert_allclose(stress, full["stress"], rtol=0, atol=1e-10)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_compacted_graph_does_not_recompile_as_atoms_move(small_student, layout):
    atoms = silicon(repeat=(2, 2, 2))
    # (a 1 Å skin puts the list's edge, 5 Å, between two shells of the crystal)
    atoms.calc = StudentCalculator(
        small_student, dtype="float64", edge_layout=layout, compact_rows=True, skin=1.0,
    )  # fmt: skip
    reference = atoms.positions.copy()
    rng = np.random.default_rng(3)
    atoms.positions = reference + rng.normal(scale=0.2, size=reference.shape)
    atoms.get_forces()
    counts = set()
    with count_compilations() as compiled:
        for _ in range(8):
            # thermal motion about the lattice: pairs cross the cutoff both ways, some
            # moves pass half the skin (rebuilds)
            atoms.positions = reference + rng.normal(scale=0.2, size=reference.shape)
            atoms.get_forces()
            counts.add(len(neighbour_pairs(atoms, small_student.cutoff).senders))
    assert len(counts) > 1  # the pairs within the cutoff changed
    assert atoms.calc.neighbour_list_builds > 1
    assert atoms.calc.compaction_overflows == 0
    assert compiled.count == 0


def test_auto_compacts_from_the_threshold_of_the_platform(small_student, monkeypatch):
    atoms = silicon(repeat=(2, 2, 2))
    # the defaults: a CPU compacts from 64 atoms
    copy = atoms.copy()
    copy.calc = StudentCalculator(small_student, device="cpu")
    copy.get_forces()
    assert copy.calc._compact_width is not None
    for layout, threshold, expected in [
        ("receiver_major", len(atoms), True),
        ("receiver_major", len(atoms) + 1, False),
        ("edge_list", len(atoms), True),
        ("edge_list", len(atoms) + 1, False),
    ]:
        monkeypatch.setitem(ase_calculator.COMPACT_MIN_ATOMS, "cpu", threshold)
        copy = atoms.copy()
        copy.calc = StudentCalculator(small_student, device="cpu", edge_layout=layout)
        copy.get_forces()
        assert (copy.calc._compact_width is not None) == expected, (layout, threshold)


def test_compacted_graph_runs_the_mode_for_compacted_rows(small_student, monkeypatch):
    """A compacted call evaluates the potential of ``fused.mode_on_compacted_rows`` (the
    reference path where the student says "auto"); a full-graph call the student's own."""
    monkeypatch.delenv("JAXDISTILL_MESSAGE_PASSING", raising=False)
    auto = small_student.with_message_passing("auto")
    reference = ase_calculator._shared(auto.with_message_passing("reference"))
    atoms = silicon(repeat=(2, 2, 2))
    for compact, expected in ((True, reference), (False, ase_calculator._shared(auto))):
        copy = atoms.copy()
        copy.calc = StudentCalculator(auto, device="cpu", compact_rows=compact)
        copy.get_forces()
        assert (copy.calc._compact_width is not None) == compact
        assert copy.calc.program().args[0] is expected
    assert ase_calculator._shared(auto) is not reference


def test_compact_rows_option_is_checked(small_student):
    with pytest.raises(ValueError, match="compact_rows"):
        StudentCalculator(small_student, compact_rows="sometimes")


def test_compact_graph_keeps_each_pair_both_ways_and_reports_overflow():
    atoms = silicon(cubic=False, rattle=0.05)
    cutoff, skin = 4.0, 1.5
    neighbours = neighbour_pairs(atoms, cutoff + skin)
    graph = batch_graphs(
        [atoms], cutoff, neighbours=[neighbours], node_capacity=3, edge_capacity=1,
        graph_capacity=2, dtype="float64", slots_per_node=slots_for([neighbours]),
    )  # fmt: skip
    vectors = (
        atoms.positions[neighbours.senders]
        - atoms.positions[neighbours.receivers]
        + neighbours.shifts @ atoms.cell.array
    )
    within = np.linalg.norm(vectors, axis=1) < cutoff
    largest = _largest_within(atoms, cutoff)
    compacted, reported = compact_graph(graph, cutoff, largest)
    assert int(reported) == largest
    mask = np.asarray(compacted.edge_mask)
    assert mask.sum() == within.sum()
    reverse = np.asarray(compacted.reverse_edges)
    senders, receivers = np.asarray(compacted.senders), np.asarray(compacted.receivers)
    shifts = np.asarray(compacted.shifts)
    # every kept edge's reverse is a kept edge j <- i with the opposite shift
    assert mask[reverse][mask].all()
    np.testing.assert_array_equal(senders[reverse][mask], receivers[mask])
    np.testing.assert_array_equal(shifts[reverse][mask], -shifts[mask])
    # kept pairs sit at the front of their receiver's row
    rows = mask.reshape(3, largest)
    assert (np.diff(rows.astype(int), axis=1) <= 0).all()
    _, too_narrow = compact_graph(graph, cutoff, largest - 1)
    assert int(too_narrow) == largest


def test_compact_graph_on_an_edge_list_keeps_the_pairs_within_the_cutoff():
    atoms = silicon(cubic=False, rattle=0.05)
    cutoff, skin = 4.0, 1.5
    neighbours = neighbour_pairs(atoms, cutoff + skin)
    n_pairs = len(neighbours.senders)
    graph = batch_graphs(
        [atoms], cutoff, neighbours=[neighbours], node_capacity=3,
        edge_capacity=n_pairs + 1, graph_capacity=2, dtype="float64",
    )  # fmt: skip
    within = len(neighbour_pairs(atoms, cutoff).senders)
    assert within < n_pairs
    compacted, kept = compact_graph(graph, cutoff, within + 2)
    assert int(kept) == within
    mask = np.asarray(compacted.edge_mask)
    np.testing.assert_array_equal(mask, np.arange(within + 2) < within)  # kept first
    assert compacted.reverse_edges is None
    # the padding edges join the padding node to itself
    assert (np.asarray(compacted.senders)[~mask] == 2).all()
    assert (np.asarray(compacted.receivers)[~mask] == 2).all()
    _, too_few = compact_graph(graph, cutoff, within - 1)
    assert int(too_few) == within
