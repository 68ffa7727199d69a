"""runtime.configure: thread and determinism settings made before torch and jax start."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from jaxdistill import runtime


def _configure_in_fresh_python(env: dict[str, str], call: str = "configure()") -> dict:
    code = (
        "import json, os, sys\n"
        "from jaxdistill import runtime\n"
        f"settings = runtime.{call}\n"
        "import jax\n"
        "jax.numpy.ones(3).sum().block_until_ready()\n"
        "print(json.dumps({'settings': settings.__dict__, 'XLA_FLAGS': os.environ['XLA_FLAGS'],"
        " 'OMP_WAIT_POLICY': os.environ.get('OMP_WAIT_POLICY'),"
        " 'OMP_NUM_THREADS': os.environ['OMP_NUM_THREADS'], 'jax_before': 'jax' in sys.modules}))"
    )
    base = {
        k: v for k, v in os.environ.items() if not k.startswith(("XLA_", "OMP_", "JAXDISTILL_"))
    }
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={**base, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_defaults_follow_the_cores_and_make_gpu_sums_deterministic():
    result = _configure_in_fresh_python({})
    threads = max(1, runtime.available_cores() - 1)
    assert runtime.default_threads() == threads
    assert result["settings"]["threads"] == threads
    assert result["settings"]["deterministic"] is True
    assert result["settings"]["xla_started"] is False  # set before jax started
    assert runtime.DETERMINISTIC_FLAG in result["XLA_FLAGS"]
    assert result["OMP_WAIT_POLICY"] is None  # measured: it slows a quiet machine
    assert result["OMP_NUM_THREADS"] == str(threads)


def test_environment_overrides_and_the_users_own_values_win():
    result = _configure_in_fresh_python(
        {
            runtime.ENV_THREADS: "1",
            runtime.ENV_DETERMINISTIC: "0",
            "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=true",
        }
    )
    assert result["settings"]["threads"] == 1
    assert result["settings"]["deterministic"] is False
    assert runtime.DETERMINISTIC_FLAG not in result["XLA_FLAGS"]
    assert result["XLA_FLAGS"] == "--xla_cpu_multi_thread_eigen=true"  # not overridden
    assert result["OMP_NUM_THREADS"] == "1"


def test_single_thread_turns_xlas_pool_off():
    result = _configure_in_fresh_python({}, "configure(threads=1, deterministic=False)")
    assert result["XLA_FLAGS"] == "--xla_cpu_multi_thread_eigen=false"


def test_bad_thread_count():
    with pytest.raises(ValueError, match="threads must be >= 1"):
        runtime.configure(threads=0)
