"""LabelStore and label(): round trips, layout, splits, resume, refusal of bad files."""

from __future__ import annotations

import json
import math
import shutil

import ase.io
import h5py
import numpy as np
import pytest
from ase.calculators.emt import EMT
from ase.calculators.lj import LennardJones

from jaxdistill.data import LabelStore, LabelStoreError, frame_hash
from jaxdistill.labelling import label
from jaxdistill.teachers import AseTeacher, TeacherLabels


def emt_reference(atoms):
    ref = atoms.copy()
    ref.calc = EMT()
    stress = ref.get_stress() if all(atoms.pbc) else np.full(6, np.nan)
    return ref.get_potential_energy(), ref.get_forces(), stress


class ExplodingEMT(EMT):
    """EMT that counts its calls and raises after ``fail_after`` of them (a crash)."""

    def __init__(self, fail_after: int | None = None):
        super().__init__()
        self.fail_after = fail_after
        self.calls = 0

    def calculate(self, atoms=None, properties=None, system_changes=None):
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise RuntimeError("simulated crash")
        super().calculate(atoms, properties or ["energy"], system_changes or [])


def test_label_round_trip(frames, emt_teacher, tmp_path):
    path = tmp_path / "store.h5"
    summary = label(emt_teacher, frames, path, batch_size=3, progress=False)
    assert (summary.n_frames, summary.n_labelled, summary.n_resumed) == (7, 7, 0)
    assert summary.n_atoms == sum(len(a) for a in frames)
    assert summary.elements == {"H": 4, "C": 1, "O": 1, "Cu": 36}

    with LabelStore(path) as store:
        assert len(store) == 7 and store.n_atoms_total == summary.n_atoms
        assert store.teacher["name"] == "EMT" and store.teacher["package"] == "ase"
        assert store.units["forces"] == "eV/Å"
        arr = store.arrays()
        np.testing.assert_array_equal(arr.input_index, np.arange(7))
        assert arr.sampler.tolist() == ["rattle"] * 6 + ["md"]
        assert arr.seed.tolist() == [100, 101, 102, 103, 104, 105, 5]
        assert np.isnan(arr.temperature_kelvin[0]) and arr.temperature_kelvin[6] == 300.0
        assert np.all(np.isnan(arr.force_disagreement))  # single teacher
        for i, atoms in enumerate(frames):
            lo, hi = arr.offsets[i], arr.offsets[i + 1]
            np.testing.assert_array_equal(arr.positions[lo:hi], atoms.positions)
            np.testing.assert_array_equal(arr.numbers[lo:hi], atoms.numbers)
            np.testing.assert_array_equal(arr.cell[i], atoms.cell.array)
            np.testing.assert_array_equal(arr.pbc[i], atoms.pbc)
            energy, forces, stress = emt_reference(atoms)
            assert arr.energy[i] == energy
            np.testing.assert_array_equal(arr.forces[lo:hi], forces)
            np.testing.assert_array_equal(arr.stress[i], stress)  # NaN for the molecule

        # Atoms views: indexing, negative index, slices, iteration.
        last = store[-1]
        assert last.get_chemical_formula() == frames[-1].get_chemical_formula()
        assert "stress" not in last.calc.results
        assert last.info["sampler"] == "md" and last.info["input_index"] == 6
        first = store[0]
        np.testing.assert_allclose(first.get_stress(), emt_reference(frames[0])[2])
        assert [a.info["frame_index"] for a in store[2:5]] == [2, 3, 4]
        assert len(list(store)) == 7
        with pytest.raises(IndexError):
            store[7]
        sub = store.arrays([6, 0])
        assert sub.n_frames == 2 and sub.n_atoms.tolist() == [6, 4]
        np.testing.assert_array_equal(sub.positions[:6], frames[6].positions)
        np.testing.assert_array_equal(sub.atom_frame, [0] * 6 + [1] * 4)


