"""Host-side recording shared by both MD engines: frames, trajectory files, the thermo
log, the progress bar and the run's summary."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ase
import ase.io
import numpy as np
from ase.calculators.singlepoint import SinglePointCalculator

from jaxdistill.md.types import EngineOptions, MDProgress, MDSummary

if TYPE_CHECKING:
    from jaxdistill.md.checks import UncertaintyCheck


def make_frame(
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
    stress: np.ndarray | None = None,
    force_std: np.ndarray | None = None,
) -> ase.Atoms:
    """One sample as ``ase.Atoms``: momenta, the model's energy, forces (and stress, eV/Å³,
    Voigt order, when given) in a SinglePointCalculator, and ``step``, ``time_fs`` and
    ``temperature_K`` in ``info``; a committee's per-atom force disagreement (eV/Å,
    ``[n_atoms]``) as ``arrays["force_std"]`` and its largest value as
    ``info["max_force_std"]``."""
    atoms = ase.Atoms(numbers=numbers, positions=positions, cell=cell, pbc=pbc)
    atoms.set_momenta(momenta, apply_constraint=False)
    results: dict[str, Any] = {"energy": float(energy), "forces": np.asarray(forces)}
    if stress is not None:
        results["stress"] = np.asarray(stress)
    atoms.calc = SinglePointCalculator(atoms, **results)
    atoms.info.update(step=int(step), time_fs=float(time_fs), temperature_K=float(temperature))
    if force_std is not None:
        force_std = np.asarray(force_std, dtype=np.float64)
        atoms.arrays["force_std"] = force_std
        atoms.info["max_force_std"] = float(np.max(force_std)) if force_std.size else 0.0
    return atoms


class TrajectoryWriter:
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


def last_good_path(trajectory: str | Path | None, last_good_file: str | Path | None):
    if last_good_file is not None:
        return Path(last_good_file)
    if trajectory is not None:
        trajectory = Path(trajectory)
        return trajectory.with_name(f"{trajectory.stem}.last_good.extxyz")
    return None


class ProgressReporter:
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


class ThermoLog:
    """Per-sample observables on the host, an optional text log, and summaries.

    With ``committee``, one more column: ``max_force_std``, the largest per-atom force
    disagreement of the committee (eV/Å; in the text log the largest over replicas,
    the other columns being means over replicas).
    """

    COLUMNS = (
        "temperature_kelvin",
        "potential_energy",
        "kinetic_energy",
        "conserved_energy",
        "pressure_bar",
        "volume",
    )

    def __init__(self, log_file: str | Path | None, committee: bool = False):
        self.columns = self.COLUMNS + (("max_force_std",) if committee else ())
        self.rows: dict[str, list] = {"step": [], "time_fs": []}
        self.rows.update({c: [] for c in self.columns})
        self.handle = None
        if log_file is not None:
            path = Path(log_file)
            path.parent.mkdir(parents=True, exist_ok=True)
            self.handle = path.open("w")
            extra = " max_F_std_eV_A" if committee else ""
            self.handle.write(
                f"# step time_ps T_K E_pot_eV E_kin_eV E_conserved_eV P_bar V_A3{extra}"
                "  (means over replicas" + (", max_F_std: max" if committee else "") + ")\n"
            )

    def add(self, step: int, time_fs: float, values: dict[str, np.ndarray]) -> None:
        self.rows["step"].append(step)
        self.rows["time_fs"].append(time_fs)
        for c in self.columns:
            self.rows[c].append(np.atleast_1d(np.asarray(values[c], dtype=np.float64)))
        if self.handle is not None:
            means = [float(np.mean(values[c])) for c in self.COLUMNS]
            line = (
                f"{step} {time_fs / 1000:.6f} {means[0]:.3f} {means[1]:.8f} {means[2]:.8f} "
                f"{means[3]:.8f} {means[4]:.3f} {means[5]:.4f}"
            )
            if "max_force_std" in self.columns:
                line += f" {float(np.max(values['max_force_std'])):.5f}"
            self.handle.write(line + "\n")
            self.handle.flush()

    def arrays(self) -> dict[str, np.ndarray]:
        out = {"step": np.asarray(self.rows["step"]), "time_fs": np.asarray(self.rows["time_fs"])}
        for c in self.columns:
            out[c] = np.stack(self.rows[c]) if self.rows[c] else np.zeros((0, 1))
        return out

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()


def summarise(
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
    thermo: ThermoLog,
    rebuilds: int,
    reallocations: int,
    redone: int,
    compilations: int,
    trajectory: list[Path],
    atoms: Any,
    chunk_us: list[float],
    steps_done: int,
    step_mean_temperature: float | None = None,
    frames: list[list[ase.Atoms]] | None = None,
    uncertainty: UncertaintyCheck | None = None,
) -> MDSummary:
    """The run's summary; ``step_mean_temperature`` (K), the mean over every step when
    the engine keeps it, replaces the mean over the samples after the first;
    ``uncertainty`` gives the committee's disagreement and recorded samples."""
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
        frames=frames or [],
        max_force_std_ev_per_angstrom=(
            float(np.max(data["max_force_std"]))
            if "max_force_std" in data and len(data["max_force_std"])
            else None
        ),
        uncertain_frames=len(uncertainty.frames) if uncertainty is not None else 0,
        uncertain_file=(
            str(uncertainty.path) if uncertainty is not None and uncertainty.path else None
        ),
        uncertain=list(uncertainty.frames) if uncertainty is not None else [],
    )
