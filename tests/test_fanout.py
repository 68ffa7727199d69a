"""Teacher work on Dask: a real local cluster of two worker processes labels with real
teachers into real HDF5 shards; a worker killed with SIGKILL mid-run, then a rerun,
leaves every frame stored exactly once; sampling on Dask gives the frames of one process.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import ase.build
import dask
import numpy as np
import pytest

from jaxdistill.cluster import local_worker_plan, open_client
from jaxdistill.config.cluster import ClusterConfig
from jaxdistill.data.arrays import frame_hash
from jaxdistill.data.store import LabelStore
from jaxdistill.fanout import label_on_cluster, shard_folder
from jaxdistill.labelling import label
from jaxdistill.sampling import sample

EMT_SPEC = "ase:ase.calculators.emt:EMT"
SHARED = Path(__file__).resolve().parents[1] / ".." / "shared"
SLOW_EMT_SPEC = "ase:slow_emt:SlowEMT"  # tests/slow_emt.py, importable in the workers


@pytest.fixture(scope="module")
def fennol_model() -> Path:
    """One model of the FeNNol ANI-1x ensemble in ../shared, or skip."""
    path = (SHARED / "teachers" / "fennol-ani1x" / "ani1x_model0.fnx").resolve()
    if not path.is_file():
        pytest.skip(f"{path} not found: the shared FeNNol ANI-1x models are absent here")
    return path


@pytest.fixture(scope="module")
def client():
    """A local cluster of two CPU worker processes for the whole file. A task whose
    worker dies fails at once (allowed-failures 0), so the kill test must rerun."""
    # distributed registers its config defaults when imported: import it first, or
    # leaving the block removes the whole "distributed" section it did not see (and a
    # later test in this process fails with KeyError: 'distributed').
    import distributed  # noqa: F401

    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        config = ClusterConfig(workers=2, gpus=(), threads_per_worker=1, dashboard_address=None)
        with open_client(config) as client:
            yield client


def test_cluster_config_forms_and_worker_pinning(tmp_path):
    assert ClusterConfig.from_option("local") == ClusterConfig()
    assert ClusterConfig.from_option("local:3").workers == 3
    assert ClusterConfig.from_option("tcp://10.0.0.1:8786").kind == "scheduler"
    (tmp_path / "c.yaml").write_text("cluster:\n  slurm: {cores: 8, memory: 32GB}\n  jobs: 4\n")
    slurm = ClusterConfig.from_option(str(tmp_path / "c.yaml"))
    assert slurm.kind == "slurm" and slurm.jobs == 4 and slurm.slurm["cores"] == 8
    assert ClusterConfig.from_dict(slurm.to_dict()) == slurm
    for bad, text in [
        ({"address": "tcp://a:1", "slurm": {}}, "either"),
        ({"address": "tcp://a:1", "workers": 2}, "only apply to a local"),
        ({"workers": 0}, ">= 1"),
        ({"address": "somewhere"}, "tcp://"),
        ({"wrokers": 2}, "unknown key"),
    ]:
        with pytest.raises(ValueError, match=text):
            ClusterConfig.from_dict(bad)
    # One worker per GPU, each pinned to its own; more workers take the GPUs in turn.
    plan = local_worker_plan(ClusterConfig(gpus=("0", "1")))
    assert [(name, env["CUDA_VISIBLE_DEVICES"]) for name, env in plan] == [
        ("gpu0", "0"),
        ("gpu1", "1"),
    ]
    plan = local_worker_plan(ClusterConfig(gpus=("0", "1"), workers=3, threads_per_worker=2))
    assert [env["CUDA_VISIBLE_DEVICES"] for _, env in plan] == ["0", "1", "0"]
    assert {env["JAXDISTILL_THREADS"] for _, env in plan} == {"2"}
    cpu = local_worker_plan(ClusterConfig(gpus=(), workers=2))
    assert [env["CUDA_VISIBLE_DEVICES"] for _, env in cpu] == ["", ""]


def ethanol_frames(n: int) -> list[ase.Atoms]:
    frames = []
    for i in range(n):
        atoms = ase.build.molecule("CH3CH2OH")
        atoms.rattle(0.05, seed=i)
        atoms.info.update(sampler="rattle", temperature_kelvin=float("nan"), seed=i)
        frames.append(atoms)
    return frames


@pytest.fixture(
    params=[
        "emt",
        # Each worker loads the teacher (torch, jax compiles): 0.5-2 min on 2 busy cores.
        pytest.param("sevennet", marks=pytest.mark.slow),
        pytest.param("fennol", marks=pytest.mark.slow),
    ]
)
def teacher_spec(request) -> str:
    """Real teachers: EMT, SevenNet-0 (weights in the wheel), FeNNol ANI-1x (shared)."""
    if request.param == "emt":
        return EMT_SPEC
    if request.param == "sevennet":
        pytest.importorskip("sevenn")
        return "sevennet:7net-0"
    pytest.importorskip("fennol")
    return f"fennol:{request.getfixturevalue('fennol_model')}"


def test_two_workers_write_the_store_one_process_writes(client, teacher_spec, tmp_path):
    frames = ethanol_frames(8)
    label(teacher_spec, frames, tmp_path / "single.h5", batch_size=4, progress=False)
    # CPU workers: no GPU pinned.
    assert set(client.run(lambda: os.environ["CUDA_VISIBLE_DEVICES"]).values()) == {""}
    summary = label_on_cluster(
        teacher_spec, frames, tmp_path / "dask.h5", client, batch_size=2, shards=3, progress=False
    )
    assert summary.n_frames == 8 and summary.n_labelled == 8
    assert not shard_folder(tmp_path / "dask.h5").exists()  # merged, then removed
    with LabelStore(tmp_path / "single.h5") as a, LabelStore(tmp_path / "dask.h5") as b:
        # What training and a resume read is what a single process wrote.
        assert b.input_info == a.input_info
        assert b.input_hashes() == a.input_hashes() == [frame_hash(f) for f in frames]
        np.testing.assert_array_equal(b.input_indices(), np.arange(8))
        assert b.teacher == a.teacher
        x, y = a.arrays(), b.arrays()
        # Another process, another batch size: equal to float32 rounding.
        np.testing.assert_allclose(y.energy, x.energy, rtol=0, atol=1e-4)
        np.testing.assert_allclose(y.forces, x.forces, rtol=0, atol=1e-4)
        np.testing.assert_array_equal(y.positions, x.positions)
        assert list(y.sampler) == list(x.sampler)
        np.testing.assert_array_equal(y.seed, x.seed)
    # The single-process label() takes the merged store as its own: nothing left to do.
    again = label(teacher_spec, frames, tmp_path / "dask.h5", progress=False)
    assert again.n_labelled == 0 and again.n_resumed == 8


def test_sampling_on_dask_gives_the_frames_of_one_process(client, tmp_path):
    config = {
        "seed": 3,
        "structures": [
            {
                "build": "bulk",
                "args": {"name": "Cu", "crystalstructure": "fcc", "a": 3.61, "cubic": True},
            }
        ],
        "md": {
            "temperatures_kelvin": [300, 600],
            "frames_per_temperature": 3,
            "stride": 2,
            "equilibration_steps": 4,
        },
        "rattle": {"count": 2, "sigma_angstrom": 0.05},
    }
    serial = sample(config, teacher=EMT_SPEC)
    parallel = sample(config, teacher=EMT_SPEC, cache_dir=tmp_path, cluster=client)
    assert len(list(tmp_path.glob("md-*.extxyz"))) == 2  # one file per trajectory
    assert [f.info["sampler"] for f in parallel] == [f.info["sampler"] for f in serial]
    for a, b in zip(serial, parallel, strict=True):
        # MD frames come back from their extxyz cache files (8 decimals).
        np.testing.assert_allclose(a.positions, b.positions, atol=1e-6)
        assert a.info["seed"] == b.info["seed"]


def cu_frames(n: int) -> list[ase.Atoms]:
    frames = []
    for i in range(n):
        atoms = ase.build.bulk("Cu", "fcc", a=3.61, cubic=True) * (1 + i % 2, 1, 1)
        atoms.rattle(0.05, seed=i)
        frames.append(atoms)
    return frames


def committed(folder) -> int:
    total = 0
    for path in folder.glob("shard-*.h5"):
        try:
            with LabelStore(path) as shard:
                total += len(shard)
        except Exception:
            pass
    return total


def test_worker_killed_mid_run_then_rerun_stores_each_frame_once(client, tmp_path):
    from ase.calculators.emt import EMT

    frames = cu_frames(240)
    store = tmp_path / "labels.h5"
    options = {"seconds": 0.01}  # 10 ms a frame: 1.2 s per worker, time to kill one
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["summary"] = label_on_cluster(
                SLOW_EMT_SPEC,
                frames,
                store,
                client,
                teacher_options=options,
                batch_size=3,
                shards=4,
                progress=False,
            )
        except Exception as error:  # the killed worker's shard fails the run
            outcome["error"] = error

    thread = threading.Thread(target=run)
    thread.start()
    folder = shard_folder(store)
    deadline = time.monotonic() + 120
    while committed(folder) < 30 and time.monotonic() < deadline and thread.is_alive():
        time.sleep(0.05)
    killed_at = committed(folder)
    assert 0 < killed_at < len(frames), "the kill must land mid-run"
    victim = sorted(client.run(os.getpid).values())[0]
    os.kill(victim, signal.SIGKILL)  # mid-batch: no chance to clean up
    thread.join(timeout=180)
    assert not thread.is_alive()
    assert "error" in outcome, "allowed-failures 0: the dead worker's shard fails the run"
    assert not store.exists()  # nothing merged yet: shards only
    assert folder.is_dir()

    client.wait_for_workers(2, timeout=60)  # the nanny restarts the killed worker
    summary = label_on_cluster(
        SLOW_EMT_SPEC,
        frames,
        store,
        client,
        teacher_options=options,
        batch_size=5,  # another batch size: resuming does not depend on it
        progress=False,
    )
    assert summary.n_frames == len(frames)
    assert 0 < summary.n_labelled < len(frames)  # the rerun resumed the shards
    with LabelStore(store) as labels:
        # Exactly once, in input order: the input's hashes, each once.
        assert labels.input_hashes() == [frame_hash(f) for f in frames]
        np.testing.assert_array_equal(labels.input_indices(), np.arange(len(frames)))
        energies = labels.arrays().energy
    reference = []
    for atoms in frames:
        atoms = atoms.copy()
        atoms.calc = EMT()
        reference.append(atoms.get_potential_energy())
    np.testing.assert_allclose(energies, reference, rtol=0, atol=1e-10)
    assert not folder.exists()