def test_readable_with_plain_h5py(frames, emt_teacher, tmp_path):
    path = tmp_path / "store.h5"
    label(emt_teacher, frames, path, progress=False)
    # The layout documented in docs/data.md, read without jaxdistill.
    with h5py.File(path, "r") as f:
        assert f.attrs["format"] == "jaxdistill-label-store"
        n_frames, n_atoms = f["committed"][:]
        offsets = f["offsets"][: n_frames + 1]
        i = 6
        lo, hi = offsets[i], offsets[i + 1]
        np.testing.assert_array_equal(f["numbers"][lo:hi], frames[i].numbers)
        np.testing.assert_array_equal(f["positions"][lo:hi], frames[i].positions)
        energy, forces, _ = emt_reference(frames[i])
        assert f["energy"][i] == energy
        np.testing.assert_array_equal(f["forces"][lo:hi], forces)
        assert f["sampler"][i].decode() == "md"
        assert json.loads(f.attrs["teacher"])["name"] == "EMT"
        assert offsets[-1] == n_atoms


def test_export_extxyz_round_trip(frames, emt_teacher, tmp_path):
    label(emt_teacher, frames, tmp_path / "store.h5", progress=False)
    with LabelStore(tmp_path / "store.h5") as store:
        out = store.export_extxyz(tmp_path / "labels.extxyz")
    back = ase.io.read(out, index=":")
    assert len(back) == len(frames)
    for atoms, read in zip(frames, back, strict=True):
        energy, forces, stress = emt_reference(atoms)
        np.testing.assert_allclose(read.positions, atoms.positions, atol=1e-8)
        assert read.get_potential_energy() == pytest.approx(energy, abs=1e-8)
        np.testing.assert_allclose(read.get_forces(), forces, atol=1e-8)
        if all(atoms.pbc):
            np.testing.assert_allclose(read.get_stress(), stress, atol=1e-8)
        assert read.info["sampler"] == atoms.info["sampler"]


def test_splits_are_deterministic_partitions(tmp_path, emt_teacher, make_frames):
    label(emt_teacher, make_frames(n_copper=40), tmp_path / "s.h5", batch_size=16, progress=False)
    with LabelStore(tmp_path / "s.h5") as store:
        n = len(store)
        a, b = store.split(seed=3), store.split(seed=3)
        c = store.split(seed=4)
        custom = store.split({"train": 0.5, "validation": 0.25, "test": 0.25}, seed=3)
        with pytest.raises(ValueError, match="add up to 1"):
            store.split((0.8, 0.1, 0.2))
    assert n == 41
    for key in ("train", "validation", "test"):
        np.testing.assert_array_equal(a[key], b[key])
    assert any(not np.array_equal(a[k], c[k]) for k in a)
    joined = np.concatenate(list(a.values()))
    assert sorted(joined.tolist()) == list(range(n))  # disjoint and complete
    assert [len(a[k]) for k in ("train", "validation", "test")] == [33, 4, 4]
    assert [len(custom[k]) for k in custom] == [21, 10, 10]


def test_resume_after_crash_labels_every_frame_exactly_once(frames, tmp_path):
    path = tmp_path / "store.h5"
    crashing = AseTeacher(ExplodingEMT(fail_after=4))
    with pytest.raises(RuntimeError, match="simulated crash"):
        label(crashing, frames, path, batch_size=2, progress=False)
    with LabelStore(path) as store:
        assert len(store) == 4  # two complete batches of two; the third was lost

    counting = ExplodingEMT()
    summary = label(AseTeacher(counting), frames, path, batch_size=2, progress=False)
    assert (summary.n_resumed, summary.n_labelled, summary.n_frames) == (4, 3, 7)
    assert counting.calls == 3  # only the missing frames were labelled
    again = label(AseTeacher(counting), frames, path, progress=False)
    assert again.n_labelled == 0 and counting.calls == 3
    with LabelStore(path) as store:
        arr = store.arrays()
        np.testing.assert_array_equal(arr.input_index, np.arange(7))
        for i, atoms in enumerate(frames):
            assert arr.energy[i] == emt_reference(atoms)[0]


def test_resume_refuses_other_input_or_teacher(frames, emt_teacher, tmp_path):
    path = tmp_path / "store.h5"
    label(emt_teacher, frames[:3], path, progress=False)
    moved = [a.copy() for a in frames[:3]]
    moved[1].positions[0, 0] += 1e-9
    with pytest.raises(LabelStoreError, match="different input"):
        label(emt_teacher, moved, path, progress=False)
    with pytest.raises(LabelStoreError, match="different input"):
        label(emt_teacher, frames, path, progress=False)
    with pytest.raises(LabelStoreError, match="different teacher"):
        label(AseTeacher(LennardJones()), frames[:3], path, progress=False)
    with LabelStore(path) as store:  # untouched by the refusals
        assert len(store) == 3


