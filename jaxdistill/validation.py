"""MD validation: run student and teacher side by side and compare what MD is for.

From the same starting structure, both run the same ASE Langevin NVT (same seed,
time step, friction) at each temperature, then the student runs NVE from its
equilibrated state. Compared: radial distribution functions, temperature statistics,
total-energy drift, and time per step. The teacher's own NVT frames (with its
energies and forces, recorded for free during its MD) become a held-out test set, in
particular at a temperature the training data never saw.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ase
import ase.io
import numpy as np
from ase import units
from ase.calculators.singlepoint import SinglePointCalculator
from ase.md.velocitydistribution import Stationary, ZeroRotation, thermalize_momenta
from ase.md.verlet import VelocityVerlet

from jaxdistill.config_keys import as_temperatures, check_keys
from jaxdistill.graph import neighbour_pairs
from jaxdistill.md.ase_dynamics import langevin
from jaxdistill.md.topology import DEFAULT_BOND_FACTOR, bonded_fragments


@dataclass(frozen=True)
class MDValidationConfig:
    """The ``md_validation`` section of a pipeline config.

    Attributes:
        temperatures_kelvin: NVT temperatures, K. Empty = the training temperatures
            plus one between the lowest two that was not sampled.
        student_steps: Student NVT steps per temperature (after equilibration).
        teacher_steps: Teacher NVT steps per temperature (after equilibration); the
            teacher is slow, so this is usually shorter.
        equilibration_steps: Steps discarded before statistics, both models.
        nve_steps: Student NVE steps, from the equilibrated state at the lowest
            temperature; their total-energy drift is reported in meV/atom/ps.
        timestep_fs: Time step, fs.
        friction_per_fs: Langevin friction, 1/fs.
        stride: Steps between frames kept for RDFs and held-out labels.
        rdf_rmax_angstrom: Largest RDF distance, Å (capped by the cell).
        rdf_bins: RDF histogram bins.
        structure_index: Which starting structure of the sampling config to use.
        seed: Velocity and thermostat seed.
    """

    temperatures_kelvin: tuple[float, ...] = ()
    student_steps: int = 2000
    teacher_steps: int = 400
    equilibration_steps: int = 200
    nve_steps: int = 2000
    timestep_fs: float = 1.0
    friction_per_fs: float = 0.01
    stride: int = 10
    rdf_rmax_angstrom: float = 6.0
    rdf_bins: int = 120
    structure_index: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        if (
            min(self.student_steps, self.teacher_steps, self.equilibration_steps, self.nve_steps)
            < 0
        ):
            raise ValueError("md_validation step counts must be >= 0")
        if self.timestep_fs <= 0 or self.stride < 1 or self.rdf_bins < 2:
            raise ValueError("md_validation needs timestep_fs > 0, stride >= 1, rdf_bins >= 2")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> MDValidationConfig:
        """Build from a mapping; unknown keys raise ValueError naming them."""
        data = dict(data or {})
        check_keys(cls, data, "md_validation")
        if "temperatures_kelvin" in data:
            data["temperatures_kelvin"] = as_temperatures(data["temperatures_kelvin"])
        return cls(**data)


def validation_temperatures(training: Sequence[float], configured: Sequence[float]) -> list[float]:
    """Temperatures to validate at: the configured ones, or training + one unseen.

    The unseen one is the midpoint of the two lowest training temperatures (for a
    single training temperature, 1.5 times it), rounded to 10 K.
    """
    if configured:
        return sorted(float(t) for t in configured)
    training = sorted({float(t) for t in training})
    if not training:
        raise ValueError("no training temperatures known: set md_validation.temperatures_kelvin")
    unseen = (training[0] + training[1]) / 2 if len(training) > 1 else 1.5 * training[0]
    return sorted({*training, float(round(unseen / 10) * 10)})


def pair_distribution(
    frames: Sequence[ase.Atoms], r_max: float, bins: int
) -> tuple[np.ndarray, np.ndarray]:
    """Radial distribution function averaged over frames, all element pairs together.

    Periodic cells give the usual g(r) (normalised by the ideal-gas pair density, so
    g → 1 at large r). Molecules (no cell) give the normalised distribution of
    interatomic distances instead (a probability density in 1/Å), which is what can be
    compared between two models there.

    Returns:
        ``(r [bins] bin centres in Å, g [bins])``.
    """
    edges = np.linspace(0.0, r_max, bins + 1)
    centres = 0.5 * (edges[1:] + edges[:-1])
    histogram = np.zeros(bins)
    periodic = all(np.all(a.pbc) for a in frames)
    density_norm = 0.0
    for atoms in frames:
        nb = neighbour_pairs(atoms, r_max)
        vectors = (
            atoms.positions[nb.senders]
            - atoms.positions[nb.receivers]
            + nb.shifts @ (atoms.cell.array if periodic else np.zeros((3, 3)))
        )
        distances = np.linalg.norm(vectors, axis=1)
        histogram += np.histogram(distances, bins=edges)[0]
        if periodic:
            density_norm += len(atoms) * len(atoms) / atoms.get_volume()
    if periodic:
        shell = 4.0 / 3.0 * np.pi * (edges[1:] ** 3 - edges[:-1] ** 3)
        g = histogram / (shell * max(density_norm, 1e-300))
    else:
        g = histogram / max(histogram.sum() * (edges[1] - edges[0]), 1e-300)
    return centres, g


def rdf_difference(g_a: np.ndarray, g_b: np.ndarray, r: np.ndarray) -> float:
    """Integrated absolute difference of two RDFs divided by the integral of the second."""
    dr = r[1] - r[0]
    return float(np.sum(np.abs(g_a - g_b)) * dr / max(np.sum(np.abs(g_b)) * dr, 1e-300))


class MDBlowUp(RuntimeError):
    """A run whose temperature became non-finite or far above its target, or whose
    structure broke into more covalently bonded pieces than it started with."""

    def __init__(self, step: int, reason: str) -> None:
        super().__init__(f"MD blew up at step {step}: {reason}")
        self.step = step
        self.reason = reason


@dataclass
class NVTRun:
    """What an NVT run produced (up to a blow-up, if one happened)."""

    temperature_kelvin: float
    steps: int
    seconds_per_step: float
    temperatures: np.ndarray  # instantaneous T of kept frames, K
    frames: list[ase.Atoms] = field(repr=False)  # kept frames with their labels
    blew_up_at_step: int | None = None
    failure: str | None = None  # why it stopped early

    @property
    def mean_temperature(self) -> float:
        return float(np.mean(self.temperatures)) if len(self.temperatures) else math.nan

    @property
    def std_temperature(self) -> float:
        return float(np.std(self.temperatures)) if len(self.temperatures) else math.nan


def _snapshot(atoms: ase.Atoms) -> ase.Atoms:
    """A copy holding the current labels in a SinglePointCalculator."""
    copy = atoms.copy()
    # The model's own forces, not ones adjusted by a constraint the user's structure
    # carries: these frames are held-out labels.
    results = {
        "energy": atoms.get_potential_energy(),
        "forces": atoms.get_forces(apply_constraint=False),
    }
    if np.all(atoms.pbc) and "stress" in atoms.calc.results:
        results["stress"] = atoms.calc.results["stress"]
    copy.calc = SinglePointCalculator(copy, **results)
    return copy


def run_nvt(
    atoms: ase.Atoms,
    calculator_factory: Callable[[], Any],
    temperature_kelvin: float,
    config: MDValidationConfig,
    steps: int,
    progress: Callable[[int], None] | None = None,
    bond_factor: float | None = DEFAULT_BOND_FACTOR,
) -> tuple[NVTRun, ase.Atoms]:
    """Langevin NVT with ASE; returns the run and the final (equilibrated) state.

    The run stops early (``blew_up_at_step``, ``failure``) on a runaway temperature or
    when the structure breaks into more covalently bonded pieces than it started with
    (``bond_factor`` x the covalent radii; None: no such check).
    """
    atoms = atoms.copy()
    atoms.calc = calculator_factory()
    rng = np.random.default_rng(config.seed)
    thermalize_momenta(atoms, temperature_K=temperature_kelvin, rng=rng)
    Stationary(atoms)
    if not np.any(atoms.pbc):
        ZeroRotation(atoms)
    # No FixCom constraint either: ASE 3.29's FixCom.adjust_forces removes the
    # mass-weighted force sum, which for unequal masses changes forces whose sum is
    # already zero (by 117 meV/Å on average for ANI-1x ethanol), distorting both the
    # dynamics and the labels stored with each frame.
    dynamics = langevin(
        atoms,
        config.timestep_fs,
        temperature_kelvin,
        config.friction_per_fs,
        np.random.default_rng(config.seed + 1),
    )
    for _ in range(config.equilibration_steps):
        dynamics.run(1)
        if progress:
            progress(1)
    frames, temperatures = [], []
    start = time.perf_counter()
    blew_up, failure, done = None, None, 0
    pieces = bonded_fragments(atoms, bond_factor) if bond_factor else None
    try:
        _check_sane(atoms, temperature_kelvin, 0, pieces, bond_factor or 0.0)
        for step in range(1, steps + 1):
            dynamics.run(1)
            done = step
            if step % config.stride == 0:
                _check_sane(atoms, temperature_kelvin, step, pieces, bond_factor or 0.0)
                frames.append(_snapshot(atoms))
                temperatures.append(atoms.get_temperature())
            if progress:
                progress(1)
    except MDBlowUp as error:
        blew_up, failure = error.step, error.reason
        if progress:
            progress(steps - done)
    seconds = (time.perf_counter() - start) / max(done, 1)
    run = NVTRun(
        temperature_kelvin, steps, seconds, np.array(temperatures), frames, blew_up, failure
    )
    return run, atoms


def _check_sane(
    atoms: ase.Atoms,
    target_kelvin: float,
    step: int,
    pieces: int | None,
    bond_factor: float = DEFAULT_BOND_FACTOR,
) -> None:
    """Raise MDBlowUp on a runaway temperature or a structure that broke apart.

    ``pieces`` is the starting structure's count of covalently bonded pieces (None: no
    check): a molecule that falls apart in vacuum keeps its temperature, so only this
    count shows it.
    """
    temperature = atoms.get_temperature()
    if not math.isfinite(temperature) or temperature > 5 * target_kelvin + 500:
        raise MDBlowUp(step, f"temperature {temperature:.0f} K (target {target_kelvin:.0f} K)")
    if pieces is None:
        return
    now = bonded_fragments(atoms, bond_factor)
    if now > pieces:
        raise MDBlowUp(
            step,
            f"the structure broke apart ({now} covalently bonded pieces, {pieces} at the start)",
        )


def run_nve(
    atoms: ase.Atoms,
    calculator_factory: Callable[[], Any],
    config: MDValidationConfig,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Velocity-Verlet NVE from a thermalised state; drift in meV/atom/ps.

    The drift is the slope of a least-squares line through the total energy per atom
    against time, so that fluctuations do not count as drift.
    """
    atoms = atoms.copy()
    atoms.calc = calculator_factory()
    dynamics = VelocityVerlet(atoms, timestep=config.timestep_fs * units.fs)
    times, energies, temperatures = [], [], []
    start = time.perf_counter()
    blew_up, failure = None, None
    pieces = bonded_fragments(atoms)
    for step in range(1, config.nve_steps + 1):
        dynamics.run(1)
        if not math.isfinite(atoms.get_temperature()) or atoms.get_temperature() > 1e5:
            blew_up, failure = step, f"temperature {atoms.get_temperature():.0f} K"
            break
        if step % config.stride == 0 and bonded_fragments(atoms) > pieces:
            blew_up, failure = step, "the structure broke apart"
            break
        if step % config.stride == 0 or step == 1:
            times.append(step * config.timestep_fs / 1000.0)  # ps
            energies.append(atoms.get_total_energy() / len(atoms))
            temperatures.append(atoms.get_temperature())
        if progress:
            progress(1)
    seconds = (time.perf_counter() - start) / max(config.nve_steps, 1)
    times, energies = np.array(times), np.array(energies)
    slope = float(np.polyfit(times, energies, 1)[0]) if len(times) > 2 else math.nan
    return {
        "steps": config.nve_steps,
        "blew_up_at_step": blew_up,
        "failure": failure,
        "duration_ps": config.nve_steps * config.timestep_fs / 1000.0,
        "drift_mev_per_atom_per_ps": 1e3 * slope,
        "energy_std_mev_per_atom": 1e3 * float(np.std(energies)),
        "mean_temperature_kelvin": float(np.mean(temperatures)),
        "seconds_per_step": seconds,
        "time_ps": times.tolist(),
        "total_energy_ev_per_atom": energies.tolist(),
        "temperature_kelvin": temperatures,
    }


