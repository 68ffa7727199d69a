"""Crash safety: a labelling process killed with SIGKILL at random moments, then re-run,
ends with every input frame stored exactly once, correctly, in a valid file."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import ase.build
import ase.io
import numpy as np
import pytest
from ase.calculators.emt import EMT

from jaxdistill.data import LabelStore

# A real EMT teacher that also sleeps (2 ms by default) per structure, so that a run lasts a few
# seconds and the kill lands while frames are being labelled and committed.
SLOW_EMT = textwrap.dedent(
    """
    import os
    import time
    from ase.calculators.emt import EMT

    class SlowEMT(EMT):
        def calculate(self, *args, **kwargs):
            time.sleep(float(os.environ.get("SLOW_EMT_SECONDS", "0.002")))
            super().calculate(*args, **kwargs)
    """
)

RUNNER = textwrap.dedent(
    """
    import sys
    from jaxdistill.labelling import label
    from jaxdistill.teachers import load_teacher

    teacher = load_teacher("ase:slow_emt_teacher:SlowEMT")
    print("started", flush=True)
    label(teacher, sys.argv[1], sys.argv[2], batch_size=int(sys.argv[3]), progress=False)
    print("finished", flush=True)
    """
)


def make_workdir(tmp_path, n_frames):
    (tmp_path / "slow_emt_teacher.py").write_text(SLOW_EMT)
    (tmp_path / "runner.py").write_text(RUNNER)
    frames = []
    for i in range(n_frames):
        atoms = ase.build.bulk("Cu", "fcc", a=3.61, cubic=True) * (1 + i % 2, 1, 1)
        atoms.rattle(0.05, seed=i)
        frames.append(atoms)
    ase.io.write(tmp_path / "frames.extxyz", frames)
    return tmp_path


def reference_energies(path):
    energies = []
    for atoms in ase.io.read(path, index=":"):
        atoms.calc = EMT()
        energies.append(atoms.get_potential_energy())
    return np.array(energies)


def start(workdir, batch_size, sleep_seconds):
    env = {
        **os.environ,
        "PYTHONPATH": f"{workdir}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        "SLOW_EMT_SECONDS": str(sleep_seconds),
    }
    return subprocess.Popen(
        [sys.executable, "runner.py", "frames.extxyz", "store.h5", str(batch_size)],
        cwd=workdir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def check_store(path, reference):
    """Valid file; the committed frames are the input's first n, each once, correct."""
    with LabelStore(path) as store:
        n = len(store)
        arr = store.arrays()
    np.testing.assert_array_equal(arr.input_index, np.arange(n))
    np.testing.assert_allclose(arr.energy, reference[:n], rtol=0, atol=1e-10)
    assert np.all(np.isfinite(arr.forces))
    return n


def kill_and_resume(workdir, kills, seed, sleep_seconds=0.002):
    rng = random.Random(seed)
    reference = reference_energies(workdir / "frames.extxyz")
    n_frames = len(reference)
    counts = []
    for _ in range(kills):
        proc = start(workdir, rng.choice([1, 2, 3]), sleep_seconds)
        assert proc.stdout.readline().strip() == "started", proc.stderr.read()
        time.sleep(rng.uniform(0.05, 0.5))
        if proc.poll() is not None:  # finished before the kill: nothing left to test
            break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if (workdir / "store.h5").exists():
            counts.append(check_store(workdir / "store.h5", reference))
    # Progress accumulates across kills, and most kills landed mid-run.
    assert counts == sorted(counts)
    assert sum(0 < c < n_frames for c in counts) >= min(3, kills), counts

    proc = start(workdir, 4, sleep_seconds=0.0)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert "finished" in out
    assert check_store(workdir / "store.h5", reference) == n_frames
    # Temporary files of runs killed while creating the store were cleaned up.
    assert not list(workdir.glob(".store.h5.*.partial"))
    print("committed frames after each kill:", counts)
    return counts


def test_sigkill_at_random_points_then_resume(tmp_path):
    kill_and_resume(make_workdir(tmp_path, 400), kills=6, seed=0)


@pytest.mark.slow
def test_sigkill_many_times(tmp_path):
    kill_and_resume(make_workdir(tmp_path, 1000), kills=30, seed=1, sleep_seconds=0.01)