def test_uncommitted_bytes_are_ignored_and_overwritten(frames, tmp_path):
    path = tmp_path / "store.h5"
    with pytest.raises(RuntimeError):
        label(AseTeacher(ExplodingEMT(fail_after=2)), frames, path, batch_size=2, progress=False)
    # What a kill in the middle of an append leaves: data beyond the committed count.
    with h5py.File(path, "r+") as f:
        f["energy"][2:5] = 1e6
        f["positions"][f["committed"][1] :] = -7.0
        f["offsets"][3:5] = [999, 1000]
    with LabelStore(path) as store:
        assert len(store) == 2
        assert np.all(store.arrays().energy < 1e5)
    label(AseTeacher(ExplodingEMT()), frames, path, batch_size=2, progress=False)
    with LabelStore(path) as store:
        arr = store.arrays()
        assert len(store) == 7
        for i, atoms in enumerate(frames):
            assert arr.energy[i] == emt_reference(atoms)[0]
            np.testing.assert_array_equal(
                arr.positions[arr.offsets[i] : arr.offsets[i + 1]], atoms.positions
            )


def test_bad_files_give_clear_errors(frames, emt_teacher, tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        LabelStore(tmp_path / "absent.h5")

    text = tmp_path / "text.h5"
    text.write_text("not hdf5 at all\n" * 100)
    with pytest.raises(LabelStoreError, match="cannot be read as HDF5"):
        LabelStore(text)

    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f["coordinates"] = np.zeros((3, 3))
    with pytest.raises(LabelStoreError, match="not a jaxdistill label store.*coordinates"):
        LabelStore(foreign)
    with pytest.raises(LabelStoreError, match="not a jaxdistill label store"):
        label(emt_teacher, frames, foreign, progress=False)

    good = tmp_path / "good.h5"
    label(emt_teacher, frames, good, progress=False)
    size = good.stat().st_size
    for keep in (size // 2, size - 16, 1000):
        cut = tmp_path / f"cut{keep}.h5"
        shutil.copy(good, cut)
        with open(cut, "r+b") as handle:
            handle.truncate(keep)
        with pytest.raises(LabelStoreError):
            LabelStore(cut)

    broken = tmp_path / "broken.h5"
    shutil.copy(good, broken)
    with h5py.File(broken, "r+") as f:
        f["committed"][:] = [3, 5]  # atoms count that does not match the offsets
    with pytest.raises(LabelStoreError, match="inconsistent"):
        LabelStore(broken)


def test_store_grows_and_keeps_committed_frames(frames, emt_teacher, tmp_path):
    path = tmp_path / "grow.h5"
    store = LabelStore.create(
        path, teacher=emt_teacher.provenance(), capacity_frames=2, capacity_atoms=5
    )
    with store:
        for atoms in frames:  # each append may outgrow the file
            store.append([atoms], emt_teacher.label([atoms]))
        assert len(store) == 7 and store.capacity[0] >= 7
        assert not list(tmp_path.glob(".*.partial"))  # temporary files cleaned up
    with LabelStore(path) as store:
        arr = store.arrays()
        for i, atoms in enumerate(frames):
            assert arr.energy[i] == emt_reference(atoms)[0]
            assert store.input_hashes()[i] == frame_hash(atoms)
        with pytest.raises(LabelStoreError, match="read-only"):
            store.append(frames[:1], emt_teacher.label(frames[:1]))


def test_append_validates_labels(frames, tmp_path):
    with LabelStore.create(tmp_path / "v.h5") as store:
        bad = TeacherLabels(energy=1.0, forces=np.zeros((2, 3)), stress=np.full(6, math.nan))
        with pytest.raises(ValueError, match="forces of shape"):
            store.append(frames[:1], [bad])
        with pytest.raises(ValueError, match="labels"):
            store.append(frames[:2], [bad])
        assert len(store) == 0
    with pytest.raises(FileExistsError):
        LabelStore.create(tmp_path / "v.h5")
    with pytest.raises(ValueError, match="no frames"):
        label("ase:ase.calculators.emt:EMT", [], tmp_path / "empty.h5", progress=False)
