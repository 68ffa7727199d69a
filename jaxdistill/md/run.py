"""``run_md``: molecular dynamics with a student, through jax-md (default) or ASE.

The jax-md engine keeps the whole step on the device: ``sample_every`` steps per
``lax.fori_loop``, several samples per jitted ``lax.scan`` chunk, neighbour-list
updates inside the loop. Between chunks the host

- checks the neighbour list for overflow; on overflow it allocates a larger list and
  **redoes the chunk from its saved start state** (a truncated list is never used);
- checks for a blow-up (non-finite numbers, temperature above
  ``max_temperature_factor`` × target, an NPT box collapsing below twice the cutoff)
  and stops with :class:`MDInstabilityError`, saving the last good frame;
- logs temperature, energies and pressure, writes trajectory frames (extxyz or ASE
  .traj) and advances the progress bar.

Many replicas of one small system run in one call (``replicas=``, vmapped), each with
its own seed and optionally its own temperature.

Units: Å, eV, amu, fs and K at the interface; internally ASE's time unit
(``ase.units.fs``), so jax-md's integrators see consistent units.

This module holds the public API and what both engines share; the engines are
``md/jaxmd_engine.py`` and ``md/ase_engine.py``, imported when a run starts.
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import threading
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ase
import ase.io
import numpy as np
from ase.calculators.singlepoint import SinglePointCalculator
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary

from jaxdistill.graph import validate_atoms
from jaxdistill.md.topology import DEFAULT_BOND_FACTOR, bonded_fragments
from jaxdistill.student import Student, as_student

logger = logging.getLogger("jaxdistill.md")

ENGINES = ("jax-md", "ase")
ENSEMBLES = ("nve", "nvt", "npt")
THERMOSTATS = ("langevin", "nose-hoover")
#: Temperatures below this floor (K) are raised to it for the blow-up limit, so an
#: NVE run started cold is not stopped for warming up.
BLOWUP_TEMPERATURE_FLOOR = 100.0


class MDInstabilityError(RuntimeError):
    """The simulation blew up: non-finite numbers, runaway temperature, a collapsed box,
    or a structure that broke into more bonded pieces than it started with.

    Attributes:
        reason: what went wrong, in words.
        step: the step at which the problem was detected (a sample point).
        last_good_step: the step of the last frame that passed the checks.
        atoms: that frame (an ``ase.Atoms`` with momenta, energy and forces), or a list
            of them for replicas.
        path: where the last good frame was written, or None.
        replicas: indices of the replicas that blew up.
    """

    def __init__(
        self,
        message: str,
        *,
        step: int,
        last_good_step: int,
        atoms: ase.Atoms | list[ase.Atoms],
        path: Path | None,
        replicas: list[int],
        reason: str = "",
    ):
        super().__init__(message)
        self.reason = reason
        self.step = step
        self.last_good_step = last_good_step
        self.atoms = atoms
        self.path = path
        self.replicas = replicas


@dataclass
class MDSummary:
    """What a run did and how fast.

    Speeds exclude compilation: ``us_per_step`` is wall time per step of the chunks
    run with an already compiled program (device work, neighbour updates and the
    once-per-chunk transfer included).

    Attributes:
        steps: the steps asked for.
        steps_done: the steps run and checked (``steps`` unless interrupted).
        interrupted: True when the run was stopped early by Ctrl-C or SIGTERM
            (``keep_on_interrupt``); everything here covers ``steps_done``.
        mean_temperature_kelvin: mean kinetic temperature, K, over replicas and over
            every step (jax-md) or over the samples after the first (ASE).
        energy_drift_ev_per_atom: final minus initial conserved energy per atom (NVE:
            total energy; Nose-Hoover NVT and NPT: the extended Hamiltonian), mean over
            replicas; None for Langevin, which conserves nothing.
        max_energy_deviation_ev_per_atom: largest |conserved(t) - conserved(0)| per atom
            over the samples (max over replicas); None for Langevin.
        thermo: per-sample arrays (``step``, ``time_fs``, ``temperature_kelvin``,
            ``potential_energy``, ``kinetic_energy``, ``conserved_energy``,
            ``pressure_bar``, ``volume``), shape ``[n_samples, n_replicas]`` except
            step and time.
        atoms: the final frame (a list for replicas).
    """

    engine: str
    ensemble: str
    thermostat: str | None
    n_atoms: int
    n_replicas: int
    steps: int
    steps_done: int
    timestep_fs: float
    wall_seconds: float
    compile_seconds: float
    us_per_step: float
    ns_per_day: float
    atom_steps_per_second: float
    mean_temperature_kelvin: float
    final_temperature_kelvin: float
    energy_drift_ev_per_atom: float | None
    max_energy_deviation_ev_per_atom: float | None
    mean_pressure_bar: float | None
    neighbor_list_rebuilds: int
    neighbor_reallocations: int
    chunks_redone: int
    compilations: int
    trajectory: str | None
    interrupted: bool = False
    chunk_us_per_step: list[float] = field(default_factory=list, repr=False)
    thermo: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    atoms: Any = field(default=None, repr=False)

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly fields (without ``thermo`` and ``atoms``)."""
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name not in ("thermo", "atoms", "chunk_us_per_step")
        }

    def describe(self) -> str:
        """A short human-readable summary."""
        replicas = f" x {self.n_replicas} replicas" if self.n_replicas > 1 else ""
        done = (
            f"interrupted after {self.steps_done} of {self.steps} steps"
            if self.interrupted
            else f"{self.steps} steps"
        )
        lines = [
            f"{done} of {self.ensemble.upper()} ({self.engine}) on "
            f"{self.n_atoms} atoms{replicas}, dt = {self.timestep_fs} fs",
            f"speed: {self.us_per_step:.1f} µs/step, {self.ns_per_day:.3g} ns/day, "
            f"{self.atom_steps_per_second:.3g} atom-steps/s "
            f"(wall {self.wall_seconds:.1f} s, compile {self.compile_seconds:.1f} s)",
            f"temperature: mean {self.mean_temperature_kelvin:.1f} K, "
            f"final {self.final_temperature_kelvin:.1f} K",
        ]
        if self.energy_drift_ev_per_atom is not None:
            lines.append(
                f"conserved-energy drift: {1e3 * self.energy_drift_ev_per_atom:+.4f} meV/atom "
                f"(max deviation {1e3 * self.max_energy_deviation_ev_per_atom:.4f} meV/atom)"
            )
        if self.mean_pressure_bar is not None:
            lines.append(f"mean pressure: {self.mean_pressure_bar:.1f} bar")
        lines.append(
            f"neighbour lists: {self.neighbor_list_rebuilds} rebuilds, "
            f"{self.neighbor_reallocations} reallocations, {self.chunks_redone} chunks redone"
        )
        if self.trajectory:
            lines.append(f"trajectory: {self.trajectory}")
        return "\n".join(lines)


