"""Padded, fixed-shape batches of labelled frames for training and evaluation.

Neighbour pairs are searched once per frame (:func:`precompute_neighbours`); a batch is
then only index arithmetic on flat numpy arrays. Every batch holds a fixed number of
structure slots per device shard, and its node and edge counts are padded to a
capacity chosen by a :class:`CapacityPlan`:

- "single": one capacity for the whole run, large enough for the largest possible
  batch (the sum of the largest frames), so the training step compiles once;
- "bucket": each batch is padded to the next capacity bucket of
  :func:`jaxdistill.graph.bucket_capacity`, so a few shapes compile, with less padding
  when frame sizes differ a lot;
- "auto": "single" unless it would leave batches less than half full on average.

A batch for ``n`` device shards is a :class:`Batch` whose every leaf has a leading axis
of length ``n``: shard ``k`` is an ordinary padded :class:`~jaxdistill.graph.Graph` (as
:func:`~jaxdistill.graph.batch_graphs` makes) with its labels.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import ase
import numpy as np

from jaxdistill.data.arrays import LabelArrays
from jaxdistill.graph import (
    Graph,
    bucket_capacity,
    neighbour_pairs,
    pair_slots,
    receiver_major_arrays,
)

__all__ = [
    "Batch",
    "Capacity",
    "CapacityPlan",
    "FrameGraphs",
    "frame_atoms",
    "make_batch",
    "plan_capacity",
    "precompute_neighbours",
    "shard_indices",
    "voigt_to_matrix",
]


class Batch(NamedTuple):
    """Padded graphs and their labels (a JAX pytree; zeros on padding).

    Attributes:
        graph: the padded graph(s).
        energy: ``[n_graph]`` teacher energy, eV.
        forces: ``[n_node, 3]`` teacher forces, eV/Å.
        stress: ``[n_graph, 3, 3]`` teacher stress, eV/Å³ (ASE sign), zero where absent.
        stress_mask: ``[n_graph]`` bool, True where the frame has a stress label.
        frame_index: ``[n_graph]`` int, index of the frame in the arrays it came from
            (-1 on padding).
        energy_weight: ``[n_graph]`` weight of each frame's energy and stress in the
            loss (1 by default, 0 on padding).
        force_weight: ``[n_graph]`` weight of each frame's forces in the loss (1 by
            default, 0 on padding).
        hessian_directions: ``[n_node, 3]`` one Hessian direction ``u`` per frame (a
            unit vector over the frame's coordinates), zero on padding and on frames
            without; None in batches made without ``hessian_choice``.
        hessian_products: ``[n_node, 3]`` the teacher's ``H·u``, eV/Å²; or None.
        hessian_mask: ``[n_graph]`` bool, True where the frame carries ``u`` and
            ``H·u``; or None.
    """

    graph: Graph
    energy: np.ndarray
    forces: np.ndarray
    stress: np.ndarray
    stress_mask: np.ndarray
    frame_index: np.ndarray
    energy_weight: np.ndarray
    force_weight: np.ndarray
    hessian_directions: np.ndarray | None = None
    hessian_products: np.ndarray | None = None
    hessian_mask: np.ndarray | None = None


@dataclass(frozen=True)
class Capacity:
    """Static sizes of one shard's padded graph (one padding node and graph included).

    ``slots``: edge slots per node of a receiver-major graph (then ``edges`` is
    ``nodes * slots``), or None for an edge list.
    """

    nodes: int
    edges: int
    graphs: int
    slots: int | None = None


@dataclass(frozen=True)
class FrameGraphs:
    """Labelled frames with their neighbour pairs, found once (host numpy arrays).

    Attributes:
        labels: the frames and labels.
        cutoff: neighbour cutoff, Å.
        senders, receivers: ``[n_pairs_total]`` local atom indices (within the frame)
            of every pair; frame ``i`` owns rows ``edge_offsets[i]:edge_offsets[i+1]``.
        shifts: ``[n_pairs_total, 3]`` integer cell shifts.
        edge_offsets: ``[n_frames + 1]``.
        frame_weights: ``[n_frames, 2]`` loss weights of each frame's energy (and
            stress) and of its forces; None: every label weighs 1 (see
            :func:`jaxdistill.train.loss.disagreement_weights`).
    """

    labels: LabelArrays
    cutoff: float
    senders: np.ndarray
    receivers: np.ndarray
    shifts: np.ndarray
    edge_offsets: np.ndarray
    frame_weights: np.ndarray | None = None

    @property
    def n_frames(self) -> int:
        """Number of frames."""
        return self.labels.n_frames

    @property
    def n_atoms(self) -> np.ndarray:
        """``[n_frames]`` atoms per frame."""
        return self.labels.n_atoms

    @property
    def n_edges(self) -> np.ndarray:
        """``[n_frames]`` neighbour pairs per frame."""
        return np.diff(self.edge_offsets)

    def atoms(self, i: int) -> ase.Atoms:
        """Frame ``i`` as ase.Atoms (no labels)."""
        return frame_atoms(self.labels, i)

    @functools.cached_property
    def _first_atom_of_pair(self) -> np.ndarray:
        """``[n_pairs_total]`` int64: the data-set index of the first atom of each
        pair's frame (local atom index + this = an index unique across frames)."""
        frame_of_pair = np.repeat(np.arange(self.n_frames), self.n_edges)
        return self.labels.offsets[frame_of_pair].astype(np.int64)

    @functools.cached_property
    def pair_slots(self) -> tuple[np.ndarray, np.ndarray]:
        """:func:`~jaxdistill.graph.pair_slots` of every pair of every frame (``reverse``
        in global pair indices; a pair's reverse is in the same frame), found once, so
        receiver-major batches are assembled without sorting."""
        base = self._first_atom_of_pair
        return pair_slots(
            base + self.senders.astype(np.int64),
            base + self.receivers.astype(np.int64),
            self.shifts,
        )

    @functools.cached_property
    def max_neighbours(self) -> int:
        """The largest neighbour count of any atom of any frame (0 without pairs)."""
        if len(self.receivers) == 0:
            return 0
        atom = self._first_atom_of_pair + self.receivers.astype(np.int64)
        return int(np.bincount(atom).max())


