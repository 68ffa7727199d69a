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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ase
import ase.io
import numpy as np
from ase.md.velocitydistribution import Stationary, ZeroRotation, thermalize_momenta

from jaxdistill.config.validation import MDValidationConfig
from jaxdistill.graph import neighbour_pairs, pair_vectors
from jaxdistill.md import MDInstabilityError, MDProgress, MDSummary, choose_engine, run_md
from jaxdistill.md.topology import DEFAULT_BOND_FACTOR


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
        # each frame's pairs with its own cell's images, whatever the other frames are
        distances = np.linalg.norm(pair_vectors(atoms, neighbour_pairs(atoms, r_max)), axis=1)
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


def _progress_callback(progress: Callable[[int], None] | None):
    """run_md's per-sample callback as a count of steps just done."""
    if progress is None:
        return None
    done = [0]

    def callback(update: MDProgress) -> None:
        progress(update.step - done[0])
        done[0] = update.step

    return callback


def _run(calculator: Any, atoms: ase.Atoms, progress, **kwargs) -> MDSummary:
    """One ASE-engine run of the validation (no trajectory files, frames kept)."""
    return run_md(
        calculator,
        atoms,
        engine="ase",
        initial_velocities="atoms",
        callback=_progress_callback(progress),
        **kwargs,
    )


def run_nvt(
    atoms: ase.Atoms,
    calculator_factory: Callable[[], Any],
    temperature_kelvin: float,
    config: MDValidationConfig,
    steps: int,
    progress: Callable[[int], None] | None = None,
    bond_factor: float | None = DEFAULT_BOND_FACTOR,
    max_temperature_factor: float = 5.0,
) -> tuple[NVTRun, ase.Atoms]:
    """Langevin NVT (``run_md``'s ASE engine); returns the run and its final state.

    Velocities come from Maxwell-Boltzmann at the temperature (seed ``config.seed``)
    without centre-of-mass motion (or rotation, for a molecule); the Langevin noise
    from one generator seeded ``config.seed + 1`` through equilibration and
    production. The run stops early (``blew_up_at_step``, ``failure``) when it breaks
    ``run_md``'s stability rules: non-finite numbers, a runaway temperature, or a
    structure that broke into more covalently bonded pieces than it started with
    (``bond_factor`` x the covalent radii; None: no such check). The temperature limit
    is ``max_temperature_factor`` x max(target, 100 K).
    """
    atoms = atoms.copy()
    thermalize_momenta(
        atoms, temperature_K=temperature_kelvin, rng=np.random.default_rng(config.seed)
    )
    Stationary(atoms)
    if not np.any(atoms.pbc):
        ZeroRotation(atoms)
    calculator = calculator_factory()
    common = dict(
        ensemble="nvt",
        temperature_kelvin=temperature_kelvin,
        timestep_fs=config.timestep_fs,
        friction_per_fs=config.friction_per_fs,
        bond_factor=bond_factor,
        max_temperature_factor=max_temperature_factor,
        rng=np.random.default_rng(config.seed + 1),
    )
    try:
        if config.equilibration_steps:
            equilibrated = _run(
                calculator,
                atoms,
                progress,
                steps=config.equilibration_steps,
                sample_every=config.equilibration_steps,
                **common,
            )
            atoms = equilibrated.atoms
        summary = _run(
            calculator,
            atoms,
            progress,
            steps=steps,
            sample_every=config.stride,
            keep_frames=True,
            **common,
        )
        blew_up, failure = None, None
    except MDInstabilityError as error:
        if progress:
            progress(steps - (error.summary.steps_done if error.summary else 0))
        summary = error.summary
        blew_up, failure = error.step, error.reason
        if summary is None or not summary.frames:  # blown up during equilibration
            run = NVTRun(temperature_kelvin, steps, math.nan, np.array([]), [], blew_up, failure)
            return run, atoms
    frames = summary.frames[0]
    run = NVTRun(
        temperature_kelvin,
        steps,
        summary.us_per_step * 1e-6,
        np.array([frame.info["temperature_K"] for frame in frames]),
        frames,
        blew_up,
        failure,
    )
    return run, summary.atoms


def run_nve(
    atoms: ase.Atoms,
    calculator_factory: Callable[[], Any],
    config: MDValidationConfig,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Velocity-Verlet NVE (``run_md``'s ASE engine) from a thermalised state with its
    momenta; drift in meV/atom/ps.

    The drift is the slope of a least-squares line through the total energy per atom
    (every ``config.stride`` steps from step 0) against time, so that fluctuations do
    not count as drift.
    """
    blew_up, failure = None, None
    try:
        summary = _run(
            calculator_factory(),
            atoms,
            progress,
            ensemble="nve",
            temperature_kelvin=atoms.get_temperature(),
            timestep_fs=config.timestep_fs,
            steps=config.nve_steps,
            sample_every=config.stride,
        )
    except MDInstabilityError as error:
        blew_up, failure, summary = error.step, error.reason, error.summary
    thermo = summary.thermo if summary is not None else {}
    times = np.asarray(thermo.get("time_fs", []), dtype=np.float64) / 1000.0  # ps
    energies = np.asarray(thermo.get("conserved_energy", np.zeros((0, 1))))[:, 0] / len(atoms)
    temperatures = np.asarray(thermo.get("temperature_kelvin", np.zeros((0, 1))))[:, 0]
    slope = float(np.polyfit(times, energies, 1)[0]) if len(times) > 2 else math.nan
    return {
        "steps": config.nve_steps,
        "blew_up_at_step": blew_up,
        "failure": failure,
        "duration_ps": config.nve_steps * config.timestep_fs / 1000.0,
        "drift_mev_per_atom_per_ps": 1e3 * slope,
        "energy_std_mev_per_atom": 1e3 * float(np.std(energies)) if len(energies) else math.nan,
        "mean_temperature_kelvin": float(np.mean(temperatures)) if len(temperatures) else math.nan,
        "seconds_per_step": summary.us_per_step * 1e-6 if summary is not None else math.nan,
        "time_ps": times.tolist(),
        "total_energy_ev_per_atom": energies.tolist(),
        "temperature_kelvin": temperatures.tolist(),
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