def choose_engine(engine: str, atoms: ase.Atoms, cutoff: float) -> str:
    """``"auto"`` → jax-md unless a periodic cell is too small for its minimum image
    (then ASE); any other name is returned as given."""
    if engine != "auto":
        return engine
    if not np.all(atoms.pbc):
        return "jax-md"
    from jaxdistill.md.jaxmd import box_widths, minimum_box_width

    box = atoms.cell.array.T
    # the skin (0.5 Å by default) widens what the neighbour list must see
    needed = minimum_box_width(box, cutoff, 0.5)
    return "jax-md" if float(np.min(box_widths(box))) > needed else "ase"


class StopOnSignal:
    """While active, Ctrl-C (SIGINT) and SIGTERM ask the MD loop to stop after its
    current chunk instead of killing it.

    A signal only sets ``requested``; the engines look at it once a chunk's samples are
    checked and written, so the trajectory, the thermo log and the summary end at the
    same ``steps_done`` (an exception raised mid-write could leave half a frame). A
    second signal stops at once (KeyboardInterrupt). Handlers can only be installed
    from the main thread; elsewhere, or when not ``enabled``, nothing changes (pipeline
    stages keep the plain interrupt: a cut run must not look finished).
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.requested = False
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        logger.warning(
            "%s: stopping after the current chunk (again to stop at once)",
            signal.Signals(signum).name,
        )

    def __enter__(self) -> StopOnSignal:
        if self.enabled:
            self._previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}
        return self

    def __exit__(self, *exc_info: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


@dataclass
class MDProgress:
    """Passed to ``callback`` after every chunk."""

    step: int
    total_steps: int
    temperature_kelvin: float
    potential_energy: float
    us_per_step: float | None


# --------------------------------------------------------------------------------------
# shared host-side helpers


def _standard_form(atoms: ase.Atoms) -> ase.Atoms:
    """A copy with the cell rotated to ASE's lower-triangular standard form.

    jax-md's general periodic space wants an upper-triangular box (columns = lattice
    vectors), the transpose of this. Positions and momenta rotate with the cell.
    """
    atoms = atoms.copy()
    cell = atoms.cell.array
    if np.linalg.det(cell) < 0:
        raise ValueError("left-handed cells are not supported: reorder the cell vectors")
    standard = np.asarray(atoms.cell.standard_form()[0])
    standard = np.where(np.abs(standard) < 1e-12, 0.0, standard)
    if np.allclose(standard, cell, rtol=0, atol=1e-12):
        return atoms
    rotation = np.linalg.solve(cell, standard)  # row vectors: x_new = x_old @ rotation
    momenta = atoms.get_momenta() @ rotation
    atoms.set_cell(standard, scale_atoms=True)
    atoms.set_momenta(momenta, apply_constraint=False)
    return atoms


def _initial_momenta(
    atoms: ase.Atoms, temperature: float, seed: int, initial_velocities: str
) -> np.ndarray:
    if initial_velocities not in ("auto", "maxwell", "atoms", "zero"):
        raise ValueError("initial_velocities must be 'auto', 'maxwell', 'atoms' or 'zero'")
    momenta = atoms.get_momenta()
    if initial_velocities == "zero":
        return np.zeros_like(momenta)
    if initial_velocities == "atoms" or (initial_velocities == "auto" and np.any(momenta != 0.0)):
        return momenta
    work = atoms.copy()
    MaxwellBoltzmannDistribution(work, temperature_K=temperature, rng=np.random.default_rng(seed))
    if len(work) > 1:
        Stationary(work)
    return work.get_momenta()


def _frame(
    numbers: np.ndarray,
    positions: np.ndarray,
    momenta: np.ndarray,
    cell: np.ndarray,
    pbc: np.ndarray,
    energy: float,
    forces: np.ndarray,
    step: int,
    time_fs: float,
    temperature: float,
) -> ase.Atoms:
    atoms = ase.Atoms(numbers=numbers, positions=positions, cell=cell, pbc=pbc)
    atoms.set_momenta(momenta, apply_constraint=False)
    atoms.calc = SinglePointCalculator(atoms, energy=float(energy), forces=np.asarray(forces))
    atoms.info.update(step=int(step), time_fs=float(time_fs), temperature_K=float(temperature))
    return atoms


class _TrajectoryWriter:
    """Appends frames to one file per replica: extxyz (default) or ASE .traj by suffix."""

    def __init__(self, path: str | Path | None, n_replicas: int):
        self.paths: list[Path] = []
        self._handles: list[Any] = []
        if path is None:
            return
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if n_replicas == 1:
            self.paths = [path]
        else:
            self.paths = [
                path.with_name(f"{path.stem}.r{k:03d}{path.suffix}") for k in range(n_replicas)
            ]
        self.traj = path.suffix == ".traj"
        for p in self.paths:
            if self.traj:
                from ase.io.trajectory import Trajectory

                self._handles.append(Trajectory(str(p), "w"))
            else:
                p.write_text("")

    def write(self, replica: int, frames: Sequence[ase.Atoms]) -> None:
        if not self.paths or not frames:
            return
        if self.traj:
            for atoms in frames:
                self._handles[replica].write(atoms)
        else:
            ase.io.write(self.paths[replica], list(frames), format="extxyz", append=True)

    def close(self) -> None:
        for handle in self._handles:
            handle.close()
        self._handles = []


def _last_good_path(trajectory: str | Path | None, last_good_file: str | Path | None):
    if last_good_file is not None:
        return Path(last_good_file)
    if trajectory is not None:
        trajectory = Path(trajectory)
        return trajectory.with_name(f"{trajectory.stem}.last_good.extxyz")
    return None


def _raise_blowup(
    reason: str,
    step: int,
    last_good: list[ase.Atoms],
    bad_replicas: list[int],
    path: Path | None,
) -> None:
    last_step = int(last_good[bad_replicas[0]].info.get("step", 0))
    saved = None
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        frames = [last_good[k] for k in bad_replicas]
        ase.io.write(path, frames, format="extxyz")
        saved = path
    which = (
        f" in replica(s) {bad_replicas[:10]}{'...' if len(bad_replicas) > 10 else ''}"
        if len(last_good) > 1
        else ""
    )
    message = (
        f"MD became unstable at step {step}{which}: {reason}. The last good frame is "
        f"step {last_step}" + (f", saved to {saved}" if saved else "") + ". Try a smaller "
        "timestep, check the starting structure, or the student may be unreliable for "
        "these configurations (more training data there)."
    )
    raise MDInstabilityError(
        message,
        step=step,
        last_good_step=last_step,
        atoms=last_good if len(last_good) > 1 else last_good[0],
        path=saved,
        replicas=bad_replicas,
        reason=reason,
    )


@dataclass(frozen=True)
class EngineOptions:
    """What both engines of :func:`run_md` take, checked and converted by it (units as
    in its arguments; ``temperatures`` has one entry per replica)."""

    ensemble: str
    temperatures: np.ndarray
    timestep_fs: float
    steps: int
    thermostat: str
    friction_per_fs: float
    thermostat_time_fs: float
    pressure_bar: float
    barostat_time_fs: float
    seed: int
    initial_velocities: str
    sample_every: int
    chunk_steps: int
    trajectory: str | Path | None
    log_file: str | Path | None
    last_good_path: Path | None
    progress: bool
    callback: Callable[[MDProgress], None] | None
    skin: float
    max_temperature_factor: float
    bond_factor: float | None
    keep_on_interrupt: bool = False


class _FragmentCheck:
    """Flags replicas whose covalently bonded pieces outnumber the start's.

    A molecule that breaks apart in vacuum keeps its temperature, so the temperature
    limit cannot see it; a rising piece count can.
    """

    def __init__(self, factor: float | None, first: Sequence[ase.Atoms]) -> None:
        self.factor = factor
        self.baseline = [bonded_fragments(f, factor) for f in first] if factor else []

    def __call__(self, frames: Sequence[ase.Atoms]) -> tuple[str | None, list[int]]:
        if not self.factor:
            return None, []
        counts = [bonded_fragments(f, self.factor) for f in frames]
        bad = [k for k, (n, n0) in enumerate(zip(counts, self.baseline, strict=True)) if n > n0]
        if not bad:
            return None, []
        k = bad[0]
        return (
            f"the structure broke apart: {counts[k]} covalently bonded pieces where the start "
            f"had {self.baseline[k]} (bonded = closer than {self.factor:g} x the sum of "
            "covalent radii)",
            bad,
        )


def _validate_common(ensemble: str, thermostat: str, steps: int, timestep_fs: float) -> None:
    if ensemble not in ENSEMBLES:
        raise ValueError(f"ensemble must be one of {ENSEMBLES}, got {ensemble!r}")
    if thermostat not in THERMOSTATS:
        raise ValueError(f"thermostat must be one of {THERMOSTATS}, got {thermostat!r}")
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    if not timestep_fs > 0:
        raise ValueError(f"timestep_fs must be positive, got {timestep_fs}")


class _Progress:
    """A rich progress bar (optional) plus the user's callback."""

    def __init__(self, enabled: bool, total: int, callback: Callable | None, description: str):
        self.callback = callback
        self.bar = None
        if enabled:
            from jaxdistill.progress import progress_bar

            self.bar = progress_bar(info=True)
            self.bar.start()
            self.task = self.bar.add_task(description, total=total, info="")

    def update(self, progress: MDProgress) -> None:
        if self.bar is not None:
            speed = f" {progress.us_per_step:.0f} µs/step" if progress.us_per_step else ""
            self.bar.update(
                self.task,
                completed=progress.step,
                info=f"T={progress.temperature_kelvin:.0f} K{speed}",
            )
        if self.callback is not None:
            self.callback(progress)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


