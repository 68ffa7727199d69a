"""Students as jax-md potentials.

:func:`jax_md_potential` follows jax-md's own convention (as
``jax_md.energy.lennard_jones_neighbor_list``)::

    displacement_fn, shift_fn = jax_md.space.periodic_general(box)
    neighbor_fn, energy_fn = jaxdistill.jax_md_potential(student, displacement_fn, box, species)
    nbrs = neighbor_fn.allocate(R)
    init_fn, apply_fn = jax_md.simulate.nvt_nose_hoover(energy_fn, shift_fn, dt, kT)
    state = init_fn(key, R, mass=masses, neighbor=nbrs)
    # in a lax.scan / fori_loop: nbrs = nbrs.update(state.position);
    #                            state = apply_fn(state, neighbor=nbrs)

so a jax-md script runs unchanged with a student. Edge vectors come from the user's
displacement function (so ``box=`` and ``perturbation=`` keyword arguments work, and
``jax_md.quantity.stress`` / ``pressure`` and ``simulate.npt_nose_hoover`` work with
``space.periodic_general``); the student's ``module.apply`` turns them into per-atom
energies.

Units are the student's: Å, eV, and with masses in amu the time unit is ASE's
(``ase.units.fs`` = 0.0982 of it), so ``dt = timestep_fs * ase.units.fs`` and
``kT = ase.units.kB * T``.

Periodic boxes must be wider than twice the cutoff (jax-md uses the minimum image
convention); for a non-orthogonal box, wider than twice ``cutoff + dr_threshold``.
Smaller cells: repeat them (``atoms * (2, 2, 2)``) or use the ASE calculator, which
handles any cell.

jax_md is imported lazily (importing it takes seconds); ``import jaxdistill`` stays fast.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxdistill.committee import (
    Model,
    ModelLike,
    StudentCommittee,
    as_model,
    is_committee,
    over_members,
)
from jaxdistill.models.fused import mode_on_compacted_rows
from jaxdistill.student import as_atomic_numbers

#: Neighbour-list format that ``format="auto"`` picks on a GPU: a ``Dense`` list runs the
#: students on the receiver-major layout, with no scatter-add in the force evaluation
#: (measured on an H100, 2026-12-06: PaiNN 64×3 1.25× faster at 64 Si atoms and 2.0× at
#: 4096; docs/benchmarks.md).
DEFAULT_FORMAT_GPU = "dense"
#: ... and on a CPU, where the two measured alike (dense 0–20 % slower on 2 cores).
DEFAULT_FORMAT_CPU = "sparse"
#: Default skin (jax-md's ``dr_threshold``), Å.
DEFAULT_DR_THRESHOLD = 0.5


def _jax_version() -> tuple[int, ...]:
    parts = []
    for piece in jax.__version__.split(".")[:3]:
        digits = "".join(c for c in piece if c.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def default_disable_cell_list() -> bool:
    """Whether to skip jax-md's cell list by default.

    jax-md 0.2.29 with jax >= 0.11 fails when a neighbour list that uses a cell list is
    updated inside ``lax.scan`` (a pytree metadata check on its ``cell_size``); without
    the cell list (an O(N²) candidate search at each rebuild) it works. On older jax
    both paths work and the cell list is used for boxes large enough to hold one.
    """
    return _jax_version() >= (0, 11)


def resolve_format(format: Any = "auto"):
    """A jax-md ``NeighborListFormat`` from a name ("sparse", "dense", "ordered_sparse",
    "auto") or the enum itself. "auto" is :data:`DEFAULT_FORMAT_GPU` when JAX's default
    backend is a GPU, else :data:`DEFAULT_FORMAT_CPU`."""
    from jax_md import partition

    if isinstance(format, partition.NeighborListFormat):
        return format
    name = str(format).lower().replace("-", "_")
    if name == "auto":
        name = DEFAULT_FORMAT_GPU if jax.default_backend() == "gpu" else DEFAULT_FORMAT_CPU
    formats = {
        "sparse": partition.Sparse,
        "dense": partition.Dense,
        "ordered_sparse": partition.OrderedSparse,
    }
    if name not in formats:
        raise ValueError(f"unknown neighbour-list format {format!r}; use one of {sorted(formats)}")
    return formats[name]


def box_matrix(box: Any, dimension: int = 3) -> np.ndarray:
    """A jax-md box (scalar, side lengths or matrix with lattice vectors as columns) as
    a ``[3, 3]`` matrix with lattice vectors as columns."""
    b = np.asarray(box, dtype=np.float64)
    if b.ndim == 0:
        return np.eye(dimension) * float(b)
    if b.ndim == 1:
        return np.diag(b)
    if b.shape != (dimension, dimension):
        raise ValueError(f"box must be a scalar, a vector or a {dimension}x{dimension} matrix")
    return b


def box_widths(box: Any) -> np.ndarray:
    """Distances between opposite faces of a box (jax-md convention, columns)."""
    b = box_matrix(box)
    volume = abs(np.linalg.det(b))
    a = [b[:, k] for k in range(3)]
    return np.array(
        [volume / np.linalg.norm(np.cross(a[(k + 1) % 3], a[(k + 2) % 3])) for k in range(3)]
    )


def is_orthorhombic(box: Any) -> bool:
    b = box_matrix(box)
    return bool(np.all(b[~np.eye(3, dtype=bool)] == 0.0))


def minimum_box_width(box: Any, cutoff: float, dr_threshold: float) -> float:
    """Smallest face-to-face width a periodic box needs for jax-md's minimum image.

    Orthorhombic boxes: wrapping each fractional coordinate gives the exact nearest
    image, so ``2 * cutoff`` suffices. Non-orthogonal boxes: wrapping is exact only for
    vectors shorter than half the width, and the neighbour list must see pairs out to
    ``cutoff + dr_threshold``, so ``2 * (cutoff + dr_threshold)``.
    """
    return 2.0 * cutoff if is_orthorhombic(box) else 2.0 * (cutoff + dr_threshold)


def check_box(box: Any, cutoff: float, dr_threshold: float) -> None:
    """Raise a clear ValueError if a periodic box is too small for the minimum image."""
    widths = box_widths(box)
    needed = minimum_box_width(box, cutoff, dr_threshold)
    if np.min(widths) <= needed:
        raise ValueError(
            f"the periodic box is too small for jax-md: its face-to-face widths are "
            f"{np.round(widths, 3).tolist()} Å but the minimum-image convention needs more "
            f"than {needed:.3f} Å (twice the cutoff {cutoff} Å"
            + ("" if is_orthorhombic(box) else f" plus the skin {dr_threshold} Å")
            + "). Repeat the cell (e.g. atoms * (2, 2, 2)) or use the ASE engine, which "
            "handles cells of any size: --engine ase (engine='ase' in run_md; "
            "StudentCalculator in an ASE script)."
        )


def _is_periodic_displacement(
    displacement_fn: Callable, box: Any, fractional_coordinates: bool
) -> bool:
    """Probe a displacement function: does it wrap across the box?"""
    b = box_matrix(box)
    u = np.array([0.75, 0.0, 0.0])
    far = u if fractional_coordinates else b @ u
    dr = np.asarray(displacement_fn(jnp.zeros(3), jnp.asarray(far)))
    return bool(np.linalg.norm(dr) < 0.5 * np.linalg.norm(b[:, 0]))


def _hashable_cell_size(neighbors):
    """Store a neighbour list's static ``cell_size`` as a Python float.

    jax-md keeps it as a jax scalar in a static (pytree metadata) field; newer jax wants
    hashable metadata there. A float is equal in value and harmless on older jax.
    """
    cell_size = getattr(neighbors, "cell_size", None)
    if cell_size is None or isinstance(cell_size, float):
        return neighbors
    try:
        value = float(np.asarray(cell_size))
    except (TypeError, ValueError):
        return neighbors
    return dataclasses.replace(neighbors, cell_size=value)


def neighbor_edges(neighbor, n_atoms: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Senders, receivers and mask of a jax-md neighbour list, in the Graph convention.

    Edge ``e`` goes from neighbour ``senders[e]`` (j) to centre ``receivers[e]`` (i);
    padding edges join the padding node ``n_atoms`` to itself.
    """
    from jax_md import partition

    idx = neighbor.idx
    if neighbor.format is partition.Dense:
        width = idx.shape[1]
        senders = idx.reshape(-1)
        receivers = jnp.repeat(jnp.arange(n_atoms, dtype=idx.dtype), width)
    elif neighbor.format is partition.Sparse:
        senders, receivers = idx[0], idx[1]
    else:  # OrderedSparse holds each pair once: use both directions
        senders = jnp.concatenate([idx[0], idx[1]])
        receivers = jnp.concatenate([idx[1], idx[0]])
    mask = (senders < n_atoms) & (receivers < n_atoms)
    senders = jnp.where(mask, senders, n_atoms)
    receivers = jnp.where(mask, receivers, n_atoms)
    return senders, receivers, mask


