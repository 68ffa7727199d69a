"""Loss and error sums of a batch (pure functions of predictions and labels).

The loss is a weighted sum of three mean squared errors:

- energy per atom, eV/atom, averaged over structures;
- force components, eV/Å, averaged over atoms × 3;
- virial per atom, ``stress × volume / atoms`` in eV/atom (so its weight is on the
  same footing as the energy's), averaged over the 9 tensor components of the
  structures that have a stress label;
- with Hessian labels, in a separate small batch (:func:`hessian_loss_and_sums`): the
  squared norm ``|H_student·u - H_teacher·u|²`` of the Hessian-vector product along the
  frame's unit direction ``u``, (eV/Å²)², averaged over frames. For a random unit ``u``
  its mean is ``|ΔH|²_F / 3n``, the mean squared row norm of the Hessian error: an
  intensive number (rows of a local potential's Hessian have a bounded number of
  non-zero entries), so frames of any size weigh alike.

Each frame's terms are scaled by the batch's per-frame weights (1 unless the training
asked otherwise, see :func:`disagreement_weights`); the means still divide by the real
counts, so a down-weighted frame simply counts less.

Every mean is over the *whole* batch (all device shards): the callers pass the global
counts, so a batch split over devices gives the same loss as on one device.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxdistill.data.arrays import LabelArrays
from jaxdistill.data.batching import Batch
from jaxdistill.potential import Prediction, voigt_stress

# Names of the error sums; metrics are derived from them (see `metrics_from_sums`).
ERROR_SUMS = (
    "n_graphs",
    "n_atoms",
    "n_stress",
    "energy_abs",
    "energy_sq",
    "forces_abs",
    "forces_sq",
    "stress_abs",
    "stress_sq",
    "energy_loss",
    "forces_loss",
    "stress_loss",
)
# Sums of the Hessian-vector term (present when a batch carries Hessian labels).
HESSIAN_SUMS = ("n_hessian", "hessian_sq", "hessian_ref_sq", "hessian_loss")


class LossWeights(NamedTuple):
    """Weights of the mean squared errors (see the module docstring for units)."""

    energy: float = 1.0
    forces: float = 10.0
    stress: float = 1.0
    hessian: float = 0.0


def batch_counts(batch: Batch) -> dict[str, jax.Array]:
    """Real structures, atoms and stress-labelled structures in a batch (any leading axes)."""
    return {
        "n_graphs": jnp.sum(batch.graph.graph_mask),
        "n_atoms": jnp.sum(batch.graph.node_mask),
        "n_stress": jnp.sum(batch.stress_mask),
    }


def hessian_counts(batch: Batch) -> dict[str, jax.Array]:
    """Frames carrying a Hessian label in a batch (any leading axes)."""
    return {"n_hessian": jnp.sum(batch.hessian_mask)}


def hessian_loss_and_sums(
    products: jax.Array, batch: Batch, totals: dict[str, jax.Array], weight: float
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """This shard's share of the Hessian-vector loss, and its sums.

    Args:
        products: the student's ``H·u`` on ``batch`` (one shard), ``[n_node, 3]`` eV/Å².
        batch: a shard made with ``hessian_choice`` (one direction per frame).
        totals: ``n_hessian`` over the whole batch.
        weight: the loss weight, (eV/Å²)⁻².

    Returns:
        ``(loss, sums)`` with the sums named in :data:`HESSIAN_SUMS`: frames, the
        summed squared error norms and the summed squared teacher norms.
    """
    graph = batch.graph
    on = (batch.hessian_mask[graph.node_graph] & graph.node_mask)[:, None]
    diff = jnp.where(on, products - batch.hessian_products, 0.0)
    reference = jnp.where(on, batch.hessian_products, 0.0)
    error_sq = jnp.sum(diff**2)
    n_hessian = jnp.maximum(totals["n_hessian"], 1).astype(diff.dtype)
    loss = weight * error_sq / n_hessian
    return loss, {
        "n_hessian": jnp.sum(batch.hessian_mask).astype(diff.dtype),
        "hessian_sq": error_sq,
        "hessian_ref_sq": jnp.sum(reference**2),
        "hessian_loss": loss,
    }


def residuals(prediction: Prediction, batch: Batch) -> dict[str, jax.Array]:
    """Masked differences student − teacher of one (unstacked) batch.

    Returns:
        ``energy`` [n_graph] eV/atom, ``forces`` [n_node, 3] eV/Å, ``virial``
        [n_graph, 3, 3] eV/atom and ``stress`` [n_graph, 6] eV/Å³ (Voigt); zero on
        padding and on structures without the label.
    """
    graph = batch.graph
    atoms = jnp.maximum(graph.n_node, 1).astype(prediction.energy.dtype)
    energy = jnp.where(graph.graph_mask, (prediction.energy - batch.energy) / atoms, 0.0)
    forces = jnp.where(graph.node_mask[:, None], prediction.forces - batch.forces, 0.0)
    stress_mask = batch.stress_mask[:, None, None]
    d_stress = jnp.where(stress_mask, prediction.stress - batch.stress, 0.0)
    cell = jnp.where(stress_mask, graph.cell, jnp.eye(3, dtype=graph.cell.dtype))
    volume = jnp.abs(jnp.linalg.det(cell))
    virial = d_stress * (volume / atoms)[:, None, None]
    return {
        "energy": energy,
        "forces": forces,
        "virial": virial,
        "stress": voigt_stress(d_stress),
    }


def loss_and_sums(
    prediction: Prediction,
    batch: Batch,
    totals: dict[str, jax.Array],
    weights: LossWeights,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """This shard's share of the loss, and its error sums.

    Args:
        prediction: the student's outputs on ``batch`` (one shard, unstacked).
        batch: the shard.
        totals: ``n_graphs``, ``n_atoms``, ``n_stress`` over the whole batch.
        weights: loss weights.

    Returns:
        ``(loss, sums)``: the shard's loss (the shards' losses add up to the batch
        loss) and the sums named in :data:`ERROR_SUMS`.
    """
    r = residuals(prediction, batch)
    dtype = r["energy"].dtype
    n_graphs = jnp.maximum(totals["n_graphs"], 1).astype(dtype)
    n_atoms = jnp.maximum(totals["n_atoms"], 1).astype(dtype)
    n_stress = jnp.maximum(totals["n_stress"], 1).astype(dtype)
    frame_energy = batch.energy_weight.astype(dtype)
    atom_forces = batch.force_weight.astype(dtype)[batch.graph.node_graph]
    energy_loss = weights.energy * jnp.sum(frame_energy * r["energy"] ** 2) / n_graphs
    forces_loss = weights.forces * jnp.sum(atom_forces[:, None] * r["forces"] ** 2) / (3 * n_atoms)
    stress_loss = (
        weights.stress * jnp.sum(frame_energy[:, None, None] * r["virial"] ** 2) / (9 * n_stress)
    )
    loss = energy_loss + forces_loss + stress_loss
    counts = batch_counts(batch)
    sums = {
        "n_graphs": counts["n_graphs"].astype(dtype),
        "n_atoms": counts["n_atoms"].astype(dtype),
        "n_stress": counts["n_stress"].astype(dtype),
        "energy_abs": jnp.sum(jnp.abs(r["energy"])),
        "energy_sq": jnp.sum(r["energy"] ** 2),
        "forces_abs": jnp.sum(jnp.abs(r["forces"])),
        "forces_sq": jnp.sum(r["forces"] ** 2),
        "stress_abs": jnp.sum(jnp.abs(r["stress"])),
        "stress_sq": jnp.sum(r["stress"] ** 2),
        "energy_loss": energy_loss,
        "forces_loss": forces_loss,
        "stress_loss": stress_loss,
    }
    return loss, sums


def disagreement_weights(labels: LabelArrays, limit: float | None) -> np.ndarray | None:
    """Per-frame loss weights from an ensemble teacher's force disagreement.

    Where the members' forces disagree by ``sigma > limit`` (eV/Å) the labels are noise
    of that size: such a frame keeps its forces, weighted ``(limit / sigma)**2`` (the
    inverse-variance weight, relative to a frame at the limit), and loses its energy
    and stress, whose errors there (~0.1 eV/atom) would swamp the loss. Frames at or
    under the limit, and frames of single-model teachers (NaN disagreement), weigh 1.

    Args:
        labels: the training frames.
        limit: the disagreement up to which labels are trusted fully, eV/Å; None: no
            weighting.

    Returns:
        ``[n_frames, 2]`` weights of (energy and stress, forces), or None when every
        weight would be 1.
    """
    if limit is None:
        return None
    sigma = np.asarray(labels.force_disagreement, dtype=np.float64)
    uncertain = sigma > limit  # False for NaN
    if not uncertain.any():
        return None
    weights = np.ones((labels.n_frames, 2))
    weights[uncertain, 0] = 0.0
    weights[uncertain, 1] = (limit / sigma[uncertain]) ** 2
    return weights


def metrics_from_sums(sums: dict[str, float]) -> dict[str, float]:
    """Errors in reporting units from accumulated sums (host-side floats).

    Returns:
        ``energy_mae_meV_per_atom``, ``energy_rmse_meV_per_atom``,
        ``force_mae_meV_per_A``, ``force_rmse_meV_per_A`` (per Cartesian component),
        ``stress_mae_meV_per_A3`` (Voigt components; absent without stress labels),
        ``hessian_rmse_eV_per_A2`` (root mean of ``|ΔH·u|²`` over frames) and
        ``hessian_relative_rmse`` (``sqrt(Σ|ΔH·u|² / Σ|H·u|²)``) when Hessian labels
        were seen, the loss terms, and the counts.
    """
    n_graphs, n_atoms, n_stress = (float(sums[k]) for k in ("n_graphs", "n_atoms", "n_stress"))
    out: dict[str, float] = {"frames": n_graphs, "atoms": n_atoms}
    if n_graphs:
        out["energy_mae_meV_per_atom"] = 1e3 * sums["energy_abs"] / n_graphs
        out["energy_rmse_meV_per_atom"] = 1e3 * (sums["energy_sq"] / n_graphs) ** 0.5
    if n_atoms:
        out["force_mae_meV_per_A"] = 1e3 * sums["forces_abs"] / (3 * n_atoms)
        out["force_rmse_meV_per_A"] = 1e3 * (sums["forces_sq"] / (3 * n_atoms)) ** 0.5
    n_hessian = float(sums.get("n_hessian", 0.0))
    if n_hessian:
        out["hessian_rmse_eV_per_A2"] = (sums["hessian_sq"] / n_hessian) ** 0.5
        if sums["hessian_ref_sq"] > 0:
            out["hessian_relative_rmse"] = (sums["hessian_sq"] / sums["hessian_ref_sq"]) ** 0.5
        out["hessian_frames"] = n_hessian
    if n_stress:
        out["stress_mae_meV_per_A3"] = 1e3 * sums["stress_abs"] / (6 * n_stress)
        out["stress_rmse_meV_per_A3"] = 1e3 * (sums["stress_sq"] / (6 * n_stress)) ** 0.5
        out["stress_frames"] = n_stress
    return {k: float(v) for k, v in out.items()}