class _ThermoLog:
    """Per-sample observables on the host, an optional text log, and summaries."""

    COLUMNS = (
        "temperature_kelvin",
        "potential_energy",
        "kinetic_energy",
        "conserved_energy",
        "pressure_bar",
        "volume",
    )

    def __init__(self, log_file: str | Path | None):
        self.rows: dict[str, list] = {"step": [], "time_fs": []}
        self.rows.update({c: [] for c in self.COLUMNS})
        self.handle = None
        if log_file is not None:
            path = Path(log_file)
            path.parent.mkdir(parents=True, exist_ok=True)
            self.handle = path.open("w")
            self.handle.write(
                "# step time_ps T_K E_pot_eV E_kin_eV E_conserved_eV P_bar V_A3"
                "  (means over replicas)\n"
            )

    def add(self, step: int, time_fs: float, values: dict[str, np.ndarray]) -> None:
        self.rows["step"].append(step)
        self.rows["time_fs"].append(time_fs)
        for c in self.COLUMNS:
            self.rows[c].append(np.atleast_1d(np.asarray(values[c], dtype=np.float64)))
        if self.handle is not None:
            means = [float(np.mean(values[c])) for c in self.COLUMNS]
            self.handle.write(
                f"{step} {time_fs / 1000:.6f} {means[0]:.3f} {means[1]:.8f} {means[2]:.8f} "
                f"{means[3]:.8f} {means[4]:.3f} {means[5]:.4f}\n"
            )
            self.handle.flush()

    def arrays(self) -> dict[str, np.ndarray]:
        out = {"step": np.asarray(self.rows["step"]), "time_fs": np.asarray(self.rows["time_fs"])}
        for c in self.COLUMNS:
            out[c] = np.stack(self.rows[c]) if self.rows[c] else np.zeros((0, 1))
        return out

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()


