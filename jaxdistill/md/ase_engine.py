"""The ASE engine of ``run_md``: a StudentCalculator, or any ASE calculator (a teacher),
with ASE's integrators; one model call per step, checked between samples."""

from __future__ import annotations

import logging
import time
from typing import Any

import ase
import numpy as np
from ase import units
from ase.calculators.calculator import BaseCalculator

from jaxdistill.committee import StudentCommittee
from jaxdistill.diagnostics import count_compilations
from jaxdistill.md.ase_dynamics import langevin
from jaxdistill.md.checks import FragmentCheck, UncertaintyCheck, raise_blowup
from jaxdistill.md.initial import initial_momenta
from jaxdistill.md.recording import (
    ProgressReporter,
    ThermoLog,
    TrajectoryWriter,
    make_frame,
    summarise,
)
from jaxdistill.md.signals import StopOnSignal
from jaxdistill.md.types import EngineOptions, MDProgress, MDSummary
from jaxdistill.student import Student

logger = logging.getLogger("jaxdistill.md")


def _dynamics(atoms: ase.Atoms, options: EngineOptions, temperature: float) -> Any:
    """ASE's integrator for the options' ensemble (and whether it conserves anything)."""
    from ase.md.nose_hoover_chain import IsotropicMTKNPT, NoseHooverChainNVT
    from ase.md.verlet import VelocityVerlet

    dt = options.timestep_fs * units.fs
    if options.ensemble == "nve":
        return VelocityVerlet(atoms, timestep=dt), True
    if options.ensemble == "nvt" and options.thermostat == "langevin":
        rng = options.rng if options.rng is not None else np.random.default_rng(options.seed)
        return langevin(
            atoms, options.timestep_fs, temperature, options.friction_per_fs, rng
        ), False
    if options.ensemble == "nvt":
        tdamp = options.thermostat_time_fs * units.fs
        return NoseHooverChainNVT(atoms, timestep=dt, temperature_K=temperature, tdamp=tdamp), True
    return (
        IsotropicMTKNPT(
            atoms,
            timestep=dt,
            temperature_K=temperature,
            pressure_au=options.pressure_bar * units.bar,
            tdamp=options.thermostat_time_fs * units.fs,
            pdamp=options.barostat_time_fs * units.fs,
        ),
        True,
    )


def _observe(atoms: ase.Atoms, dynamics: Any, step: int, timestep_fs: float, committee: bool):
    """Thermo values and the frame of the current state. A periodic cell's pressure
    comes from the calculator's stress: the one it computed with the forces, or asked
    for now when it implements stress (a StudentCalculator skips the strain
    derivative when an integrator asks for forces alone); else NaN. With a committee,
    its per-atom force disagreement of the same call (``results["force_std"]``)."""
    periodic = bool(np.all(atoms.pbc))
    energy = atoms.get_potential_energy()
    kinetic = atoms.get_kinetic_energy()
    if hasattr(dynamics, "get_conserved_energy"):
        total = dynamics.get_conserved_energy()
    else:
        total = energy + kinetic
    stress = None
    if periodic:
        stress = atoms.calc.results.get("stress")
        if stress is None and "stress" in getattr(atoms.calc, "implemented_properties", ()):
            stress = atoms.get_stress()
    pressure = np.nan
    if stress is not None:
        full = atoms.get_stress(voigt=False, include_ideal_gas=True)
        pressure = -np.trace(full) / 3 / units.bar
    values = {
        "temperature_kelvin": atoms.get_temperature(),
        "potential_energy": energy,
        "kinetic_energy": kinetic,
        "conserved_energy": total,
        "pressure_bar": pressure,
        "volume": atoms.get_volume() if periodic else np.nan,
    }
    force_std = None
    if committee:
        # every call of a committee's calculator gives it, for the current positions
        force_std = np.asarray(atoms.calc.get_property("force_std", atoms))
        values["max_force_std"] = float(np.max(force_std)) if force_std.size else 0.0
    frame = make_frame(
        atoms.numbers,
        atoms.positions,
        atoms.get_momenta(),
        atoms.cell.array,
        atoms.pbc,
        energy,
        # the model's own forces (labels), not ones adjusted by a user's constraint
        atoms.get_forces(apply_constraint=False),
        step,
        step * timestep_fs,
        values["temperature_kelvin"],
        stress,
        force_std,
    )
    return values, frame


