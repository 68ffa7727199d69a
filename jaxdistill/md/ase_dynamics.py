"""The one ASE Langevin thermostat of jaxdistill (teacher sampling, MD validation and
the ASE engine of ``run_md``), so that all three sample the same ensemble."""

from __future__ import annotations

import ase
import numpy as np
from ase import units
from ase.md.langevin import Langevin

__all__ = ["langevin"]


def langevin(
    atoms: ase.Atoms,
    timestep_fs: float,
    temperature_kelvin: float,
    friction_per_fs: float,
    rng: np.random.Generator,
) -> Langevin:
    """ASE Langevin NVT on ``atoms`` (its calculator attached), in jaxdistill's units.

    Args:
        atoms: the structure to move.
        timestep_fs: time step, fs.
        temperature_kelvin: bath temperature, K.
        friction_per_fs: friction, 1/fs (0.01/fs = a 100 fs relaxation time).
        rng: source of the thermostat noise.
    """
    # fixcm=False: ASE's fixcm=True is deprecated and leaves the centre of mass out of
    # the thermostat (a drift of the start is never damped: ethanol with one ran ~80 K
    # hot, tests/md/test_ase_dynamics.py), while atoms.get_temperature() counts all 3N
    # degrees of freedom. With it off, only the Langevin noise moves the centre of mass.
    return Langevin(
        atoms,
        timestep=timestep_fs * units.fs,
        temperature_K=temperature_kelvin,
        friction=friction_per_fs / units.fs,
        fixcm=False,
        rng=rng,
    )
