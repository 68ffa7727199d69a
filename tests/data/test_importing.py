"""Importing a user's own labels (extxyz, ASE database) into a label store."""

from __future__ import annotations

import ase
import ase.build
import ase.io
import numpy as np
import pytest
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator

from jaxdistill.data import LabelStore
from jaxdistill.importing import IMPORTED_TEACHER, import_labels
from jaxdistill.teachers.base import file_sha256


def emt_frames() -> list[ase.Atoms]:
    """Two rattled Cu cells (energy, forces, stress) and a CO molecule (no stress),
    labelled by ASE's EMT calculator."""
    frames = []
    for seed in (0, 1):
        atoms = ase.build.bulk("Cu", "fcc", a=3.61, cubic=True)
        atoms.rattle(0.05, seed=seed)
        frames.append(atoms)
    frames.append(ase.build.molecule("CO"))
    for atoms in frames:
        atoms.calc = EMT()
        results = {"energy": atoms.get_potential_energy(), "forces": atoms.get_forces()}
        if atoms.pbc.all():
            results["stress"] = atoms.get_stress()
        atoms.calc = SinglePointCalculator(atoms, **results)
    return frames


@pytest.fixture(scope="module")
def frames():
    return emt_frames()


@pytest.mark.parametrize("suffix", [".extxyz", ".db"])
def test_round_trip_of_labels(frames, tmp_path, suffix):
    source = tmp_path / f"frames{suffix}"
    ase.io.write(source, frames)
    summary = import_labels(source, tmp_path / "labels.h5")
    assert summary.n_frames == 3 and summary.elements == {"C": 1, "O": 1, "Cu": 8}
    with LabelStore(tmp_path / "labels.h5") as store:
        arrays = store.arrays()
        teacher = store.teacher
        stored = store.to_atoms()
    assert teacher["name"] == IMPORTED_TEACHER
    assert teacher["sha256"] == file_sha256(source)
    assert teacher["source"] == str(source.absolute())
    # exactly what the file holds (extxyz keeps 8 digits: EMT's own values to ~1e-7)
    in_file = ase.io.read(source, ":")
    for i, (atoms, read) in enumerate(zip(frames, in_file, strict=True)):
        lo, hi = arrays.offsets[i], arrays.offsets[i + 1]
        assert arrays.energy[i] == read.get_potential_energy()
        assert np.array_equal(arrays.forces[lo:hi], read.get_forces())
        assert np.array_equal(arrays.positions[lo:hi], read.positions)
        np.testing.assert_allclose(arrays.forces[lo:hi], atoms.get_forces(), atol=1e-6)
        assert stored[i].info["sampler"] == "imported"
    assert np.array_equal(arrays.stress[:2], [a.get_stress() for a in in_file[:2]])
    np.testing.assert_allclose(arrays.stress[:2], [a.get_stress() for a in frames[:2]], atol=1e-8)
    assert np.all(np.isnan(arrays.stress[2]))  # the molecule: not labelled


def test_named_keys_and_optional_stress(frames, tmp_path):
    """Labels under other names in info/arrays (no calculator), stress absent: NaN."""
    plain = []
    for atoms in frames[:2]:
        copy = ase.Atoms(atoms.numbers, atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
        copy.info["dft_energy"] = atoms.get_potential_energy()
        copy.arrays["dft_forces"] = atoms.get_forces()
        plain.append(copy)
    source = tmp_path / "dft.extxyz"
    ase.io.write(source, plain)
    import_labels(source, tmp_path / "s.h5", energy_key="dft_energy", forces_key="dft_forces")
    with LabelStore(tmp_path / "s.h5") as store:
        arrays = store.arrays()
        assert store.teacher["keys"]["energy"] == "dft_energy"
    np.testing.assert_allclose(arrays.energy, [a.get_potential_energy() for a in frames[:2]])
    assert np.all(np.isnan(arrays.stress))
    with pytest.raises(ValueError, match=r"frame 0 of .*dft.extxyz has no stress under the key"):
        import_labels(
            source, tmp_path / "t.h5", energy_key="dft_energy", forces_key="dft_forces",
            stress_key="dft_stress",
        )  # fmt: skip
    assert not (tmp_path / "t.h5").exists()


def test_bad_inputs_name_the_file_and_frame(frames, tmp_path):
    source = tmp_path / "frames.extxyz"
    ase.io.write(source, frames)
    import_labels(source, tmp_path / "labels.h5")
    with pytest.raises(FileExistsError, match="labels.h5 exists; pass --overwrite"):
        import_labels(source, tmp_path / "labels.h5")
    # a frame without forces
    unlabelled = [frames[0], ase.Atoms("Cu", positions=[[0, 0, 0]], cell=[3, 3, 3], pbc=True)]
    unlabelled[1].info["energy"] = -1.0
    ase.io.write(tmp_path / "noforces.extxyz", unlabelled)
    with pytest.raises(ValueError, match=r"frame 1 of .*noforces.extxyz has no forces"):
        import_labels(tmp_path / "noforces.extxyz", tmp_path / "x.h5")
    # non-finite forces
    broken = [a.copy() for a in frames]
    forces = frames[1].get_forces().copy()
    forces[3] = np.nan
    broken[1].calc = SinglePointCalculator(
        broken[1], energy=frames[1].get_potential_energy(), forces=forces
    )
    broken[0].calc = frames[0].calc
    broken[2].calc = frames[2].calc
    ase.io.write(tmp_path / "nan.extxyz", broken)
    with pytest.raises(ValueError, match=r"frame 1 of .*nan.extxyz: its forces on atoms \[3\]"):
        import_labels(tmp_path / "nan.extxyz", tmp_path / "x.h5")
    # coincident atoms: refused, or left out with skip_bad_frames
    close = frames[0].copy()
    close.positions[1] = close.positions[0] + 0.01
    close.calc = SinglePointCalculator(close, energy=0.0, forces=np.zeros((len(close), 3)))
    ase.io.write(tmp_path / "close.extxyz", [frames[1], close])
    with pytest.raises(ValueError, match=r"frame 1 of .*close.extxyz: atoms 0 and 1"):
        import_labels(tmp_path / "close.extxyz", tmp_path / "x.h5")
    summary = import_labels(tmp_path / "close.extxyz", tmp_path / "x.h5", skip_bad_frames=True)
    assert summary.n_frames == 1 and "frame 1 of" in summary.skipped[0]
    (tmp_path / "empty.extxyz").write_text("")
    with pytest.raises(ValueError, match="empty.extxyz is an empty file"):
        import_labels(tmp_path / "empty.extxyz", tmp_path / "y.h5")
    with pytest.raises(FileNotFoundError, match="missing.extxyz: file not found"):
        import_labels(tmp_path / "missing.extxyz", tmp_path / "y.h5")
    assert not (tmp_path / "y.h5").exists()
