"""``run_md``: the one MD driver, through jax-md (default) or ASE.

The jax-md engine keeps the whole step on the device: ``sample_every`` steps per
``lax.fori_loop``, several samples per jitted ``lax.scan`` chunk, neighbour-list
updates inside the loop. Between chunks the host

- checks the neighbour list for overflow; on overflow it allocates a larger list and
  **redoes the chunk from its saved start state** (a truncated list is never used);
- checks for a blow-up (:class:`~jaxdistill.md.types.StabilityRules`: non-finite
  numbers, a runaway temperature, a structure that broke apart, an NPT box collapsing
  below twice the cutoff) and stops with :class:`MDInstabilityError`, saving the last
  good frame;
- logs temperature, energies and pressure, writes trajectory frames (extxyz or ASE
  .traj) and advances the progress bar.

The ASE engine runs a StudentCalculator, or any ASE calculator (a teacher), with ASE's
integrators and the same checks, logs and summary. Many replicas of one small system
run in one jax-md call (``replicas=``, vmapped), each with its own seed and optionally
its own temperature.

Units: Å, eV, amu, fs and K at the interface; internally ASE's time unit
(``ase.units.fs``), so jax-md's integrators see consistent units.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import ase
import numpy as np
from ase.calculators.calculator import BaseCalculator

from jaxdistill.committee import ModelLike, as_model, is_committee
from jaxdistill.graph import validate_atoms
from jaxdistill.md.recording import last_good_path
from jaxdistill.md.topology import DEFAULT_BOND_FACTOR
from jaxdistill.md.types import (
    ENGINES,
    ENSEMBLES,
    THERMOSTATS,
    EngineOptions,
    MDProgress,
    MDSummary,
    StabilityRules,
    UncertaintyRule,
)


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


def _validate_common(ensemble: str, thermostat: str, steps: int, timestep_fs: float) -> None:
    if ensemble not in ENSEMBLES:
        raise ValueError(f"ensemble must be one of {ENSEMBLES}, got {ensemble!r}")
    if thermostat not in THERMOSTATS:
        raise ValueError(f"thermostat must be one of {THERMOSTATS}, got {thermostat!r}")
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    if not timestep_fs > 0:
        raise ValueError(f"timestep_fs must be positive, got {timestep_fs}")


def run_md(
    model: ModelLike | BaseCalculator,
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
    compact_rows: bool | str = "auto",
    max_temperature_factor: float = 5.0,
    bond_factor: float | None = DEFAULT_BOND_FACTOR,
    keep_on_interrupt: bool = False,
    keep_frames: bool = False,
    rng: np.random.Generator | None = None,
    uncertainty_threshold: float | None = None,
    on_uncertain: str = "stop",
    uncertain_file: str | Path | None = None,
) -> MDSummary:
    """Run molecular dynamics with a student or any ASE calculator: the one MD driver of
    jaxdistill (``jaxdistill md``, teacher sampling, MD validation and active learning).

    Args:
        model: a Student, the path of a saved one, a student committee
            (:class:`~jaxdistill.committee.StudentCommittee`, or a list of students or
            paths: the MD follows the members' mean forces and logs their
            disagreement), or any ASE calculator (a teacher's; the ASE engine only).
        atoms: the starting structure; periodic in all three directions (a crystal, a
            liquid box) or in none (a molecule in vacuum). A list of structures with the
            same atoms runs them as replicas.
        engine: "jax-md" (whole chunks on the device; fastest), "ase"
            (StudentCalculator or the given calculator with ASE's integrators; any
            cell, one call per step) or "auto" (jax-md for a student unless a periodic
            cell is too small for its minimum image; ASE for a calculator).
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
        compact_rows: jax-md engine, "dense" list: run the student each
            step on rows compacted to the pairs within the cutoff (same results, fewer
            per-edge slots; ``jaxdistill.md.jaxmd.RowCompaction``): True, False or
            "auto" (from ``jaxmd.COMPACT_MIN_ATOMS`` atoms; replicas not: they
            compact only with True, on a width fixed per chunk and widened when a
            step needed more, the chunk redone).
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
        keep_frames: keep every checked sample as ``ase.Atoms`` with the model's labels
            in ``MDSummary.frames`` (and in the error's summary on a blow-up).
        rng: the ASE engine's random generator for Maxwell-Boltzmann velocities and
            Langevin noise, used from its current state, so consecutive runs continue
            one stream (default: fresh generators seeded by ``seed``).
        uncertainty_threshold: with a committee, eV/Å: a sample whose largest per-atom
            force standard deviation over the members (``max_force_std``, logged at
            every sample either way) exceeds this is acted on as ``on_uncertain`` says;
            None: only logged.
        on_uncertain: "stop" (raise :class:`~jaxdistill.md.types.MDUncertaintyError`,
            an ``MDInstabilityError``, at the first such sample) or "record" (go on;
            every such sample is written to ``uncertain_file`` and kept in
            ``MDSummary.uncertain``: frames for the teacher).
        uncertain_file: extxyz file for the samples above the threshold (default
            ``<trajectory>.uncertain.extxyz`` when a trajectory is written; replicas
            share it, ``info["replica"]`` telling them apart).

    Returns:
        An :class:`MDSummary`.

    Raises:
        MDInstabilityError: the run blew up; the last good frame is attached (and
            saved, see ``last_good_file``). Its subclass ``MDUncertaintyError``: the
            committee's disagreement passed ``uncertainty_threshold``.
        ValueError: bad arguments, unknown elements, a partly periodic cell, or (jax-md)
            a periodic box narrower than twice the cutoff.
    """
    if engine not in ("auto", *ENGINES):
        raise ValueError(f"engine must be one of {('auto', *ENGINES)}, got {engine!r}")
    _validate_common(ensemble, thermostat, steps, timestep_fs)
    if sample_every < 1 or chunk_steps < 1:
        raise ValueError("sample_every and chunk_steps must be >= 1")
    stability = StabilityRules(
        max_temperature_factor=float(max_temperature_factor),
        bond_factor=None if bond_factor is None else float(bond_factor),
    )
    calculator = model if isinstance(model, BaseCalculator) else None
    student = None if calculator is not None else as_model(model, dtype)
    uncertainty = None
    if uncertainty_threshold is not None:
        committee = is_committee(student) or (
            calculator is not None
            and "force_std" in getattr(calculator, "implemented_properties", ())
        )
        if not committee:
            raise ValueError(
                "uncertainty_threshold needs a student committee (a list of students or "
                "their directories, or jaxdistill.committee.load_committee(...))"
            )
        if uncertain_file is None and trajectory is not None:
            uncertain_file = Path(trajectory).with_name(f"{Path(trajectory).stem}.uncertain.extxyz")
        uncertainty = UncertaintyRule(
            float(uncertainty_threshold),
            on_uncertain,
            Path(uncertain_file) if uncertain_file is not None else None,
        )
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
        validate_atoms(s, student.species if student is not None else None)
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
    if not (np.isfinite(friction_per_fs) and friction_per_fs >= 0):
        raise ValueError(f"friction_per_fs must be >= 0 (1/fs), got {friction_per_fs}")
    if not np.isfinite(pressure_bar):
        raise ValueError(f"pressure_bar must be finite, got {pressure_bar}")
    for name, value in (
        ("thermostat_time_fs", thermostat_time_fs),
        ("barostat_time_fs", barostat_time_fs),
    ):
        if value is not None and not value > 0:
            raise ValueError(f"{name} must be > 0 fs, got {value}")
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
        last_good_path=last_good_path(trajectory, last_good_file),
        progress=progress,
        callback=callback,
        skin=float(skin),
        stability=stability,
        keep_on_interrupt=bool(keep_on_interrupt),
        keep_frames=bool(keep_frames),
        rng=rng,
        uncertainty=uncertainty,
    )
    if engine == "auto":
        engine = "ase" if student is None else choose_engine("auto", structures[0], student.cutoff)
    if engine == "ase":
        if n_replicas > 1:
            raise ValueError("replicas need the jax-md engine")
        from jaxdistill.md.ase_engine import run_ase

        return run_ase(calculator or student, structures[0], options)
    if student is None:
        raise ValueError(
            "the jax-md engine runs students only: use engine='ase' for an ASE calculator"
        )
    with warnings.catch_warnings():
        # jax-md's own internals: a float64 sum requested in float32 mode (kinetic
        # energies), and int64 scatter indices in float64 mode. Harmless, and not the
        # user's to fix.
        warnings.filterwarnings("ignore", message="Explicitly requested dtype float64")
        warnings.filterwarnings("ignore", message="scatter inputs have incompatible types")
        from jaxdistill.md.jaxmd_loop import run_jaxmd

        return run_jaxmd(
            student,
            structures,
            options,
            neighbor_format=neighbor_format,
            neighbor_rebuild=neighbor_rebuild,
            disable_cell_list=disable_cell_list,
            capacity_multiplier=float(capacity_multiplier),
            compact_rows=compact_rows,
        )
