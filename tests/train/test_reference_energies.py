"""Least-squares reference energies and the head statistics."""

from __future__ import annotations

import ase
import jax
import numpy as np
import pytest
from ase.calculators.emt import EMT

from jaxdistill import create_student
from jaxdistill.data.store import LabelStore
from jaxdistill.labelling import label
from jaxdistill.train import apply_head_statistics, fit_head_statistics

ELEMENTS = ("Al", "Ni", "Cu", "Ag")


def isolated_atoms(counts: dict[str, int], rng) -> ase.Atoms:
    """Atoms 9 Å apart on a jittered grid, far beyond EMT's interaction range."""
    symbols = [s for s, n in counts.items() for _ in range(n)]
    rng.shuffle(symbols)
    grid = np.array([(i, j, k) for i in range(4) for j in range(4) for k in range(4)], float)
    positions = 9.0 * grid[: len(symbols)] + rng.uniform(-0.3, 0.3, (len(symbols), 3))
    return ase.Atoms(symbols, positions=positions)


def test_least_squares_recovers_per_species_energies(tmp_path):
    """EMT energies of well-separated atoms are exactly the sum of atomic energies."""
    rng = np.random.default_rng(0)
    frames = [
        isolated_atoms({s: int(rng.integers(0, 5)) + (s == "Cu") for s in ELEMENTS}, rng)
        for _ in range(12)
    ]
    label("ase:ase.calculators.emt:EMT", frames, tmp_path / "atoms.h5", progress=False)
    with LabelStore(tmp_path / "atoms.h5") as store:
        labels = store.arrays()
    expected = {}
    for symbol in ELEMENTS:
        atom = ase.Atoms(symbol, positions=[[0, 0, 0]])
        atom.calc = EMT()
        expected[symbol] = atom.get_potential_energy()
    assert len(set(np.round(list(expected.values()), 3))) == len(ELEMENTS)  # all differ

    student = create_student("schnet", ELEMENTS, cutoff=4.0, features=8, num_layers=1)
    stats = fit_head_statistics(labels, student.species)
    fitted = stats.as_metadata()["reference_energies_eV"]
    for symbol in ELEMENTS:
        assert fitted[symbol] == pytest.approx(expected[symbol], abs=1e-8)
    assert stats.energy_residual_rms < 1e-9
    # No forces between isolated atoms: the scale falls back to 1 eV.
    assert stats.scale == pytest.approx(1.0)

    params = apply_head_statistics(student.params, stats)
    head = params["params"]["head"]
    np.testing.assert_allclose(head["atomic_shift"], stats.reference_energies, rtol=1e-6)
    assert head["atomic_shift"].dtype == student.params["params"]["head"]["atomic_shift"].dtype
    np.testing.assert_allclose(head["atomic_scale"], 1.0)
    # Everything else is untouched.
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        if "atomic" not in jax.tree_util.keystr(path):
            original = student.params
            for key in path:
                original = original[key.key]
            np.testing.assert_array_equal(leaf, original)


def test_absent_species_get_zero_and_scale_is_force_rms(tmp_path):
    import ase.build

    frames = []
    for i in range(6):
        atoms = ase.build.bulk("Cu", "fcc", a=3.6, cubic=True)
        atoms.rattle(0.05, seed=i)
        frames.append(atoms)
    label("ase:ase.calculators.emt:EMT", frames, tmp_path / "cu.h5", progress=False)
    with LabelStore(tmp_path / "cu.h5") as store:
        labels = store.arrays()
    stats = fit_head_statistics(labels, (28, 29))  # Ni absent
    assert stats.reference_energies[0] == 0.0
    assert stats.reference_energies[1] == pytest.approx(np.mean(labels.energy / 4))
    assert stats.scale == pytest.approx(np.sqrt(np.mean(labels.forces**2)))
