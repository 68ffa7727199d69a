"""The host loop of the jax-md engine: compile chunks, run them, check and record.

The device does the physics (``md/jaxmd_engine.py``); this loop, between chunks,
redoes a chunk whose neighbour list overflowed (from its saved start, with a larger
list), checks every sample against the stability rules in order, writes frames and the
thermo log, and stops cleanly on a signal when asked to.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

import ase
import jax
import jax.numpy as jnp
import numpy as np
from ase import units

from jaxdistill.committee import Model, is_committee
from jaxdistill.diagnostics import count_compilations
from jaxdistill.md import jaxmd
from jaxdistill.md.checks import FragmentCheck, UncertaintyCheck, raise_blowup
from jaxdistill.md.initial import initial_momenta, standard_form
from jaxdistill.md.jaxmd import box_widths, minimum_box_width
from jaxdistill.md.jaxmd_engine import JaxMDEngine, JaxMDSettings, jaxmd_engine
from jaxdistill.md.recording import (
    ProgressReporter,
    ThermoLog,
    TrajectoryWriter,
    make_frame,
    summarise,
)
from jaxdistill.md.signals import StopOnSignal
from jaxdistill.md.types import EngineOptions, MDProgress, MDSummary

logger = logging.getLogger("jaxdistill.md")


def _replica_width(pairs: int) -> int:
    """Replicas' compacted width for atoms with at most ``pairs`` pairs within the
    cutoff: at least that many, with :data:`jaxmd.REPLICA_WIDTH_MARGIN` head-room."""
    return max(pairs, math.ceil(jaxmd.REPLICA_WIDTH_MARGIN * pairs), 1)


def schedule(steps: int, sample_every: int, chunk_steps: int) -> list[tuple[int, int]]:
    """Chunks as (samples, steps per sample); few distinct shapes, so few compilations."""
    per_chunk = max(1, chunk_steps // sample_every)
    full, remainder = divmod(steps, sample_every)
    chunks = []
    while full > 0:
        k = min(per_chunk, full)
        chunks.append((k, sample_every))
        full -= k
    if remainder:
        chunks.append((1, remainder))
    return chunks


@dataclass
class _Compiled:
    """An engine with its jitted functions and compiled chunks (kept between runs)."""

    engine: JaxMDEngine
    init: Any
    observe: Any
    chunks: dict[tuple, Any] = field(default_factory=dict)

    def chunk(self, carry, kT, params, n_samples: int, inner: int, width: int | None = None):
        """The chunk compiled for these shapes and compacted width (cached; compile
        time kept apart)."""
        nbrs = carry[1]
        # (the positions' shape: replicas of another count, or another structure's
        # atoms, need their own program)
        shape = carry[0].position.shape
        key = (n_samples, inner, shape, nbrs.max_occupancy, nbrs.cell_list_capacity, width)
        if key not in self.chunks:
            function = functools.partial(
                self.engine.chunk, n_samples=n_samples, inner=inner, width=width
            )
            self.chunks[key] = jax.jit(function).lower(carry, kT, params).compile()
        return self.chunks[key]


_CACHE: dict[tuple, _Compiled] = {}
_CACHE_SIZE = 8


def _cached(student: Model, reference: ase.Atoms, settings: JaxMDSettings) -> _Compiled:
    """An engine per (model, atoms, box, settings), so repeated runs reuse compilations.

    Parameters are arguments of the compiled chunk, not constants, so students of the
    same architecture and size (e.g. checkpoints of one training) share an engine.
    """
    periodic = bool(np.all(reference.pbc))
    key = (
        student.architecture,
        json.dumps(student.hyperparameters, sort_keys=True),
        tuple(student.species),
        float(student.cutoff),
        student.dtype,
        len(student) if is_committee(student) else 0,  # a committee: its own programs
        tuple(int(z) for z in reference.numbers),
        reference.cell.array.tobytes() if periodic else None,
        settings,
    )
    compiled = _CACHE.pop(key, None)
    if compiled is None:
        engine = jaxmd_engine(student, reference, settings)
        compiled = _Compiled(engine, jax.jit(engine.init), jax.jit(engine.observe))
    _CACHE[key] = compiled  # most recently used last
    while len(_CACHE) > _CACHE_SIZE:
        _CACHE.pop(next(iter(_CACHE)))
    return compiled


@dataclass(frozen=True)
class _Samples:
    """Turns device samples into host values, frames and verdicts for one run."""

    options: EngineOptions
    n_replicas: int
    numbers: np.ndarray
    cell: np.ndarray
    periodic: bool
    min_width: float
    committee: bool = False

    def host(self, tree: Any) -> dict:
        """One sample to the host, with a leading replica axis."""
        out = jax.device_get(tree)
        if self.n_replicas == 1:
            out = jax.tree_util.tree_map(lambda x: np.asarray(x)[None], out)
        return out

    def host_chunk(self, tree: Any) -> dict:
        """A chunk's samples to the host as ``[n_samples, n_replicas, ...]``."""
        out = jax.device_get(tree)
        if self.n_replicas > 1:
            return jax.tree_util.tree_map(lambda x: np.swapaxes(np.asarray(x), 0, 1), out)
        return jax.tree_util.tree_map(lambda x: np.asarray(x)[:, None], out)

    def frames(self, sample: dict, index: int | None, step: int) -> list[ase.Atoms]:
        """ase.Atoms for every replica at one sample (index into a chunk, or None)."""
        pick = (lambda x: x[index]) if index is not None else (lambda x: x)
        return [
            make_frame(
                self.numbers,
                pick(sample["positions"])[k],
                pick(sample["momenta"])[k],
                pick(sample["box"])[k].T if self.periodic else self.cell,
                np.array([self.periodic] * 3),
                pick(sample["potential_energy"])[k],
                pick(sample["forces"])[k],
                step,
                step * self.options.timestep_fs,
                pick(sample["kT"])[k] / units.kB,
                force_std=pick(sample["force_std"])[k] if self.committee else None,
            )
            for k in range(self.n_replicas)
        ]

    def thermo(self, sample: dict, index: int | None) -> dict[str, np.ndarray]:
        pick = (lambda x: x[index]) if index is not None else (lambda x: x)
        nan = np.full(self.n_replicas, np.nan)
        values = {
            "temperature_kelvin": pick(sample["kT"]) / units.kB,
            "potential_energy": pick(sample["potential_energy"]),
            "kinetic_energy": pick(sample["kinetic_energy"]),
            "conserved_energy": pick(sample["conserved_energy"]),
            "pressure_bar": pick(sample["pressure"]) / units.bar if self.periodic else nan,
            "volume": pick(sample["volume"]) if self.periodic else nan,
        }
        if self.committee:
            values["max_force_std"] = pick(sample["max_force_std"])
        return values

    def problems(self, values: dict, sample: dict, index: int) -> tuple[str | None, list[int]]:
        """The stability rules, then the NPT box width jax-md's minimum image needs."""
        reason, bad = self.options.stability.check_thermo(
            values["temperature_kelvin"],
            values["potential_energy"],
            np.all(np.isfinite(sample["positions"][index]), axis=(-1, -2)),
            self.options.temperatures,
        )
        if reason is not None or self.options.ensemble != "npt":
            return reason, bad
        widths = np.array([np.min(box_widths(b)) for b in sample["box"][index]])
        small = widths <= self.min_width
        if np.any(small):
            return (
                f"the NPT box shrank to a width of {np.min(widths):.3f} Å, below the "
                f"{self.min_width:.3f} Å that jax-md's minimum image needs with this cutoff",
                np.where(small)[0].tolist(),
            )
        return None, []


