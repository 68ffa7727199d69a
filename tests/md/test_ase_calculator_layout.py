"""The ASE calculator on a receiver-major graph (the GPU default) gives what the
edge-list graph gives, for cells with repeated periodic images, molecules, committees
and moving atoms, without recompiling."""

from __future__ import annotations

import numpy as np
import pytest
from structures import ethanol, silicon

from jaxdistill import StudentCalculator
from jaxdistill.diagnostics import count_compilations
from jaxdistill.md import ase_calculator


def _results(atoms, model, layout, properties=("energy", "forces", "stress", "energies")):
    atoms = atoms.copy()
    atoms.calc = StudentCalculator(model, dtype="float64", edge_layout=layout, device="cpu")
    out = {"energy": atoms.get_potential_energy(), "forces": atoms.get_forces()}
    out["energies"] = atoms.get_potential_energies()
    if atoms.pbc.all():
        out["stress"] = atoms.get_stress()
    return out, atoms.calc


@pytest.mark.parametrize(
    "atoms",
    [
        silicon(cubic=False, rattle=0.05),  # 2 atoms: each pair seen through many images
        silicon(repeat=(2, 1, 1), rattle=0.05),
        ethanol(),
    ],
    ids=["si-primitive", "si-16", "ethanol"],
)
def test_receiver_major_equals_edge_list(small_student, atoms):
    plain, plain_calc = _results(atoms, small_student, "edge_list")
    major, major_calc = _results(atoms, small_student, "receiver_major")
    assert plain_calc._graph.reverse_edges is None
    assert major_calc._graph.reverse_edges is not None
    assert major["energy"] == pytest.approx(plain["energy"], abs=1e-10)
    for key in ("forces", "energies", "stress"):
        if key in plain:
            np.testing.assert_allclose(major[key], plain[key], rtol=0, atol=1e-10, err_msg=key)


def test_committee_on_receiver_major_equals_edge_list(small_student):
    from jaxdistill import create_student

    other = create_student(
        "painn", ["H", "C", "O", "Si"], cutoff=4.0, seed=9, dtype="float64",
        features=16, num_layers=2, num_radial=8,
    )  # fmt: skip
    atoms = silicon(repeat=(2, 1, 1), rattle=0.05)
    results = {}
    for layout in ("edge_list", "receiver_major"):
        copy = atoms.copy()
        copy.calc = StudentCalculator([small_student, other], dtype="float64", edge_layout=layout)
        results[layout] = (copy.get_forces(), copy.calc.results["force_std"])
    for a, b in zip(results["edge_list"], results["receiver_major"], strict=True):
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-10)


def test_receiver_major_does_not_recompile_as_atoms_move(small_student):
    atoms = silicon(repeat=(2, 1, 1))
    atoms.calc = StudentCalculator(small_student, dtype="float64", edge_layout="receiver_major")
    atoms.get_forces()
    rng = np.random.default_rng(1)
    with count_compilations() as compiled:
        for _ in range(6):
            # moves beyond half the skin: the list is rebuilt, the slots only grow
            atoms.positions += rng.normal(scale=0.15, size=atoms.positions.shape)
            atoms.get_forces()
    assert atoms.calc.neighbour_list_builds > 1
    assert compiled.count == 0


def test_edge_layout_option(small_student):
    with pytest.raises(ValueError, match="edge_layout"):
        StudentCalculator(small_student, edge_layout="sideways")
    assert ase_calculator.uses_receiver_major("auto", "gpu")
    assert not ase_calculator.uses_receiver_major("auto", "cpu")
    assert ase_calculator.uses_receiver_major("receiver_major", "cpu")
    assert not ase_calculator.uses_receiver_major("edge_list", "gpu")
    atoms = silicon(repeat=(2, 1, 1))
    atoms.calc = StudentCalculator(small_student, dtype="float64", device="cpu")
    atoms.get_forces()
    assert atoms.calc._graph.reverse_edges is None  # auto on a CPU


@pytest.mark.parametrize("layout", ["edge_list", "receiver_major"])
def test_padding_is_at_most_an_eighth_of_rows_and_a_tenth_of_slots(small_student, layout):
    # every padded row and edge is computed on at every call of an MD run
    from jaxdistill.graph import neighbour_pairs

    atoms = silicon(repeat=(4, 2, 2))
    n_atoms = len(atoms)
    calc = StudentCalculator(small_student, device="cpu", edge_layout=layout)
    atoms.calc = calc
    atoms.get_forces()
    assert n_atoms + 1 <= calc._node_capacity <= 1.125 * (n_atoms + 1)
    pairs = neighbour_pairs(atoms, small_student.cutoff + calc.skin)
    if layout == "receiver_major":
        largest = int(np.bincount(pairs.receivers).max())
        assert largest * 1.1 <= calc._slots < largest * 1.1 + 4
        assert len(calc._graph.senders) == calc._node_capacity * calc._slots
    else:
        # 5 % head-room for the pair count's drift in MD, then a fine bucket
        n_pairs = len(pairs.senders)
        assert 1.05 * n_pairs < calc._edge_capacity <= 1.125 * (1.05 * n_pairs + 2)


def test_program_has_no_per_edge_batched_matrix_product(small_student):
    # one 1x3 . 3x3 product per edge as a batched dot_general is what a GPU does worst;
    # the cell offsets (and the strain) are written element-wise to fuse instead
    from jaxdistill.md.ase_calculator import _program

    atoms = silicon(repeat=(2, 1, 1))
    calc = StudentCalculator(small_student, device="cpu", edge_layout="receiver_major")
    atoms.calc = calc
    atoms.get_stress()
    n_edge = len(calc._graph.senders)
    for stress in (False, True):
        text = _program.lower(
            calc._potential,
            calc._params,
            calc._graph,
            calc._input_buffer,
            stress=stress,
            energies=False,
            committee=False,
        ).as_text()
        batched = [
            line
            for line in text.splitlines()
            if "dot_general" in line and "batching_dims" in line and f"tensor<{n_edge}x" in line
        ]
        assert not batched, batched[:1]


def test_large_systems_get_exactly_one_padding_row(small_student):
    # bucket row counts (multiples of 64 from 512 atoms) measured slow on a GPU
    from jaxdistill.graph import bucket_capacity

    threshold = ase_calculator.EXACT_ROWS_MIN_ATOMS
    below = threshold - 1
    assert ase_calculator.node_capacity(below) == bucket_capacity(below + 1, per_octave=8)
    assert ase_calculator.node_capacity(threshold) == threshold + 1
    atoms = silicon(repeat=(4, 4, 4))  # 512 atoms
    assert len(atoms) >= threshold
    results = {}
    for layout in ("edge_list", "receiver_major"):
        copy = atoms.copy()
        copy.calc = StudentCalculator(
            small_student, dtype="float64", device="cpu", edge_layout=layout
        )
        results[layout] = copy.get_forces()
        assert copy.calc._node_capacity == len(atoms) + 1
    np.testing.assert_allclose(results["receiver_major"], results["edge_list"], atol=1e-10)
