"""Neighbour graphs of atomic structures, padded to static shapes.

The host side (numpy) finds neighbour pairs with `vesin` and packs one or many
structures into a single :class:`Graph` whose node, edge and graph counts are rounded
up to a small set of capacity buckets. Shapes are therefore static: a jitted function
compiles once per bucket, not once per structure.

Edge convention (as jraph): edge ``e`` carries a message from ``senders[e]`` (the
neighbour ``j``) to ``receivers[e]`` (the centre ``i``); its vector is

    r_ij = positions[j] - positions[i] + shifts[e] @ cell[graph of i]

with integer ``shifts`` counting cell vectors, so one pair may appear several times
with different shifts when a cell is smaller than twice the cutoff.

Padding: the last graph slot is a padding graph that owns every padding node; padding
edges connect the last (padding) node to itself with zero shift. Masks mark real
entries. Models must use the masks and a safe norm so that padding contributes
exactly zero energy and zero gradient.

Receiver-major layout (``batch_graphs(..., slots_per_node=M)``): every node owns ``M``
consecutive edge slots, edge ``e`` belongs to node ``e // M``, and ``reverse_edges``
names each edge's reverse (j→i with the opposite shift). The students then sum
messages over slots and differentiate the sender gathers by gathers at the reverse
edges: no scatter-add in energies, forces or stress (``jaxdistill.models.edges``).
"""

from __future__ import annotations

import functools
import math
import sys
from collections.abc import Sequence
from typing import NamedTuple

import ase
import numpy as np
from ase.data import chemical_symbols


class Graph(NamedTuple):
    """A batch of atomic structures as one padded graph (a JAX pytree).

    Attributes:
        positions: Cartesian positions, Å, ``[n_node, 3]``.
        numbers: atomic numbers, ``[n_node]`` (0 on padding nodes).
        cell: cell vectors as rows, Å, ``[n_graph, 3, 3]`` (zeros for molecules).
        pbc: periodicity per cell vector, ``[n_graph, 3]`` bool.
        senders: neighbour index ``j`` of each edge, ``[n_edge]``.
        receivers: centre index ``i`` of each edge, ``[n_edge]``.
        shifts: integer cell shifts of each edge, ``[n_edge, 3]`` (stored as float
            so the product with the cell is differentiable in the cell).
        node_graph: graph index of each node, ``[n_node]``.
        n_node: real node count of each graph, ``[n_graph]`` (0 for padding graphs).
        node_mask: ``[n_node]`` bool, True for real atoms.
        edge_mask: ``[n_edge]`` bool, True for real edges.
        graph_mask: ``[n_graph]`` bool, True for real structures.
        reverse_edges: receiver-major graphs only (see the module docstring),
            ``[n_edge]`` int32: the index of each edge's reverse; padding slots point
            at themselves. None for a plain edge list (any edge order).
    """

    positions: np.ndarray
    numbers: np.ndarray
    cell: np.ndarray
    pbc: np.ndarray
    senders: np.ndarray
    receivers: np.ndarray
    shifts: np.ndarray
    node_graph: np.ndarray
    n_node: np.ndarray
    node_mask: np.ndarray
    edge_mask: np.ndarray
    graph_mask: np.ndarray
    reverse_edges: np.ndarray | None = None

    @property
    def n_graph_real(self) -> int:
        """Number of real (non-padding) structures; host-side only."""
        return int(np.sum(np.asarray(self.graph_mask)))


class Neighbours(NamedTuple):
    """Neighbour pairs of one structure (host-side numpy arrays)."""

    senders: np.ndarray  # [n_pair] neighbour j
    receivers: np.ndarray  # [n_pair] centre i
    shifts: np.ndarray  # [n_pair, 3] int


