"""The host round trip of one jitted call, by transfer route: the floor of an ASE call.

    python benchmarks/round_trip.py --output benchmarks/results/round_trip_h200.json

A StudentCalculator call sends one packed buffer ``[n + 3, 3]`` (positions and cell) to
the device and brings one result vector ``[1 + 3 n]`` back. This times a jitted function
of exactly those shapes that does no work (``x[0, 0]`` added to zeros), with the input
and output taking each route JAX offers:

- ``numpy_in``: the numpy buffer passed to the jitted function, ``np.asarray`` of the
  result (what the calculator does today);
- ``device_put_in``: ``jax.device_put`` of the buffer first, then the call;
- ``pinned_out``: the result written to pinned host memory by the program itself
  (``out_shardings`` with ``memory_kind="pinned_host"``), then ``np.asarray``;
- ``pinned_in_out``: the buffer put in pinned host memory first, the program reading it
  from there and writing its result there;
- ``block_then_get``: the default route, timed in two parts (dispatch and execution up
  to ``block_until_ready``, then the copy back);
- ``copy_async``: ``copy_to_host_async()`` right after the call, then ``np.asarray``.

With ``--calculator-sizes`` it also times ``StudentCalculator.get_forces`` itself with
its result left on the device or written to pinned host memory (the two calculators
alternate call by call, so drifts of the machine hit both alike).

Median and p99 over ``--repeats`` calls, for each size in ``--atoms``. With
``--calculator-profile`` it also profiles ``StudentCalculator.get_forces`` of Si 64
(``cProfile``, the top functions by own time), to show the host work around the call.
"""

from __future__ import annotations

import argparse
import cProfile
import datetime
import io
import json
import os
import platform
import pstats
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def stats(times_s: list[float]) -> dict[str, float]:
    us = np.asarray(times_s) * 1e6
    return {"median_us": float(np.median(us)), "p99_us": float(np.percentile(us, 99))}


def _sharding(device, memory_kind: str | None):
    return jax.sharding.SingleDeviceSharding(device, memory_kind=memory_kind)


def routes(device, n_atoms: int, repeats: int) -> dict[str, dict]:
    """Median/p99 µs of each route for one size (see the module docstring)."""
    n_out = 1 + 3 * n_atoms
    host = np.zeros((n_atoms + 3, 3), np.float32)

    def null(x):
        return jnp.zeros((n_out,), x.dtype) + x[0, 0]

    on_device = _sharding(device, "device")
    plain = jax.jit(null, in_shardings=on_device, out_shardings=on_device)
    results: dict[str, dict] = {}

    def timed(name: str, call) -> None:
        try:
            for _ in range(20):
                call()
            times = []
            for i in range(repeats):
                host[0, 0] = i  # a new input every call, as positions are
                start = time.perf_counter()
                call()
                times.append(time.perf_counter() - start)
            results[name] = stats(times)
        except Exception as error:  # a route this JAX or device lacks: recorded, not fatal
            results[name] = {"error": repr(error)[:300]}

    timed("numpy_in", lambda: np.asarray(plain(host)))
    timed("device_put_in", lambda: np.asarray(plain(jax.device_put(host, device))))
    try:
        pinned = _sharding(device, "pinned_host")
        to_pinned = jax.jit(null, in_shardings=on_device, out_shardings=pinned)
        both_pinned = jax.jit(null, in_shardings=pinned, out_shardings=pinned)
        timed("pinned_out", lambda: np.asarray(to_pinned(host)))
        timed(
            "pinned_in_out",
            lambda: np.asarray(both_pinned(jax.device_put(host, pinned))),
        )
    except Exception as error:
        results["pinned"] = {"error": repr(error)[:300]}

    dispatch, fetch = [], []
    for i in range(repeats + 20):
        host[0, 0] = i
        start = time.perf_counter()
        out = plain(host).block_until_ready()
        middle = time.perf_counter()
        np.asarray(out)
        end = time.perf_counter()
        if i >= 20:
            dispatch.append(middle - start)
            fetch.append(end - middle)
    results["block_then_get"] = {"to_ready": stats(dispatch), "copy_back": stats(fetch)}

    def copy_async():
        out = plain(host)
        out.copy_to_host_async()
        return np.asarray(out)

    timed("copy_async", copy_async)
    return results


