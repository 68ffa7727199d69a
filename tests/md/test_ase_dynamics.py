"""The shared ASE Langevin: without friction it is plain velocity Verlet, and with
friction it thermalises every degree of freedom, the centre of mass included."""

from __future__ import annotations

import ase.build
import numpy as np
from ase import units
from ase.calculators.emt import EMT
from ase.md.velocitydistribution import thermalize_momenta
from ase.md.verlet import VelocityVerlet

from jaxdistill.md.ase_dynamics import langevin


def _ethanol_moving() -> ase.Atoms:
    atoms = ase.build.molecule("CH3CH2OH")
    thermalize_momenta(atoms, temperature_K=600, rng=np.random.default_rng(0))
    # a net drift as well: fixing the centre of mass would remove it
    atoms.set_momenta(atoms.get_momenta() + 0.05 * atoms.get_masses()[:, None])
    atoms.calc = EMT()
    return atoms


def test_frictionless_langevin_is_velocity_verlet():
    a, b = _ethanol_moving(), _ethanol_moving()
    langevin(a, 0.5, 600.0, 0.0, np.random.default_rng(1)).run(40)
    VelocityVerlet(b, timestep=0.5 * units.fs).run(40)
    np.testing.assert_allclose(a.positions, b.positions, atol=1e-10)
    np.testing.assert_allclose(a.get_momenta(), b.get_momenta(), atol=1e-10)


def test_thermostat_reaches_its_temperature_even_from_a_drifting_start():
    atoms = _ethanol_moving()
    dynamics = langevin(atoms, 0.5, 300.0, 0.05, np.random.default_rng(2))
    temperatures = []
    for _ in range(300):
        dynamics.run(10)
        temperatures.append(atoms.get_temperature())
    # 9 atoms: large fluctuations (std of the mean ~10 K here); the mean over 1.5 ps after
    # 0.5 ps is near 300 K. With ASE's fixcm=True the start's drift is never damped: 381 K.
    assert abs(np.mean(temperatures[100:]) - 300.0) < 60.0
