"""MD speed: students through jax-md and ASE, teachers through their ASE calculators.

    # full run (one H200: about 6-8 minutes; see docs/benchmarks.md for the device command)
    python benchmarks/md_speed.py --output benchmarks/results/md_speed_h200.json
    # a tiny check on a CPU (a few minutes on 2 cores)
    python benchmarks/md_speed.py --quick --output /tmp/md_speed_quick.json

Measured, all in one run, each part in try/except so one failure is recorded and the
rest still runs (the JSON is rewritten after every part):

- ``students_jax_md``: time per MD step of untrained default students ("painn",
  "schnet"; speed does not depend on training) through ``jaxdistill.run_md`` (NVT
  Langevin, ``lax.scan`` chunks of K steps, neighbour updates inside the loop);
  per-step time = chunk time / K, median, p95 and p99 over chunks; compilations
  during the timed run (expected 0).
- ``students_ase``: time per ``StudentCalculator`` call (energy, forces, stress) with
  the atoms moved slightly each call, as in MD.
- ``teachers``: time per call of Orb-v3 conservative (inf neighbours) and direct (20
  neighbours) with random weights, SevenNet-0, and FeNNol ANI-1x (water only; a file
  given by ``--fennol-model``; skipped when missing).
- ``variants``: the default student with a dense neighbour list (512, 4096 atoms),
  rebuilding the list every step without a branch (64, 512), and with jax-md's cell
  list (4096), through the same path.
- ``cost_split``: PaiNN (default size) forward, forward+backward, neighbour update
  without and with a rebuild, and a full NVT step, each inside ``lax.scan``.
- ``memory``: host RSS and device memory at the start, before and after a long student
  run at 64 atoms (``--long-steps``, default 100k).
- ``replicas``: many copies of 1-hexanol (21 atoms) in one vmapped run: atom-steps/s.

Systems: diamond Si cells of 64, 512 and 4096 atoms and a periodic water box of 648
atoms (216 molecules at 1 g/cm³). ``--budget-seconds`` caps repetitions so the whole
run fits a device lease.
"""

from __future__ import annotations

import os

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # torch teachers share the GPU

import argparse
import contextlib
import datetime
import importlib.metadata
import json
import platform
import sys
import time
import traceback
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(ROOT))
from structures import hexanol, silicon_cell, water_box  # noqa: E402

import jaxdistill  # noqa: E402
from jaxdistill import StudentCalculator, create_student  # noqa: E402
from jaxdistill.diagnostics import count_compilations  # noqa: E402
from jaxdistill.md import run_md  # noqa: E402

DEFAULT_FENNOL = "../shared/teachers/fennol-ani1x/ani1x_model0.fnx"


# -- helpers ---------------------------------------------------------------------------


class Budget:
    """A soft wall-clock budget: parts ask how much time they may still use."""

    def __init__(self, seconds: float):
        self.start = time.perf_counter()
        self.seconds = seconds

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> float:
        return self.seconds - self.elapsed()


def stats(values_us) -> dict:
    values = np.asarray(values_us, dtype=float)
    if values.size == 0:
        return {"n": 0}
    return {
        "n": int(values.size),
        "median": float(np.median(values)),
        "p95": float(np.percentile(values, 95)),
        "p99": float(np.percentile(values, 99)),
        "mean": float(np.mean(values)),
        "min": float(np.min(values)),
    }


def host_rss_mb() -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    except Exception:
        return None


def device_memory() -> dict:
    try:
        stats_ = jax.devices()[0].memory_stats() or {}
    except Exception:
        stats_ = {}
    keys = ("bytes_in_use", "peak_bytes_in_use", "bytes_limit")
    return {k: int(stats_[k]) for k in keys if k in stats_}


def memory_snapshot(label: str) -> dict:
    return {"label": label, "host_rss_mb": host_rss_mb(), "device": device_memory()}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def versions() -> dict:
    out = {"python": platform.python_version()}
    for name in (
        "jax",
        "jaxlib",
        "flax",
        "jax-md",
        "ase",
        "numpy",
        "vesin",
        "torch",
        "orb-models",
        "sevenn",
        "fennol",
    ):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    out["jaxdistill"] = jaxdistill.__version__
    return out


def error_record(error: BaseException) -> dict:
    return {
        "error": f"{type(error).__name__}: {error}"[:2000],
        "traceback": traceback.format_exc()[-4000:],
    }


# -- systems and students ---------------------------------------------------------------


def systems(quick: bool, sizes: list[int]) -> dict:
    out = {f"si{n}": silicon_cell(n) for n in sizes}
    out["water648" if not quick else "water192"] = water_box(216 if not quick else 64)
    return out


_STUDENTS: dict = {}


def student_for(architecture: str, atoms) -> object:
    species = tuple(sorted(set(atoms.get_chemical_symbols())))
    key = (architecture, species)
    if key not in _STUDENTS:
        _STUDENTS[key] = create_student(architecture, list(species), cutoff=5.0)
    return _STUDENTS[key]


def timestep_for(name: str) -> float:
    return 0.5 if name.startswith("water") else 1.0


# -- parts ------------------------------------------------------------------------------