def _summarise(
    engine: str,
    options: EngineOptions,
    *,
    conserved: bool,
    periodic: bool,
    n_atoms: int,
    n_replicas: int,
    wall: float,
    compile_seconds: float,
    timed_seconds: float,
    timed_steps: int,
    thermo: _ThermoLog,
    rebuilds: int,
    reallocations: int,
    redone: int,
    compilations: int,
    trajectory: list[Path],
    atoms: Any,
    chunk_us: list[float],
    steps_done: int,
    step_mean_temperature: float | None = None,
) -> MDSummary:
    """The run's summary; ``step_mean_temperature`` (K), the mean over every step when
    the engine keeps it, replaces the mean over the samples after the first."""
    steps, timestep_fs = options.steps, options.timestep_fs
    data = thermo.arrays()
    if timed_steps > 0 and timed_seconds > 0:
        us = 1e6 * timed_seconds / timed_steps
    else:
        us = 1e6 * wall / max(steps_done, 1)
    temperatures = data["temperature_kelvin"]
    later = temperatures[1:] if len(temperatures) > 1 else temperatures
    drift = deviation = None
    if conserved and len(data["conserved_energy"]) > 1:
        h = data["conserved_energy"]
        drift = float(np.mean(h[-1] - h[0]) / n_atoms)
        deviation = float(np.max(np.abs(h - h[0])) / n_atoms)
    pressure = None
    if periodic and len(data["pressure_bar"]) > 1:
        pressure = float(np.mean(data["pressure_bar"][1:]))
    return MDSummary(
        engine=engine,
        ensemble=options.ensemble,
        thermostat=options.thermostat if options.ensemble == "nvt" else None,
        n_atoms=n_atoms,
        n_replicas=n_replicas,
        steps=steps,
        steps_done=steps_done,
        timestep_fs=timestep_fs,
        wall_seconds=wall,
        compile_seconds=compile_seconds,
        us_per_step=us,
        ns_per_day=86400.0 * timestep_fs / us if us > 0 else float("inf"),
        atom_steps_per_second=n_atoms * n_replicas * 1e6 / us if us > 0 else float("inf"),
        mean_temperature_kelvin=(
            float(np.mean(later)) if step_mean_temperature is None else step_mean_temperature
        ),
        final_temperature_kelvin=float(np.mean(temperatures[-1])),
        energy_drift_ev_per_atom=drift,
        max_energy_deviation_ev_per_atom=deviation,
        mean_pressure_bar=pressure,
        neighbor_list_rebuilds=rebuilds,
        neighbor_reallocations=reallocations,
        chunks_redone=redone,
        compilations=compilations,
        trajectory=", ".join(str(p) for p in trajectory) if trajectory else None,
        # blow-ups raise, so only a stop request ends a run short
        interrupted=steps_done < steps,
        chunk_us_per_step=chunk_us,
        thermo=data,
        atoms=atoms,
    )


