"""SevenNet-0 (weights inside the sevenn wheel): store labels equal SevenNetCalculator's."""

from __future__ import annotations

import ase.build
import numpy as np
import pytest

from jaxdistill.data import LabelStore
from jaxdistill.labelling import label
from jaxdistill.teachers import load_teacher

pytest.importorskip("sevenn", reason="sevenn not installed (pip install 'jaxdistill[sevennet]')")


def silicon_frames() -> list[ase.Atoms]:
    """Small Si cells (2 and 8 atoms), rattled and one strained, so forces and stress vary."""
    frames = []
    for seed, cubic in ((0, False), (1, True), (2, True)):
        atoms = ase.build.bulk("Si", "diamond", a=5.43, cubic=cubic)
        atoms.rattle(0.06, seed=seed)
        frames.append(atoms)
    frames[2].set_cell(frames[2].cell.array * [1.02, 0.99, 1.0], scale_atoms=True)
    return frames


@pytest.fixture(scope="module")
def sevennet():
    return load_teacher("sevennet:7net-0")


def test_store_labels_equal_sevennet_calculator(sevennet, tmp_path):
    from sevenn.calculator import SevenNetCalculator

    frames = silicon_frames()
    label(sevennet, frames, tmp_path / "si.h5", progress=False)
    reference = SevenNetCalculator("7net-0", device="cpu")
    with LabelStore(tmp_path / "si.h5") as store:
        assert len(store) == len(frames)
        for atoms, stored in zip(frames, store, strict=True):
            ref = atoms.copy()
            ref.calc = reference
            np.testing.assert_allclose(stored.positions, atoms.positions)
            assert stored.get_potential_energy() == pytest.approx(
                ref.get_potential_energy(), abs=1e-5
            )
            np.testing.assert_allclose(stored.get_forces(), ref.get_forces(), atol=1e-5)
            np.testing.assert_allclose(stored.get_stress(), ref.get_stress(), atol=1e-6)
            assert np.abs(stored.get_forces()).max() > 0.05  # a non-trivial structure
        prov = store.teacher
    assert prov["package"] == "sevenn" and prov["name"] == "7net-0"
    assert len(prov["weights_sha256"][0]) == 64


def test_sevennet_stress_matches_finite_differences(sevennet, fd_stress):
    atoms = silicon_frames()[0]
    expected = fd_stress(lambda fs: [x.energy for x in sevennet.label(fs)], atoms, delta=2e-3)
    np.testing.assert_allclose(sevennet.label([atoms])[0].stress, expected, atol=3e-4)


def test_missing_sevennet_checkpoint_is_named(tmp_path):
    missing = tmp_path / "nope" / "model.pth"
    with pytest.raises(FileNotFoundError, match="model.pth"):
        load_teacher(f"sevennet:{missing}")