def receiver_major_table(neighbor, n_atoms: int) -> jax.Array:
    """A jax-md ``Dense`` list's ``idx`` as a receiver-major table.

    Row ``i`` (``[n_atoms + 1, M]`` int32) holds the neighbours of atom ``i``; a padding
    row of ``M`` slots is appended for the padding node ``n_atoms``, and every empty slot
    points at that node.
    """
    idx = neighbor.idx
    n_slots = idx.shape[1]
    table = jnp.concatenate([idx, jnp.full((1, n_slots), n_atoms, idx.dtype)], axis=0)
    return jnp.minimum(table, n_atoms).astype(jnp.int32)


def table_edges(table: jax.Array, n_atoms: int):
    """Edges of a receiver-major table (:func:`receiver_major_table`).

    Edge ``e = i * M + m`` has receiver ``i`` and sender ``table[i, m]``, and the list's
    symmetry gives every edge its reverse
    (:func:`jaxdistill.models.edges.receiver_major_layout`).

    Returns:
        ``(edges, edge_mask)``: an :class:`~jaxdistill.models.edges.Edges` with its
        layout, and ``[(n_atoms + 1) * M]`` bool, True for real edges.
    """
    from jaxdistill.models.edges import Edges, receiver_major_layout

    senders = table.reshape(-1)
    rows = jnp.repeat(jnp.arange(table.shape[0], dtype=jnp.int32), table.shape[1])
    mask = (senders < n_atoms) & (rows < n_atoms)
    # Under the minimum-image convention a pair appears at most once per row.
    layout = receiver_major_layout(senders, table.shape[0], unique_pairs=True)
    receivers = jnp.where(mask, rows, n_atoms)
    return Edges(senders, receivers, layout), mask