def run_ase(
    model: Student | StudentCommittee | BaseCalculator, atoms: ase.Atoms, options: EngineOptions
) -> MDSummary:
    """One run with ASE's integrators (``options.chunk_steps`` is unused: one call per
    step, nothing to chunk). ``model``: a Student or a committee (wrapped in a
    StudentCalculator) or a ready ASE calculator."""
    start_wall = time.perf_counter()
    temperature = float(options.temperatures[0])
    atoms = atoms.copy()
    atoms.set_momenta(
        initial_momenta(atoms, temperature, options.seed, options.initial_velocities, options.rng)
    )
    if isinstance(model, (Student, StudentCommittee)):
        from jaxdistill.md.ase_calculator import StudentCalculator

        calculator = StudentCalculator(model, dtype=model.dtype, skin=options.skin)
    else:
        calculator = model
    atoms.calc = calculator
    committee = "force_std" in getattr(calculator, "implemented_properties", ())
    dynamics, conserved = _dynamics(atoms, options, temperature)
    periodic = bool(np.all(atoms.pbc))
    rules = options.stability
    writer = TrajectoryWriter(options.trajectory, 1)
    thermo = ThermoLog(options.log_file, committee=committee)
    uncertainty = UncertaintyCheck(options.uncertainty)
    bar = ProgressReporter(
        options.progress, options.steps, options.callback, f"{options.ensemble.upper()} (ase)"
    )
    kept: list[ase.Atoms] = []
    timed_seconds, timed_steps, compile_seconds = 0.0, 0, 0.0
    chunk_us: list[float] = []
    steps_done = compilations = 0
    last_good = None

    def summary() -> MDSummary:
        return summarise(
            "ase",
            options,
            conserved=conserved,
            periodic=periodic,
            n_atoms=len(atoms),
            n_replicas=1,
            wall=time.perf_counter() - start_wall,
            compile_seconds=compile_seconds,
            timed_seconds=timed_seconds,
            timed_steps=timed_steps,
            thermo=thermo,
            rebuilds=getattr(calculator, "neighbour_list_builds", 0),
            reallocations=0,
            redone=0,
            compilations=compilations,
            trajectory=writer.paths,
            atoms=last_good,
            chunk_us=chunk_us,
            steps_done=steps_done,
            frames=[kept] if options.keep_frames else None,
            uncertainty=uncertainty,
        )

    def check_uncertainty(frame: ase.Atoms, values: dict, step: int) -> None:
        """Record or stop on the committee's disagreement (a checked sample)."""
        if not committee:
            return
        reason, bad, uncertain = uncertainty([frame], values["max_force_std"])
        if reason is not None:
            nonlocal compilations
            compilations = compiled.count
            raise_blowup(
                reason,
                step,
                [last_good],
                bad,
                options.last_good_path,
                summary,
                uncertain=uncertain,
                uncertain_path=uncertainty.path,
            )

    try:
        with count_compilations() as compiled:
            t0 = time.perf_counter()
            values, last_good = _observe(atoms, dynamics, 0, options.timestep_fs, committee)
            fragments = FragmentCheck(rules.bond_factor, [last_good])
            compile_seconds = time.perf_counter() - t0
            check_uncertainty(last_good, values, 0)
            thermo.add(0, 0.0, values)
            writer.write(0, [last_good])
            step = 0
            with StopOnSignal(options.keep_on_interrupt) as stop:
                while step < options.steps:
                    n = min(options.sample_every, options.steps - step)
                    before = compiled.count
                    t0 = time.perf_counter()
                    reason = None
                    try:
                        dynamics.run(n)
                    except (ValueError, FloatingPointError) as error:
                        reason = f"the calculator failed ({error})"
                    elapsed = time.perf_counter() - t0
                    step += n
                    if reason is None:
                        values, frame = _observe(
                            atoms, dynamics, step, options.timestep_fs, committee
                        )
                        reason, _ = rules.check_thermo(
                            values["temperature_kelvin"],
                            values["potential_energy"],
                            np.all(np.isfinite(frame.positions)),
                            options.temperatures[:1],
                        )
                        if reason is None:
                            reason = fragments([frame])[0]
                    if reason is not None:
                        compilations = compiled.count
                        raise_blowup(
                            reason, step, [last_good], [0], options.last_good_path, summary
                        )
                    check_uncertainty(frame, values, step)
                    if compiled.count == before:
                        timed_seconds += elapsed
                        timed_steps += n
                        chunk_us.append(1e6 * elapsed / n)
                    else:
                        compile_seconds += elapsed
                    thermo.add(step, step * options.timestep_fs, values)
                    writer.write(0, [frame])
                    if options.keep_frames:
                        kept.append(frame)
                    last_good = frame
                    steps_done = step  # checked and written up to here
                    us = 1e6 * timed_seconds / timed_steps if timed_steps else None
                    bar.update(
                        MDProgress(
                            step,
                            options.steps,
                            values["temperature_kelvin"],
                            values["potential_energy"],
                            us,
                        )
                    )
                    logger.info(
                        "step %d T=%.1f K E_pot=%.6f eV",
                        step,
                        values["temperature_kelvin"],
                        values["potential_energy"],
                    )
                    if stop.requested:
                        break
            compilations = compiled.count
    finally:
        writer.close()
        thermo.close()
        bar.close()
    return summary()
