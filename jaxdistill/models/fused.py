"""Fused message passing: the students' fast path on the GPU.

The reference (pure-JAX) layers build per-edge arrays — radial basis ``[E, num_radial]``,
filters and messages ``[E, F]`` or ``[E, 3, F]`` — and reduce them with ``segment_sum``.
At 4096 Si atoms (174k edges) every pass over such an array costs 120–170 µs on an
H200, and a PaiNN force evaluation makes about 25 of them. The kernels here build each
edge's geometry, radial basis, filter and message in registers and reduce them per
centre atom, so nothing per-edge is written to memory except the ``[E, 3]`` gradient
of the edge vectors in the backward pass.

Layout. Edges are sorted by receiver (for the forward pass) and by sender (for the
backward pass) once per energy evaluation, and described as CSR ranges
(:class:`EdgeLayout`). One Pallas program handles ``block_nodes`` consecutive centres:
it loops over their edges in chunks of ``block_edges``, gathers the other endpoint's
features (node arrays are small and stay in L2), and sums the messages into its
centres with a one-hot matrix product. Each output row has exactly one writer, so no
atomics are needed. The transpose of "gather from senders" is a sum over the edges
that a sender sends; the backward kernel runs the same loop over the sender-sorted
layout. Padding edges and edges beyond the cutoff (the neighbour list's skin) are left
out of both layouts: their contributions and gradients are exactly zero.

Derivatives. Each fused layer is a ``jax.custom_vjp``: the forward stores nothing per
edge, and the backward recomputes geometry and filters. Gradients with respect to
the node features and the edge vectors (what forces and stress need) come from the
fused backward kernel; gradients with respect to the weights come from the reference
formula, which XLA removes when nothing asks for them (MD). The backward is itself a
``custom_vjp`` whose derivative is that of the reference backward, so reverse-mode
derivatives of forces (training losses on forces) work on the fused path, at the
reference path's cost. Forward-mode derivatives (``jax.jvp``, ``jax.hessian``) of a
``custom_vjp`` are not supported by JAX: use ``message_passing="reference"``.

Both paths read the same parameters; only the evaluation differs. On the CPU the
kernels run in Pallas's interpret mode (how the tests check them); the pure-JAX path
stays the CPU default and the oracle.
"""

from __future__ import annotations

import functools
import os
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

#: Accepted values of the ``message_passing`` option.
MODES = ("auto", "fused", "reference")
#: Environment variable that decides what ``"auto"`` means (``fused`` or ``reference``).
ENV_VAR = "JAXDISTILL_MESSAGE_PASSING"

#: Centre atoms per Pallas program.
BLOCK_NODES = 16
#: Edges per inner-loop chunk (16: fastest of the block sizes swept on an H200 at 4096
#: Si atoms, and as fast as any at 64; benchmarks/results/md_speed_fused_h200.json).
BLOCK_EDGES = 16
#: Warps per program (Triton).
NUM_WARPS = 4
#: Tuning knob for benchmarks: "block_nodes,block_edges,num_warps" (read at trace time).
BLOCKS_ENV_VAR = "JAXDISTILL_FUSED_BLOCKS"


def block_config() -> tuple[int, int, int]:
    """``(block_nodes, block_edges, num_warps)``: the defaults or :data:`BLOCKS_ENV_VAR`."""
    value = os.environ.get(BLOCKS_ENV_VAR, "").strip()
    if not value:
        return BLOCK_NODES, BLOCK_EDGES, NUM_WARPS
    nodes, edges, warps = (int(x) for x in value.split(","))
    return nodes, edges, warps


_HIGHEST = lax.Precision.HIGHEST


class FusedPathError(ValueError):
    """The fused path cannot serve this call; the message names the reference path."""


def check_mode(mode: str) -> str:
    """Validate a ``message_passing`` value ("auto", "fused" or "reference")."""
    mode = str(mode).lower()
    if mode not in MODES:
        raise ValueError(f"message_passing must be one of {MODES}, got {mode!r}")
    return mode


def _power_of_two(n: int) -> bool:
    return n >= 16 and (n & (n - 1)) == 0


#: ``"auto"`` picks the fused path from this many nodes on: on an H200 it was 2.2x
#: faster than the reference for PaiNN at 4096 Si atoms but slower at 64 and 512
#: (benchmarks/results/md_speed_fused_h200.json).
AUTO_MIN_NODES = 4096


def use_fused(
    mode: str,
    dtype,
    features: int,
    num_radial: int,
    n_node: int = AUTO_MIN_NODES,
    receiver_major: bool = False,
    wins_on_receiver_major: bool = False,
) -> bool:
    """Whether a layer with this option, dtype and sizes runs the fused kernels.

    ``"auto"`` takes the environment variable :data:`ENV_VAR` if set, else the fused
    path on a GPU in float32 with Triton-friendly sizes (powers of two, at least 16)
    for graphs of at least :data:`AUTO_MIN_NODES` nodes (where it was measured to
    win), and the reference path otherwise. ``"fused"`` forces the kernels (interpreted on
    a CPU); it raises :class:`FusedPathError` for sizes the GPU kernels cannot take.

    Args:
        mode: the option.
        dtype: floating dtype of the edge vectors.
        features: feature channels ``F``.
        num_radial: radial basis functions.
        n_node: nodes of the (padded) graph.
        receiver_major: the edges come on the scatter-free receiver-major layout
            (:mod:`jaxdistill.models.edges`), where the reference path is much faster
            than on an edge list: there ``"auto"`` keeps the reference path unless
            ``wins_on_receiver_major`` (the architecture's measured verdict; on an
            H100 at 4096 Si atoms, 2026-12-06: PaiNN 64×3 fused 1945 µs against 2318,
            PaiNN 128×3 + ZBL 5460 against 4022, SchNet 64×3 1486 against 1028).
    """
    mode = check_mode(mode)
    if mode == "auto":
        mode = _env_mode() or mode
    on_gpu = jax.default_backend() == "gpu"
    sizes_ok = _power_of_two(features) and _power_of_two(num_radial)
    if mode == "auto":
        large = n_node >= AUTO_MIN_NODES
        wins = wins_on_receiver_major or not receiver_major
        return on_gpu and jnp.dtype(dtype) == jnp.float32 and sizes_ok and large and wins
    if mode == "fused" and on_gpu and not sizes_ok:
        raise FusedPathError(
            f"the fused GPU kernels need features and num_radial to be powers of two "
            f"(>= 16), got features={features}, num_radial={num_radial}; use "
            f"message_passing='reference'"
        )
    return mode == "fused"


def _env_mode() -> str | None:
    """``"fused"`` or ``"reference"`` where :data:`ENV_VAR` says so, else None."""
    env = os.environ.get(ENV_VAR, "").strip().lower()
    if env in ("fused", "reference"):
        return env
    if env not in ("", "auto"):
        raise ValueError(f"{ENV_VAR} must be 'auto', 'fused' or 'reference', got {env!r}")
    return None


def mode_on_compacted_rows(mode: str) -> str:
    """The ``message_passing`` a student set to ``mode`` runs with on rows compacted to
    the pairs within its cutoff: "auto" becomes "reference" unless :data:`ENV_VAR` asks
    for something (then "auto" stays, to read it when traced); other modes stay.

    On compacted rows the per-edge arrays the fused kernels avoid are a third smaller,
    and the reference path was faster there: a user's jax-md NVE loop, PaiNN 64×3 at
    4096 Si atoms, 1667 against 1884 µs a step (H100, 2026-12-07, paired rounds,
    capacities 1.25 and 1.6; 1893 against 1954 on an H200, unpaired;
    docs/benchmarks.md), and half the compilation time.
    """
    mode = check_mode(mode)
    if mode == "auto" and _env_mode() is None:
        return "reference"
    return mode


def _interpret() -> bool:
    # Pallas's Triton backend needs a GPU; elsewhere the same kernels run interpreted.
    return jax.default_backend() != "gpu"


