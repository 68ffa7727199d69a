"""Shared helpers of the training tests: configs and frame generators."""

from __future__ import annotations

import json

import ase
import ase.build
import numpy as np

# A tiny student and short schedules: fast on 2 CPU cores, still learns.
TINY = {
    "model": {"features": 16, "num_layers": 2, "num_radial": 8},
    "cutoff_angstrom": 4.0,
    "batch_size": 4,
    "log_interval": 10,
}


def silicon_frames(n: int, seed: int = 0) -> list[ase.Atoms]:
    """Rattled (0.02–0.12 Å) and strained (±1.5 %) 8-atom diamond-Si cells."""
    rng = np.random.default_rng(seed)
    frames = []
    for i in range(n):
        atoms = ase.build.bulk("Si", "diamond", a=5.43, cubic=True)
        strain = np.eye(3) + 0.015 * rng.uniform(-1, 1, (3, 3))
        atoms.set_cell(atoms.cell.array @ (0.5 * (strain + strain.T)), scale_atoms=True)
        atoms.rattle(float(rng.uniform(0.02, 0.12)), seed=seed * 1000 + i)
        frames.append(atoms)
    return frames


def ethanol_frames(n: int, seed: int = 0) -> list[ase.Atoms]:
    """Ethanol with every atom displaced by up to ~0.1 Å (no cell)."""
    rng = np.random.default_rng(seed)
    base = ase.build.molecule("CH3CH2OH")
    frames = []
    for _ in range(n):
        atoms = base.copy()
        atoms.positions += rng.normal(0.0, float(rng.uniform(0.02, 0.06)), atoms.positions.shape)
        frames.append(atoms)
    return frames


SI_CONFIG = {
    **TINY,
    "steps": 300,
    "learning_rate": 3e-3,
    "validation_interval": 50,
    "checkpoint_interval": 100,
}


def read_metrics(output) -> list[dict]:
    """The metrics lines of a run directory."""
    path = output / "training" / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]
