"""Data parallelism: two (virtual CPU) devices give the same run as one device.

Both tests run in a subprocess with ``--xla_force_host_platform_device_count=2``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from train_helpers import TINY

SCRIPT = """
import json, sys
import jax
jax.config.update("jax_enable_x64", True)
import numpy as np
from jaxdistill.train import train

assert jax.local_device_count() == 2, jax.devices()
config = {config!r}
one = train(sys.argv[1], sys.argv[2] + "/one", config, devices=jax.devices()[:1], progress=False)
two = train(sys.argv[1], sys.argv[2] + "/two", config, progress=False)
diff = max(
    float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
    for a, b in zip(jax.tree.leaves(one.params), jax.tree.leaves(two.params))
)
scale = max(float(np.max(np.abs(np.asarray(a)))) for a in jax.tree.leaves(one.params))
print(json.dumps({{
    "diff": diff,
    "scale": scale,
    "devices": [one.metadata["training"]["devices"], two.metadata["training"]["devices"]],
    "validation": [
        one.metadata["training"]["last_validation"], two.metadata["training"]["last_validation"]
    ],
}}))
"""


@pytest.mark.slow
def test_two_devices_equal_one(si_store, tmp_path):
    config = {**TINY, "dtype": "float64", "steps": 8, "validation_interval": 4, "batch_size": 5}
    script = tmp_path / "parallel.py"
    script.write_text(textwrap.dedent(SCRIPT.format(config=config)))
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    out = subprocess.run(
        [sys.executable, str(script), str(si_store), str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=1200,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["devices"] == [["cpu:0"], ["cpu:0", "cpu:1"]]
    assert result["diff"] <= 1e-9 * max(result["scale"], 1.0), result
    one, two = result["validation"]
    for key in ("force_mae_meV_per_A", "energy_mae_meV_per_atom", "stress_mae_meV_per_A3"):
        assert one[key] == pytest.approx(two[key], rel=1e-9)
    assert one["frames"] == two["frames"] == 5


STEP_SCRIPT = """
import json, sys
import jax
jax.config.update("jax_enable_x64", True)
import numpy as np
from jaxdistill.data.batching import make_batch, plan_capacity, precompute_neighbours, shard_indices
from jaxdistill.data.store import LabelStore
from jaxdistill.student import create_student
from jaxdistill.train import LossWeights, TrainConfig, make_eval_step, make_mesh, make_optimizer
from jaxdistill.train import make_train_step
from jaxdistill.train.step import init_state, replicated, sharded

with LabelStore(sys.argv[1]) as store:
    labels = store.arrays(range(5))
student = create_student("schnet", ["Si"], cutoff=4.0, dtype="float64", features=8, num_layers=1)
frames = precompute_neighbours(labels, student.cutoff)
optimizer = make_optimizer(TrainConfig())
out = {}
for n in (1, 2):
    mesh = make_mesh(jax.devices()[:n])
    shards = shard_indices(np.arange(5), n)  # 5 frames: one shard of 5, or shards of 3 and 2
    plan = plan_capacity([frames], len(shards[0]), "single")
    batch = jax.device_put(make_batch(frames, shards, plan.fixed, "float64"), sharded(mesh))
    state = jax.device_put(init_state(student.params, optimizer), replicated(mesh))
    sums = make_eval_step(student.potential.predict, LossWeights(), mesh)(state.params, batch)
    step = make_train_step(student.potential.predict, optimizer, LossWeights(), 0.99, mesh)
    state, _ = step(state, batch)
    out[n] = {
        "sums": {k: float(v) for k, v in jax.device_get(sums).items()},
        "params": [np.asarray(x).tolist() for x in jax.tree.leaves(jax.device_get(state.params))],
    }
print(json.dumps(out))
"""


def test_two_device_step_equals_one_device_step(si_store, tmp_path):
    """Loss, error sums (stress included) and the update of one step match."""
    script = tmp_path / "step.py"
    script.write_text(STEP_SCRIPT)
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    out = subprocess.run(
        [sys.executable, str(script), str(si_store)],
        capture_output=True,
        text=True,
        env=env,
        timeout=1200,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    one, two = result["1"], result["2"]
    for key, value in one["sums"].items():
        assert two["sums"][key] == pytest.approx(value, rel=1e-12, abs=1e-15), key
    assert one["sums"]["n_stress"] == 5 and one["sums"]["stress_abs"] > 0
    for a, b in zip(one["params"], two["params"], strict=True):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-10, atol=1e-13)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_processes_train_as_one_process_with_two_devices(si_store, tmp_path):
    """Multi-host training (`jaxdistill train --coordinator ... --process-id k`, one
    process per host; here two CPU processes on this machine, one device each) gives
    the run of one process with two devices: the same parameters, one metrics file
    (written by process 0), checkpoints and the exported student."""
    import yaml

    from jaxdistill import load_student

    config = {
        **TINY, "dtype": "float64", "steps": 6, "validation_interval": 3, "batch_size": 6,
        "checkpoint_interval": 3,
    }  # fmt: skip
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    command = [sys.executable, "-m", "jaxdistill", "train", "--data", str(si_store)]
    command += ["--config", str(tmp_path / "config.yaml"), "--no-progress", "--device", "cpu"]
    port = _free_port()
    processes = [
        subprocess.Popen(
            [
                *command,
                *("--output", str(tmp_path / "multi"), "--coordinator", f"localhost:{port}"),
                *("--num-processes", "2", "--process-id", str(k)),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for k in (0, 1)
    ]
    outputs = [p.communicate(timeout=1200) for p in processes]
    for p, (out, err) in zip(processes, outputs, strict=True):
        assert p.returncode == 0, (out + err)[-3000:]
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    single = subprocess.run(
        [*command, "--output", str(tmp_path / "single")],
        capture_output=True,
        text=True,
        env=env,
        timeout=1200,
    )
    assert single.returncode == 0, (single.stdout + single.stderr)[-3000:]
    multi, one = load_student(tmp_path / "multi"), load_student(tmp_path / "single")
    assert len(multi.metadata["training"]["devices"]) == 2
    assert len(one.metadata["training"]["devices"]) == 2
    for a, b in zip(jax_leaves(one.params), jax_leaves(multi.params), strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-9, atol=1e-12)
    assert np.max(np.abs(jax_leaves(multi.params)[0])) > 0
    lines = (tmp_path / "multi" / "training" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [0, 3, 6]  # written once
    assert (tmp_path / "multi" / "training" / "checkpoints").is_dir()


def jax_leaves(tree) -> list[np.ndarray]:
    import jax

    return [np.asarray(x) for x in jax.tree.leaves(tree)]