@functools.cache
def _vesin_neighbor_list_class():
    """Import vesin without letting it import torch.

    vesin imports torch, when installed, only to accept torch tensors, which we never
    pass; importing torch costs seconds and hundreds of MB in every MD process. While
    vesin is imported, ``torch`` is made unimportable unless it is already loaded.
    """
    if "torch" in sys.modules:
        import vesin
    else:
        sys.modules["torch"] = None  # makes `import torch` raise ImportError
        try:
            import vesin
        finally:
            del sys.modules["torch"]
    return vesin.NeighborList


def bucket_capacity(count: int, minimum: int = 8, per_octave: int = 2) -> int:
    """Round ``count`` up to the next of ``per_octave`` evenly spaced capacities between
    consecutive powers of two.

    The default (2 per octave: {8, 12, 16, 24, 32, 48, ...}) wastes at most a third of
    a padded array while keeping the number of distinct shapes (and so compilations)
    logarithmic. 8 per octave ({..., 512, 576, 640, ...}) wastes at most an eighth,
    for arrays a program computes on at every call of a long run (the ASE calculator's).

    Args:
        count: the size needed.
        minimum: the smallest capacity given.
        per_octave: 1, 2, 4 or 8.
    """
    if per_octave not in (1, 2, 4, 8):
        raise ValueError(f"per_octave must be 1, 2, 4 or 8, got {per_octave}")
    count = max(int(count), minimum)
    power = 2 ** math.ceil(math.log2(count))
    step = max(power // (2 * per_octave), 1) if per_octave > 1 else power
    return -(-count // step) * step


#: Atoms closer than this (Å) are coincident: no structure a force field describes.
MIN_DISTANCE_ANGSTROM = 0.1
#: Coordinates farther than this from the origin (Å) are refused (float32 keeps
#: 0.06 Å there; beyond it squared distances overflow).
MAX_COORDINATE_ANGSTROM = 1e6
_COINCIDENCE_SEARCH_ANGSTROM = 1.0


def atoms_problem(
    atoms: ase.Atoms,
    known_numbers: Sequence[int] | None = None,
    neighbours: Neighbours | None = None,
    coincident: bool = True,
) -> str | None:
    """What makes a structure unusable, in words, or None when it is fine.

    Checked: finite positions within :data:`MAX_COORDINATE_ANGSTROM` of the origin, a
    finite non-singular cell along periodic directions, elements known to a student
    (``known_numbers``), and no two atoms (periodic images included) closer than
    :data:`MIN_DISTANCE_ANGSTROM`.

    Args:
        atoms: the structure.
        known_numbers: atomic numbers a student knows; None skips that check.
        neighbours: pairs already found at a cutoff of at least
            :data:`MIN_DISTANCE_ANGSTROM` (saves a neighbour search); None searches.
        coincident: check for coincident atoms (False: leave that to
            :func:`coincident_atoms` with the pairs found later).
    """
    positions = atoms.get_positions()
    if len(positions) == 0:
        return "it has no atoms"
    finite = np.all(np.isfinite(positions), axis=1)
    if not np.all(finite):
        bad = np.where(~finite)[0]
        return f"positions of atoms {bad[:10].tolist()} are NaN or infinite"
    far = np.max(np.abs(positions), axis=1) > MAX_COORDINATE_ANGSTROM
    if np.any(far):
        bad = np.where(far)[0]
        return (
            f"positions of atoms {bad[:10].tolist()} are farther than "
            f"{MAX_COORDINATE_ANGSTROM:g} Å from the origin (e.g. {positions[bad[0]].tolist()})"
        )
    if np.any(atoms.pbc):
        cell = atoms.cell.array
        if not np.all(np.isfinite(cell)):
            return "the cell contains NaN or infinite entries"
        periodic_vectors = cell[np.asarray(atoms.pbc)]
        gram = periodic_vectors @ periodic_vectors.T
        if np.linalg.det(gram) <= 1e-12 * max(1.0, float(np.trace(gram))) ** len(gram):
            return (
                f"the cell is singular along its periodic directions (pbc={atoms.pbc.tolist()},"
                f" cell={cell.tolist()})"
            )
    if known_numbers is not None:
        unknown = sorted(set(atoms.numbers.tolist()) - set(int(z) for z in known_numbers))
        if unknown:
            names = ", ".join(chemical_symbols[z] for z in unknown)
            known = ", ".join(chemical_symbols[int(z)] for z in known_numbers)
            return f"element(s) {names} unknown to this student (it knows {known})"
    return coincident_atoms(atoms, neighbours) if coincident else None


def pair_vectors(atoms: ase.Atoms, neighbours: Neighbours) -> np.ndarray:
    """``r_ij = R_j - R_i + shift · cell`` of every pair, Å, ``[n_pair, 3]`` (host)."""
    positions = atoms.positions
    vectors = positions[neighbours.senders] - positions[neighbours.receivers]
    if np.any(neighbours.shifts):
        vectors = vectors + neighbours.shifts @ atoms.cell.array
    return vectors


def coincident_atoms(atoms: ase.Atoms, neighbours: Neighbours | None = None) -> str | None:
    """The closest pair in words when two atoms (or periodic images) are closer than
    :data:`MIN_DISTANCE_ANGSTROM`, else None.

    Args:
        atoms: the structure (finite positions, a valid cell).
        neighbours: pairs found at a cutoff of at least :data:`MIN_DISTANCE_ANGSTROM`;
            None searches.
    """
    if neighbours is None:
        # vesin's cell list at a 0.1 Å cutoff has a cell per 0.1 Å (9 ms for a 4-atom
        # cell); at 1 Å it costs 0.1 ms, and the few pairs found are filtered below
        neighbours = neighbour_pairs(atoms, _COINCIDENCE_SEARCH_ANGSTROM)
    if len(neighbours.senders) == 0:
        return None
    lengths = np.linalg.norm(pair_vectors(atoms, neighbours), axis=1)
    k = int(np.argmin(lengths))
    if lengths[k] >= MIN_DISTANCE_ANGSTROM:
        return None
    i, j = sorted((int(neighbours.receivers[k]), int(neighbours.senders[k])))
    image = " (periodic images)" if i == j or np.any(neighbours.shifts[k]) else ""
    return (
        f"atoms {i} and {j}{image} are {lengths[k]:.3g} Å apart (coincident: closer than "
        f"{MIN_DISTANCE_ANGSTROM} Å)"
    )


def validate_atoms(
    atoms: ase.Atoms,
    known_numbers: Sequence[int] | None = None,
    neighbours: Neighbours | None = None,
    coincident: bool = True,
) -> None:
    """Raise a clear ValueError for inputs that would give meaningless results
    (the checks of :func:`atoms_problem`).

    Args:
        atoms: the structure.
        known_numbers: atomic numbers a student knows; None skips that check.
        neighbours: pairs already found at a cutoff of at least
            :data:`MIN_DISTANCE_ANGSTROM` (saves a neighbour search); None searches.
        coincident: check for coincident atoms.
    """
    problem = atoms_problem(atoms, known_numbers, neighbours, coincident)
    if problem is not None:
        raise ValueError(problem)


def neighbour_pairs(atoms: ase.Atoms, cutoff: float) -> Neighbours:
    """All ordered pairs (i, j, shift) with |r_ij| < cutoff, every periodic image included.

    Uses vesin (a compiled cell-list search, exact for triclinic cells, mixed
    periodicity and cells smaller than twice the cutoff).

    Args:
        atoms: the structure; non-periodic directions may have a zero cell vector.
        cutoff: radius in Å.
    """
    pbc = np.asarray(atoms.pbc, dtype=bool)
    box = atoms.cell.array if np.any(pbc) else np.zeros((3, 3))
    calculator = _vesin_neighbor_list_class()(cutoff=float(cutoff), full_list=True)
    i, j, shifts = calculator.compute(atoms.positions, box, pbc, quantities="ijS")
    return Neighbours(
        senders=np.asarray(j, dtype=np.int32),
        receivers=np.asarray(i, dtype=np.int32),
        shifts=np.asarray(shifts, dtype=np.int32),
    )


def batch_graphs(
    structures: Sequence[ase.Atoms],
    cutoff: float,
    *,
    neighbours: Sequence[Neighbours] | None = None,
    node_capacity: int | None = None,
    edge_capacity: int | None = None,
    graph_capacity: int | None = None,
    dtype: np.dtype | str = np.float32,
    slots_per_node: int | None = None,
) -> Graph:
    """Pack structures into one padded :class:`Graph` with bucketed capacities.

    Args:
        structures: ase.Atoms to batch.
        cutoff: neighbour cutoff in Å (ignored for structures given ``neighbours``).
        neighbours: precomputed pairs per structure (e.g. with a skin), optional.
        node_capacity, edge_capacity, graph_capacity: force capacities (each must
            exceed the real count: one padding node and one padding graph are always
            kept); by default the next bucket is used.
        dtype: float dtype of positions, cell and shifts.
        slots_per_node: lay the edges out receiver-major with this many slots per node
            (at least the largest neighbour count; see :func:`slots_for`); then
            ``edge_capacity`` is ignored (it is ``node_capacity * slots_per_node``) and
            the graph carries ``reverse_edges``. None: a plain edge list.

    Returns:
        A Graph of numpy arrays (convert with ``jax.numpy.asarray`` or pass directly to
        a jitted function).
    """
    if isinstance(structures, ase.Atoms):
        structures = [structures]
    if len(structures) == 0:
        raise ValueError("cannot batch an empty list of structures")
    if neighbours is None:
        neighbours = [neighbour_pairs(atoms, cutoff) for atoms in structures]

    counts = np.array([len(atoms) for atoms in structures])
    edge_counts = np.array([len(nb.senders) for nb in neighbours])
    n_real_nodes, n_real_edges, n_real_graphs = (
        int(counts.sum()),
        int(edge_counts.sum()),
        len(structures),
    )
    node_capacity = node_capacity or bucket_capacity(n_real_nodes + 1)
    if slots_per_node is not None:
        # Too few slots is refused by receiver_major_arrays, naming the atom.
        edge_capacity = node_capacity * int(slots_per_node)
    edge_capacity = edge_capacity or bucket_capacity(n_real_edges + 1)
    graph_capacity = graph_capacity or bucket_capacity(n_real_graphs + 1, minimum=2)
    too_few_edges = slots_per_node is None and edge_capacity < max(n_real_edges, 1)
    if node_capacity <= n_real_nodes or too_few_edges:
        raise ValueError(
            f"capacities (nodes {node_capacity}, edges {edge_capacity}) too small for "
            f"{n_real_nodes} nodes and {n_real_edges} edges (one padding node is required)"
        )
    if graph_capacity <= n_real_graphs:
        raise ValueError(f"graph capacity {graph_capacity} must exceed {n_real_graphs}")

    padding_node = node_capacity - 1
    positions = np.zeros((node_capacity, 3), dtype=dtype)
    numbers = np.zeros(node_capacity, dtype=np.int32)
    node_graph = np.full(node_capacity, graph_capacity - 1, dtype=np.int32)
    cell = np.zeros((graph_capacity, 3, 3), dtype=dtype)
    pbc = np.zeros((graph_capacity, 3), dtype=bool)
    n_node = np.zeros(graph_capacity, dtype=np.int32)
    # A receiver-major graph is laid out from the real edges alone (below).
    edge_rows = edge_capacity if slots_per_node is None else n_real_edges
    senders = np.full(edge_rows, padding_node, dtype=np.int32)
    receivers = np.full(edge_rows, padding_node, dtype=np.int32)
    shifts = np.zeros((edge_rows, 3), dtype=dtype)

    node_offsets = np.concatenate([[0], np.cumsum(counts)])
    edge_offsets = np.concatenate([[0], np.cumsum(edge_counts)])
    for g, (atoms, nb) in enumerate(zip(structures, neighbours, strict=True)):
        a, b = node_offsets[g], node_offsets[g + 1]
        positions[a:b] = atoms.positions
        numbers[a:b] = atoms.numbers
        node_graph[a:b] = g
        n_node[g] = b - a
        if np.any(atoms.pbc):
            cell[g] = atoms.cell.array
        pbc[g] = atoms.pbc
        c, d = edge_offsets[g], edge_offsets[g + 1]
        senders[c:d] = nb.senders + a
        receivers[c:d] = nb.receivers + a
        shifts[c:d] = nb.shifts

    node_mask = np.arange(node_capacity) < n_real_nodes
    edge_mask = np.arange(edge_capacity) < n_real_edges
    graph_mask = np.arange(graph_capacity) < n_real_graphs
    reverse_edges = None
    if slots_per_node is not None:
        senders, receivers, shifts, edge_mask, reverse_edges = receiver_major_arrays(
            senders, receivers, shifts, node_capacity, int(slots_per_node)
        )
    return Graph(
        positions=positions,
        numbers=numbers,
        cell=cell,
        pbc=pbc,
        senders=senders,
        receivers=receivers,
        shifts=shifts,
        node_graph=node_graph,
        n_node=n_node,
        node_mask=node_mask,
        edge_mask=edge_mask,
        graph_mask=graph_mask,
        reverse_edges=reverse_edges,
    )


#: Slot counts of receiver-major graphs are multiples of this ...
SLOT_MULTIPLE = 4
#: ... at least this factor above the largest neighbour count. Every slot is computed
#: on, so the power-of-two buckets used for node and edge counts cost too much here: Si
#: (34 neighbours within 5.5 Å) got 48 slots from them, 40 from these (same forces;
#: timed in benchmarks/results/capacity_ab_*). The head-room keeps a calculator's slots
#: (which only grow) from recompiling as MD moves atoms.
SLOT_HEADROOM = 1.1


def slot_capacity(largest: int) -> int:
    """Slots per node for a largest neighbour count of ``largest``: ``largest`` times
    :data:`SLOT_HEADROOM`, rounded up to a multiple of :data:`SLOT_MULTIPLE`."""
    needed = max(math.ceil(int(largest) * SLOT_HEADROOM), 1)
    return SLOT_MULTIPLE * -(-needed // SLOT_MULTIPLE)


def slots_for(neighbours: Sequence[Neighbours]) -> int:
    """The slot count a receiver-major graph of these structures needs: the largest
    number of neighbours of any atom, with head-room (:func:`slot_capacity`)."""
    largest = max(
        (int(np.bincount(nb.receivers).max()) for nb in neighbours if len(nb.receivers)),
        default=1,
    )
    return slot_capacity(largest)


def pair_slots(
    senders: np.ndarray, receivers: np.ndarray, shifts: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Where each pair of a full (symmetric) neighbour list sits in a receiver-major
    layout, and which pair is its reverse: everything that layout needs besides the
    slot count, found by sorting once (training finds it once per data set).

    Args:
        senders, receivers: ``[n_pair]`` node indices (distinct structures must use
            distinct indices).
        shifts: ``[n_pair, 3]`` integer cell shifts (any numeric dtype).

    Returns:
        ``(rank, reverse)``, both ``[n_pair]`` int64: ``rank[e]``, the slot of pair ``e``
        in its receiver's row (a row's pairs ordered by sender); ``reverse[e]``, the
        index of the pair ``j <- i`` with the opposite shift.

    Raises:
        ValueError: the list is not symmetric.
    """
    senders = np.asarray(senders, dtype=np.int64)
    receivers = np.asarray(receivers, dtype=np.int64)
    n_pair = len(senders)
    rank = np.zeros(n_pair, dtype=np.int64)
    reverse = np.zeros(n_pair, dtype=np.int64)
    if n_pair == 0:
        return rank, reverse
    order = np.lexsort((senders, receivers))  # stable: by receiver, then sender
    sorted_receivers = receivers[order]
    first = np.flatnonzero(np.r_[True, sorted_receivers[1:] != sorted_receivers[:-1]])
    run_start = np.repeat(first, np.diff(np.r_[first, n_pair]))
    rank[order] = np.arange(n_pair) - run_start
    # The reverse of (i <- j, shift S) is (j <- i, -S): match the two key sets.
    shift = np.rint(np.asarray(shifts)).astype(np.int64)
    forward = np.column_stack([receivers, senders, shift])
    backward = np.column_stack([senders, receivers, -shift])
    forward_order = np.lexsort(forward.T[::-1])
    backward_order = np.lexsort(backward.T[::-1])
    if not np.array_equal(forward[forward_order], backward[backward_order]):
        raise ValueError(
            "the neighbour list is not symmetric (some edge i<-j lacks j<-i with the "
            "opposite shift): a receiver-major graph needs a full list"
        )
    # backward[b] is the key of pair b's reverse, which is forward pair f.
    reverse[backward_order] = forward_order
    return rank, reverse


def receiver_major_arrays(
    senders: np.ndarray,
    receivers: np.ndarray,
    shifts: np.ndarray,
    node_capacity: int,
    slots: int,
    slots_of_pairs: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Real edges (batch indices) laid out receiver-major, with their reverse map.

    Args:
        senders, receivers: ``[n_real_edge]`` node indices of a full (symmetric) list.
        shifts: ``[n_real_edge, 3]`` integer cell shifts (any numeric dtype).
        node_capacity: nodes of the padded graph, the last one the padding node.
        slots: edge slots per node (at least the largest neighbour count).
        slots_of_pairs: :func:`pair_slots` of these edges if already known (then
            nothing is sorted here), with ``reverse`` indexing these edges.

    Returns ``(senders, receivers, shifts, edge_mask, reverse_edges)`` of
    ``node_capacity * slots`` edges; padding slots join the padding node to itself.
    """
    padding_node = node_capacity - 1
    rank, reverse = slots_of_pairs or pair_slots(senders, receivers, shifts)
    if len(rank) and rank.max() >= slots:
        worst = int(receivers[int(np.argmax(rank))])
        counts = int(np.count_nonzero(receivers == worst))
        raise ValueError(
            f"atom {worst} (numbered across the batch) has {counts} neighbours but "
            f"the receiver-major graph has {slots} slots per atom"
        )
    position = receivers.astype(np.int64) * slots + rank
    n_edge = node_capacity * slots
    out_senders = np.full(n_edge, padding_node, dtype=senders.dtype)
    out_receivers = np.full(n_edge, padding_node, dtype=receivers.dtype)
    out_shifts = np.zeros((n_edge, 3), dtype=shifts.dtype)
    edge_mask = np.zeros(n_edge, dtype=bool)
    out_senders[position] = senders
    out_receivers[position] = receivers
    out_shifts[position] = shifts
    edge_mask[position] = True
    reverse_edges = np.arange(n_edge, dtype=np.int32)
    reverse_edges[position] = position[reverse]
    return out_senders, out_receivers, out_shifts, edge_mask, reverse_edges


def graph_from_atoms(atoms: ase.Atoms | Sequence[ase.Atoms], cutoff: float, **kwargs) -> Graph:
    """Convenience wrapper: neighbour search and padding of one or many structures."""
    structures = [atoms] if isinstance(atoms, ase.Atoms) else list(atoms)
    return batch_graphs(structures, cutoff, **kwargs)


def unbatch_nodes(graph: Graph, values: np.ndarray) -> list[np.ndarray]:
    """Split a per-node array of a batch back into one array per real structure."""
    values = np.asarray(values)
    counts = np.asarray(graph.n_node)[np.asarray(graph.graph_mask)]
    offsets = np.concatenate([[0], np.cumsum(counts)])
    return [values[offsets[g] : offsets[g + 1]] for g in range(len(counts))]