def _compiler_params(num_warps: int | None = None):
    from jax.experimental.pallas import triton as plgpu

    return plgpu.CompilerParams(num_warps=num_warps or block_config()[2])


# --------------------------------------------------------------------------- layout


class EdgeLayout(NamedTuple):
    """Edges of one graph sorted by one endpoint (the "centre"), as CSR ranges.

    Attributes:
        index: ``[3, E + block_edges]`` int32: per sorted position, the original edge
            id, the other endpoint and the centre. The tail past the last kept edge
            holds edges left out (padding, beyond the cutoff) and zeros.
        offsets: ``[n_pad + 1]`` int32: kept edges of centre ``c`` occupy sorted
            positions ``offsets[c]:offsets[c + 1]``; ``offsets[n_pad]`` is the number
            of kept edges. ``n_pad`` is the node count rounded up to ``block_nodes``.
    """

    index: jax.Array
    offsets: jax.Array


class FusedEdges(NamedTuple):
    """What a fused layer needs besides features and weights: the two layouts."""

    by_receiver: EdgeLayout
    by_sender: EdgeLayout


def _layout(
    centre: jax.Array, other: jax.Array, keep: jax.Array, n_pad: int, block_edges: int
) -> EdgeLayout:
    n_edge = centre.shape[0]
    # Left-out edges get a key past every node, so they sort to the end and no
    # program's range contains them.
    key = jnp.where(keep, centre, n_pad).astype(jnp.int32)
    ids = lax.iota(jnp.int32, n_edge)
    sorted_key, order = lax.sort((key, ids), num_keys=1, is_stable=False)
    counts = jnp.zeros(n_pad + 1, jnp.int32).at[key].add(1, mode="drop")
    offsets = jnp.concatenate([jnp.zeros(1, jnp.int32), jnp.cumsum(counts[:n_pad])])
    index = jnp.stack([order, other.astype(jnp.int32)[order], sorted_key])
    # The last chunk of a range may read past the last edge: pad so it stays in bounds.
    index = jnp.pad(index, ((0, 0), (0, block_edges)))
    return EdgeLayout(index=index, offsets=offsets.astype(jnp.int32))


