"""Hessian-vector labels in the store: labelling, round trip, resume after a kill,
and the messages for stores made without them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import ase.build
import ase.io
import numpy as np
import pytest
from test_label_kill import SLOW_EMT

from jaxdistill.data import LabelStore
from jaxdistill.data.arrays import LabelArrays
from jaxdistill.data.store import LabelStoreError, copy_frames
from jaxdistill.labelling import frame_directions, label
from jaxdistill.teachers.hessian import finite_difference_hvp, random_directions

EMT_SPEC = "ase:ase.calculators.emt:EMT"


def copper_frames(n: int) -> list[ase.Atoms]:
    frames = []
    for i in range(n):
        atoms = ase.build.bulk("Cu", "fcc", a=3.61, cubic=True) * (1 + i % 2, 1, 1)
        atoms.rattle(0.05, seed=i)
        frames.append(atoms)
    return frames


def test_random_directions_are_unit_and_seeded():
    u = random_directions(5, 3, np.random.default_rng(0))
    assert u.shape == (3, 5, 3)
    np.testing.assert_allclose(np.linalg.norm(u.reshape(3, -1), axis=1), 1.0, rtol=1e-12)
    np.testing.assert_array_equal(u, random_directions(5, 3, np.random.default_rng(0)))
    a = frame_directions("0123456789abcdef" * 2, 4, 2, seed=0)
    np.testing.assert_array_equal(a, frame_directions("0123456789abcdef" * 2, 4, 2, seed=0))
    assert not np.allclose(a, frame_directions("0123456789abcdef" * 2, 4, 2, seed=1))


def test_finite_differences_match_the_energy_curvature(emt_teacher):
    """H·u from forces equals the second derivative of the energy along u, and the
    Hessian is symmetric: u·(H v) = v·(H u)."""
    atoms = copper_frames(1)[0]
    u = random_directions(len(atoms), 2, np.random.default_rng(1))
    hu = finite_difference_hvp(emt_teacher, atoms, u, step_angstrom=0.01)
    # d²E/dε² along u by central differences of the energy itself.
    h = 0.02
    energies = []
    for eps in (-h, 0.0, h):
        moved = atoms.copy()
        moved.positions = atoms.positions + eps * u[0]
        energies.append(emt_teacher.label([moved])[0].energy)
    curvature = (energies[0] - 2 * energies[1] + energies[2]) / h**2
    assert np.sum(u[0] * hu[0]) == pytest.approx(curvature, rel=2e-3)
    assert np.sum(u[0] * hu[1]) == pytest.approx(np.sum(u[1] * hu[0]), rel=1e-3)


def test_store_round_trip_and_copy(tmp_path, emt_teacher):
    frames = copper_frames(5)
    summary = label(emt_teacher, frames, tmp_path / "s.h5", hessian_directions=3, progress=False)
    assert summary.hessian["directions"] == 3
    assert summary.hessian["method"] == "finite-difference"
    with LabelStore(tmp_path / "s.h5") as store:
        assert store.hessian_k == 3
        arr = store.arrays()
        hashes = store.input_hashes()
    assert arr.hessian_directions.shape == (arr.positions.shape[0], 3, 3)
    assert arr.has_hessian.all()
    for i, atoms in enumerate(frames):
        lo, hi = arr.offsets[i], arr.offsets[i + 1]
        u = np.swapaxes(arr.hessian_directions[lo:hi], 0, 1)
        np.testing.assert_array_equal(u, frame_directions(hashes[i], len(atoms), 3, 0))
        expected = finite_difference_hvp(emt_teacher, atoms, u)
        np.testing.assert_allclose(
            np.swapaxes(arr.hessian_products[lo:hi], 0, 1), expected, rtol=0, atol=1e-12
        )
    # A copy of some frames (what the pipeline's splits and refinement do) keeps them.
    copy_frames(tmp_path / "s.h5", tmp_path / "c.h5", [4, 1])
    with LabelStore(tmp_path / "c.h5") as copy:
        assert copy.hessian == LabelStore(tmp_path / "s.h5").hessian
        sub = copy.arrays()
    np.testing.assert_array_equal(sub.hessian_products, arr.subset([4, 1]).hessian_products)


def test_growing_the_store_keeps_hessian_labels(tmp_path, emt_teacher):
    store = LabelStore.create(
        tmp_path / "g.h5", capacity_frames=1, capacity_atoms=4, hessian={"directions": 2}
    )
    frames = copper_frames(3)
    labels = emt_teacher.label(frames)
    rng = np.random.default_rng(0)
    pairs = []
    for atoms in frames:
        u = random_directions(len(atoms), 2, rng)
        pairs.append((u, rng.normal(size=u.shape)))
    store.append(frames[:1], labels[:1], hessian=pairs[:1])
    store.append(frames[1:], labels[1:], hessian=[pairs[1], None])  # frame 2 has none
    arr = store.arrays()
    store.close()
    np.testing.assert_array_equal(arr.has_hessian, [True, True, False])
    lo, hi = arr.offsets[1], arr.offsets[2]
    np.testing.assert_array_equal(np.swapaxes(arr.hessian_products[lo:hi], 0, 1), pairs[1][1])


def test_concatenate_with_a_store_without_hessian_labels(tmp_path, emt_teacher):
    frames = copper_frames(3)
    label(emt_teacher, frames[:2], tmp_path / "h.h5", hessian_directions=2, progress=False)
    label(emt_teacher, frames[2:], tmp_path / "plain.h5", progress=False)
    with LabelStore(tmp_path / "h.h5") as a, LabelStore(tmp_path / "plain.h5") as b:
        assert b.hessian_k == 0 and b.arrays().hessian_products is None
        both = LabelArrays.concatenate([a.arrays(), b.arrays()])
    assert both.hessian_k == 2
    np.testing.assert_array_equal(both.has_hessian, [True, True, False])
    np.testing.assert_array_equal(both.subset([2, 0]).has_hessian, [False, True])


def test_resume_must_ask_for_the_same_hessian_labels(tmp_path, emt_teacher):
    frames = copper_frames(4)
    plain = tmp_path / "plain.h5"
    label(emt_teacher, frames[:2], plain, progress=False)  # an old-style store
    with LabelStore(plain) as store:
        assert store._file.attrs["format_version"] == 1  # readable by older jaxdistill
    with pytest.raises(LabelStoreError, match="without Hessian-vector products"):
        label(emt_teacher, frames[:2], plain, hessian_directions=2, progress=False)
    with_h = tmp_path / "h.h5"
    label(emt_teacher, frames, with_h, hessian_directions=2, progress=False)
    with pytest.raises(LabelStoreError, match="resume it with --hessian-directions 2"):
        label(emt_teacher, frames, with_h, progress=False)
    with pytest.raises(LabelStoreError, match="directions: store has 2, asked for 3"):
        label(emt_teacher, frames, with_h, hessian_directions=3, progress=False)
    with pytest.raises(ValueError, match="no autodiff Hessian-vector products"):
        label(emt_teacher, frames, tmp_path / "x.h5", hessian_directions=1,
              hessian_method="autodiff", progress=False)  # fmt: skip
    with pytest.raises(LabelStoreError, match="created without Hessian labels"):
        with LabelStore(plain, mode="a") as store:
            store.append(frames[:1], emt_teacher.label(frames[:1]),
                         hessian=[(np.zeros((1, 4, 3)), np.zeros((1, 4, 3)))])  # fmt: skip


def test_a_newer_store_version_is_named(tmp_path, emt_teacher):
    import h5py

    label(emt_teacher, copper_frames(1), tmp_path / "s.h5", hessian_directions=1, progress=False)
    with h5py.File(tmp_path / "s.h5", "r+") as f:
        f.attrs["format_version"] = 3
    with pytest.raises(LabelStoreError, match="format version 3; this jaxdistill reads version 2"):
        LabelStore(tmp_path / "s.h5")


RUNNER = textwrap.dedent(
    """
    import sys
    from jaxdistill.labelling import label
    from jaxdistill.teachers import load_teacher

    teacher = load_teacher("ase:slow_emt_teacher:SlowEMT")
    print("started", flush=True)
    label(teacher, sys.argv[1], sys.argv[2], batch_size=2, progress=False,
          hessian_directions=2)
    print("finished", flush=True)
    """
)


def test_kill_then_resume_gives_the_uninterrupted_labels(tmp_path, emt_teacher):
    """SIGKILL mid-run, rerun: the store equals one labelled in a single run, Hessian
    directions and products included (directions are seeded per frame)."""
    (tmp_path / "slow_emt_teacher.py").write_text(SLOW_EMT)
    (tmp_path / "runner.py").write_text(RUNNER)
    frames = copper_frames(60)
    ase.io.write(tmp_path / "frames.extxyz", frames)
    path = f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"
    env = {**os.environ, "PYTHONPATH": path, "SLOW_EMT_SECONDS": "0.002"}

    def start():
        return subprocess.Popen(
            [sys.executable, "runner.py", "frames.extxyz", "store.h5"],
            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip

    proc = start()
    assert proc.stdout.readline().strip() == "started", proc.stderr.read()
    deadline = time.time() + 120
    while time.time() < deadline:  # kill once some, not all, frames are committed
        if (tmp_path / "store.h5").exists():
            with LabelStore(tmp_path / "store.h5") as store:
                if len(store) >= 4:
                    break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with LabelStore(tmp_path / "store.h5") as store:
        killed_at = len(store)
    assert 0 < killed_at < len(frames)
    out, err = start().communicate(timeout=300)
    assert "finished" in out, err

    label(emt_teacher, tmp_path / "frames.extxyz", tmp_path / "once.h5",
          hessian_directions=2, progress=False)  # fmt: skip
    with LabelStore(tmp_path / "store.h5") as a, LabelStore(tmp_path / "once.h5") as b:
        x, y = a.arrays(), b.arrays()
        assert a.input_hashes() == b.input_hashes()
    np.testing.assert_array_equal(x.input_index, np.arange(len(frames)))
    np.testing.assert_array_equal(x.hessian_directions, y.hessian_directions)
    np.testing.assert_allclose(x.hessian_products, y.hessian_products, rtol=0, atol=1e-12)


def test_distill_config_section_and_label_stage_hash():
    from jaxdistill.config.distill import DistillConfig

    base = {
        "name": "h",
        "teacher": EMT_SPEC,
        "sampling": {"structures": [{"build": "bulk", "args": {"name": "Cu", "cubic": True}}]},
    }
    plain = DistillConfig.from_dict(base)
    assert plain.hessian_labels is None and "hessian_labels" not in plain.to_dict()
    assert plain.stage_sections()["label"] == [EMT_SPEC, {}]  # as before the section existed
    with_h = DistillConfig.from_dict({**base, "hessian_labels": {"directions": 2}})
    assert with_h.hessian_labels.label_arguments()["hessian_directions"] == 2
    assert DistillConfig.from_dict(with_h.to_dict()) == with_h
    assert with_h.stage_sections()["label"] != plain.stage_sections()["label"]
    with pytest.raises(ValueError, match="unknown key"):
        DistillConfig.from_dict({**base, "hessian_labels": {"direction": 2}})
    with pytest.raises(ValueError, match="method must be"):
        DistillConfig.from_dict({**base, "hessian_labels": {"method": "exact"}})


def test_label_command_with_hessian_directions(tmp_path):
    from typer.testing import CliRunner

    from jaxdistill.cli import app

    ase.io.write(tmp_path / "frames.extxyz", copper_frames(3))
    args = ["label", "--teacher", EMT_SPEC, "-i", str(tmp_path / "frames.extxyz"),
            "-o", str(tmp_path / "s.h5"), "--hessian-directions", "2", "--no-progress"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "2 directions per frame (finite-difference, step 0.01 Å)" in result.output
    with LabelStore(tmp_path / "s.h5") as store:
        assert store.hessian_k == 2 and store.arrays().has_hessian.all()
    bad = CliRunner().invoke(app, [*args[:-3], "--hessian-directions", "3", "--no-progress"])
    assert bad.exit_code == 2
    assert "directions: store has 2, asked for 3" in bad.output


def test_non_finite_autodiff_falls_back_to_finite_differences(tmp_path):
    """A teacher whose autodiff gives NaN on a frame (seen with FeNNol ANI-1x on one
    ethanol MD frame) gets central differences of its forces there, with a warning."""
    from ase.calculators.emt import EMT

    from jaxdistill.teachers.ase import AseTeacher
    from jaxdistill.teachers.hessian import hessian_vector_products

    class NaNCurvatureEMT(AseTeacher):
        def hessian_vector_products(self, atoms, directions):
            return np.full(np.shape(directions), np.nan)

    teacher = NaNCurvatureEMT(EMT())
    atoms = copper_frames(1)[0]
    u = random_directions(len(atoms), 2, np.random.default_rng(0))
    with pytest.warns(UserWarning, match="not finite; using central differences"):
        (products,) = hessian_vector_products(teacher, [atoms], [u])
    np.testing.assert_allclose(
        products, finite_difference_hvp(teacher, atoms, u, 1e-3), rtol=0, atol=1e-12
    )