def _initial_carry(compiled: _Compiled, student: Model, structures, options, periodic):
    """The first carry (integrator state, list, inverse box, counters) and the kTs."""
    engine = compiled.engine
    n_replicas, dtype = len(structures), engine.dtype
    batched = n_replicas > 1
    reference = structures[0]
    if periodic:
        positions = np.stack([s.get_scaled_positions(wrap=True) for s in structures])
    else:
        positions = np.stack([s.positions for s in structures])
    momenta = np.stack(
        [
            initial_momenta(s, float(t), options.seed + k, options.initial_velocities)
            for k, (s, t) in enumerate(zip(structures, options.temperatures, strict=True))
        ]
    )
    kTs = jnp.asarray(units.kB * options.temperatures, dtype=dtype)
    positions = jnp.asarray(positions, dtype=dtype)
    momenta = jnp.asarray(momenta, dtype=dtype)
    keys = jax.vmap(jax.random.PRNGKey)(jnp.arange(n_replicas) + options.seed)
    boxes = jnp.broadcast_to(engine.box, (n_replicas, 3, 3)) if periodic else None
    if not batched:
        positions, momenta, keys, kTs = positions[0], momenta[0], keys[0], kTs[0]
        boxes = engine.box
    masses = jnp.asarray(reference.get_masses(), dtype=dtype)
    nbrs = engine.allocate(positions, boxes)
    state = compiled.init(keys, positions, momenta, nbrs, kTs, boxes, masses, student.params)
    shape = (n_replicas,) if batched else ()
    inverse_box = jnp.linalg.inv(boxes) if periodic else jnp.zeros(shape, dtype)
    carry = (state, nbrs, inverse_box, jnp.zeros(shape, jnp.int32), jnp.zeros(shape, dtype))
    return carry, kTs


