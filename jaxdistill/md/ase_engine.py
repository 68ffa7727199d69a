"""The ASE engine of ``run_md``: StudentCalculator with ASE's integrators."""

from __future__ import annotations

import logging
import time

import ase
import numpy as np
from ase import units

from jaxdistill.diagnostics import count_compilations
from jaxdistill.md.ase_dynamics import langevin
from jaxdistill.md.run import (
    EngineOptions,
    MDProgress,
    MDSummary,
    StopOnSignal,
    _FragmentCheck,
    _frame,
    _initial_momenta,
    _Progress,
    _raise_blowup,
    _summarise,
    _temperature_limits,
    _ThermoLog,
    _TrajectoryWriter,
)
from jaxdistill.student import Student

logger = logging.getLogger("jaxdistill.md")


def run_ase(
    student: Student,
    atoms: ase.Atoms,
    options: EngineOptions,
) -> MDSummary:
    from ase.md.nose_hoover_chain import IsotropicMTKNPT, NoseHooverChainNVT
    from ase.md.verlet import VelocityVerlet

    from jaxdistill.md.ase_calculator import StudentCalculator

    # options.chunk_steps is unused: one call per step, nothing to chunk
    start_wall = time.perf_counter()
    temperature = float(options.temperatures[0])
    atoms = atoms.copy()
    atoms.set_momenta(
        _initial_momenta(atoms, temperature, options.seed, options.initial_velocities)
    )
    calculator = StudentCalculator(student, dtype=student.dtype, skin=options.skin)
    atoms.calc = calculator
    dt = options.timestep_fs * units.fs
    conserved = True
    if options.ensemble == "nve":
        dynamics = VelocityVerlet(atoms, timestep=dt)
    elif options.ensemble == "nvt" and options.thermostat == "langevin":
        dynamics = langevin(
            atoms,
            options.timestep_fs,
            temperature,
            options.friction_per_fs,
            np.random.default_rng(options.seed),
        )
        conserved = False
    elif options.ensemble == "nvt":
        dynamics = NoseHooverChainNVT(
            atoms,
            timestep=dt,
            temperature_K=temperature,
            tdamp=options.thermostat_time_fs * units.fs,
        )
    else:
        dynamics = IsotropicMTKNPT(
            atoms,
            timestep=dt,
            temperature_K=temperature,
            pressure_au=options.pressure_bar * units.bar,
            tdamp=options.thermostat_time_fs * units.fs,
            pdamp=options.barostat_time_fs * units.fs,
        )
    periodic = bool(np.all(atoms.pbc))
    limit = float(_temperature_limits(options.temperatures, options.max_temperature_factor)[0])
    writer = _TrajectoryWriter(options.trajectory, 1)
    thermo = _ThermoLog(options.log_file)
    bar = _Progress(
        options.progress, options.steps, options.callback, f"{options.ensemble.upper()} (ase)"
    )

    def observe(step: int) -> tuple[dict, ase.Atoms]:
        energy = atoms.get_potential_energy()
        kinetic = atoms.get_kinetic_energy()
        if hasattr(dynamics, "get_conserved_energy"):
            total = dynamics.get_conserved_energy()
        else:
            total = energy + kinetic
        values = {
            "temperature_kelvin": atoms.get_temperature(),
            "potential_energy": energy,
            "kinetic_energy": kinetic,
            "conserved_energy": total,
            "pressure_bar": (
                -np.trace(atoms.get_stress(voigt=False, include_ideal_gas=True)) / 3 / units.bar
                if periodic
                else np.nan
            ),
            "volume": atoms.get_volume() if periodic else np.nan,
        }
        frame = _frame(
            atoms.numbers,
            atoms.positions,
            atoms.get_momenta(),
            atoms.cell.array,
            atoms.pbc,
            energy,
            atoms.get_forces(),
            step,
            step * options.timestep_fs,
            values["temperature_kelvin"],
        )
        return values, frame

    compilations = 0
    timed_seconds, timed_steps, compile_seconds = 0.0, 0, 0.0
    chunk_us: list[float] = []
    try:
        with count_compilations() as compiled:
            t0 = time.perf_counter()
            values, last_good = observe(0)
            fragments = _FragmentCheck(options.bond_factor, [last_good])
            compile_seconds = time.perf_counter() - t0
            thermo.add(0, 0.0, values)
            writer.write(0, [last_good])
            step = steps_done = 0
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
                        values, frame = observe(step)
                        if not np.all(np.isfinite(frame.positions)) or not np.isfinite(
                            values["potential_energy"]
                        ):
                            reason = "non-finite positions or energy"
                        elif values["temperature_kelvin"] > limit:
                            reason = (
                                f"temperature {values['temperature_kelvin']:.4g} K exceeds "
                                f"{limit:.4g} K ({options.max_temperature_factor:g} x the target)"
                            )
                        else:
                            reason = fragments([frame])[0]
                    if reason is not None:
                        _raise_blowup(reason, step, [last_good], [0], options.last_good_path)
                    if compiled.count == before:
                        timed_seconds += elapsed
                        timed_steps += n
                        chunk_us.append(1e6 * elapsed / n)
                    else:
                        compile_seconds += elapsed
                    thermo.add(step, step * options.timestep_fs, values)
                    writer.write(0, [frame])
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
    return _summarise(
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
        rebuilds=calculator.neighbour_list_builds,
        reallocations=0,
        redone=0,
        compilations=compilations,
        trajectory=writer.paths,
        atoms=last_good,
        chunk_us=chunk_us,
        steps_done=steps_done,
    )