def frame_atoms(labels: LabelArrays, i: int) -> ase.Atoms:
    """Frame ``i`` of label arrays as ase.Atoms, without labels (cell zero if not periodic)."""
    lo, hi = int(labels.offsets[i]), int(labels.offsets[i + 1])
    pbc = np.asarray(labels.pbc[i], dtype=bool)
    cell = labels.cell[i] if np.any(pbc) else np.zeros((3, 3))
    return ase.Atoms(
        numbers=labels.numbers[lo:hi], positions=labels.positions[lo:hi], cell=cell, pbc=pbc
    )


def precompute_neighbours(labels: LabelArrays, cutoff: float) -> FrameGraphs:
    """Search the neighbour pairs of every frame once (vesin), for batching later.

    Args:
        labels: frames (e.g. ``LabelStore(path).arrays(indices)``).
        cutoff: radius in Å.

    Returns:
        A :class:`FrameGraphs`; indices are int16 when every frame has fewer than
        32767 atoms and shifts int8 when they fit, to keep large data sets small.
    """
    n_atoms = labels.n_atoms
    if labels.n_frames and n_atoms.max() < np.iinfo(np.int16).max:
        index_dtype = np.int16
    else:
        index_dtype = np.int32
    senders, receivers, shifts, counts = [], [], [], []
    for i in range(labels.n_frames):
        pairs = neighbour_pairs(frame_atoms(labels, i), cutoff)
        senders.append(pairs.senders.astype(index_dtype))
        receivers.append(pairs.receivers.astype(index_dtype))
        shifts.append(pairs.shifts)
        counts.append(len(pairs.senders))
    if counts:
        all_shifts = np.concatenate(shifts)
        small = all_shifts.size == 0 or np.abs(all_shifts).max() < 127
        all_shifts = all_shifts.astype(np.int8 if small else np.int32)
        all_senders, all_receivers = np.concatenate(senders), np.concatenate(receivers)
    else:
        all_shifts = np.zeros((0, 3), np.int8)
        all_senders = all_receivers = np.zeros(0, index_dtype)
    offsets = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)]).astype(np.int64)
    return FrameGraphs(labels, float(cutoff), all_senders, all_receivers, all_shifts, offsets)