def receiver_major_edges(neighbor, n_atoms: int):
    """Edges of a jax-md ``Dense`` neighbour list on the receiver-major layout:
    :func:`table_edges` of its :func:`receiver_major_table`."""
    return table_edges(receiver_major_table(neighbor, n_atoms), n_atoms)


class RowCompaction(NamedTuple):
    """Each step, a ``Dense`` list's rows shrink to the pairs within the cutoff.

    The list holds every pair within ``cutoff + skin``, sized with head-room
    (``capacity_multiplier``); only pairs within the cutoff carry a message, so the
    student runs on rows compacted to a narrower static width. There are a few widths
    (:meth:`widths`: the pairs the list was sized for, times the volume ratio of the two
    spheres, times each of ``margins``); each step takes the narrowest that holds every
    atom's pairs within the cutoff, or the full list when none does (a ``lax.switch``),
    so results never depend on them. A hot system, whose atoms gather more neighbours
    than the cold one the list was sized on, takes the wider ones.

    Under ``jax.vmap`` (replicas) a ``lax.switch`` whose index is batched runs every
    branch, so there the width is chosen on the host instead: ``width`` fixes it (the
    full list when it is at least the list's), and the caller checks with
    :func:`largest_row` that no step needed more and redoes those that did on a wider
    one (``run_md``'s replicas do, per chunk, sizing it from the pairs they count:
    :data:`REPLICA_WIDTH_MARGIN`).

    Attributes:
        skin: the list's skin (jax-md's ``dr_threshold``), Å.
        capacity_multiplier: the list's head-room factor.
        margins: head-room of each compacted width over the expected pair count.
        width: None to choose per step among :meth:`widths` (``lax.switch``), or a
            fixed width (slots per row).
    """

    skin: float
    capacity_multiplier: float
    margins: tuple[float, ...] = (1.25, 1.6)
    width: int | None = None

    def widths(self, n_slots: int, cutoff: float) -> tuple[int, ...]:
        """Compacted widths, ascending, each narrower than the list's ``n_slots``."""
        sized_for = n_slots / self.capacity_multiplier
        within = sized_for * (cutoff / (cutoff + self.skin)) ** 3
        widths = {int(np.ceil(within * margin)) for margin in self.margins}
        return tuple(sorted(w for w in widths if w < n_slots))


