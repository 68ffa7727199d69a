"""Is training reproducible to the bit, and what does it cost?

    python benchmarks/train_determinism.py --store runs/bench/si_store.h5 \
        --output benchmarks/results/train_determinism_h200.json

Trains the same student on the same store with the same seed twice with XLA's
``--xla_gpu_deterministic_ops=true`` and twice without, each in a fresh process (the
flag is read when the backend starts), and reports per pair whether the final
parameters and the metrics lines are identical to the bit, and the time per optimiser
step (the run's wall time after its first step, i.e. without compilation).

``--make-store N`` first labels N rattled and strained 8-atom Si cells with SevenNet-0
on this machine's CPU into ``--store`` (so the store can be carried to a GPU machine).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DETERMINISTIC_FLAG = "--xla_gpu_deterministic_ops=true"

CONFIG = {
    "model": {"features": 64, "num_layers": 3, "num_radial": 16},
    "cutoff_angstrom": 5.0,
    "batch_size": 8,
    "steps": 600,
    "log_interval": 50,
    "validation_interval": 200,
    "checkpoint_interval": 200,
    "learning_rate": 3e-3,
}

RUN = """
import json, sys, time
sys.path.insert(0, {root!r})
from jaxdistill.train import train
start = time.perf_counter()
student = train({store!r}, {output!r}, {config!r}, progress=False)
wall = time.perf_counter() - start
lines = [json.loads(x) for x in open({output!r} + "/training/metrics.jsonl")]
print(json.dumps({{"wall_seconds": wall, "metrics": lines}}))
"""


def make_store(path: Path, n: int) -> None:
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "tests"))
    sys.path.insert(0, str(ROOT / "tests" / "train"))
    from train_helpers import silicon_frames

    from jaxdistill.labelling import label

    path.parent.mkdir(parents=True, exist_ok=True)
    label("sevennet:7net-0", silicon_frames(n), path, progress=True)


def run_once(store: Path, output: Path, deterministic: bool) -> dict:
    env = dict(os.environ)
    flags = env.get("XLA_FLAGS", "").replace(DETERMINISTIC_FLAG, "").strip()
    env["XLA_FLAGS"] = f"{flags} {DETERMINISTIC_FLAG}".strip() if deterministic else flags
    code = RUN.format(root=str(ROOT), store=str(store), output=str(output), config=CONFIG)
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        return {"error": done.stderr[-3000:]}
    result = json.loads(done.stdout.strip().splitlines()[-1])
    times = [line["time_s"] for line in result["metrics"] if "time_s" in line]
    steps = [line["step"] for line in result["metrics"] if "time_s" in line]
    if len(times) >= 2:  # after the first logged step: compilation excluded
        result["ms_per_step"] = 1e3 * (times[-1] - times[0]) / max(steps[-1] - steps[0], 1)
    return result


def same_params(a: Path, b: Path) -> bool:
    import jax
    import numpy as np

    from jaxdistill import load_student

    left, right = load_student(a).params, load_student(b).params
    pairs = zip(jax.tree_util.tree_leaves(left), jax.tree_util.tree_leaves(right), strict=True)
    return all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in pairs)


def without_times(lines: list[dict]) -> list[dict]:
    return [{k: v for k, v in line.items() if k != "time_s"} for line in lines]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--store", type=Path, required=True)
    parser.add_argument("--make-store", type=int, default=0)
    parser.add_argument("--steps", type=int, default=CONFIG["steps"])
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    if args.make_store:
        make_store(args.store, args.make_store)
        return
    CONFIG["steps"] = args.steps
    import jax

    record = {
        "benchmark": "train_determinism",
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "device": str(jax.devices()[0].device_kind),
        "platform": platform.platform(),
        "jax": jax.__version__,
        "command": " ".join(sys.argv),
        "config": CONFIG,
        "results": {},
    }
    with tempfile.TemporaryDirectory() as folder:
        for deterministic in (False, True):
            runs = []
            for k in range(2):
                output = Path(folder) / f"det{int(deterministic)}-{k}"
                runs.append((output, run_once(args.store, output, deterministic)))
            key = "deterministic_ops" if deterministic else "default"
            errors = [r["error"] for _, r in runs if "error" in r]
            if errors:
                record["results"][key] = {"error": errors[0]}
                continue
            record["results"][key] = {
                "identical_parameters": same_params(runs[0][0], runs[1][0]),
                "identical_metrics": without_times(runs[0][1]["metrics"])
                == without_times(runs[1][1]["metrics"]),
                "ms_per_step": [r.get("ms_per_step") for _, r in runs],
                "wall_seconds": [r["wall_seconds"] for _, r in runs],
                "final_metrics": runs[0][1]["metrics"][-1],
            }
            print(key, json.dumps(record["results"][key]), flush=True)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
