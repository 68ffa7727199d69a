"""Per-species reference energies and the energy scale, fitted before training.

A frame's energy is modelled as ``E = sum_s n_s e_s + E_interaction``: the reference
energies ``e_s`` are the least-squares solution over the training frames (the
minimum-norm one when compositions do not determine them all), so the network only
learns the interaction part. The per-atom output scale is the RMS of the training
force components (eV/Å, used as eV), which makes the network's raw outputs of order one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from ase.data import chemical_symbols

from jaxdistill.data.arrays import LabelArrays


class HeadStatistics(NamedTuple):
    """Fitted statistics of the energy head.

    Attributes:
        species: atomic numbers, in the student's order.
        reference_energies: ``[n_species]`` eV per atom of each species (0 for species
            absent from the training frames).
        scale: per-atom energy scale, eV (the same for every species).
        energy_residual_rms: RMS of the energy per atom left after the references,
            eV/atom (a diagnostic).
    """

    species: tuple[int, ...]
    reference_energies: np.ndarray
    scale: float
    energy_residual_rms: float

    def as_metadata(self) -> dict[str, Any]:
        """JSON form: ``{"reference_energies_eV": {symbol: eV}, ...}``."""
        return {
            "reference_energies_eV": {
                chemical_symbols[z]: float(e)
                for z, e in zip(self.species, self.reference_energies, strict=True)
            },
            "atomic_scale_eV": float(self.scale),
            "energy_residual_rms_eV_per_atom": float(self.energy_residual_rms),
        }


def composition_matrix(labels: LabelArrays, species: Sequence[int]) -> np.ndarray:
    """``[n_frames, n_species]`` atom counts of each species in each frame."""
    species = [int(z) for z in species]
    table = np.full(119, -1, dtype=np.int64)
    table[species] = np.arange(len(species))
    index = table[labels.numbers]
    if np.any(index < 0):
        unknown = sorted(set(labels.numbers[index < 0].tolist()))
        raise ValueError(f"frames contain elements {unknown} outside the species {species}")
    counts = np.zeros((labels.n_frames, len(species)), dtype=np.float64)
    np.add.at(counts, (labels.atom_frame, index), 1.0)
    return counts


def fit_head_statistics(labels: LabelArrays, species: Sequence[int]) -> HeadStatistics:
    """Least-squares reference energies and the force-RMS scale of training frames.

    Args:
        labels: the training frames.
        species: the student's atomic numbers.
    """
    counts = composition_matrix(labels, species)
    energy = np.asarray(labels.energy, dtype=np.float64)
    present = counts.sum(axis=0) > 0
    references = np.zeros(len(species))
    if labels.n_frames:
        solution, *_ = np.linalg.lstsq(counts[:, present], energy, rcond=None)
        references[present] = solution
    residual = (energy - counts @ references) / np.maximum(labels.n_atoms, 1)
    residual_rms = float(np.sqrt(np.mean(residual**2))) if labels.n_frames else 0.0
    force_rms = float(np.sqrt(np.mean(labels.forces**2))) if labels.forces.size else 0.0
    scale = force_rms if force_rms > 1e-6 else (residual_rms if residual_rms > 1e-6 else 1.0)
    return HeadStatistics(tuple(int(z) for z in species), references, scale, residual_rms)


def apply_head_statistics(params: Any, stats: HeadStatistics) -> Any:
    """Parameters with every ``atomic_shift`` set to the references and ``atomic_scale``
    to the scale (the dtype of each leaf is kept)."""

    def replace(path, leaf):
        names = {getattr(key, "key", None) for key in path}
        if "atomic_shift" in names:
            return jnp.asarray(stats.reference_energies, dtype=leaf.dtype).reshape(leaf.shape)
        if "atomic_scale" in names:
            return jnp.full(leaf.shape, stats.scale, dtype=leaf.dtype)
        return leaf

    return jax.tree_util.tree_map_with_path(replace, params)