def force_errors(
    student_calculator_factory: Callable[[], Any], frames: Sequence[ase.Atoms]
) -> dict[str, float]:
    """Student-vs-label errors on labelled frames (energy meV/atom, forces meV/Å)."""
    calculator = student_calculator_factory()
    energy_errors, force_differences, reference = [], [], []
    for frame in frames:
        atoms = frame.copy()
        atoms.calc = calculator
        energy_errors.append(
            (atoms.get_potential_energy() - frame.get_potential_energy()) / len(atoms)
        )
        force_differences.append(atoms.get_forces() - frame.get_forces())
        reference.append(frame.get_forces())
    differences = np.concatenate(force_differences)
    return {
        "frames": len(frames),
        "energy_mae_mev_per_atom": 1e3 * float(np.mean(np.abs(energy_errors))),
        "force_mae_mev_per_angstrom": 1e3 * float(np.mean(np.abs(differences))),
        "force_rmse_mev_per_angstrom": 1e3 * float(np.sqrt(np.mean(differences**2))),
        "mean_abs_teacher_force_mev_per_angstrom": 1e3
        * float(np.mean(np.abs(np.concatenate(reference)))),
    }


def validate_md(
    structure: ase.Atoms,
    student_calculator_factory: Callable[[], Any],
    teacher_calculator_factory: Callable[[], Any],
    temperatures: Sequence[float],
    config: MDValidationConfig,
    output_dir: str | Path,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Run the whole comparison; write trajectories and return every number.

    Args:
        structure: starting structure.
        student_calculator_factory, teacher_calculator_factory: build fresh ASE
            calculators (called once per run).
        temperatures: NVT temperatures, K.
        config: the settings.
        output_dir: where ``teacher_nvt_<T>K.extxyz`` (held-out frames with teacher
            labels) and ``student_nvt_<T>K.extxyz`` go.
        progress: called with the number of MD steps just done.

    Returns:
        A JSON-serialisable dict: per temperature the student's and teacher's
        temperature statistics, RDFs and their difference, time per step, and the
        student's errors on the teacher's frames; plus the NVE result.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    r_max = config.rdf_rmax_angstrom
    if np.all(structure.pbc):
        # keep the RDF inside half the shortest perpendicular cell width
        widths = structure.get_volume() / np.linalg.norm(
            np.cross(structure.cell[[1, 2, 0]], structure.cell[[2, 0, 1]]), axis=1
        )
        r_max = min(r_max, 0.5 * float(widths.min()))
    results: dict[str, Any] = {"temperatures": [], "rdf_rmax_angstrom": r_max}
    equilibrated = None
    for temperature in temperatures:
        student_run, student_state = run_nvt(
            structure,
            student_calculator_factory,
            temperature,
            config,
            config.student_steps,
            progress,
        )
        teacher_run, _ = run_nvt(
            structure,
            teacher_calculator_factory,
            temperature,
            config,
            config.teacher_steps,
            progress,
        )
        if equilibrated is None and student_run.blew_up_at_step is None:
            equilibrated = student_state
        tag = f"{temperature:g}K"
        ase.io.write(output_dir / f"teacher_nvt_{tag}.extxyz", teacher_run.frames)
        ase.io.write(output_dir / f"student_nvt_{tag}.extxyz", student_run.frames)
        r, g_teacher = pair_distribution(teacher_run.frames or [structure], r_max, config.rdf_bins)
        g_student = (
            pair_distribution(student_run.frames, r_max, config.rdf_bins)[1]
            if student_run.frames
            else np.zeros_like(g_teacher)
        )
        entry = {
            "temperature_kelvin": temperature,
            "student": {
                "steps": student_run.steps,
                "mean_temperature_kelvin": student_run.mean_temperature,
                "std_temperature_kelvin": student_run.std_temperature,
                "seconds_per_step": student_run.seconds_per_step,
                "blew_up_at_step": student_run.blew_up_at_step,
                "failure": student_run.failure,
            },
            "teacher": {
                "steps": teacher_run.steps,
                "mean_temperature_kelvin": teacher_run.mean_temperature,
                "std_temperature_kelvin": teacher_run.std_temperature,
                "seconds_per_step": teacher_run.seconds_per_step,
                "blew_up_at_step": teacher_run.blew_up_at_step,
                "failure": teacher_run.failure,
            },
            "rdf_r_angstrom": r.tolist(),
            "rdf_student": g_student.tolist(),
            "rdf_teacher": g_teacher.tolist(),
            "rdf_relative_difference": rdf_difference(g_student, g_teacher, r),
            "student_on_teacher_frames": (
                force_errors(student_calculator_factory, teacher_run.frames)
                if teacher_run.frames
                else None
            ),
            "speedup_ase": teacher_run.seconds_per_step / max(student_run.seconds_per_step, 1e-12),
        }
        results["temperatures"].append(entry)
    if config.nve_steps and equilibrated is not None:
        results["nve"] = run_nve(equilibrated, student_calculator_factory, config, progress)
    return results


def time_student_jaxmd(
    student: Any,
    structure: ase.Atoms,
    temperature: float,
    config: MDValidationConfig,
    teacher_seconds_per_step: Sequence[float] = (),
) -> dict[str, Any]:
    """Time the student's jax-md NVT step on the validation structure: how it is deployed.

    The ASE runs above time the student through ASE, whose per-step Python overhead
    dominates for a small student; this is the number to set against the teacher's ASE
    step. Runs ``config.student_steps`` steps (at least 1000) after compilation.

    Args:
        teacher_seconds_per_step: the teacher's ASE step times (s) to compare with.

    Returns:
        ``{"engine": "jax-md", "us_per_step", "steps", "temperature_kelvin",
        "compile_seconds", "speedup_vs_teacher_ase": [one per teacher time]}``, or
        ``{"skipped": reason}`` when jax-md cannot run this structure (a periodic cell
        narrower than twice the cutoff plus skin) or the student blew up.
    """
    from jaxdistill.md.run import MDInstabilityError, choose_engine, run_md

    if choose_engine("auto", structure, student.cutoff) != "jax-md":
        return {"skipped": "periodic cell narrower than twice the cutoff plus skin"}
    steps = max(config.student_steps, 1000)
    try:
        summary = run_md(
            student,
            structure,
            engine="jax-md",
            ensemble="nvt",
            temperature_kelvin=temperature,
            timestep_fs=config.timestep_fs,
            friction_per_fs=config.friction_per_fs,
            steps=steps,
            seed=config.seed,
            sample_every=max(config.stride, steps // 10),
        )
    except MDInstabilityError as error:
        return {"skipped": f"the student's jax-md run blew up: {error.reason}"}
    return {
        "engine": "jax-md",
        "us_per_step": summary.us_per_step,
        "steps": steps,
        "temperature_kelvin": float(temperature),
        "compile_seconds": summary.compile_seconds,
        "speedup_vs_teacher_ase": [
            seconds / (1e-6 * summary.us_per_step) for seconds in teacher_seconds_per_step
        ],
    }


def total_steps(config: MDValidationConfig, n_temperatures: int) -> int:
    """MD steps :func:`validate_md` will run (for a progress bar)."""
    per_temperature = 2 * config.equilibration_steps + config.student_steps + config.teacher_steps
    return n_temperatures * per_temperature + config.nve_steps