# --------------------------------------------------------------------------------------
# public entry point


def run_md(
    student: Student | str | Path,
    atoms: ase.Atoms | Sequence[ase.Atoms],
    *,
    engine: str = "jax-md",
    ensemble: str = "nvt",
    temperature_kelvin: float | Sequence[float] = 300.0,
    timestep_fs: float = 1.0,
    steps: int = 1000,
    thermostat: str = "langevin",
    friction_per_fs: float = 0.01,
    thermostat_time_fs: float | None = None,
    pressure_bar: float = 1.0,
    barostat_time_fs: float | None = None,
    replicas: int | None = None,
    seed: int = 0,
    initial_velocities: str = "auto",
    sample_every: int = 100,
    chunk_steps: int = 2000,
    trajectory: str | Path | None = None,
    log_file: str | Path | None = None,
    last_good_file: str | Path | None = None,
    progress: bool = False,
    callback: Callable[[MDProgress], None] | None = None,
    dtype: str | None = None,
    skin: float = 0.5,
    neighbor_format: str = "auto",
    neighbor_rebuild: str = "skin",
    disable_cell_list: bool | None = None,
    capacity_multiplier: float = 1.25,
    max_temperature_factor: float = 5.0,
    bond_factor: float | None = DEFAULT_BOND_FACTOR,
    keep_on_interrupt: bool = False,
) -> MDSummary:
    """Run molecular dynamics with a student.

    Args:
        student: a Student or the path of a saved one.
        atoms: the starting structure; periodic in all three directions (a crystal, a
            liquid box) or in none (a molecule in vacuum). A list of structures with the
            same atoms runs them as replicas.
        engine: "jax-md" (whole chunks on the device; fastest) or "ase"
            (StudentCalculator with ASE's integrators; any cell, one call per step).
        ensemble: "nve", "nvt" or "npt" (isotropic Nose-Hoover / MTK barostat).
        temperature_kelvin: target (NVT, NPT) or initial (NVE) temperature; a sequence
            gives each replica its own.
        timestep_fs: time step, fs.
        steps: number of steps.
        thermostat: NVT thermostat, "langevin" (default) or "nose-hoover".
        friction_per_fs: Langevin friction, 1/fs (0.01 = 1/(100 fs)).
        thermostat_time_fs: Nose-Hoover time constant, fs (default 100 time steps).
        pressure_bar: NPT target pressure, bar.
        barostat_time_fs: barostat time constant, fs (default 1000 time steps).
        replicas: run this many copies of ``atoms`` at once (vmapped; jax-md engine),
            replica k with seed ``seed + k``.
        seed: random seed (initial velocities, Langevin noise).
        initial_velocities: "auto" (the atoms' momenta if any are non-zero, else
            Maxwell-Boltzmann at the temperature), "maxwell", "atoms" or "zero".
        sample_every: steps between samples (thermo log and trajectory frames).
        chunk_steps: steps per jitted chunk (rounded to a multiple of
            ``sample_every``); the host checks overflow and stability between chunks.
        trajectory: output file, ``.traj`` (ASE) or anything else (extxyz); for
            replicas one file per replica (``name.r000.ext``, ...). Periodic cells
            are rotated to ASE's standard (lower-triangular) orientation.
        log_file: text log of the samples (means over replicas).
        last_good_file: where to save the last good frame on a blow-up (default
            ``<trajectory>.last_good.extxyz`` when a trajectory is written).
        progress: show a rich progress bar.
        callback: called with an :class:`MDProgress` after each chunk.
        dtype: "float32" or "float64" (default: the student's).
        skin: neighbour-list skin, Å.
        neighbor_format: jax-md neighbour-list format ("auto", "sparse", "dense").
        neighbor_rebuild: "skin" (default: rebuild when an atom moved more than half
            the skin, a ``lax.cond`` per step) or "always" (rebuild every step without
            a branch; can be faster for tiny systems on a GPU, and is what vmapped
            replicas do anyway).
        disable_cell_list: None picks by jax version (see ``jaxmd.default_disable_cell_list``).
        capacity_multiplier: neighbour-list head-room at allocation.
        max_temperature_factor: stop when the temperature exceeds this multiple of
            ``max(target, 100 K)``.
        bond_factor: stop when the structure breaks into more covalently bonded pieces
            than it started with (atoms closer than this multiple of the sum of their
            covalent radii are bonded); None switches the check off (e.g. for a
            dissociation study).
        keep_on_interrupt: on Ctrl-C or SIGTERM (``timeout``, a batch system's limit),
            finish the current chunk, then return the summary (``interrupted=True``,
            ``steps_done``) instead of raising; a second signal stops at once. Only
            from the main thread.

    Returns:
        An :class:`MDSummary`.

    Raises:
        MDInstabilityError: the run blew up; the last good frame is attached (and
            saved, see ``last_good_file``).
        ValueError: bad arguments, unknown elements, a partly periodic cell, or (jax-md)
            a periodic box narrower than twice the cutoff.
    """
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    _validate_common(ensemble, thermostat, steps, timestep_fs)
    if sample_every < 1 or chunk_steps < 1:
        raise ValueError("sample_every and chunk_steps must be >= 1")
    student = as_student(student, dtype)
    structures = [atoms] if isinstance(atoms, ase.Atoms) else list(atoms)
    if not structures:
        raise ValueError("no structure given")
    if replicas is not None:
        if replicas < 1:
            raise ValueError(f"replicas must be >= 1, got {replicas}")
        if len(structures) == 1:
            structures = [structures[0].copy() for _ in range(replicas)]
        elif len(structures) != replicas:
            raise ValueError(f"{len(structures)} structures given for {replicas} replicas")
    for s in structures:
        validate_atoms(s, student.species)
        if len(s) != len(structures[0]) or not np.array_equal(s.numbers, structures[0].numbers):
            raise ValueError("replicas must have the same atoms in the same order")
        if np.any(s.pbc) and not np.all(s.pbc):
            raise ValueError(
                f"partly periodic cells (pbc={s.pbc.tolist()}) are not supported by run_md: "
                "make the structure fully periodic with vacuum (atoms.center(vacuum=..., "
                "axis=2); atoms.pbc = True) or fully non-periodic"
            )
    n_replicas = len(structures)
    temperatures = np.broadcast_to(
        np.asarray(temperature_kelvin, dtype=np.float64), (n_replicas,)
    ).copy()
    if np.any(temperatures < 0):
        raise ValueError("temperatures must be >= 0 K")
    if ensemble != "nve" and np.any(temperatures <= 0):
        raise ValueError(f"{ensemble.upper()} needs a positive target temperature")
    periodic = bool(np.all(structures[0].pbc))
    if ensemble == "npt" and not periodic:
        raise ValueError("NPT needs a structure periodic in all three directions")
    options = EngineOptions(
        ensemble=ensemble,
        temperatures=temperatures,
        timestep_fs=float(timestep_fs),
        steps=int(steps),
        thermostat=thermostat,
        friction_per_fs=float(friction_per_fs),
        thermostat_time_fs=float(thermostat_time_fs or 100.0 * timestep_fs),
        pressure_bar=float(pressure_bar),
        barostat_time_fs=float(barostat_time_fs or 1000.0 * timestep_fs),
        seed=int(seed),
        initial_velocities=initial_velocities,
        sample_every=int(sample_every),
        chunk_steps=int(chunk_steps),
        trajectory=trajectory,
        log_file=log_file,
        last_good_path=_last_good_path(trajectory, last_good_file),
        progress=progress,
        callback=callback,
        skin=float(skin),
        max_temperature_factor=float(max_temperature_factor),
        bond_factor=None if bond_factor is None else float(bond_factor),
        keep_on_interrupt=bool(keep_on_interrupt),
    )
    if engine == "ase":
        if n_replicas > 1:
            raise ValueError("replicas need the jax-md engine")
        from jaxdistill.md.ase_engine import run_ase

        return run_ase(student, structures[0], options)
    with warnings.catch_warnings():
        # jax-md's own internals: a float64 sum requested in float32 mode (kinetic
        # energies), and int64 scatter indices in float64 mode. Harmless, and not the
        # user's to fix.
        warnings.filterwarnings("ignore", message="Explicitly requested dtype float64")
        warnings.filterwarnings("ignore", message="scatter inputs have incompatible types")
        from jaxdistill.md.jaxmd_engine import run_jaxmd

        return run_jaxmd(
            student,
            structures,
            options,
            neighbor_format=neighbor_format,
            neighbor_rebuild=neighbor_rebuild,
            disable_cell_list=disable_cell_list,
            capacity_multiplier=float(capacity_multiplier),
        )


def _temperature_limits(temperatures: np.ndarray, factor: float) -> np.ndarray:
    return factor * np.maximum(temperatures, BLOWUP_TEMPERATURE_FLOOR)