def run_jaxmd(
    student: Model,
    structures: list[ase.Atoms],
    options: EngineOptions,
    *,
    neighbor_format: str,
    neighbor_rebuild: str,
    disable_cell_list: bool | None,
    capacity_multiplier: float,
    compact_rows: bool | str,
) -> MDSummary:
    """One jax-md run (replicas vmapped) with the checks, logs and summary of run_md."""
    start_wall = time.perf_counter()
    n_replicas = len(structures)
    batched = n_replicas > 1
    periodic = bool(np.all(structures[0].pbc))
    if periodic:
        structures = [standard_form(s) for s in structures]
        cells = np.stack([s.cell.array for s in structures])
        if not np.allclose(cells, cells[0], rtol=0, atol=1e-9):
            raise ValueError("replicas must share one cell")
    reference = structures[0]
    if batched and compact_rows == "auto":
        # Measured on an H100 (2026-12-07, benchmarks/replicas_speed.py): 128 x Si 64
        # 2-3 % faster compacted, 256 x hexanol no faster, and a width too narrow costs
        # a chunk's compilation; so replicas compact only when asked.
        compact_rows = False
    settings = JaxMDSettings(
        ensemble=options.ensemble,
        thermostat=options.thermostat,
        timestep_fs=options.timestep_fs,
        friction_per_fs=options.friction_per_fs,
        thermostat_time_fs=options.thermostat_time_fs,
        pressure_bar=options.pressure_bar,
        barostat_time_fs=options.barostat_time_fs,
        skin=options.skin,
        neighbor_format=str(neighbor_format),
        neighbor_rebuild=neighbor_rebuild,
        disable_cell_list=disable_cell_list,
        capacity_multiplier=capacity_multiplier,
        compact_rows=compact_rows,
        batched=batched,
    )
    compiled = _cached(student, reference, settings)
    engine = compiled.engine
    params = student.params
    n_atoms = len(reference)
    samples_of = _Samples(
        options,
        n_replicas,
        reference.numbers.copy(),
        reference.cell.array.copy(),
        periodic,
        # Isotropic NPT keeps the box's shape, so the width it needs is fixed.
        minimum_box_width(np.asarray(engine.box), engine.cutoff, options.skin) if periodic else 0.0,
        engine.committee,
    )
    carry, kTs = _initial_carry(compiled, student, structures, options, periodic)
    # Replicas' compacted width (see RowCompaction), sized from the pairs they count
    # now and widened (the chunk redone) when a chunk needed more; None: no compaction.
    start = engine.largest_pairs(carry)
    width = None if start is None else _replica_width(start)
    if width is not None:
        logger.info(
            "replicas on rows compacted to %d of %d slots (%d pairs within the cutoff)",
            width,
            carry[1].max_occupancy,
            start,
        )
    writer = TrajectoryWriter(options.trajectory, n_replicas)
    thermo = ThermoLog(options.log_file, committee=engine.committee)
    uncertainty = UncertaintyCheck(options.uncertainty)
    bar = ProgressReporter(
        options.progress, options.steps, options.callback, f"{options.ensemble.upper()} (jax-md)"
    )
    kept: list[list[ase.Atoms]] = [[] for _ in range(n_replicas)]
    totals = {"reallocations": 0, "redone": 0, "compilations": 0, "rebuilds": 0, "step": 0}
    timing = {"compile": 0.0, "timed": 0.0, "timed_steps": 0}
    chunk_us: list[float] = []
    kinetic_total = np.zeros(n_replicas)  # eV, summed over every step, float64
    last_good: list[ase.Atoms] = []

    def summary() -> MDSummary:
        step = totals["step"]
        return summarise(
            "jax-md",
            options,
            conserved=engine.conserved,
            periodic=periodic,
            n_atoms=n_atoms,
            n_replicas=n_replicas,
            wall=time.perf_counter() - start_wall,
            compile_seconds=timing["compile"],
            timed_seconds=timing["timed"],
            timed_steps=timing["timed_steps"],
            thermo=thermo,
            rebuilds=totals["rebuilds"],
            reallocations=totals["reallocations"],
            redone=totals["redone"],
            compilations=totals["compilations"],
            trajectory=writer.paths,
            atoms=last_good if batched else last_good[0],
            chunk_us=chunk_us,
            steps_done=step,
            step_mean_temperature=(
                float(np.mean(2.0 * kinetic_total / (3 * n_atoms * units.kB * step)))
                if step
                else None
            ),
            frames=kept if options.keep_frames else None,
            uncertainty=uncertainty,
        )

    def blow_up(reason: str, step: int, bad: list[int], uncertain=None) -> None:
        totals["compilations"] = compiled_counter.count
        raise_blowup(
            reason,
            step,
            last_good,
            bad,
            options.last_good_path,
            summary,
            uncertain=uncertain,
            uncertain_path=uncertainty.path,
        )

    def check_before(samples: dict, first_untrusted: int, step: int, inner: int) -> None:
        """A chunk to be redone: its samples before ``first_untrusted`` are exact, and a
        blow-up among them is real (the samples after are not trusted)."""
        for i in range(first_untrusted):
            values = samples_of.thermo(samples, i)
            reason, bad = samples_of.problems(values, samples, i)
            if reason is not None:
                blow_up(reason, step + (i + 1) * inner, bad)

    def check_uncertainty(frames: list[ase.Atoms], values: dict, step: int) -> None:
        """Record or stop on the committee's disagreement (a checked sample)."""
        if engine.committee:
            reason, bad, uncertain = uncertainty(frames, values["max_force_std"])
            if reason is not None:
                blow_up(reason, step, bad, uncertain)

    try:
        with count_compilations() as compiled_counter:
            t0 = time.perf_counter()
            first = samples_of.host(compiled.observe(carry, kTs, params))
            timing["compile"] += time.perf_counter() - t0
            values = samples_of.thermo(first, None)
            last_good = samples_of.frames(first, None, 0)
            reason, _ = samples_of.problems(values, {k: v[None] for k, v in first.items()}, 0)
            if reason is not None:
                raise ValueError(f"the starting structure is already unstable: {reason}")
            fragments = FragmentCheck(options.stability.bond_factor, last_good)
            check_uncertainty(last_good, values, 0)
            thermo.add(0, 0.0, values)
            for k in range(n_replicas):
                writer.write(k, [last_good[k]])
            with StopOnSignal(options.keep_on_interrupt) as stop:
                for n_samples, inner in schedule(
                    options.steps, options.sample_every, options.chunk_steps
                ):
                    step = totals["step"]
                    for _attempt in range(20):
                        t0 = time.perf_counter()
                        run = compiled.chunk(carry, kTs, params, n_samples, inner, width)
                        timing["compile"] += time.perf_counter() - t0
                        t0 = time.perf_counter()
                        new_carry, samples = run(carry, kTs, params)
                        samples = samples_of.host_chunk(samples)
                        elapsed = time.perf_counter() - t0
                        overflowed = np.any(samples["error"] & engine.overflow_bits, axis=1)
                        if not np.any(overflowed) and "compaction_peak" in samples:
                            too_narrow = np.any(samples["compaction_peak"] > width, axis=1)
                            if np.any(too_narrow):
                                first = int(np.argmax(too_narrow))
                                check_before(samples, first, step, inner)
                                totals["redone"] += 1
                                peak = int(np.max(samples["compaction_peak"][: first + 1]))
                                logger.info(
                                    "an atom had %d pairs within the cutoff after step %d, "
                                    "more than %d: redoing the chunk on wider rows",
                                    peak,
                                    step,
                                    width,
                                )
                                width = max(width + 1, _replica_width(peak))
                                continue
                        if not np.any(overflowed):
                            break
                        # Overflow in this chunk: samples from the first overflowed one on
                        # are not trusted. A blow-up before it is real; otherwise grow the
                        # list (rebuilt at the chunk's start) and redo the chunk from there.
                        check_before(samples, int(np.argmax(overflowed)), step, inner)
                        totals["redone"] += 1
                        totals["reallocations"] += 1
                        carry = engine.reallocate(carry, new_carry)
                        logger.info(
                            "neighbour list overflow after step %d: reallocated with "
                            "capacity %d, redoing the chunk",
                            step,
                            carry[1].max_occupancy,
                        )
                    else:
                        raise RuntimeError("neighbour list kept overflowing; giving up")
                    timing["timed"] += elapsed
                    timing["timed_steps"] += n_samples * inner
                    chunk_us.append(1e6 * elapsed / (n_samples * inner))
                    # Check every sample in order; stop at the first bad one.
                    for i in range(n_samples):
                        sample_step = step + (i + 1) * inner
                        values = samples_of.thermo(samples, i)
                        reason, bad = samples_of.problems(values, samples, i)
                        if reason is not None:
                            blow_up(reason, sample_step, bad)
                        frames = samples_of.frames(samples, i, sample_step)
                        reason, bad = fragments(frames)
                        if reason is not None:
                            blow_up(reason, sample_step, bad)
                        check_uncertainty(frames, values, sample_step)
                        thermo.add(sample_step, sample_step * options.timestep_fs, values)
                        kinetic_total += samples["kinetic_sum"][i].astype(np.float64)
                        for k in range(n_replicas):
                            writer.write(k, [frames[k]])
                            if options.keep_frames:
                                kept[k].append(frames[k])
                        last_good = frames
                        totals["step"] = sample_step  # checked and written up to here
                    carry = new_carry
                    totals["rebuilds"] = int(np.sum(samples["rebuilds"][-1]))
                    temperature_now = float(np.mean(values["temperature_kelvin"]))
                    energy_now = float(np.mean(values["potential_energy"]))
                    us = (
                        1e6 * timing["timed"] / timing["timed_steps"]
                        if timing["timed_steps"]
                        else None
                    )
                    logger.info(
                        "step %d T=%.1f K E_pot=%.6f eV",
                        totals["step"],
                        temperature_now,
                        energy_now,
                    )
                    bar.update(
                        MDProgress(totals["step"], options.steps, temperature_now, energy_now, us)
                    )
                    if stop.requested:
                        break
            totals["compilations"] = compiled_counter.count
    finally:
        writer.close()
        thermo.close()
        bar.close()
    return summary()