def _ranges(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Concatenation of ``arange(s, s + c)`` for each (s, c), without a Python loop."""
    counts = np.asarray(counts, dtype=np.int64)
    total = int(counts.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    first = np.concatenate([[0], np.cumsum(counts)[:-1]])
    return np.repeat(np.asarray(starts, dtype=np.int64) - first, counts) + np.arange(total)


def voigt_to_matrix(voigt: np.ndarray) -> np.ndarray:
    """Voigt stress ``[..., 6]`` (xx yy zz yz xz xy) to symmetric ``[..., 3, 3]``."""
    v = np.asarray(voigt)
    xx, yy, zz, yz, xz, xy = (v[..., k] for k in range(6))
    return np.stack(
        [np.stack([xx, xy, xz], -1), np.stack([xy, yy, yz], -1), np.stack([xz, yz, zz], -1)], -2
    )


def shard_indices(indices: Sequence[int] | np.ndarray, n_shards: int) -> list[np.ndarray]:
    """Split a batch's frame indices into ``n_shards`` consecutive, near-equal parts."""
    indices = np.asarray(indices, dtype=np.int64)
    per_shard = -(-len(indices) // n_shards)
    return [indices[k * per_shard : (k + 1) * per_shard] for k in range(n_shards)]


@dataclass(frozen=True)
class CapacityPlan:
    """How batches are padded.

    Attributes:
        mode: "single" (``fixed`` for every batch) or "bucket".
        graphs: structure slots per shard, padding graph included.
        fixed: the one capacity of "single" mode.
        fill: expected fraction of real nodes in a "single" batch (for reports).
    """

    mode: str
    graphs: int
    fixed: Capacity | None = None
    fill: float = 1.0
    slots: int | None = None

    def capacity(self, frames: FrameGraphs, shards: Sequence[np.ndarray]) -> Capacity:
        """The capacity of a batch made of ``shards`` (lists of frame indices)."""
        if self.fixed is not None:
            return self.fixed
        nodes = bucket_capacity(max(int(frames.n_atoms[s].sum()) for s in shards) + 1)
        if self.slots is not None:
            return Capacity(nodes, nodes * self.slots, self.graphs, self.slots)
        edges = max(int(frames.n_edges[s].sum()) for s in shards)
        return Capacity(nodes, bucket_capacity(edges + 1), self.graphs)


def _round_up(value: int, multiple: int = 8) -> int:
    return -(-int(value) // multiple) * multiple


def plan_capacity(
    frames: Sequence[FrameGraphs],
    graphs_per_shard: int,
    mode: str = "auto",
    rows: np.ndarray | None = None,
    receiver_major: bool = False,
) -> CapacityPlan:
    """Choose the padding of batches of ``graphs_per_shard`` structures per shard.

    Args:
        frames: every set of frames that will be batched with this plan (training and
            validation), so that one capacity fits them all.
        graphs_per_shard: real structures per shard.
        mode: "single", "bucket" or "auto" (single unless the average batch would fill
            less than half of the single capacity).
        rows: only these frames (positions in the one set of ``frames``) are batched,
            e.g. the frames with Hessian labels.
        receiver_major: lay batches out receiver-major (``Graph.reverse_edges``): every
            node gets the slots of the largest neighbour count of all ``frames``
            (bucketed), so shapes stay fixed; edges are ``nodes * slots``.
    """
    if mode not in ("auto", "single", "bucket"):
        raise ValueError(f"capacity mode must be auto, single or bucket, got {mode!r}")
    k = int(graphs_per_shard)
    atoms = np.concatenate([f.n_atoms for f in frames])
    edges = np.concatenate([f.n_edges for f in frames])
    if rows is not None:
        atoms, edges = atoms[rows], edges[rows]
    if len(atoms) == 0:
        raise ValueError("no frames to batch")
    # The k largest frames; with fewer than k frames a batch repeats some (the batch
    # order wraps into the next epoch), so k times the largest.
    top_atoms = int(np.sort(atoms)[-k:].sum()) if len(atoms) >= k else k * int(atoms.max())
    top_edges = int(np.sort(edges)[-k:].sum()) if len(edges) >= k else k * int(edges.max())
    slots = None
    if receiver_major:
        slots = bucket_capacity(max(f.max_neighbours for f in frames), minimum=4)
        nodes = _round_up(top_atoms + 1)
        fixed = Capacity(nodes, nodes * slots, k + 1, slots)
    else:
        fixed = Capacity(_round_up(top_atoms + 1), _round_up(top_edges + 1), k + 1)
    fill = min(
        min(k, len(atoms)) * atoms.mean() / fixed.nodes,
        min(k, len(edges)) * edges.mean() / fixed.edges,
    )
    if mode == "single" or (mode == "auto" and fill >= 0.5):
        return CapacityPlan("single", k + 1, fixed, float(fill), slots)
    return CapacityPlan("bucket", k + 1, None, float(fill), slots)


def _shard_arrays(
    frames: FrameGraphs,
    idx: np.ndarray,
    capacity: Capacity,
    dtype: np.dtype,
    choice: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    lab = frames.labels
    k = len(idx)
    n_cap, e_cap, g_cap = capacity.nodes, capacity.edges, capacity.graphs
    if k >= g_cap:
        raise ValueError(f"{k} structures do not fit {g_cap} graph slots (one is padding)")
    counts = lab.n_atoms[idx]
    edge_counts = frames.n_edges[idx]
    n_real, e_real = int(counts.sum()), int(edge_counts.sum())
    if n_real >= n_cap or e_real > e_cap:
        raise ValueError(
            f"batch of {n_real} atoms and {e_real} edges exceeds capacity "
            f"({n_cap} nodes incl. one padding node, {e_cap} edges)"
        )
    atom_rows = _ranges(lab.offsets[idx], counts)
    edge_rows = _ranges(frames.edge_offsets[idx], edge_counts)
    node_start = (np.cumsum(counts) - counts).astype(np.int64)  # also right for an empty shard

    positions = np.zeros((n_cap, 3), dtype)
    positions[:n_real] = lab.positions[atom_rows]
    numbers = np.zeros(n_cap, np.int32)
    numbers[:n_real] = lab.numbers[atom_rows]
    node_graph = np.full(n_cap, g_cap - 1, np.int32)
    node_graph[:n_real] = np.repeat(np.arange(k, dtype=np.int32), counts)
    forces = np.zeros((n_cap, 3), dtype)
    forces[:n_real] = lab.forces[atom_rows]

    padding_node = n_cap - 1
    senders = np.full(e_cap, padding_node, np.int32)
    receivers = np.full(e_cap, padding_node, np.int32)
    edge_base = np.repeat(node_start, edge_counts)
    senders[:e_real] = frames.senders[edge_rows] + edge_base
    receivers[:e_real] = frames.receivers[edge_rows] + edge_base
    shifts = np.zeros((e_cap, 3), dtype)
    shifts[:e_real] = frames.shifts[edge_rows]

    pbc = np.zeros((g_cap, 3), bool)
    pbc[:k] = lab.pbc[idx]
    cell = np.zeros((g_cap, 3, 3), dtype)
    periodic_any = np.any(pbc[:k], axis=1)
    cell[:k] = np.where(periodic_any[:, None, None], np.nan_to_num(lab.cell[idx]), 0.0)
    n_node = np.zeros(g_cap, np.int32)
    n_node[:k] = counts
    energy = np.zeros(g_cap, dtype)
    energy[:k] = lab.energy[idx]
    voigt = lab.stress[idx]
    has_stress = np.all(np.isfinite(voigt), axis=1) & np.all(pbc[:k], axis=1)
    stress = np.zeros((g_cap, 3, 3), dtype)
    stress[:k] = np.where(has_stress[:, None, None], voigt_to_matrix(np.nan_to_num(voigt)), 0.0)
    stress_mask = np.zeros(g_cap, bool)
    stress_mask[:k] = has_stress
    frame_index = np.full(g_cap, -1, np.int64)
    frame_index[:k] = idx
    weights = np.zeros((g_cap, 2), dtype)
    weights[:k] = 1.0 if frames.frame_weights is None else frames.frame_weights[idx]
    edge_mask = np.arange(e_cap) < e_real
    layout: dict[str, np.ndarray] = {}
    if capacity.slots is not None:
        # ranks and reverses were found once for the data set: a batch sorts nothing
        rank, reverse = frames.pair_slots
        batch_rows = np.arange(e_real)
        slots_of_pairs = (rank[edge_rows], batch_rows + (reverse[edge_rows] - edge_rows))
        senders, receivers, shifts, edge_mask, layout["reverse_edges"] = receiver_major_arrays(
            senders[:e_real],
            receivers[:e_real],
            shifts[:e_real],
            n_cap,
            capacity.slots,
            slots_of_pairs,
        )
    hessian: dict[str, np.ndarray] = {}
    if choice is not None:
        hessian = _hessian_arrays(lab, idx, atom_rows, counts, choice, n_cap, g_cap, dtype)
    return {
        **hessian,
        **layout,
        "positions": positions,
        "numbers": numbers,
        "cell": cell,
        "pbc": pbc,
        "senders": senders,
        "receivers": receivers,
        "shifts": shifts,
        "node_graph": node_graph,
        "n_node": n_node,
        "node_mask": np.arange(n_cap) < n_real,
        "edge_mask": edge_mask,
        "graph_mask": np.arange(g_cap) < k,
        "energy": energy,
        "forces": forces,
        "stress": stress,
        "stress_mask": stress_mask,
        "frame_index": frame_index,
        "energy_weight": weights[:, 0],
        "force_weight": weights[:, 1],
    }


def _hessian_arrays(
    lab: LabelArrays,
    idx: np.ndarray,
    atom_rows: np.ndarray,
    counts: np.ndarray,
    choice: np.ndarray,
    n_cap: int,
    g_cap: int,
    dtype: np.dtype,
) -> dict[str, np.ndarray]:
    """One Hessian direction and its label per frame (``choice[i]``: which of the
    frame's K; -1, or a frame without Hessian labels: none)."""
    k = len(idx)
    choice = np.asarray(choice, dtype=np.int64).reshape(-1)
    if len(choice) != k:
        raise ValueError(f"{len(choice)} Hessian choices for {k} frames")
    directions = np.zeros((n_cap, 3), dtype)
    products = np.zeros((n_cap, 3), dtype)
    mask = np.zeros(g_cap, bool)
    if lab.hessian_products is not None and k:
        usable = (choice >= 0) & lab.has_hessian[idx]
        atom_choice = np.repeat(np.where(usable, choice, 0), counts)
        atom_usable = np.repeat(usable, counts)
        n_real = len(atom_rows)
        picked_u = lab.hessian_directions[atom_rows, atom_choice]
        picked_h = lab.hessian_products[atom_rows, atom_choice]
        directions[:n_real] = np.where(atom_usable[:, None], picked_u, 0.0)
        products[:n_real] = np.where(atom_usable[:, None], picked_h, 0.0)
        mask[:k] = usable
    return {
        "hessian_directions": directions,
        "hessian_products": products,
        "hessian_mask": mask,
    }


def make_batch(
    frames: FrameGraphs,
    shards: Sequence[Sequence[int] | np.ndarray],
    capacity: Capacity,
    dtype: np.dtype | str = np.float32,
    stacked: bool = True,
    hessian_choice: Sequence[Sequence[int] | np.ndarray] | None = None,
) -> Batch:
    """Pack frames into a padded batch.

    Args:
        frames: frames with precomputed neighbours.
        shards: frame indices of each device shard (one list for a single device).
        capacity: sizes of each shard's padded graph.
        dtype: float dtype of positions, cells, shifts and labels.
        stacked: give every leaf a leading shard axis (``[n_shards, ...]``); with
            False, ``shards`` must hold one list and the plain batch is returned.
        hessian_choice: per shard, per frame, which of the frame's Hessian directions
            the batch carries (-1: none); None: a batch without Hessian fields.

    Returns:
        A :class:`Batch` of numpy arrays.
    """
    dtype = np.dtype(dtype)
    choices = hessian_choice if hessian_choice is not None else [None] * len(shards)
    if len(choices) != len(shards):
        raise ValueError(f"{len(choices)} Hessian choices for {len(shards)} shards")
    parts = [
        _shard_arrays(frames, np.asarray(s, dtype=np.int64), capacity, dtype, c)
        for s, c in zip(shards, choices, strict=True)
    ]
    if stacked:
        arrays = {key: np.stack([p[key] for p in parts]) for key in parts[0]}
    else:
        if len(parts) != 1:
            raise ValueError("stacked=False needs exactly one shard")
        arrays = parts[0]
    graph = Graph(**{name: arrays[name] for name in Graph._fields if name in arrays})
    return Batch(
        graph=graph,
        energy=arrays["energy"],
        forces=arrays["forces"],
        stress=arrays["stress"],
        stress_mask=arrays["stress_mask"],
        frame_index=arrays["frame_index"],
        energy_weight=arrays["energy_weight"],
        force_weight=arrays["force_weight"],
        hessian_directions=arrays.get("hessian_directions"),
        hessian_products=arrays.get("hessian_products"),
        hessian_mask=arrays.get("hessian_mask"),
    )