def edge_layouts(
    edge_vectors: jax.Array,
    edge_mask: jax.Array,
    senders: jax.Array,
    receivers: jax.Array,
    n_node: int,
    cutoff: float,
) -> FusedEdges:
    """Receiver- and sender-sorted layouts of a graph, computed once per evaluation.

    Args:
        edge_vectors: ``[E, 3]`` Å (only used to leave out edges beyond the cutoff).
        edge_mask: ``[E]`` bool.
        senders, receivers: ``[E]`` int.
        n_node: node count (static).
        cutoff: Å; edges at or beyond it contribute exactly zero.
    """
    block_nodes, block_edges, _ = block_config()
    senders, receivers = jnp.asarray(senders), jnp.asarray(receivers)
    squared = jnp.sum(lax.stop_gradient(edge_vectors) ** 2, axis=-1)
    keep = jnp.asarray(edge_mask) & (squared < cutoff**2) & (squared > 0)
    n_pad = -(-n_node // block_nodes) * block_nodes
    return FusedEdges(
        by_receiver=_layout(receivers, senders, keep, n_pad, block_edges),
        by_sender=_layout(senders, receivers, keep, n_pad, block_edges),
    )


# ------------------------------------------------------------- in-kernel geometry


class _Basis(NamedTuple):
    ok: jax.Array  # [B] bool
    distance: jax.Array  # [B]
    units: tuple[jax.Array, jax.Array, jax.Array]  # 3 × [B]
    radial: jax.Array  # [B, R]
    d_radial: jax.Array  # [B, R] d radial / d distance
    envelope: jax.Array  # [B] (0 where not ok)
    d_envelope: jax.Array  # [B]


def _basis(vx, vy, vz, valid, cutoff: float, num_radial: int, exponent: int = 6) -> _Basis:
    """Distances, unit vectors, Bessel basis and DimeNet envelope of a chunk of edges,
    with their derivatives in the distance (same formulas as ``models.common``)."""
    dtype = vx.dtype
    squared = vx * vx + vy * vy + vz * vz
    ok = valid & (squared > 0)
    d = jnp.sqrt(jnp.where(ok, squared, 1.0))
    inv_d = 1.0 / d
    n = (lax.broadcasted_iota(jnp.int32, (1, num_radial), 1) + 1).astype(dtype)
    k = n * (jnp.pi / cutoff)  # [1, R]
    arg = k * d[:, None]
    sin, cos = jnp.sin(arg), jnp.cos(arg)
    norm = (2.0 / cutoff) ** 0.5
    radial = norm * sin * inv_d[:, None]
    d_radial = norm * (k * cos - sin * inv_d[:, None]) * inv_d[:, None]
    p = exponent
    x = d * (1.0 / cutoff)
    x2 = x * x
    x4 = x2 * x2
    x5 = x4 * x
    xp = x5 * x  # x**6 written out: integer powers lower to plain multiplies
    c0, c1, c2 = (p + 1) * (p + 2) / 2, p * (p + 2), p * (p + 1) / 2
    u = 1.0 - c0 * xp + c1 * xp * x - c2 * xp * x2
    du = (-c0 * p * x5 + c1 * (p + 1) * xp - c2 * (p + 2) * xp * x) * (1.0 / cutoff)
    inside = ok & (x < 1.0)
    return _Basis(
        ok=ok,
        distance=d,
        units=(vx * inv_d, vy * inv_d, vz * inv_d),
        radial=radial,
        d_radial=d_radial,
        envelope=jnp.where(inside, u, 0.0),
        d_envelope=jnp.where(inside, du, 0.0),
    )


#: Environment variable for the kernels' matrix products: "highest" (the default: full
#: float32, as every kernel timing in docs/benchmarks.md was measured) or "default" (follow
#: ``jax_default_matmul_precision``, as the reference path's products do: on recent GPUs
#: JAX's default is TF32 on tensor cores). Read at trace time.
PRECISION_ENV_VAR = "JAXDISTILL_KERNEL_PRECISION"


def _precision():
    value = os.environ.get(PRECISION_ENV_VAR, "").strip().lower() or "highest"
    if value not in ("default", "highest"):
        raise ValueError(f"{PRECISION_ENV_VAR} must be 'default' or 'highest', got {value!r}")
    return _HIGHEST if value == "highest" else None


def _dot(a, b):
    return jnp.dot(a, b, precision=_precision(), preferred_element_type=a.dtype)


def _dot_t(a, b):
    """``a @ b.T`` without materialising the transpose."""
    return lax.dot_general(
        a, b, (((1,), (1,)), ((), ())), precision=_precision(), preferred_element_type=a.dtype
    )


def _silu_parts(a):
    sig = 1.0 / (1.0 + jnp.exp(-a))
    return a * sig, sig * (1.0 + a * (1.0 - sig))


class _Chunk(NamedTuple):
    valid: jax.Array  # [B] bool: inside the block's range
    edge: jax.Array  # [B] original edge id (0 where not valid)
    other: jax.Array  # [B] other endpoint (0 where not valid)
    local: jax.Array  # [B] centre index within the block (-1 where not valid)
    centre: jax.Array  # [B] centre node (0 where not valid)
    sink: jax.Array  # [B] row for per-edge outputs: the edge id, or the spare last row


def _load_chunk(index_ref, e0, end, first_node, block_edges: int, n_edge: int = 0) -> _Chunk:
    from jax.experimental import pallas as pl

    lanes = e0 + lax.broadcasted_iota(jnp.int32, (block_edges,), 0)
    valid = lanes < end
    edge = jnp.where(valid, index_ref[0, pl.ds(e0, block_edges)], 0)
    other = jnp.where(valid, index_ref[1, pl.ds(e0, block_edges)], 0)
    centre = jnp.where(valid, index_ref[2, pl.ds(e0, block_edges)], 0)
    local = jnp.where(valid, centre - first_node, -1)
    # Masked stores must not share a row with a real one: the interpreter implements
    # them as read-modify-write scatters, where duplicate rows race.
    sink = jnp.where(valid, edge, n_edge)
    return _Chunk(valid, edge, other, local, centre, sink)


def _one_hot(local, block_nodes: int, block_edges: int, dtype):
    """``[block_nodes, block_edges]`` matrix summing a chunk's edges into its centres."""
    rows = lax.broadcasted_iota(jnp.int32, (block_nodes, block_edges), 0)
    return (rows == local[None, :]).astype(dtype)


def _block_range(offsets_ref, block_nodes: int, block_edges: int):
    from jax.experimental import pallas as pl

    first_node = pl.program_id(0) * block_nodes
    start = offsets_ref[first_node]
    end = offsets_ref[first_node + block_nodes]
    n_chunks = (end - start + block_edges - 1) // block_edges
    return first_node, start, end, n_chunks


def _zero_left_out(index_ref, offsets_ref, out_ref, n_edge: int, block_nodes, block_edges):
    """Write zero gradients for the edges no program's range holds (padding, skin).

    The left-out edges sit at sorted positions ``offsets[n_pad]:n_edge``; program ``b``
    takes chunks ``b, b + P, ...`` of them.
    """
    from jax.experimental import pallas as pl
    from jax.experimental.pallas import triton as plgpu

    program, n_programs = pl.program_id(0), pl.num_programs(0)
    tail = offsets_ref[n_programs * block_nodes]
    n_chunks = (n_edge - tail + block_edges - 1) // block_edges
    mine = (n_chunks - program + n_programs - 1) // n_programs

    def body(i, carry):
        e0 = tail + (program + i * n_programs) * block_edges
        lanes = e0 + lax.broadcasted_iota(jnp.int32, (block_edges,), 0)
        valid = lanes < n_edge
        edge = jnp.where(valid, index_ref[0, pl.ds(e0, block_edges)], n_edge)
        zero = jnp.zeros((block_edges,), out_ref.dtype)
        for c in range(3):
            plgpu.store(out_ref.at[edge, c], zero, mask=valid)
        return carry

    lax.fori_loop(0, mine, body, 0)


# --------------------------------------------------------- receiver-major (slots)
#
# On a receiver-major edge list (jaxdistill.models.edges: edge ``r * M + m`` has
# receiver ``r``; its reverse edge is known) the kernels need no sorting: a program
# owns one receiver's ``M`` slots (forward) or one sender's (backward: the slots of row
# ``j`` name, through the reverse map, exactly the edges that ``j`` sends), tiles them
# ``slot_block`` at a time across the threads, and reduces over the slots in
# registers. There is one program per node and feature block, so small graphs still
# fill the GPU, and a program's serial loop is ``M / slot_block`` steps long (the
# sorted kernels above walk 16 centres' edges 16 at a time: ~40 dependent steps).

#: Environment variable choosing the fused kernels on a receiver-major list: "sorted"
#: (the default: sort it like any edge list) or "slots" (the slot kernels, no sorting).
#: On an H100 (2026-12-06, benchmarks/results/md_speed_slots_h100.json) the slot kernels
#: lost to the receiver-major reference path at every size (PaiNN 64x3 per MD step at
#: 64 / 512 / 4096 Si atoms: 257.6 / 710.6 / 3174.7 us against 181.3 / 552.3 / 2676.8),
#: so they are opt-in, for benchmarks and further work.
FUSED_LAYOUT_ENV_VAR = "JAXDISTILL_FUSED_LAYOUT"


def slot_kernels_chosen() -> bool:
    """Whether :data:`FUSED_LAYOUT_ENV_VAR` asks for the slot kernels (read at trace time)."""
    value = os.environ.get(FUSED_LAYOUT_ENV_VAR, "sorted").strip().lower() or "sorted"
    if value not in ("sorted", "slots"):
        raise ValueError(f"{FUSED_LAYOUT_ENV_VAR} must be 'sorted' or 'slots', got {value!r}")
    return value == "slots"


#: Slots per tile (powers of two, >= 16 for Triton's matrix products).
SLOT_BLOCK = 32
#: Feature channels per program (at most ``features``).
SLOT_FEATURE_BLOCK = 64
#: Warps per slot program.
SLOT_NUM_WARPS = 4
#: Tuning knob for benchmarks: "slot_block,feature_block,num_warps" (read at trace time).
SLOT_BLOCKS_ENV_VAR = "JAXDISTILL_SLOT_BLOCKS"


class SlotEdges(NamedTuple):
    """A receiver-major edge list as the slot kernels read it.

    Attributes:
        index: ``[E, 4]`` int32 per slot ``p = r * M + m``: its sender; its reverse edge
            (a slot of the sender's row whose sender is ``r``); 1 where ``p`` is a real
            edge (else 0: padding, which contributes nothing); 1 where it is a real edge
            whose reverse exists (the backward pass reads only those, as
            :func:`jaxdistill.models.edges.scatter_to_senders` does).
    """

    index: jax.Array


def slot_edges(
    senders: jax.Array, reverse: jax.Array, reverse_mask: jax.Array, edge_mask: jax.Array
) -> SlotEdges:
    """The :class:`SlotEdges` of a receiver-major list (one small fusion per evaluation).

    Args:
        senders: ``[E]`` int, receiver-major.
        reverse, reverse_mask: ``[E]``, the reverse map (``ReceiverMajor``).
        edge_mask: ``[E]`` bool, real edges.
    """
    edge_mask = jnp.asarray(edge_mask)
    columns = [senders, reverse, edge_mask, jnp.asarray(reverse_mask) & edge_mask]
    return SlotEdges(jnp.stack([jnp.asarray(c).astype(jnp.int32) for c in columns], axis=1))


class _SlotConfig(NamedTuple):
    cutoff: float
    num_radial: int
    features: int
    n_slots: int
    slot_block: int
    feature_block: int
    num_warps: int

    @property
    def n_tiles(self) -> int:
        """Slot tiles per row: the length of a program's serial loop."""
        return -(-self.n_slots // self.slot_block)


def _slot_config(cutoff, num_radial, features, n_edge, n_node) -> _SlotConfig:
    from jaxdistill.models.edges import slots_per_node

    slot_block, feature_block, warps = SLOT_BLOCK, SLOT_FEATURE_BLOCK, SLOT_NUM_WARPS
    value = os.environ.get(SLOT_BLOCKS_ENV_VAR, "").strip()
    if value:
        slot_block, feature_block, warps = (int(x) for x in value.split(","))
    n_slots = slots_per_node(n_edge, n_node)
    # A tile no longer than the row (rounded up to a power of two, at least 16).
    slot_block = min(slot_block, max(16, 1 << (n_slots - 1).bit_length()))
    feature_block = min(feature_block, features)
    if features % feature_block:
        raise FusedPathError(
            f"features={features} is not a multiple of the slot kernels' feature block "
            f"{feature_block}; use message_passing='reference'"
        )
    return _SlotConfig(
        float(cutoff), int(num_radial), int(features), n_slots, slot_block, feature_block, warps
    )


def _slot_call(cfg: _SlotConfig, kernel, n_node, out_shapes, *args):
    """A slot kernel over its grid: one program per node and feature block; every
    operand and output whole (the kernels index them themselves)."""
    from jax.experimental import pallas as pl

    n_out = len(out_shapes) if isinstance(out_shapes, tuple) else 1
    out_specs = (pl.no_block_spec,) * n_out if n_out > 1 else pl.no_block_spec
    grid = (n_node, cfg.features // cfg.feature_block)
    return _call(kernel, grid, out_shapes, out_specs, *args, num_warps=cfg.num_warps)


class _SlotTile(NamedTuple):
    in_row: jax.Array  # [S] bool: the lane is one of the row's M slots
    ok: jax.Array  # [S] bool: ... and a real edge (backward: one with a reverse)
    slot: jax.Array  # [S] flat slot index (0 outside the row)
    edge: jax.Array  # [S] the edge whose geometry the lane handles (0 where not ok)
    other: jax.Array  # [S] the other endpoint (0 where not ok)


def _slot_tile(index_ref, row, i, cfg: _SlotConfig, backward: bool) -> _SlotTile:
    """Lanes of the ``i``-th tile of ``row``'s slots. Forward: the slot's own edge
    (other = its sender). Backward: the slot's reverse edge, which ``row`` sends
    (other = its receiver, the slot's sender)."""
    m = i * cfg.slot_block + lax.broadcasted_iota(jnp.int32, (cfg.slot_block,), 0)
    in_row = m < cfg.n_slots
    slot = jnp.where(in_row, row * cfg.n_slots + m, 0)
    ok = in_row & (index_ref[slot, 3 if backward else 2] != 0)
    other = jnp.where(ok, index_ref[slot, 0], 0)
    edge = jnp.where(ok, index_ref[slot, 1], 0) if backward else jnp.where(ok, slot, 0)
    return _SlotTile(in_row, ok, slot, edge, other)


def _slot_geometry(index_ref, vec_ref, row, i, cfg: _SlotConfig, backward: bool):
    """The ``i``-th tile of ``row`` (:func:`_slot_tile`) and its edges' geometry."""
    t = _slot_tile(index_ref, row, i, cfg, backward)
    vx, vy, vz = vec_ref[t.edge, 0], vec_ref[t.edge, 1], vec_ref[t.edge, 2]
    return t, (vx, vy, vz), _basis(vx, vy, vz, t.ok, cfg.cutoff, cfg.num_radial)


def _store_edge_grads(dvec_ref, tile: _SlotTile, grads, block, n_edge: int):
    """Write a tile's edge-vector gradients into feature block ``block``'s rows: at the
    reverse edge for real lanes, a zero at the slot itself for padding lanes (so every
    edge is written exactly once per block), nothing outside the row."""
    from jax.experimental.pallas import triton as plgpu

    base = block * (n_edge + 1)
    # Lanes outside the row point at the spare last row: the interpreter implements
    # masked stores as read-modify-write scatters, where duplicate rows race.
    sink = base + jnp.where(tile.ok, tile.edge, jnp.where(tile.in_row, tile.slot, n_edge))
    for c in range(3):
        plgpu.store(dvec_ref.at[sink, c], jnp.where(tile.ok, grads[c], 0.0), mask=tile.in_row)


def _sum_blocks(dvec, n_edge: int):
    """``[blocks * (E + 1), 3]`` per-block edge gradients -> ``[E, 3]``."""
    return dvec.reshape(-1, n_edge + 1, 3)[:, :n_edge].sum(axis=0)


# -------------------------------------------------------------------------- SchNet


class _SchNetConfig(NamedTuple):
    cutoff: float
    num_radial: int
    block_nodes: int
    block_edges: int


def schnet_messages_reference(
    x, edge_vectors, edge_mask, w1, b1, w2, b2, senders, receivers, cutoff, num_radial
):
    """Pure-JAX SchNet continuous-filter convolution (the oracle of the fused kernel).

    ``m_i = Σ_{e: receiver e = i} x[sender e] ⊙ (silu(rbf_e W1 + b1) W2 + b2) u(r_e)``.

    Args:
        x: ``[N, F]`` sender features.
        edge_vectors: ``[E, 3]`` Å; edge_mask ``[E]`` bool.
        w1, b1: ``[num_radial, F]``, ``[F]``; w2, b2: ``[F, F]``, ``[F]``.
        senders, receivers: ``[E]`` int.

    Returns:
        ``[N, F]`` messages.
    """
    from jaxdistill.models.common import bessel_basis, polynomial_envelope, safe_norm

    distances = safe_norm(edge_vectors, edge_mask)
    envelope = polynomial_envelope(distances, cutoff) * edge_mask
    radial = bessel_basis(distances, cutoff, num_radial)
    filters = (jax.nn.silu(radial @ w1 + b1) @ w2 + b2) * envelope[:, None]
    return jax.ops.segment_sum(x[senders] * filters, receivers, num_segments=x.shape[0])


def _schnet_forward_kernel(
    offsets_ref, index_ref, vec_ref, x_ref, w1_ref, b1_ref, w2_ref, b2_ref, out_ref, *, cfg
):
    bn, be = cfg.block_nodes, cfg.block_edges
    first, start, end, n_chunks = _block_range(offsets_ref, bn, be)
    w1, b1, w2, b2 = w1_ref[...], b1_ref[...], w2_ref[...], b2_ref[...]
    features = x_ref.shape[1]

    def body(i, acc):
        ch = _load_chunk(index_ref, start + i * be, end, first, be)
        g = _basis(
            vec_ref[ch.edge, 0], vec_ref[ch.edge, 1], vec_ref[ch.edge, 2], ch.valid,
            cfg.cutoff, cfg.num_radial,
        )  # fmt: skip
        hidden, _ = _silu_parts(_dot(g.radial, w1) + b1)
        filters = (_dot(hidden, w2) + b2) * g.envelope[:, None]
        messages = x_ref[ch.other, :] * filters
        return acc + _dot(_one_hot(ch.local, bn, be, messages.dtype), messages)

    acc = lax.fori_loop(0, n_chunks, body, jnp.zeros((bn, features), out_ref.dtype))
    out_ref[...] = acc


def _schnet_backward_kernel(
    offsets_ref, index_ref, vec_ref, x_ref, g_ref, w1_ref, b1_ref, w2_ref, b2_ref,
    dx_ref, dvec_ref, *, cfg, n_edge,
):  # fmt: skip
    from jax.experimental.pallas import triton as plgpu

    bn, be = cfg.block_nodes, cfg.block_edges
    first, start, end, n_chunks = _block_range(offsets_ref, bn, be)
    w1, b1, w2, b2 = w1_ref[...], b1_ref[...], w2_ref[...], b2_ref[...]
    features = x_ref.shape[1]

    def body(i, acc):
        # Centre = sender j, other = receiver i of each edge.
        ch = _load_chunk(index_ref, start + i * be, end, first, be, n_edge)
        vx, vy, vz = vec_ref[ch.edge, 0], vec_ref[ch.edge, 1], vec_ref[ch.edge, 2]
        g = _basis(vx, vy, vz, ch.valid, cfg.cutoff, cfg.num_radial)
        pre = _dot(g.radial, w1) + b1
        hidden, d_silu = _silu_parts(pre)
        unscaled = _dot(hidden, w2) + b2
        filters = unscaled * g.envelope[:, None]
        cot = g_ref[ch.other, :]  # cotangent of the receiver's message
        acc = acc + _dot(_one_hot(ch.local, bn, be, cot.dtype), cot * filters)
        d_filters = cot * x_ref[ch.centre, :]
        d_env = jnp.sum(d_filters * unscaled, axis=1)
        d_pre = _dot_t(d_filters * g.envelope[:, None], w2) * d_silu
        d_radial = _dot_t(d_pre, w1)
        d_dist = jnp.sum(d_radial * g.d_radial, axis=1) + d_env * g.d_envelope
        scale = jnp.where(g.ok, d_dist / g.distance, 0.0)
        for c, v in enumerate((vx, vy, vz)):
            plgpu.store(dvec_ref.at[ch.sink, c], scale * v, mask=ch.valid)
        return acc

    acc = lax.fori_loop(0, n_chunks, body, jnp.zeros((bn, features), dx_ref.dtype))
    dx_ref[...] = acc
    _zero_left_out(index_ref, offsets_ref, dvec_ref, n_edge, bn, be)


def _call(kernel, grid, out_shapes, out_specs, *args, num_warps: int | None = None):
    from jax.experimental import pallas as pl

    return pl.pallas_call(
        kernel,
        grid=grid,
        out_shape=out_shapes,
        in_specs=[pl.no_block_spec] * len(args),
        out_specs=out_specs,
        interpret=_interpret(),
        compiler_params=_compiler_params(num_warps),
    )(*args)


def _node_block_spec(block_nodes: int, features: int):
    from jax.experimental import pallas as pl

    return pl.BlockSpec((block_nodes, features), lambda b: (b, 0))


def _schnet_forward(cfg, x, edge_vectors, w1, b1, w2, b2, layout: EdgeLayout):
    n_node, features = x.shape
    n_pad = layout.offsets.shape[0] - 1
    out = _call(
        functools.partial(_schnet_forward_kernel, cfg=cfg),
        (n_pad // cfg.block_nodes,),
        jax.ShapeDtypeStruct((n_pad, features), x.dtype),
        _node_block_spec(cfg.block_nodes, features),
        layout.offsets, layout.index, edge_vectors, x, w1, b1[None], w2, b2[None],
    )  # fmt: skip
    return out[:n_node]


def _schnet_backward(cfg, x, edge_vectors, w1, b1, w2, b2, layout: EdgeLayout, cot):
    from jax.experimental import pallas as pl

    n_node, features = x.shape
    n_pad = layout.offsets.shape[0] - 1
    n_edge = edge_vectors.shape[0]
    dx, dvec = _call(
        functools.partial(_schnet_backward_kernel, cfg=cfg, n_edge=n_edge),
        (n_pad // cfg.block_nodes,),
        (
            jax.ShapeDtypeStruct((n_pad, features), x.dtype),
            jax.ShapeDtypeStruct((n_edge + 1, 3), edge_vectors.dtype),
        ),
        (_node_block_spec(cfg.block_nodes, features), pl.no_block_spec),
        layout.offsets, layout.index, edge_vectors, x, cot, w1, b1[None], w2, b2[None],
    )  # fmt: skip
    return dx[:n_node], dvec[:n_edge]


def _schnet_slot_forward_kernel(
    index_ref, vec_ref, x_ref, w1_ref, b1_ref, w2_ref, b2_ref, out_ref, *, cfg: _SlotConfig
):
    from jax.experimental import pallas as pl

    row, block = pl.program_id(0), pl.program_id(1)
    cols = pl.ds(block * cfg.feature_block, cfg.feature_block)
    w1, b1 = w1_ref[...], b1_ref[...]
    w2, b2 = w2_ref[:, cols], b2_ref[:, cols]

    def body(i, acc):
        t, _, g = _slot_geometry(index_ref, vec_ref, row, i, cfg, backward=False)
        hidden, _ = _silu_parts(_dot(g.radial, w1) + b1)
        filters = (_dot(hidden, w2) + b2) * g.envelope[:, None]
        return acc + jnp.sum(x_ref[t.other, cols] * filters, axis=0)

    acc = lax.fori_loop(0, cfg.n_tiles, body, jnp.zeros((cfg.feature_block,), out_ref.dtype))
    out_ref[row, cols] = acc


def _schnet_slot_backward_kernel(
    index_ref, vec_ref, x_ref, g_ref, w1_ref, b1_ref, w2_ref, b2_ref, dx_ref, dvec_ref,
    *, cfg: _SlotConfig, n_edge: int,
):  # fmt: skip
    from jax.experimental import pallas as pl

    row, block = pl.program_id(0), pl.program_id(1)  # row: the sender j
    cols = pl.ds(block * cfg.feature_block, cfg.feature_block)
    w1, b1 = w1_ref[...], b1_ref[...]
    w2, b2 = w2_ref[:, cols], b2_ref[:, cols]
    x_j = x_ref[pl.ds(row, 1), cols]  # [1, feature_block]

    def body(i, acc):
        # other: the receiver of the edge that row sends
        t, (vx, vy, vz), g = _slot_geometry(index_ref, vec_ref, row, i, cfg, backward=True)
        hidden, d_silu = _silu_parts(_dot(g.radial, w1) + b1)
        unscaled = _dot(hidden, w2) + b2
        env = g.envelope[:, None]
        cot = g_ref[t.other, cols]  # cotangent of the receiver's message
        acc = acc + jnp.sum(cot * (unscaled * env), axis=0)
        # This feature block's share of the edge vector's gradient (it is linear in
        # the shares: the hidden layer's derivative multiplies their sum).
        d_filters = cot * x_j
        d_env = jnp.sum(d_filters * unscaled, axis=1)
        d_radial = _dot_t(_dot_t(d_filters * env, w2) * d_silu, w1)
        d_dist = jnp.sum(d_radial * g.d_radial, axis=1) + d_env * g.d_envelope
        scale = jnp.where(g.ok, d_dist / g.distance, 0.0)
        _store_edge_grads(dvec_ref, t, [scale * vx, scale * vy, scale * vz], block, n_edge)
        return acc

    acc = lax.fori_loop(0, cfg.n_tiles, body, jnp.zeros((cfg.feature_block,), dx_ref.dtype))
    dx_ref[row, cols] = acc


def _schnet_slot_forward(cfg: _SlotConfig, x, edge_vectors, w1, b1, w2, b2, slots: SlotEdges):
    return _slot_call(
        cfg,
        functools.partial(_schnet_slot_forward_kernel, cfg=cfg),
        x.shape[0],
        jax.ShapeDtypeStruct(x.shape, x.dtype),
        slots.index, edge_vectors, x, w1, b1[None], w2, b2[None],
    )  # fmt: skip


def _schnet_slot_backward(cfg: _SlotConfig, x, edge_vectors, w1, b1, w2, b2, slots, cot):
    n_edge = edge_vectors.shape[0]
    blocks = cfg.features // cfg.feature_block
    dx, dvec = _slot_call(
        cfg,
        functools.partial(_schnet_slot_backward_kernel, cfg=cfg, n_edge=n_edge),
        x.shape[0],
        (
            jax.ShapeDtypeStruct(x.shape, x.dtype),
            jax.ShapeDtypeStruct((blocks * (n_edge + 1), 3), edge_vectors.dtype),
        ),
        slots.index, edge_vectors, x, cot, w1, b1[None], w2, b2[None],
    )  # fmt: skip
    return dx, _sum_blocks(dvec, n_edge)


def _schnet_ref(cfg, x, edge_vectors, edge_mask, w1, b1, w2, b2, senders, receivers):
    return schnet_messages_reference(
        x, edge_vectors, edge_mask, w1, b1, w2, b2, senders, receivers, cfg.cutoff,
        cfg.num_radial,
    )  # fmt: skip


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _schnet_input_grads(cfg, x, edge_vectors, edge_mask, w1, b1, w2, b2, senders, receivers,
                        fused, cot):  # fmt: skip
    if isinstance(cfg, _SlotConfig):
        return _schnet_slot_backward(cfg, x, edge_vectors, w1, b1, w2, b2, fused, cot)
    return _schnet_backward(cfg, x, edge_vectors, w1, b1, w2, b2, fused.by_sender, cot)


def _schnet_input_grads_fwd(cfg, *args):
    return _schnet_input_grads(cfg, *args), args


def _schnet_input_grads_bwd(cfg, args, cots):
    # Second derivatives (a force loss's gradient) through the reference backward.
    x, edge_vectors, edge_mask, w1, b1, w2, b2, senders, receivers, _fused, cot = args

    def reference_grads(x, edge_vectors, w1, b1, w2, b2, cot):
        _, vjp = jax.vjp(
            lambda x, v: _schnet_ref(cfg, x, v, edge_mask, w1, b1, w2, b2, senders, receivers),
            x,
            edge_vectors,
        )
        return vjp(cot)

    _, vjp = jax.vjp(reference_grads, x, edge_vectors, w1, b1, w2, b2, cot)
    dx, dv, dw1, db1, dw2, db2, dcot = vjp(cots)
    return dx, dv, None, dw1, db1, dw2, db2, None, None, None, dcot


_schnet_input_grads.defvjp(_schnet_input_grads_fwd, _schnet_input_grads_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _schnet_fused(cfg, x, edge_vectors, edge_mask, w1, b1, w2, b2, senders, receivers, fused):
    if isinstance(cfg, _SlotConfig):
        return _schnet_slot_forward(cfg, x, edge_vectors, w1, b1, w2, b2, fused)
    return _schnet_forward(cfg, x, edge_vectors, w1, b1, w2, b2, fused.by_receiver)


def _schnet_fused_fwd(cfg, *args):
    return _schnet_fused(cfg, *args), args


def _schnet_fused_bwd(cfg, args, cot):
    x, edge_vectors, edge_mask, w1, b1, w2, b2, senders, receivers, fused = args
    dx, dv = _schnet_input_grads(
        cfg, x, edge_vectors, edge_mask, w1, b1, w2, b2, senders, receivers, fused, cot
    )
    # Weight gradients by the reference formula: unused in MD, so XLA drops them.
    _, vjp = jax.vjp(
        lambda w1, b1, w2, b2: _schnet_ref(
            cfg, x, edge_vectors, edge_mask, w1, b1, w2, b2, senders, receivers
        ),
        w1,
        b1,
        w2,
        b2,
    )
    dw1, db1, dw2, db2 = vjp(cot)
    return dx, dv, None, dw1, db1, dw2, db2, None, None, None


_schnet_fused.defvjp(_schnet_fused_fwd, _schnet_fused_bwd)


def schnet_messages(
    x: jax.Array,
    edge_vectors: jax.Array,
    edge_mask: jax.Array,
    w1: jax.Array,
    b1: jax.Array,
    w2: jax.Array,
    b2: jax.Array,
    senders: jax.Array,
    receivers: jax.Array,
    fused: FusedEdges | SlotEdges,
    cutoff: float,
    num_radial: int,
) -> jax.Array:
    """Fused SchNet convolution; equals :func:`schnet_messages_reference`.

    Args:
        x: ``[N, F]`` sender features.
        edge_vectors: ``[E, 3]`` Å; edge_mask ``[E]`` bool.
        w1, b1, w2, b2: the filter network's weights (``[num_radial, F]``, ``[F]``,
            ``[F, F]``, ``[F]``).
        senders, receivers: ``[E]`` int.
        fused: layouts from :func:`edge_layouts`, or the :class:`SlotEdges` of a
            receiver-major list (then the slot kernels run).
        cutoff: Å.
        num_radial: Bessel functions.

    Returns:
        ``[N, F]`` messages summed per receiver.
    """
    if isinstance(fused, SlotEdges):
        cfg = _slot_config(cutoff, num_radial, x.shape[-1], edge_vectors.shape[0], x.shape[0])
    else:
        cfg = _SchNetConfig(float(cutoff), int(num_radial), *block_config()[:2])
    return _schnet_fused(cfg, x, edge_vectors, edge_mask, w1, b1, w2, b2, senders, receivers,
                         fused)  # fmt: skip


# --------------------------------------------------------------------------- PaiNN


def painn_messages_reference(
    phi, v, edge_vectors, edge_mask, w, b, senders, receivers, cutoff, num_radial
):
    """Pure-JAX PaiNN message (the oracle of the fused kernel).

    With filters ``f_e = (rbf_e W + b) u(r_e)`` split into ``(f^v, f^s, f^r)`` and
    ``phi`` likewise into ``(φ^v, φ^s, φ^r)``:
    ``Δs_i = Σ φ^s_j f^s_e`` and ``Δv_i = Σ v_j (φ^v_j f^v_e) + û_e (φ^r_j f^r_e)``.

    Args:
        phi: ``[N, 3F]`` per-sender scalars.
        v: ``[N, 3, F]`` vector features.
        edge_vectors: ``[E, 3]`` Å; edge_mask ``[E]`` bool.
        w, b: ``[num_radial, 3F]``, ``[3F]``.
        senders, receivers: ``[E]`` int.

    Returns:
        ``(Δs [N, F], Δv [N, 3, F])``.
    """
    from jaxdistill.models.common import bessel_basis, polynomial_envelope, safe_norm

    n_node = phi.shape[0]
    distances = safe_norm(edge_vectors, edge_mask)
    envelope = polynomial_envelope(distances, cutoff) * edge_mask
    radial = bessel_basis(distances, cutoff, num_radial)
    units = edge_vectors / distances[:, None]
    x = phi[senders] * (radial @ w + b) * envelope[:, None]
    gate_v, gate_s, gate_r = jnp.split(x, 3, axis=-1)
    ds = jax.ops.segment_sum(gate_s, receivers, num_segments=n_node)
    dv_edge = v[senders] * gate_v[:, None, :] + units[:, :, None] * gate_r[:, None, :]
    dv = jax.ops.segment_sum(dv_edge, receivers, num_segments=n_node)
    return ds, dv


class _PaiNNConfig(NamedTuple):
    cutoff: float
    num_radial: int
    features: int
    block_nodes: int
    block_edges: int


def _painn_forward_kernel(
    offsets_ref, index_ref, vec_ref, phi_ref, v_ref, w_ref, b_ref, ds_ref, dv_ref, *, cfg
):
    from jax.experimental import pallas as pl

    bn, be, f = cfg.block_nodes, cfg.block_edges, cfg.features
    first, start, end, n_chunks = _block_range(offsets_ref, bn, be)
    ws = [w_ref[:, pl.ds(k * f, f)] for k in range(3)]
    bs = [b_ref[:, pl.ds(k * f, f)] for k in range(3)]

    def body(i, accs):
        ch = _load_chunk(index_ref, start + i * be, end, first, be)
        g = _basis(
            vec_ref[ch.edge, 0], vec_ref[ch.edge, 1], vec_ref[ch.edge, 2], ch.valid,
            cfg.cutoff, cfg.num_radial,
        )  # fmt: skip
        env = g.envelope[:, None]
        gate_v, gate_s, gate_r = (
            phi_ref[ch.other, pl.ds(k * f, f)] * ((_dot(g.radial, ws[k]) + bs[k]) * env)
            for k in range(3)
        )
        hot = _one_hot(ch.local, bn, be, gate_s.dtype)
        acc_s, acc_x, acc_y, acc_z = accs
        acc_s = acc_s + _dot(hot, gate_s)
        out = [acc_s]
        for c, acc in enumerate((acc_x, acc_y, acc_z)):
            message = v_ref[ch.other, pl.ds(c * f, f)] * gate_v + g.units[c][:, None] * gate_r
            out.append(acc + _dot(hot, message))
        return tuple(out)

    zero = jnp.zeros((bn, f), ds_ref.dtype)
    acc_s, *acc_v = lax.fori_loop(0, n_chunks, body, (zero, zero, zero, zero))
    rows = pl.ds(first, bn)
    ds_ref[rows, :] = acc_s
    for c in range(3):
        dv_ref[rows, pl.ds(c * f, f)] = acc_v[c]


def _painn_edge_grads(g: _Basis, unscaled, ws, phi, cot_s, cot_v, cot_dot_v, cot_dot_u):
    """Gradient of a chunk of edges' vectors (3 × ``[B]``, zero where not ``g.ok``):
    through the filters (distance) and through the unit vector of the Δv term.

    ``unscaled``: the three filters before the envelope; ``ws``: their weights; ``phi``:
    the sender's three scalar channels; ``cot_*``: the receiver's cotangents (and their
    products with the sender's ``v`` and with the unit vectors).
    """
    env = g.envelope[:, None]
    phi_v, phi_s, phi_r = phi
    d_filt = (phi_v * cot_dot_v, phi_s * cot_s, phi_r * cot_dot_u)
    d_env = jnp.sum(
        d_filt[0] * unscaled[0] + d_filt[1] * unscaled[1] + d_filt[2] * unscaled[2], axis=1
    )
    d_radial = (
        _dot_t(d_filt[0] * env, ws[0])
        + _dot_t(d_filt[1] * env, ws[1])
        + _dot_t(d_filt[2] * env, ws[2])
    )
    d_dist = jnp.sum(d_radial * g.d_radial, axis=1) + d_env * g.d_envelope
    gate_r = phi_r * (unscaled[2] * env)
    d_units = [jnp.sum(cot_v[c] * gate_r, axis=1) for c in range(3)]
    along = d_units[0] * g.units[0] + d_units[1] * g.units[1] + d_units[2] * g.units[2]
    inv_d = 1.0 / g.distance
    return [
        jnp.where(g.ok, d_dist * g.units[c] + (d_units[c] - along * g.units[c]) * inv_d, 0.0)
        for c in range(3)
    ]


def _painn_backward_kernel(
    offsets_ref, index_ref, vec_ref, phi_ref, v_ref, gs_ref, gv_ref, w_ref, b_ref,
    dphi_ref, dv_ref, dvec_ref, *, cfg, n_edge,
):  # fmt: skip
    from jax.experimental import pallas as pl
    from jax.experimental.pallas import triton as plgpu

    bn, be, f = cfg.block_nodes, cfg.block_edges, cfg.features
    first, start, end, n_chunks = _block_range(offsets_ref, bn, be)
    ws = [w_ref[:, pl.ds(k * f, f)] for k in range(3)]
    bs = [b_ref[:, pl.ds(k * f, f)] for k in range(3)]

    def body(i, accs):
        # Centre = sender j, other = receiver i of each edge.
        ch = _load_chunk(index_ref, start + i * be, end, first, be, n_edge)
        vecs = (vec_ref[ch.edge, 0], vec_ref[ch.edge, 1], vec_ref[ch.edge, 2])
        g = _basis(*vecs, ch.valid, cfg.cutoff, cfg.num_radial)
        env = g.envelope[:, None]
        unscaled = [_dot(g.radial, ws[k]) + bs[k] for k in range(3)]
        filt_v, filt_s, filt_r = (h * env for h in unscaled)
        phi_v, phi_s, phi_r = (phi_ref[ch.centre, pl.ds(k * f, f)] for k in range(3))
        cot_s = gs_ref[ch.other, :]
        cot_v = [gv_ref[ch.other, pl.ds(c * f, f)] for c in range(3)]
        v_j = [v_ref[ch.centre, pl.ds(c * f, f)] for c in range(3)]
        units = [u[:, None] for u in g.units]
        cot_dot_v = cot_v[0] * v_j[0] + cot_v[1] * v_j[1] + cot_v[2] * v_j[2]
        cot_dot_u = cot_v[0] * units[0] + cot_v[1] * units[1] + cot_v[2] * units[2]
        hot = _one_hot(ch.local, bn, be, cot_s.dtype)
        acc_pv, acc_ps, acc_pr, acc_x, acc_y, acc_z = accs
        acc_pv = acc_pv + _dot(hot, filt_v * cot_dot_v)
        acc_ps = acc_ps + _dot(hot, filt_s * cot_s)
        acc_pr = acc_pr + _dot(hot, filt_r * cot_dot_u)
        gate_v = phi_v * filt_v
        acc_x = acc_x + _dot(hot, cot_v[0] * gate_v)
        acc_y = acc_y + _dot(hot, cot_v[1] * gate_v)
        acc_z = acc_z + _dot(hot, cot_v[2] * gate_v)
        grads = _painn_edge_grads(
            g, unscaled, ws, (phi_v, phi_s, phi_r), cot_s, cot_v, cot_dot_v, cot_dot_u
        )
        for c in range(3):
            plgpu.store(dvec_ref.at[ch.sink, c], grads[c], mask=ch.valid)
        return acc_pv, acc_ps, acc_pr, acc_x, acc_y, acc_z

    zero = jnp.zeros((bn, f), dphi_ref.dtype)
    accs = lax.fori_loop(0, n_chunks, body, (zero,) * 6)
    rows = pl.ds(first, bn)
    for k in range(3):
        dphi_ref[rows, pl.ds(k * f, f)] = accs[k]
        dv_ref[rows, pl.ds(k * f, f)] = accs[3 + k]
    _zero_left_out(index_ref, offsets_ref, dvec_ref, n_edge, bn, be)


def _painn_forward(cfg, phi, v, edge_vectors, w, b, layout: EdgeLayout):
    from jax.experimental import pallas as pl

    n_node, f = phi.shape[0], cfg.features
    n_pad = layout.offsets.shape[0] - 1
    ds, dv = _call(
        functools.partial(_painn_forward_kernel, cfg=cfg),
        (n_pad // cfg.block_nodes,),
        (
            jax.ShapeDtypeStruct((n_pad, f), phi.dtype),
            jax.ShapeDtypeStruct((n_pad, 3 * f), phi.dtype),
        ),
        (pl.no_block_spec, pl.no_block_spec),
        layout.offsets, layout.index, edge_vectors, phi, v.reshape(n_node, 3 * f), w, b[None],
    )  # fmt: skip
    return ds[:n_node], dv[:n_node].reshape(n_node, 3, f)


def _painn_backward(cfg, phi, v, edge_vectors, w, b, layout: EdgeLayout, cot_s, cot_v):
    from jax.experimental import pallas as pl

    n_node, f = phi.shape[0], cfg.features
    n_pad = layout.offsets.shape[0] - 1
    n_edge = edge_vectors.shape[0]
    dphi, dv, dvec = _call(
        functools.partial(_painn_backward_kernel, cfg=cfg, n_edge=n_edge),
        (n_pad // cfg.block_nodes,),
        (
            jax.ShapeDtypeStruct((n_pad, 3 * f), phi.dtype),
            jax.ShapeDtypeStruct((n_pad, 3 * f), phi.dtype),
            jax.ShapeDtypeStruct((n_edge + 1, 3), edge_vectors.dtype),
        ),
        (pl.no_block_spec,) * 3,
        layout.offsets, layout.index, edge_vectors, phi, v.reshape(n_node, 3 * f), cot_s,
        cot_v.reshape(n_node, 3 * f), w, b[None],
    )  # fmt: skip
    return dphi[:n_node], dv[:n_node].reshape(n_node, 3, f), dvec[:n_edge]


def _painn_slot_forward_kernel(
    index_ref, vec_ref, phi_ref, v_ref, w_ref, b_ref, ds_ref, dv_ref, *, cfg: _SlotConfig
):
    from jax.experimental import pallas as pl

    row, block = pl.program_id(0), pl.program_id(1)
    f, fb = cfg.features, cfg.feature_block
    cols = [pl.ds(k * f + block * fb, fb) for k in range(3)]
    ws = [w_ref[:, col] for col in cols]
    bs = [b_ref[:, col] for col in cols]

    def body(i, accs):
        t, _, g = _slot_geometry(index_ref, vec_ref, row, i, cfg, backward=False)
        env = g.envelope[:, None]
        gate_v, gate_s, gate_r = (
            phi_ref[t.other, cols[k]] * ((_dot(g.radial, ws[k]) + bs[k]) * env) for k in range(3)
        )
        out = [accs[0] + jnp.sum(gate_s, axis=0)]
        for c in range(3):
            message = v_ref[t.other, cols[c]] * gate_v + g.units[c][:, None] * gate_r
            out.append(accs[1 + c] + jnp.sum(message, axis=0))
        return tuple(out)

    zero = jnp.zeros((fb,), ds_ref.dtype)
    acc_s, *acc_v = lax.fori_loop(0, cfg.n_tiles, body, (zero,) * 4)
    ds_ref[row, pl.ds(block * fb, fb)] = acc_s
    for c in range(3):
        dv_ref[row, cols[c]] = acc_v[c]


def _painn_slot_backward_kernel(
    index_ref, vec_ref, phi_ref, v_ref, gs_ref, gv_ref, w_ref, b_ref,
    dphi_ref, dv_ref, dvec_ref, *, cfg: _SlotConfig, n_edge: int,
):  # fmt: skip
    from jax.experimental import pallas as pl

    row, block = pl.program_id(0), pl.program_id(1)  # row: the sender j
    f, fb = cfg.features, cfg.feature_block
    cols = [pl.ds(k * f + block * fb, fb) for k in range(3)]
    ws = [w_ref[:, col] for col in cols]
    bs = [b_ref[:, col] for col in cols]
    phi_v, phi_s, phi_r = (phi_ref[pl.ds(row, 1), col] for col in cols)  # [1, fb]
    v_j = [v_ref[pl.ds(row, 1), col] for col in cols]

    def body(i, accs):
        # other: the receiver of the edge that row sends
        t, _, g = _slot_geometry(index_ref, vec_ref, row, i, cfg, backward=True)
        env = g.envelope[:, None]
        unscaled = [_dot(g.radial, ws[k]) + bs[k] for k in range(3)]
        filt_v, filt_s, filt_r = (h * env for h in unscaled)
        cot_s = gs_ref[t.other, pl.ds(block * fb, fb)]
        cot_v = [gv_ref[t.other, col] for col in cols]
        units = [u[:, None] for u in g.units]
        cot_dot_v = cot_v[0] * v_j[0] + cot_v[1] * v_j[1] + cot_v[2] * v_j[2]
        cot_dot_u = cot_v[0] * units[0] + cot_v[1] * units[1] + cot_v[2] * units[2]
        gate_v = phi_v * filt_v
        acc_pv, acc_ps, acc_pr, acc_x, acc_y, acc_z = accs
        out = (
            acc_pv + jnp.sum(filt_v * cot_dot_v, axis=0),
            acc_ps + jnp.sum(filt_s * cot_s, axis=0),
            acc_pr + jnp.sum(filt_r * cot_dot_u, axis=0),
            acc_x + jnp.sum(cot_v[0] * gate_v, axis=0),
            acc_y + jnp.sum(cot_v[1] * gate_v, axis=0),
            acc_z + jnp.sum(cot_v[2] * gate_v, axis=0),
        )
        # The edge vector's gradient: this feature block's share.
        grads = _painn_edge_grads(
            g, unscaled, ws, (phi_v, phi_s, phi_r), cot_s, cot_v, cot_dot_v, cot_dot_u
        )
        _store_edge_grads(dvec_ref, t, grads, block, n_edge)
        return out

    zero = jnp.zeros((fb,), dphi_ref.dtype)
    accs = lax.fori_loop(0, cfg.n_tiles, body, (zero,) * 6)
    for k in range(3):
        dphi_ref[row, cols[k]] = accs[k]
        dv_ref[row, cols[k]] = accs[3 + k]


def _painn_slot_forward(cfg: _SlotConfig, phi, v, edge_vectors, w, b, slots: SlotEdges):
    n_node, f = phi.shape[0], cfg.features
    ds, dv = _slot_call(
        cfg,
        functools.partial(_painn_slot_forward_kernel, cfg=cfg),
        n_node,
        (
            jax.ShapeDtypeStruct((n_node, f), phi.dtype),
            jax.ShapeDtypeStruct((n_node, 3 * f), phi.dtype),
        ),
        slots.index, edge_vectors, phi, v.reshape(n_node, 3 * f), w, b[None],
    )  # fmt: skip
    return ds, dv.reshape(n_node, 3, f)


def _painn_slot_backward(cfg: _SlotConfig, phi, v, edge_vectors, w, b, slots, cot_s, cot_v):
    n_node, f = phi.shape[0], cfg.features
    n_edge = edge_vectors.shape[0]
    blocks = f // cfg.feature_block
    dphi, dv, dvec = _slot_call(
        cfg,
        functools.partial(_painn_slot_backward_kernel, cfg=cfg, n_edge=n_edge),
        n_node,
        (
            jax.ShapeDtypeStruct((n_node, 3 * f), phi.dtype),
            jax.ShapeDtypeStruct((n_node, 3 * f), phi.dtype),
            jax.ShapeDtypeStruct((blocks * (n_edge + 1), 3), edge_vectors.dtype),
        ),
        slots.index, edge_vectors, phi, v.reshape(n_node, 3 * f), cot_s,
        cot_v.reshape(n_node, 3 * f), w, b[None],
    )  # fmt: skip
    return dphi, dv.reshape(n_node, 3, f), _sum_blocks(dvec, n_edge)


def _painn_ref(cfg, phi, v, edge_vectors, edge_mask, w, b, senders, receivers):
    return painn_messages_reference(
        phi, v, edge_vectors, edge_mask, w, b, senders, receivers, cfg.cutoff, cfg.num_radial
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _painn_input_grads(cfg, phi, v, edge_vectors, edge_mask, w, b, senders, receivers, fused,
                       cot_s, cot_v):  # fmt: skip
    if isinstance(cfg, _SlotConfig):
        return _painn_slot_backward(cfg, phi, v, edge_vectors, w, b, fused, cot_s, cot_v)
    return _painn_backward(cfg, phi, v, edge_vectors, w, b, fused.by_sender, cot_s, cot_v)


def _painn_input_grads_fwd(cfg, *args):
    return _painn_input_grads(cfg, *args), args


def _painn_input_grads_bwd(cfg, args, cots):
    phi, v, edge_vectors, edge_mask, w, b, senders, receivers, _fused, cot_s, cot_v = args

    def reference_grads(phi, v, edge_vectors, w, b, cot_s, cot_v):
        _, vjp = jax.vjp(
            lambda phi, v, e: _painn_ref(cfg, phi, v, e, edge_mask, w, b, senders, receivers),
            phi,
            v,
            edge_vectors,
        )
        return vjp((cot_s, cot_v))

    _, vjp = jax.vjp(reference_grads, phi, v, edge_vectors, w, b, cot_s, cot_v)
    dphi, dv, de, dw, db, dcs, dcv = vjp(cots)
    return dphi, dv, de, None, dw, db, None, None, None, dcs, dcv


_painn_input_grads.defvjp(_painn_input_grads_fwd, _painn_input_grads_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _painn_fused(cfg, phi, v, edge_vectors, edge_mask, w, b, senders, receivers, fused):
    if isinstance(cfg, _SlotConfig):
        return _painn_slot_forward(cfg, phi, v, edge_vectors, w, b, fused)
    return _painn_forward(cfg, phi, v, edge_vectors, w, b, fused.by_receiver)


def _painn_fused_fwd(cfg, *args):
    return _painn_fused(cfg, *args), args


def _painn_fused_bwd(cfg, args, cots):
    phi, v, edge_vectors, edge_mask, w, b, senders, receivers, fused = args
    cot_s, cot_v = cots
    dphi, dv, de = _painn_input_grads(
        cfg, phi, v, edge_vectors, edge_mask, w, b, senders, receivers, fused, cot_s, cot_v
    )
    _, vjp = jax.vjp(
        lambda w, b: _painn_ref(cfg, phi, v, edge_vectors, edge_mask, w, b, senders, receivers),
        w,
        b,
    )
    dw, db = vjp(cots)
    return dphi, dv, de, None, dw, db, None, None, None


_painn_fused.defvjp(_painn_fused_fwd, _painn_fused_bwd)


def painn_messages(
    phi: jax.Array,
    v: jax.Array,
    edge_vectors: jax.Array,
    edge_mask: jax.Array,
    w: jax.Array,
    b: jax.Array,
    senders: jax.Array,
    receivers: jax.Array,
    fused: FusedEdges | SlotEdges,
    cutoff: float,
    num_radial: int,
) -> tuple[jax.Array, jax.Array]:
    """Fused PaiNN message; equals :func:`painn_messages_reference`.

    Args:
        phi: ``[N, 3F]`` per-sender scalars (the message MLP of ``s``).
        v: ``[N, 3, F]`` vector features.
        edge_vectors: ``[E, 3]`` Å; edge_mask ``[E]`` bool.
        w, b: filter weights ``[num_radial, 3F]``, ``[3F]``.
        senders, receivers: ``[E]`` int.
        fused: layouts from :func:`edge_layouts`, or the :class:`SlotEdges` of a
            receiver-major list (then the slot kernels run).
        cutoff: Å.
        num_radial: Bessel functions.

    Returns:
        ``(Δs [N, F], Δv [N, 3, F])``.
    """
    if isinstance(fused, SlotEdges):
        cfg = _slot_config(cutoff, num_radial, v.shape[-1], edge_vectors.shape[0], v.shape[0])
    else:
        cfg = _PaiNNConfig(float(cutoff), int(num_radial), int(v.shape[-1]), *block_config()[:2])
    return _painn_fused(cfg, phi, v, edge_vectors, edge_mask, w, b, senders, receivers, fused)