def time_jax_md(
    student,
    atoms,
    name: str,
    args,
    budget: Budget,
    *,
    large_atoms: int = 1000,
    ns_per_day_timestep_fs: float | None = None,
    **run_options,
) -> dict:
    """Per-step time of run_md chunks (one sample per chunk of K steps).

    NVT at 300 K with the system's time step unless ``run_options`` says otherwise (the
    caller's ``run_md`` options win); chunks of ``--steps-per-chunk`` steps, a fifth of
    that above ``large_atoms``; ns/day at ``ns_per_day_timestep_fs`` (default: the time
    step run).
    """
    n = len(atoms)
    k = args.steps_per_chunk if n <= large_atoms else max(10, args.steps_per_chunk // 5)
    common = dict(
        ensemble="nvt",
        temperature_kelvin=300.0,
        timestep_fs=timestep_for(name),
        max_temperature_factor=1e9,  # untrained students: speed only
        friction_per_fs=0.05,
    )
    common.update(run_options, sample_every=k, chunk_steps=k)
    t0 = time.perf_counter()
    warm = run_md(student, atoms, steps=k, **common)  # compiles
    warm_seconds = time.perf_counter() - t0
    per_step = warm.chunk_us_per_step[-1] * 1e-6 if warm.chunk_us_per_step else 1e-3
    item_budget = min(args.item_seconds, max(1.0, budget.left() / 20))
    chunks = int(np.clip(item_budget / (k * per_step), 3, args.max_chunks))
    with count_compilations() as compiled:
        summary = run_md(student, atoms, steps=k * (chunks + 1), **common)
    chunk_us = summary.chunk_us_per_step[1:]  # drop the first executed chunk
    dt = ns_per_day_timestep_fs or common["timestep_fs"]
    return {
        "system": name,
        "n_atoms": n,
        "device": jax.default_backend(),
        "steps_per_chunk": k,
        "chunks_timed": len(chunk_us),
        "us_per_step": stats(chunk_us),
        "ns_per_day_at_median": 86400 * dt / float(np.median(chunk_us)),
        "ns_per_day_timestep_fs": dt,
        "warmup_seconds_incl_compile": warm_seconds,
        "compile_seconds": warm.compile_seconds,
        "compilations_during_timed_run": compiled.count,
        "neighbor_list_rebuilds": summary.neighbor_list_rebuilds,
        "neighbor_reallocations": summary.neighbor_reallocations,
        "mean_temperature_kelvin": summary.mean_temperature_kelvin,
        "seconds_incl_compile": time.perf_counter() - t0,
        "run_options": run_options,
    }


def time_ase(student, atoms, name: str, args, budget: Budget) -> dict:
    atoms = atoms.copy()
    calculator = StudentCalculator(student)
    atoms.calc = calculator
    t0 = time.perf_counter()
    atoms.get_forces()
    first = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    times = []
    deadline = time.perf_counter() + min(args.item_seconds, max(1.0, budget.left() / 20))
    with count_compilations() as compiled:
        for _ in range(args.ase_calls):
            atoms.positions += rng.normal(scale=1e-3, size=atoms.positions.shape)
            start = time.perf_counter()
            atoms.get_forces()
            atoms.get_stress()
            times.append(time.perf_counter() - start)
            if time.perf_counter() > deadline and len(times) >= 5:
                break
    return {
        "system": name,
        "n_atoms": len(atoms),
        "ms_per_call": stats(np.array(times) * 1e3),
        "first_call_seconds": first,
        "compilations_after_first_call": compiled.count,
        "neighbour_list_builds": calculator.neighbour_list_builds,
    }


def teacher_factories(args, device: str) -> dict:
    """name -> (factory, systems it runs on)."""

    def orb(kind: str):
        def build():
            import torch
            from orb_models.forcefield import pretrained
            from orb_models.forcefield.atomic_system import SystemConfig
            from orb_models.forcefield.calculator import ORBCalculator

            torch.set_float32_matmul_precision("high")  # orb's "float32-high"
            if kind == "conservative":
                model = pretrained.orb_v3_conservative_architecture(
                    device=device, system_config=SystemConfig(radius=6.0, max_num_neighbors=120)
                )
            else:
                model = pretrained.orb_v3_direct_architecture(
                    device=device, system_config=SystemConfig(radius=6.0, max_num_neighbors=20)
                )
            model.eval()
            return ORBCalculator(model, device=device)

        return build

    def sevennet():
        from sevenn.calculator import SevenNetCalculator

        return SevenNetCalculator("7net-0", device=device)

    def fennol():
        path = Path(args.fennol_model)
        if not path.is_absolute() and not path.exists():
            path = ROOT / args.fennol_model
        if not path.exists():
            raise FileNotFoundError(f"FeNNol model {args.fennol_model} not found: skipped")
        from fennol.ase import FENNIXCalculator

        return FENNIXCalculator(str(path))

    return {
        "orb-v3-conservative-inf (random weights)": (orb("conservative"), "all"),
        "orb-v3-direct-20 (random weights)": (orb("direct"), "all"),
        "sevennet-0": (sevennet, "all"),
        "fennol-ani1x": (fennol, "water"),
    }


def time_teacher_calls(calculator, atoms, name: str, args, budget: Budget) -> dict:
    atoms = atoms.copy()
    atoms.calc = calculator
    t0 = time.perf_counter()
    atoms.get_forces()
    first = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    times = []
    deadline = time.perf_counter() + min(args.item_seconds, max(1.0, budget.left() / 20))
    stress = bool(atoms.pbc.all())
    for _ in range(args.teacher_calls):
        atoms.positions += rng.normal(scale=1e-3, size=atoms.positions.shape)
        start = time.perf_counter()
        atoms.get_forces()
        if stress:
            with contextlib.suppress(Exception):
                atoms.get_stress()
        times.append(time.perf_counter() - start)
        if time.perf_counter() > deadline and len(times) >= 3:
            break
    return {
        "system": name,
        "n_atoms": len(atoms),
        "ms_per_call": stats(np.array(times) * 1e3),
        "first_call_seconds": first,
    }


def cost_split(student, atoms, name: str, args) -> dict:
    """Pieces of a PaiNN MD step, each timed inside lax.scan (µs per iteration)."""
    from ase import units
    from jax_md import partition, quantity, simulate, space

    from jaxdistill.md.jaxmd import default_disable_cell_list, jax_md_potential

    box = jnp.asarray(atoms.cell.array.T, jnp.float32)
    displacement, shift = space.periodic_general(box, fractional_coordinates=True)
    neighbor_fn, energy_fn = jax_md_potential(
        student, displacement, box, atoms.numbers, fractional_coordinates=True
    )
    rebuild_fn = partition.neighbor_list(
        displacement,
        box,
        student.cutoff + 0.5,
        dr_threshold=0.0,
        fractional_coordinates=True,
        format=partition.Sparse,
        disable_cell_list=default_disable_cell_list(),  # as jax_md_potential's default
    )
    R0 = jnp.asarray(atoms.get_scaled_positions(), jnp.float32)
    nbrs = neighbor_fn.allocate(R0)
    masses = jnp.asarray(atoms.get_masses(), jnp.float32)
    init_fn, apply_fn = simulate.nvt_langevin(energy_fn, shift, units.fs, units.kB * 300)
    state = init_fn(jax.random.PRNGKey(0), R0, mass=masses, neighbor=nbrs)
    k = max(10, args.steps_per_chunk // (5 if len(atoms) > 1000 else 1) // 4)
    tiny = 1e-7
    force_fn = quantity.force(energy_fn)

    def md_step(i, c):
        state, nbrs = c
        nbrs = nbrs.update(state.position)
        return apply_fn(state, neighbor=nbrs), nbrs

    pieces = {
        "forward": (
            lambda i, c: (c[0] + tiny, c[1] + energy_fn(c[0], nbrs)),
            (R0, jnp.zeros((), jnp.float32)),
        ),
        "forward_backward": (
            lambda i, c: (c[0] + tiny, c[1] + force_fn(c[0], neighbor=nbrs)),
            (R0, jnp.zeros_like(R0)),
        ),
        "neighbor_update_no_rebuild": (
            lambda i, c: (c[0] + tiny, c[1].update(c[0] + tiny)),
            (R0, nbrs),
        ),
        "neighbor_rebuild": (
            lambda i, c: (c[0] + tiny, rebuild_fn.update(c[0], c[1])),
            (R0, nbrs),
        ),
        "nvt_step_with_update": (md_step, (state, nbrs)),
    }
    out = {"system": name, "n_atoms": len(atoms), "iterations": k}
    for label, (body, carry) in pieces.items():
        try:
            run = _scan_loop(body, k)
            jax.block_until_ready(run(carry))  # compile
            times = []
            for _ in range(3):
                t0 = time.perf_counter()
                jax.block_until_ready(run(carry))
                times.append((time.perf_counter() - t0) / k * 1e6)
            out[f"{label}_us"] = float(np.median(times))
        except Exception as error:
            out[f"{label}_us"] = None
            out[f"{label}_error"] = f"{type(error).__name__}: {error}"[:500]
    return out


# -- fused vs reference message passing (issue 13) ------------------------------------

#: Targets of issue 13, µs per NVE step on one H200 (Si 64, 512, 4096 atoms).
FUSED_TARGETS_US = {
    "painn 64x3": {64: 80.0, 512: 200.0, 4096: 1000.0},
    "painn 128x3 + ZBL": {64: 120.0, 512: 350.0, 4096: 1800.0},
    "schnet 64x3": {64: 50.0, 512: 100.0, 4096: 500.0},
}
FUSED_STUDENTS = {
    "painn 64x3": ("painn", {}),
    "painn 128x3 + ZBL": ("painn", {"features": 128, "repulsion": "zbl"}),
    "schnet 64x3": ("schnet", {}),
}


def nve_chunk(neighbor_fn, energy_fn, atoms, steps: int, unroll: int = 1, update: bool = True):
    """A user's jax-md NVE chunk at 300 K, 1 fs: ``(chunk, state, nbrs)`` with
    ``chunk(state, nbrs) -> (state, nbrs)`` jitted over ``steps`` steps in ``lax.scan``.

    ``update=False`` keeps the allocated list fixed (no ``nbrs.update`` in the loop):
    the model's share of the step, without the neighbour-list work.
    """
    from ase import units
    from jax_md import simulate, space

    box = jnp.asarray(np.diag(atoms.cell.array), jnp.float32)
    _, shift = space.periodic(box)
    R0 = jnp.asarray(atoms.positions, jnp.float32)
    masses = jnp.asarray(atoms.get_masses(), jnp.float32)
    nbrs = neighbor_fn.allocate(R0)
    init_fn, apply_fn = simulate.nve(energy_fn, shift, 1.0 * units.fs)
    state = init_fn(jax.random.PRNGKey(0), R0, mass=masses, kT=units.kB * 300.0, neighbor=nbrs)

    @jax.jit
    def chunk(state, nbrs):
        def step(carry, _):
            state, nbrs = carry
            if update:
                nbrs = nbrs.update(state.position)
            return (apply_fn(state, neighbor=nbrs), nbrs), None

        return jax.lax.scan(step, (state, nbrs), None, length=steps, unroll=unroll)[0]

    return chunk, state, nbrs


def user_nve_loop(
    neighbor_fn, energy_fn, atoms, steps: int, chunks: int, max_reallocations: int = 4
) -> dict:
    """A user's own jax-md NVE loop: ``nbrs.update`` + ``apply_fn`` inside ``lax.scan``,
    run as jax-md asks: a chunk whose neighbour list overflowed is thrown away, the list
    reallocated (larger) from the chunk's start and the chunk redone.

    µs per step = chunk time / steps, one sample per chunk that completed without
    overflow (compiling chunks excluded: after a reallocation one untimed chunk runs
    first). A student that keeps outgrowing its list (an untrained one heats up) gives
    up after ``max_reallocations``; the row then says ``neighbor_overflow``.
    """
    chunk, state, nbrs = nve_chunk(neighbor_fn, energy_fn, atoms, steps)
    reallocations = 0

    def advance(state, nbrs):
        """One chunk, redone after reallocating while the list overflows."""
        nonlocal reallocations
        while True:
            new_state, new_nbrs = jax.block_until_ready(chunk(state, nbrs))
            if not new_nbrs.did_buffer_overflow or reallocations >= max_reallocations:
                return new_state, new_nbrs
            reallocations += 1
            nbrs = neighbor_fn.allocate(state.position)

    t0 = time.perf_counter()
    state, nbrs = advance(state, nbrs)
    compile_seconds = time.perf_counter() - t0
    times = []
    for _ in range(chunks):
        before = reallocations
        t0 = time.perf_counter()
        next_state, next_nbrs = advance(state, nbrs)
        elapsed = time.perf_counter() - t0
        if reallocations != before:  # it recompiled: time the next chunk instead
            next_state, next_nbrs = advance(next_state, next_nbrs)
            t0 = time.perf_counter()
            next_state, next_nbrs = advance(next_state, next_nbrs)
            elapsed = time.perf_counter() - t0
        state, nbrs = next_state, next_nbrs
        times.append(elapsed / steps * 1e6)
    return {
        "us_per_step": stats(times),
        "steps_per_chunk": steps,
        "first_chunk_seconds_incl_compile": compile_seconds,
        "neighbor_reallocations": reallocations,
        "neighbor_overflow": bool(nbrs.did_buffer_overflow),
        "neighbor_slots": int(np.prod(nbrs.idx.shape)),
        "finite": bool(jnp.all(jnp.isfinite(state.position))),
    }


SWEEP_BLOCKS = ("16,32,4", "16,16,4", "16,32,2", "16,64,4", "16,64,8", "32,32,4", "16,16,2")


def fused_sweep(sizes: list[int], budget: Budget, record: dict, save) -> dict:
    """Time the fused PaiNN 64x3 force call per block configuration; best per size.

    Returns ``{n_atoms: "block_nodes,block_edges,num_warps"}``.
    """
    from jax_md import quantity, space

    from jaxdistill.md.jaxmd import jax_md_potential
    from jaxdistill.models.fused import BLOCKS_ENV_VAR

    rows = record.setdefault("fused_sweep", [])
    student = create_student("painn", ["Si"], cutoff=5.0).with_message_passing("fused")
    best = {}
    sweep_start = budget.elapsed()
    for n in [n for n in sizes if n in (64, 4096)]:  # the ends; 512 takes the nearer
        atoms = silicon_cell(n)
        box = jnp.asarray(np.diag(atoms.cell.array), jnp.float32)
        displacement, _ = space.periodic(box)
        R0 = jnp.asarray(atoms.positions, jnp.float32)
        iterations = 200 if n <= 1000 else 40
        for blocks in SWEEP_BLOCKS:
            if budget.left() < 10 or budget.elapsed() - sweep_start > 110:
                break
            os.environ[BLOCKS_ENV_VAR] = blocks
            try:
                neighbor_fn, energy_fn = jax_md_potential(student, displacement, box, atoms.numbers)
                nbrs = neighbor_fn.allocate(R0)
                force_fn = quantity.force(energy_fn)
                body = lambda i, c, f=force_fn, nb=nbrs: (c[0] + 1e-7, c[1] + f(c[0], neighbor=nb))  # noqa: E731
                run = _scan_loop(body, iterations)
                jax.block_until_ready(run((R0, jnp.zeros_like(R0))))
                times = []
                for _ in range(3):
                    t0 = time.perf_counter()
                    jax.block_until_ready(run((R0, jnp.zeros_like(R0))))
                    times.append((time.perf_counter() - t0) / iterations * 1e6)
                row = {"n_atoms": n, "blocks": blocks, "force_call_us": float(np.median(times))}
                if n not in best or row["force_call_us"] < best[n][1]:
                    best[n] = (blocks, row["force_call_us"])
            except Exception as error:
                row = {"n_atoms": n, "blocks": blocks, **error_record(error)}
            rows.append(row)
            print(f"[sweep] {row}", flush=True)
            save()
    os.environ.pop(BLOCKS_ENV_VAR, None)
    chosen = {n: b for n, (b, _) in best.items()}
    for n in sizes:
        if n not in chosen and chosen:
            chosen[n] = chosen[min(chosen, key=lambda m: abs(np.log(m / n)))]
    record["fused_blocks_chosen"] = chosen
    return record["fused_blocks_chosen"]


#: Evaluation paths compared by ``--fused-only``: (label, message_passing, list format,
#: ``compact_rows``). "receiver_major" is the scatter-free layout on the list as
#: allocated; "compact" the same with its rows compacted to the pairs within the cutoff
#: each step; "sparse" the edge-list path that was the default before 2026-12-06;
#: "default" what a student gives with no option set (``message_passing="auto"``: fused
#: message passing where it won, ``compact_rows="auto"``; the opt-in node kernels too
#: with ``JAXDISTILL_NODE_KERNELS=on``).
COMPARED_PATHS = (
    ("receiver_major", "reference", "dense", False),
    ("compact", "reference", "dense", True),
    ("sparse", "reference", "sparse", False),
    ("fused", "fused", "dense", False),
    ("default", "auto", "dense", "auto"),
)


def fused_comparison(
    args, sizes: list[int], budget: Budget, record: dict, save, blocks: dict | None = None
) -> None:
    """Each evaluation path (:data:`COMPARED_PATHS`) beside the jax-md LJ floor."""
    from jax_md import energy, partition, space

    from jaxdistill.md.jaxmd import jax_md_potential

    rows = record.setdefault("fused_vs_reference", [])
    paths = [p for p in COMPARED_PATHS if not args.paths or p[0] in args.paths.split(",")]
    for n in sizes:
        atoms = silicon_cell(n)
        steps = args.steps_per_chunk if n <= 1000 else max(10, args.steps_per_chunk // 5)
        chunks = max(3, min(args.max_chunks, 5))
        box = jnp.asarray(np.diag(atoms.cell.array), jnp.float32)
        displacement, _ = space.periodic(box)
        try:  # the floor: Lennard-Jones, 5 Å cutoff, same loop and list settings
            neighbor_fn, energy_fn = energy.lennard_jones_neighbor_list(
                displacement, box, sigma=2.0, epsilon=0.05, r_onset=2.0, r_cutoff=2.5,
                format=partition.Sparse, disable_cell_list=True,
            )  # fmt: skip
            row = {"model": "jax-md LJ", "mode": "floor", "n_atoms": n}
            row.update(user_nve_loop(neighbor_fn, energy_fn, atoms, steps, chunks))
            rows.append(row)
            print(f"[paths] LJ/{n}: {row['us_per_step']['median']:.1f} us", flush=True)
        except Exception as error:
            rows.append({"model": "jax-md LJ", "n_atoms": n, **error_record(error)})
        save()
        for label, (architecture, hyper) in FUSED_STUDENTS.items():
            if args.fused_students and label.split()[0] + label.split()[1] not in (
                args.fused_students
            ):
                continue
            student = create_student(architecture, ["Si"], cutoff=5.0, **hyper)
            from jaxdistill.models.fused import BLOCKS_ENV_VAR

            for mode, message_passing, neighbor_format, compact_rows in paths:
                if budget.left() < 15:
                    record["skipped"].append(f"path comparison {label}/{n}/{mode}: budget")
                    continue
                row = {"model": label, "mode": mode, "n_atoms": n,
                       "message_passing": message_passing, "format": neighbor_format,
                       "compact_rows": compact_rows}  # fmt: skip
                if blocks and n in blocks:  # read when the loop is traced
                    os.environ[BLOCKS_ENV_VAR] = blocks[n]
                    row["blocks"] = blocks[n]
                try:
                    neighbor_fn, energy_fn = jax_md_potential(
                        student.with_message_passing(message_passing),
                        displacement,
                        box,
                        atoms.numbers,
                        format=neighbor_format,
                        capacity_multiplier=args.capacity_multiplier,
                        compact_rows=compact_rows,
                    )
                    row["capacity_multiplier"] = args.capacity_multiplier
                    row.update(user_nve_loop(neighbor_fn, energy_fn, atoms, steps, chunks))
                    target = FUSED_TARGETS_US[label][n] if n in FUSED_TARGETS_US[label] else None
                    median = row["us_per_step"]["median"]
                    row["target_us"] = target
                    row["ratio_to_target"] = None if target is None else median / target
                    print(f"[paths] {label}/{n}/{mode}: {median:.1f} us (target {target})",
                          flush=True)  # fmt: skip
                except Exception as error:
                    row.update(error_record(error))
                    print(f"[paths] {label}/{n}/{mode}: {row['error']}", flush=True)
                rows.append(row)
                save()


def fused_replicas(args, budget: Budget, record: dict, save) -> None:
    """Many replicas in one vmapped run_md per pure-JAX path: atom-steps/s (the fused
    kernels lost to both at 64 and 21 atoms, docs/benchmarks.md)."""
    rows = record.setdefault("fused_replicas", [])
    paths = [
        p
        for p in COMPARED_PATHS
        # run_md's replicas never compact (a lax.switch under vmap runs every branch)
        if p[0] not in ("fused", "compact") and (not args.paths or p[0] in args.paths.split(","))
    ]
    for name, atoms in (("si64", silicon_cell(64)), ("hexanol", hexanol())):
        student = student_for("painn", atoms)
        if name == "hexanol":
            # An untrained student has no repulsion and collapses the molecule within
            # a few hundred steps (MDInstabilityError); ZBL keeps atoms apart.
            species = sorted(set(atoms.get_chemical_symbols()))
            student = create_student("painn", species, cutoff=5.0, repulsion="zbl")
        for mode, message_passing, neighbor_format, _ in paths:
            if budget.left() < 20:
                record["skipped"].append(f"fused replicas {name}/{mode}: budget")
                continue
            row = {"system": name, "n_atoms": len(atoms), "mode": mode,
                   "replicas": args.replicas,
                   "student": "painn 64x3" + (" + ZBL" if name == "hexanol" else "")}  # fmt: skip
            try:
                summary = run_md(
                    student.with_message_passing(message_passing),
                    atoms,
                    neighbor_format=neighbor_format,
                    replicas=args.replicas,
                    ensemble="nvt",
                    temperature_kelvin=300.0,
                    timestep_fs=0.5,
                    steps=args.replica_steps,
                    sample_every=max(1, args.replica_steps // 4),
                    chunk_steps=max(1, args.replica_steps // 4),
                    max_temperature_factor=1e9,
                    # Untrained: the random student may pull the molecule apart, which
                    # is no reason to stop a speed measurement.
                    bond_factor=None,
                )
                row["us_per_step"] = summary.us_per_step
                row["atom_steps_per_second"] = summary.atom_steps_per_second
                print(f"[fused replicas] {name}/{mode}: {summary.atom_steps_per_second:.3g}",
                      flush=True)  # fmt: skip
            except Exception as error:
                row.update(error_record(error))
                print(f"[fused replicas] {name}/{mode}: {row['error']}", flush=True)
            rows.append(row)
            save()


def _scan_loop(body, iterations: int):
    return jax.jit(lambda carry: jax.lax.fori_loop(0, iterations, body, carry))


def teachers_main(args, budget: Budget) -> None:
    """The ``--teachers-only`` child: time the teachers, write JSON after each one."""
    import torch

    torch_device = "cuda" if torch.cuda.is_available() else "cpu"
    record: dict = {"teachers": [], "errors": [], "skipped": [], "torch_device": torch_device}

    def save() -> None:
        record["memory"] = {"host_rss_mb": host_rss_mb()}
        if torch_device == "cuda":
            record["memory"]["torch_max_allocated_bytes"] = int(torch.cuda.max_memory_allocated())
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(record, indent=2, default=str) + "\n")

    def note(part: str, error: BaseException) -> None:
        entry = {"part": part, **error_record(error)}
        record["errors"].append(entry)
        print(f"[error] {part}: {entry['error']}", flush=True)

    sizes = [int(s) for s in str(args.sizes).split(",") if s]
    run_teachers(args, systems(args.quick, sizes), record, budget, note, save, torch_device)
    save()


def run_teachers(args, structures, record, budget, note, save, torch_device) -> None:
    for teacher, (factory, where) in teacher_factories(args, torch_device).items():
        if budget.left() < 20:
            record["skipped"].append(f"{teacher}: budget")
            continue
        try:
            t0 = time.perf_counter()
            calculator = factory()
            build_seconds = time.perf_counter() - t0
        except Exception as error:
            note(f"teacher {teacher}", error)
            continue
        for name, atoms in structures.items():
            if where == "water" and not name.startswith("water"):
                continue
            if budget.left() < 15:
                record["skipped"].append(f"{teacher}/{name}: budget")
                continue
            try:
                row = time_teacher_calls(calculator, atoms, name, args, budget)
                row.update(teacher=teacher, build_seconds=build_seconds, device=torch_device)
                record["teachers"].append(row)
                print(f"[teacher] {teacher}/{name}: {row['ms_per_call']}", flush=True)
            except Exception as error:
                note(f"teacher {teacher}/{name}", error)
        del calculator
        save()


def run_teachers_subprocess(args, record, budget, note) -> None:
    """Run the teacher part in a fresh process and merge its JSON into ``record``."""
    import subprocess
    import tempfile

    seconds = max(20.0, budget.left() - 20.0)
    with tempfile.TemporaryDirectory() as folder:
        output = Path(folder) / "teachers.json"
        command = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--teachers-only",
            "--output",
            str(output),
            "--fennol-model",
            str(args.fennol_model),
            "--sizes",
            str(args.sizes),
            "--teacher-calls",
            str(args.teacher_calls),
            "--item-seconds",
            str(args.item_seconds),
            "--budget-seconds",
            str(seconds - 10.0),
        ] + (["--quick"] if args.quick else [])
        try:
            subprocess.run(command, check=True, timeout=seconds)
        except Exception as error:
            note("teachers subprocess", error)
        if output.exists():
            part = json.loads(output.read_text())
            record["teachers"].extend(part.get("teachers", []))
            record["errors"].extend(part.get("errors", []))
            record["skipped"].extend(part.get("skipped", []))
            record["teacher_process_memory"] = part.get("memory")


# -- main -------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="tiny CPU check")
    parser.add_argument("--output", type=Path, default=None, help="JSON path")
    parser.add_argument("--fennol-model", default=DEFAULT_FENNOL, help="FeNNol .fnx file")
    parser.add_argument("--budget-seconds", type=float, default=None)
    parser.add_argument("--item-seconds", type=float, default=None, help="cap per measurement")
    parser.add_argument("--sizes", default=None, help="Si cell sizes, e.g. 64,512,4096")
    parser.add_argument("--architectures", default="painn,schnet")
    parser.add_argument("--steps-per-chunk", type=int, default=None)
    parser.add_argument("--max-chunks", type=int, default=None)
    parser.add_argument("--ase-calls", type=int, default=None)
    parser.add_argument("--teacher-calls", type=int, default=None)
    parser.add_argument("--long-steps", type=int, default=None, help="memory run, 64 atoms")
    parser.add_argument("--replicas", type=int, default=None, help="0: skip the replica runs")
    parser.add_argument("--replica-steps", type=int, default=None)
    parser.add_argument("--skip-teachers", action="store_true")
    parser.add_argument("--skip-cost-split", action="store_true")
    parser.add_argument("--teachers-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--fused-only",
        action="store_true",
        help="only the fused-vs-reference comparison (with the LJ floor) and replicas",
    )
    parser.add_argument(
        "--fused-sweep",
        action="store_true",
        help="with --fused-only: first time block configurations, then use the best per size",
    )
    parser.add_argument(
        "--fused-students",
        default="",
        help="subset of painn64x3,painn128x3,schnet64x3 for --fused-only (default all)",
    )
    parser.add_argument(
        "--capacity-multiplier",
        type=float,
        default=1.25,
        help="neighbour-list head-room in the --fused-only user loops (a Dense list holds "
        "the largest neighbour count of any atom times this)",
    )
    parser.add_argument(
        "--paths",
        default="",
        help="subset of receiver_major,sparse,fused,default for --fused-only (default all)",
    )
    args = parser.parse_args()
    quick = args.quick
    defaults = dict(
        budget_seconds=(240.0 if quick else 420.0),
        item_seconds=(3.0 if quick else 8.0),
        sizes=("64" if quick else "64,512,4096"),
        steps_per_chunk=(20 if quick else 1000),
        max_chunks=(5 if quick else 30),
        ase_calls=(10 if quick else 300),
        teacher_calls=(2 if quick else 30),
        long_steps=(400 if quick else 100_000),
        replicas=(4 if quick else 256),
        replica_steps=(40 if quick else 2000),
    )
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    sizes = [int(s) for s in str(args.sizes).split(",") if s]
    architectures = [a for a in args.architectures.split(",") if a]
    budget = Budget(args.budget_seconds)
    if args.teachers_only:  # the child process: no JAX work here, only torch teachers
        teachers_main(args, budget)
        return
    device = jax.devices()[0]
    output = args.output or ROOT / "benchmarks" / "results" / (
        f"md_speed_{'quick_' if quick else ''}{device.platform}.json"
    )
    record: dict = {
        "benchmark": "md_speed",
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "hardware": {
            "device": str(device.device_kind),
            "platform": device.platform,
            "device_count": jax.device_count(),
            "cpu": cpu_model(),
            "cpu_count": os.cpu_count(),
            "os": platform.platform(),
        },
        "versions": versions(),
        "memory": [memory_snapshot("start")],
        "students": {},
        "students_jax_md": [],
        "students_ase": [],
        "teachers": [],
        "variants": [],
        "cost_split": [],
        "replicas": None,
        "errors": [],
        "skipped": [],
    }

    def save() -> None:
        record["runtime_seconds"] = budget.elapsed()
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(record, indent=2, default=str) + "\n")

    def note(part: str, error: BaseException) -> None:
        entry = {"part": part, **error_record(error)}
        record["errors"].append(entry)
        print(f"[error] {part}: {entry['error']}", flush=True)

    if args.fused_only:
        print(f"md_speed --fused-only on {device.device_kind}", flush=True)
        blocks = fused_sweep(sizes, budget, record, save) if args.fused_sweep else None
        fused_comparison(args, sizes, budget, record, save, blocks)
        if blocks and 64 in blocks:
            from jaxdistill.models.fused import BLOCKS_ENV_VAR

            os.environ[BLOCKS_ENV_VAR] = blocks[64]
        if args.replicas > 0:
            fused_replicas(args, budget, record, save)
        record["memory"].append(memory_snapshot("end"))
        save()
        print(f"wrote {output} after {budget.elapsed():.0f} s", flush=True)
        return

    structures = systems(quick, sizes)
    print(f"md_speed on {device.device_kind}; systems {list(structures)}", flush=True)

    # 1. students through jax-md and ASE
    for name, atoms in structures.items():
        for architecture in architectures:
            label = f"{architecture}/{name}"
            try:
                student = student_for(architecture, atoms)
                record["students"][f"{architecture}:{'-'.join(student.symbols)}"] = {
                    "architecture": architecture,
                    "hyperparameters": "defaults",
                    "parameters": student.num_parameters,
                    "cutoff_angstrom": student.cutoff,
                }
            except Exception as error:
                note(f"create {label}", error)
                continue
            if budget.left() < 30:
                record["skipped"].append(f"jax-md {label}: budget")
            else:
                try:
                    row = time_jax_md(student, atoms, name, args, budget)
                    row["architecture"] = architecture
                    record["students_jax_md"].append(row)
                    print(f"[jax-md] {label}: {row['us_per_step']}", flush=True)
                except Exception as error:
                    note(f"jax-md {label}", error)
            if budget.left() < 20:
                record["skipped"].append(f"ase {label}: budget")
            else:
                try:
                    row = time_ase(student, atoms, name, args, budget)
                    row["architecture"] = architecture
                    record["students_ase"].append(row)
                    print(f"[ase] {label}: {row['ms_per_call']}", flush=True)
                except Exception as error:
                    note(f"ase {label}", error)
            save()

    # 2. memory over a long run at 64 atoms (and its speed)
    try:
        si64 = silicon_cell(64)
        student = student_for("painn", si64)
        record["memory"].append(memory_snapshot("before long run"))
        steps = args.long_steps
        chunk = min(steps, 10_000)
        summary = run_md(
            student,
            si64,
            ensemble="nvt",
            temperature_kelvin=300.0,
            steps=steps,
            sample_every=chunk,
            chunk_steps=chunk,
            max_temperature_factor=1e9,
        )
        after = memory_snapshot(f"after {steps} steps (painn, 64 atoms)")
        after["us_per_step"] = summary.us_per_step
        after["ns_per_day"] = summary.ns_per_day
        after["compilations"] = summary.compilations
        after["neighbor_list_rebuilds"] = summary.neighbor_list_rebuilds
        record["memory"].append(after)
        print(f"[memory] {after}", flush=True)
    except Exception as error:
        note("long run", error)
    save()

    # 3. replicas: throughput of many small molecules in one call
    if budget.left() < 30:
        record["skipped"].append("replicas: budget")
    else:
        try:
            molecule = hexanol()
            student = student_for("painn", molecule)
            summary = run_md(
                student,
                molecule,
                replicas=args.replicas,
                ensemble="nvt",
                temperature_kelvin=np.linspace(300.0, 600.0, args.replicas),
                timestep_fs=0.5,
                steps=args.replica_steps,
                sample_every=max(1, args.replica_steps // 4),
                chunk_steps=max(1, args.replica_steps // 4),
                max_temperature_factor=1e9,
            )
            record["replicas"] = {
                "molecule": "1-hexanol",
                "n_atoms": len(molecule),
                "replicas": args.replicas,
                "steps": args.replica_steps,
                "us_per_step": summary.us_per_step,
                "atom_steps_per_second": summary.atom_steps_per_second,
                "molecule_steps_per_second": summary.atom_steps_per_second / len(molecule),
                "compile_seconds": summary.compile_seconds,
            }
            print(f"[replicas] {record['replicas']}", flush=True)
        except Exception as error:
            note("replicas", error)
    save()

    # 4. teachers through their ASE calculators, in a separate process: torch and JAX
    #    in one process fight over CPU threads (and the GPU), which distorts both
    if args.skip_teachers:
        record["skipped"].append("teachers: --skip-teachers")
    elif budget.left() < 30:
        record["skipped"].append("teachers: budget")
    else:
        run_teachers_subprocess(args, record, budget, note)
    save()

    # 5. neighbour-list variants of the default student: a dense list; rebuilding every
    #    step without a lax.cond (small systems); jax-md's cell list (jaxdistill disables
    #    it by default on jax >= 0.11: this records whether it works there)
    variants = [
        ({"neighbor_format": "dense"}, lambda n: n >= 512),
        ({"neighbor_rebuild": "always"}, lambda n: n <= 512),
        ({"disable_cell_list": False}, lambda n: n >= 4096),
    ]
    for name, atoms in structures.items():
        if not name.startswith("si"):
            continue
        for options, applies in variants:
            if not applies(len(atoms)):
                continue
            label = f"painn/{name} {options}"
            if budget.left() < 40:
                record["skipped"].append(f"variant {label}: budget")
                continue
            try:
                row = time_jax_md(student_for("painn", atoms), atoms, name, args, budget, **options)
                row.update(architecture="painn", **options)
                record["variants"].append(row)
                print(f"[variant] {label}: {row['us_per_step']}", flush=True)
            except Exception as error:
                note(f"variant {label}", error)
            save()

    # 6. where a PaiNN step's time goes
    if args.skip_cost_split:
        record["skipped"].append("cost split: --skip-cost-split")
    else:
        for name, atoms in structures.items():
            if not name.startswith("si"):
                continue
            if budget.left() < 30:
                record["skipped"].append(f"cost split {name}: budget")
                continue
            try:
                row = cost_split(student_for("painn", atoms), atoms, name, args)
                record["cost_split"].append(row)
                print(f"[cost split] {row}", flush=True)
            except Exception as error:
                note(f"cost split {name}", error)
            save()

    record["memory"].append(memory_snapshot("end"))
    save()
    print(f"wrote {output} after {budget.elapsed():.0f} s", flush=True)


if __name__ == "__main__":
    main()