def compact_table(
    table: jax.Array,
    padded_positions: jax.Array,
    displacement: Callable,
    cutoff: float,
    n_slots: int,
) -> tuple[jax.Array, jax.Array]:
    """A receiver-major table's rows compacted to the pairs within ``cutoff``.

    Args:
        table: ``[n_atoms + 1, M]`` (:func:`receiver_major_table`).
        padded_positions: ``[n_atoms + 1, dim]``, the padding node last.
        displacement: vmapped displacement, ``(Ra [n, dim], Rb [n, dim]) -> [n, dim]``.
        cutoff: Å.
        n_slots: static width of the result.

    Returns:
        ``(compacted [n_atoms + 1, n_slots], largest)`` as
        :func:`jaxdistill.models.edges.compact_rows`: rows are packed at the front, so
        ``compacted[:, :w]`` is the compaction to any ``w >= largest``.
    """
    from jaxdistill.models.edges import compact_rows

    keep = _within_cutoff(table, padded_positions, displacement, cutoff)
    return compact_rows(table, keep, n_slots, table.shape[0] - 1)


def _within_cutoff(
    table: jax.Array, padded_positions: jax.Array, displacement: Callable, cutoff: float
) -> jax.Array:
    """``[n_atoms + 1, M]`` bool: the table's slots that hold a pair within ``cutoff``
    (arguments as :func:`compact_table`)."""
    n_atoms = table.shape[0] - 1
    rows = jnp.broadcast_to(jnp.arange(n_atoms + 1)[:, None], table.shape)
    # Which pairs are in is a discrete choice: no gradient flows through it.
    ends = jax.lax.stop_gradient(padded_positions)
    vectors = displacement(ends[table.reshape(-1)], ends[rows.reshape(-1)])
    squared = jnp.sum(vectors.reshape(*table.shape, -1) ** 2, axis=-1)
    return (table < n_atoms) & (rows < n_atoms) & (squared < cutoff**2)


def largest_row(
    R: jax.Array, neighbor, displacement_fn: Callable, cutoff: float, **kwargs
) -> jax.Array:
    """The most pairs within ``cutoff`` any atom has in a ``Dense`` list at ``R``: what
    a compacted width must hold (int scalar). ``kwargs`` go to ``displacement_fn``."""
    n_atoms = R.shape[0]
    table = receiver_major_table(neighbor, n_atoms)
    padded = jnp.concatenate([R, jnp.zeros_like(R[:1])], axis=0)
    displacement = jax.vmap(functools.partial(displacement_fn, **kwargs))
    keep = _within_cutoff(table, padded, displacement, cutoff)
    return jnp.max(jnp.sum(keep, axis=1, dtype=jnp.int32))


