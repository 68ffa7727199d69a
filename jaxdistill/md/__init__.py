"""Molecular dynamics: one driver (:func:`run_md`) for every MD the project runs.

driver.py         run_md, choose_engine: arguments checked once, then an engine
ase_engine.py     a StudentCalculator or any ASE calculator with ASE's integrators
jaxmd_engine.py   the jax-md engine as a factory of pure functions (init, chunk, observe)
jaxmd_loop.py     the host loop around it (overflow redo, checks, recording)
types.py          options, StabilityRules, MDSummary, the one MDInstabilityError
checks.py, recording.py, initial.py, signals.py   what both engines share
jaxmd.py          students as jax-md potentials (jax_md_potential)
ase_calculator.py StudentCalculator
"""

from jaxdistill.md.driver import choose_engine, run_md
from jaxdistill.md.types import (
    ENGINES,
    MDInstabilityError,
    MDProgress,
    MDSummary,
    MDUncertaintyError,
    StabilityRules,
)

__all__ = [
    "ENGINES",
    "MDInstabilityError",
    "MDProgress",
    "MDSummary",
    "MDUncertaintyError",
    "StabilityRules",
    "choose_engine",
    "run_md",
]
