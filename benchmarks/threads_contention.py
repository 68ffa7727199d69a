"""How a torch teacher and a JAX student slow down when another process takes a core.

    python benchmarks/threads_contention.py --output benchmarks/results/threads_cpu.json

For each thread policy (one process per case, so settings made before torch and jax
start take effect) it times, on the CPU, with the machine quiet and then with one
busy-looping process per ``--load`` core:

- ``teacher``: SevenNet-0 labels of a 16-atom Si cell (seconds per frame);
- ``student``: StudentCalculator calls of a default PaiNN on the same cell (ms/call).

Policies: ``default`` (nothing set: torch and XLA use every core), ``runtime`` (what
``jaxdistill.runtime.configure()`` sets), ``one`` (one thread each).
"""

from __future__ import annotations

import argparse
import datetime
import json
import multiprocessing
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CASE = """
import json, sys, time
sys.path.insert(0, {root!r})
policy = {policy!r}
if policy == "runtime":
    from jaxdistill import runtime
    settings = runtime.configure()
elif policy == "one":
    from jaxdistill import runtime
    settings = runtime.configure(threads=1)
import ase.build
import numpy as np
atoms = ase.build.bulk("Si", "diamond", a=5.43, cubic=True) * (2, 1, 1)
rng = np.random.default_rng(0)
frames = []
for _ in range({frames}):
    a = atoms.copy(); a.rattle(0.05, seed=int(rng.integers(1 << 30))); frames.append(a)
from jaxdistill import StudentCalculator, create_student, load_teacher
teacher = load_teacher("sevennet:7net-0", device="cpu")
teacher.label(frames[:2])
start = time.perf_counter()
teacher.label(frames)
teacher_s = (time.perf_counter() - start) / len(frames)
import torch, jax
student = create_student("painn", ["Si"], cutoff=5.0)
calc = StudentCalculator(student, device="cpu")
a = atoms.copy(); a.calc = calc; a.get_forces()
times = []
for k in range({calls}):
    a.positions = atoms.positions + 0.01 * rng.normal(size=atoms.positions.shape)
    t0 = time.perf_counter(); a.get_forces(); times.append(time.perf_counter() - t0)
print(json.dumps({{
    "teacher_s_per_frame": teacher_s,
    "student_ms_per_call": 1e3 * float(np.median(times)),
    "torch_threads": torch.get_num_threads(),
}}))
"""


def busy() -> None:
    while True:
        pass


def run_case(policy: str, frames: int, calls: int) -> dict:
    code = CASE.format(root=str(ROOT), policy=policy, frames=frames, calls=calls)
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "XLA_FLAGS")}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        return {"error": done.stderr[-2000:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--load", type=int, default=1, help="busy processes while loaded")
    parser.add_argument("--frames", type=int, default=20)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--policies", default="default,runtime,one")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    record = {
        "benchmark": "threads_contention",
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "available_cores": len(os.sched_getaffinity(0)),
        "command": " ".join(sys.argv),
        "results": {},
    }
    for policy in args.policies.split(","):
        quiet = run_case(policy, args.frames, args.calls)
        load = [multiprocessing.Process(target=busy, daemon=True) for _ in range(args.load)]
        for process in load:
            process.start()
        time.sleep(1.0)
        try:
            loaded = run_case(policy, args.frames, args.calls)
        finally:
            for process in load:
                process.terminate()
        record["results"][policy] = {"quiet": quiet, "loaded": loaded}
        print(policy, json.dumps(record["results"][policy]), flush=True)
        if args.output:
            args.output.parent.mkdir(parents=True, exist_ok=True)
            args.output.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