def _switch_differentiated_inside(
    index: jax.Array, energy: Callable, structures: Sequence[Any], inputs: Any
) -> jax.Array:
    """``energy(structures[index], inputs)``, with derivatives taken inside the chosen
    branch.

    A plain ``lax.switch`` under ``jax.grad`` returns the residuals of every branch (those
    not taken filled with zeros): the full list's per-edge arrays written every step for
    nothing. Here the JVP rule runs one ``lax.switch`` over the branches' own
    ``value_and_grad`` and returns the tangent as gradient · tangent, so reverse mode
    keeps only the gradients (shaped like ``inputs``). Derivatives of those gradients
    (forces' derivatives) are not supported.

    Args:
        index: int scalar in ``[0, len(structures))``.
        energy: ``(structure, inputs) -> scalar``; ``structure`` holds no floats.
        structures: the branches' structures (pytrees of integer arrays).
        inputs: the differentiable inputs (pytree).
    """
    from jax.custom_derivatives import SymbolicZero

    @jax.custom_jvp
    def switched(index, structures, inputs):
        branches = [functools.partial(energy, structure) for structure in structures]
        return jax.lax.switch(index, branches, inputs)

    def switched_jvp(primals, tangents):
        index, structures, inputs = primals
        leaves, treedef = jax.tree.flatten(inputs)
        tangent_leaves = treedef.flatten_up_to(tangents[2])
        active = [
            i
            for i, (leaf, tangent) in enumerate(zip(leaves, tangent_leaves, strict=True))
            if not isinstance(tangent, SymbolicZero) and jnp.issubdtype(leaf.dtype, jnp.inexact)
        ]

        def value_and_grad(structure):
            def of_active(values):
                merged = list(leaves)
                for i, value in zip(active, values, strict=True):
                    merged[i] = value
                return energy(structure, jax.tree.unflatten(treedef, merged))

            return jax.value_and_grad(of_active)

        branches = [value_and_grad(structure) for structure in structures]
        value, gradients = jax.lax.switch(index, branches, [leaves[i] for i in active])
        tangent = sum(
            (jnp.sum(g * tangent_leaves[i]) for g, i in zip(gradients, active, strict=True)),
            jnp.zeros_like(value),
        )
        return value, tangent

    switched.defjvp(switched_jvp, symbolic_zeros=True)
    return switched(index, list(structures), inputs)


#: Replicas' compacted width (fixed per chunk, see :class:`RowCompaction`): this many
#: times the most pairs within the cutoff any atom had, at the start and after a
#: chunk that needed more (then at least that many).
REPLICA_WIDTH_MARGIN = 1.15

#: ``compact_rows="auto"`` compacts from this many atoms (see :class:`RowCompaction`).
#: At 512 Si atoms compaction cut PaiNN's step by 14-25 % on an H100 and an H200; SchNet
#: lost 9 % on the H100 (without recomputed per-edge work) and gained 18 % on the H200
#: (with it); at 64 atoms it cost 8-15 % (docs/benchmarks.md).
COMPACT_MIN_ATOMS = 512


def resolve_compaction(
    compact_rows: bool | str, n_atoms: int, skin: float, capacity_multiplier: float
) -> RowCompaction | None:
    """The :class:`RowCompaction` that ``compact_rows`` (True, False or "auto": from
    :data:`COMPACT_MIN_ATOMS` atoms) asks for, or None."""
    if compact_rows == "auto":
        compact_rows = n_atoms >= COMPACT_MIN_ATOMS
    elif not isinstance(compact_rows, bool):
        raise ValueError(f"compact_rows must be True, False or 'auto', got {compact_rows!r}")
    return RowCompaction(skin, capacity_multiplier) if compact_rows else None