def calculator_routes(sizes: list[int], repeats: int) -> dict:
    """Median/p99 µs of ``get_forces`` (default PaiNN, Si, moved every call) with the
    packed result left in device memory or written to pinned host memory
    (``JAXDISTILL_RESULT_MEMORY``), alternating the two calculators call by call."""
    from structures import silicon_cell

    from jaxdistill import StudentCalculator, create_student
    from jaxdistill.md.ase_calculator import RESULT_MEMORY_ENV

    student = create_student("painn", ["Si"], cutoff=5.0)
    out = {}
    for n_atoms in sizes:
        atoms_of, times = {}, {}
        for memory in ("device", "pinned_host"):
            os.environ[RESULT_MEMORY_ENV] = memory
            atoms = silicon_cell(n_atoms)
            atoms.calc = StudentCalculator(student)
            try:
                atoms.get_forces()  # binds the device (and reads the variable) now
                atoms_of[memory], times[memory] = atoms, []
            except Exception as error:
                out.setdefault(str(n_atoms), {})[memory] = {"error": repr(error)[:300]}
        os.environ.pop(RESULT_MEMORY_ENV, None)
        rng = np.random.default_rng(0)
        for i in range(repeats + 20):
            move = rng.normal(scale=1e-4, size=(n_atoms, 3))  # the same walk for both
            for memory, atoms in atoms_of.items():
                atoms.positions = atoms.positions + move
                start = time.perf_counter()
                atoms.get_forces()
                if i >= 20:
                    times[memory].append(time.perf_counter() - start)
        if len(atoms_of) == 2:
            a, b = (atoms_of[m].get_forces() for m in ("device", "pinned_host"))
            out.setdefault(str(n_atoms), {})["max_force_difference"] = float(np.abs(a - b).max())
        for memory, values in times.items():
            out.setdefault(str(n_atoms), {})[memory] = stats(values)
    return out


def calculator_profile(calls: int) -> dict:
    """cProfile of ``get_forces`` of a default PaiNN on 64 Si atoms (moved every call)."""
    from structures import silicon_cell

    from jaxdistill import StudentCalculator, create_student

    atoms = silicon_cell(64)
    atoms.calc = StudentCalculator(create_student("painn", ["Si"], cutoff=5.0))
    base = atoms.positions.copy()
    rng = np.random.default_rng(0)
    moves = [base + rng.normal(scale=0.01, size=base.shape) for _ in range(64)]
    for i in range(50):
        atoms.positions = moves[i % 64]
        atoms.get_forces()
    profile = cProfile.Profile()
    start = time.perf_counter()
    profile.enable()
    for i in range(calls):
        atoms.positions = moves[i % 64]
        atoms.get_forces()
    profile.disable()
    wall = time.perf_counter() - start
    text = io.StringIO()
    pstats.Stats(profile, stream=text).sort_stats("tottime").print_stats(20)
    return {
        "calls": calls,
        "us_per_call_profiled": wall / calls * 1e6,
        "jax_device": str(atoms.calc.jax_device),
        "top_by_own_time": text.getvalue().splitlines()[-30:],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--atoms", default="9,64,1000")
    parser.add_argument("--repeats", type=int, default=2000)
    parser.add_argument("--calculator-profile", type=int, default=0, metavar="CALLS")
    parser.add_argument(
        "--calculator-sizes", default="", help="Si sizes for the result-memory A/B, e.g. 64,1000"
    )
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    device = jax.devices()[0]
    record = {
        "benchmark": "round_trip",
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "device": str(device.device_kind),
        "platform": platform.platform(),
        "jax": jax.__version__,
        "command": " ".join(sys.argv),
        "sizes": {},
    }
    for n_atoms in (int(n) for n in args.atoms.split(",")):
        record["sizes"][str(n_atoms)] = routes(device, n_atoms, args.repeats)
        print(n_atoms, json.dumps(record["sizes"][str(n_atoms)]), flush=True)
    if args.calculator_sizes:
        sizes = [int(n) for n in args.calculator_sizes.split(",")]
        record["calculator_result_memory"] = calculator_routes(sizes, args.repeats // 4)
        print(json.dumps(record["calculator_result_memory"]), flush=True)
    if args.calculator_profile:
        record["calculator_profile"] = calculator_profile(args.calculator_profile)
        print("\n".join(record["calculator_profile"]["top_by_own_time"]), flush=True)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
