"""Fixtures for the data tests: small real structures labelled by EMT (fast, exact)."""

from __future__ import annotations

import ase
import ase.build
import pytest

EMT_SPEC = "ase:ase.calculators.emt:EMT"


def mixed_frames(n_copper: int = 6) -> list[ase.Atoms]:
    """Rattled periodic Cu cells of two sizes, tagged like sampler output, plus one
    non-periodic molecule (no stress label) — EMT handles Cu, H, C, N, O."""
    frames = []
    for i in range(n_copper):
        atoms = ase.build.bulk("Cu", "fcc", a=3.61, cubic=True) * (1 + i % 2, 1, 1)
        atoms.rattle(0.05, seed=i)
        atoms.info.update(sampler="rattle", temperature_kelvin=float("nan"), seed=100 + i)
        frames.append(atoms)
    molecule = ase.build.molecule("CH3OH")
    molecule.rattle(0.02, seed=7)
    molecule.info.update(sampler="md", temperature_kelvin=300.0, seed=5)
    frames.append(molecule)
    return frames


@pytest.fixture
def frames() -> list[ase.Atoms]:
    """Seven small frames (six periodic Cu cells and a methanol molecule)."""
    return mixed_frames()


@pytest.fixture
def make_frames():
    """The :func:`mixed_frames` factory (``make_frames(n_copper=...)``)."""
    return mixed_frames


@pytest.fixture(scope="session")
def emt_teacher():
    from jaxdistill.teachers import load_teacher

    return load_teacher(EMT_SPEC)