def _member_energy_fn(
    model: Model,
    displacement_fn: Callable,
    species: Sequence[int],
    compaction: RowCompaction | None = None,
) -> Callable[..., jax.Array]:
    """``energy(params, R, neighbor, numbers=None, **kwargs) -> scalar``: one student's
    (one member's) energy on a jax-md neighbour list; ``kwargs`` go to
    ``displacement_fn``.

    A ``Dense`` list runs the receiver-major layout (no scatter-add anywhere in the
    energy or its gradient; see :mod:`jaxdistill.models.edges`) for students that take
    it, with its rows compacted per ``compaction``; other formats an edge list."""
    from jax_md import partition

    from jaxdistill.models.edges import Edges, accepts_layout

    numbers_np = np.asarray(species, dtype=np.int32)
    n_atoms = len(numbers_np)
    module = model.model
    apply = apply_compacted = module.apply
    if hasattr(module, "message_passing"):  # registered architectures may lack it
        # compacted rows run message passing their own way (fused.mode_on_compacted_rows)
        mode = mode_on_compacted_rows(module.message_passing)
        apply_compacted = module.clone(message_passing=mode).apply
    receiver_major_ok = accepts_layout(model.model)
    dtype = jnp.dtype(model.dtype)
    cutoff = float(model.cutoff)
    node_mask = np.arange(n_atoms + 1) < n_atoms
    padded_numbers = np.concatenate([numbers_np, [0]]).astype(np.int32)

    def energy(params, R: jax.Array, neighbor, numbers=None, **kwargs) -> jax.Array:
        numbers = (
            jnp.asarray(padded_numbers)
            if numbers is None
            else jnp.concatenate([jnp.asarray(numbers, jnp.int32), jnp.zeros(1, jnp.int32)])
        )
        if R.shape[0] != n_atoms:
            raise ValueError(f"energy_fn was built for {n_atoms} atoms, got R of {R.shape}")
        padded = jnp.concatenate([R, jnp.zeros_like(R[:1])], axis=0)
        inputs = (params, numbers, padded, kwargs)
        if not (receiver_major_ok and neighbor.format is partition.Dense):
            senders, receivers, edge_mask = neighbor_edges(neighbor, n_atoms)
            return on_edges(Edges(senders, receivers), edge_mask, {}, inputs)
        table = receiver_major_table(neighbor, n_atoms)
        widths = () if compaction is None else compaction.widths(table.shape[1], cutoff)
        if not widths and (compaction is None or compaction.width is None):
            return on_table(table, inputs)
        displacement = jax.vmap(functools.partial(displacement_fn, **kwargs))
        full_slots = table.shape[1]

        def on_rows(rows: jax.Array, inputs) -> jax.Array:
            return on_table(rows, inputs, compacted=rows.shape[1] < full_slots)

        if compaction.width is not None:
            # a width fixed by the caller, who checks the rows fit (see RowCompaction)
            if compaction.width >= full_slots:
                return on_table(table, inputs)
            compacted, _ = compact_table(table, padded, displacement, cutoff, compaction.width)
            return on_rows(compacted, inputs)
        compacted, largest = compact_table(table, padded, displacement, cutoff, widths[-1])
        # The narrowest width that holds every row's pairs; past the widest, the full list.
        index = sum((largest > width).astype(jnp.int32) for width in widths)
        tables = [compacted[:, :width] for width in widths] + [table]
        return _switch_differentiated_inside(index, on_rows, tables, inputs)

    def on_edges(
        edges: Edges, edge_mask: jax.Array, layout_kwargs: dict, inputs, compacted: bool = False
    ) -> jax.Array:
        params, numbers, padded, kwargs = inputs
        displacement = jax.vmap(functools.partial(displacement_fn, **kwargs))
        vectors = displacement(edges.from_senders(padded), edges.from_receivers(padded))
        vectors = jnp.where(edge_mask[:, None], vectors, 0.0).astype(dtype)
        atomic = (apply_compacted if compacted else apply)(
            params,
            numbers,
            vectors,
            edges.senders,
            edges.receivers,
            jnp.asarray(node_mask),
            edge_mask,
            **layout_kwargs,
        )
        return jnp.sum(jnp.where(jnp.asarray(node_mask), atomic, 0.0))

    def on_table(table: jax.Array, inputs, compacted: bool = False) -> jax.Array:
        edges, edge_mask = table_edges(table, n_atoms)
        return on_edges(edges, edge_mask, {"layout": edges.layout}, inputs, compacted)

    return energy


def make_energy_fn(
    student: Model,
    displacement_fn: Callable,
    species: Sequence[int],
    compaction: RowCompaction | None = None,
) -> Callable[..., jax.Array]:
    """``energy_fn(R, neighbor, **kwargs) -> scalar`` of a student on a jax-md neighbour list.

    For a :class:`~jaxdistill.committee.StudentCommittee`, the mean of its members'
    energies (one vmap over their stacked parameters), so the forces jax-md derives
    from it are the members' mean forces.

    Keyword arguments other than ``params`` (override the student's parameters: for a
    committee, stacked ones) and ``species`` (override the atomic numbers) go to
    ``displacement_fn``, as in jax-md's own potentials (``box=``, ``perturbation=``, ...).

    ``compaction``: on a ``Dense`` list, run the student on rows compacted to the pairs
    within the cutoff (:class:`RowCompaction`); None runs it on the list as it is.
    Under ``jax.vmap`` over positions the compaction's ``lax.switch`` runs every
    branch: there fix its ``width`` and check the rows fit (:func:`largest_row`).
    """
    energy = _member_energy_fn(student, displacement_fn, species, compaction)
    default_params = student.params
    committee = is_committee(student)

    def energy_fn(R: jax.Array, neighbor=None, **kwargs) -> jax.Array:
        if neighbor is None:
            raise ValueError("the student's energy_fn needs a neighbour list: energy_fn(R, nbrs)")
        params = kwargs.pop("params", default_params)
        numbers = kwargs.pop("species", None)
        if not committee:
            return energy(params, R, neighbor, numbers, **kwargs)
        members = over_members(lambda p: energy(p, R, neighbor, numbers, **kwargs), params)
        return jnp.mean(members)

    return energy_fn


def make_member_forces_fn(
    committee: StudentCommittee, displacement_fn: Callable, species: Sequence[int]
) -> Callable[..., jax.Array]:
    """``forces_fn(R, neighbor, params=..., **kwargs) -> [K, n_atoms, 3]``: every
    member's forces (eV/Å; ``-dE_k/dR`` as jax-md's ``quantity.force``, so Cartesian
    also for fractional coordinates of ``space.periodic_general``), in one vmap over the
    stacked parameters; ``kwargs`` as for :func:`make_energy_fn`. Their spread is the
    committee's disagreement (``jaxdistill.committee.force_spread``)."""
    energy = _member_energy_fn(committee, displacement_fn, species)
    default_params = committee.params

    def forces_fn(R: jax.Array, neighbor, **kwargs) -> jax.Array:
        params = kwargs.pop("params", default_params)
        numbers = kwargs.pop("species", None)

        def forces(p):
            return -jax.grad(lambda r: energy(p, r, neighbor, numbers, **kwargs))(R)

        return over_members(forces, params)

    return forces_fn


def jax_md_potential(
    student: ModelLike,
    displacement_fn: Callable,
    box: Any,
    species: Sequence[int | str],
    *,
    dr_threshold: float = DEFAULT_DR_THRESHOLD,
    format: Any = "auto",
    disable_cell_list: bool | None = None,
    fractional_coordinates: bool = False,
    capacity_multiplier: float = 1.25,
    dtype: str | None = None,
    compact_rows: bool | str = "auto",
    **neighbor_kwargs: Any,
):
    """A student as a jax-md ``(neighbor_fn, energy_fn)`` pair.

    Args:
        student: a Student or the path of a saved one; or a student committee (or a
            list of students or paths): its energy is the members' mean (one vmap).
        displacement_fn: from ``jax_md.space`` (``periodic_general``, ``periodic`` or
            ``free``).
        box: the jax-md box (scalar, side lengths, or matrix with lattice vectors as
            columns, upper triangular for ``periodic_general``); None for ``space.free()``
            (then the cell list is disabled).
        species: atomic number (or symbol) of every atom, in order.
        dr_threshold: the skin, Å: the list holds pairs within ``cutoff + dr_threshold``
            and is rebuilt once an atom moved more than half of it.
        format: "auto" (default: "dense" on a GPU, "sparse" on a CPU), "sparse",
            "dense", "ordered_sparse" or a ``jax_md.partition.NeighborListFormat``. On a
            "dense" list the students run scatter-free (receiver-major layout).
        disable_cell_list: None picks by jax version (see
            :func:`default_disable_cell_list`).
        fractional_coordinates: positions in the unit cube (as for
            ``space.periodic_general(box, fractional_coordinates=True)``, needed for
            ``simulate.npt_nose_hoover``).
        capacity_multiplier: head-room of the allocated list.
        dtype: cast the student ("float32"/"float64"); default its own.
        compact_rows: on a "dense" list, run the student each step on rows compacted to
            the pairs within the cutoff (:class:`RowCompaction`: the same energies and
            forces with fewer per-edge slots); True, False, or "auto" (from
            :data:`COMPACT_MIN_ATOMS` atoms). Pass False when vmapping ``energy_fn``
            over positions (replicas): a ``lax.switch`` under ``vmap`` runs every branch.
        **neighbor_kwargs: passed to ``jax_md.partition.neighbor_list``.

    Returns:
        ``(neighbor_fn, energy_fn)``: ``neighbor_fn.allocate(R)`` and
        ``nbrs.update(R)`` as in jax-md; ``energy_fn(R, neighbor, **kwargs) -> eV``.
        Forces are ``-grad(energy_fn)`` (``jax_md.quantity.force``); stress by
        ``jax_md.quantity.stress(energy_fn, R, box, neighbor=nbrs)``, which is minus
        ASE's (jax-md's sign: a compressed crystal has positive stress).

    Raises:
        ValueError: unknown elements, or a periodic box too small for the minimum image.
    """
    from jax_md import partition

    student = as_model(student, dtype)
    numbers = [as_atomic_numbers([z])[0] for z in species]
    unknown = sorted(set(numbers) - set(student.species))
    if unknown:
        raise ValueError(
            f"atomic numbers {unknown} are unknown to this student (it knows {student.species})"
        )
    neighbor_format = resolve_format(format)
    cutoff = float(student.cutoff)
    if box is None:
        if disable_cell_list is False:
            raise ValueError("a cell list needs a box; pass box= or disable_cell_list=True")
        disable_cell_list = True
        box_for_list = 1.0
    else:
        box_for_list = box
        if _is_periodic_displacement(displacement_fn, box, fractional_coordinates):
            check_box(box, cutoff, dr_threshold)
    if disable_cell_list is None:
        disable_cell_list = default_disable_cell_list()
    neighbor_fn = partition.neighbor_list(
        displacement_fn,
        box_for_list,
        cutoff,
        dr_threshold=dr_threshold,
        capacity_multiplier=capacity_multiplier,
        disable_cell_list=disable_cell_list,
        fractional_coordinates=fractional_coordinates,
        format=neighbor_format,
        **neighbor_kwargs,
    )
    if not disable_cell_list:
        allocate = neighbor_fn.allocate

        def allocate_hashable(position, extra_capacity: int = 0, **kwargs):
            return _hashable_cell_size(allocate(position, extra_capacity, **kwargs))

        neighbor_fn = partition.NeighborListFns(allocate_hashable, neighbor_fn.update)
    compaction = resolve_compaction(compact_rows, len(numbers), dr_threshold, capacity_multiplier)
    energy_fn = make_energy_fn(student, displacement_fn, numbers, compaction)
    return neighbor_fn, energy_fn
