"""Fused per-atom blocks: PaiNN's update block as one GPU kernel each way.

At small and medium sizes a student's MD step is bound by the number of kernels it
launches, not by memory traffic: on an H100 a PaiNN 64×3 force evaluation of 64 Si atoms
ran ~110 kernels of ~2 µs each, about 40 of them small matrix products of the per-atom
blocks (benchmarks/results/step_profile_h100_receiver_major.json). PaiNN's update block
is per atom (no edges): three products of the vector features, a softened norm, a
two-layer MLP and the gated combination. XLA evaluates it as several kernels each way;
here it is one Pallas program per block of atoms each way, with the weights (``[F, F]``
blocks) loaded once per program and no intermediate written to memory.

Derivatives follow ``models.fused``: the forward is a ``jax.custom_vjp`` whose backward
kernel recomputes the block and returns the gradients of the features (what forces and
stress need); weight gradients come from the reference formula, which XLA removes when
nothing asks for them (MD). The backward is itself a ``custom_vjp`` differentiated
through the reference, so a force loss's gradient works at the reference's cost.
Forward-mode derivatives are not supported (as for every ``custom_vjp``). Measured
slower than XLA's kernels on an H100, so opt-in: see :func:`use_node_kernels`.
"""

from __future__ import annotations

import functools
import os
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxdistill.models.fused import (
    _call,
    _dot,
    _dot_t,
    _interpret,
    _power_of_two,
    _silu_parts,
    check_mode,
)

#: Environment variable: "on" runs the node kernels (opt-in, see :func:`use_node_kernels`).
ENV_VAR = "JAXDISTILL_NODE_KERNELS"
#: Atoms per Pallas program (a power of two, at least 16: Triton's smallest product).
BLOCK_ROWS = 16
#: Tuning knob for benchmarks: "block_rows,num_warps" (read at trace time).
BLOCKS_ENV_VAR = "JAXDISTILL_NODE_BLOCKS"
#: Largest feature count the GPU kernel compiles for: at 128 Triton asked an H100 for
#: 488 KiB of shared memory (it has 227; benchmarks/results/node_kernels_h100/).
MAX_GPU_FEATURES = 64


class UpdateWeights(NamedTuple):
    """PaiNN update block parameters (the arrays of ``PaiNNUpdate``'s Dense layers).

    Attributes:
        u, w: ``[F, F]`` linear maps of the vector features (no bias).
        hidden, hidden_bias: ``[2F, F]``, ``[F]``: the MLP's first layer on ``[s, |Wv|]``.
        out, out_bias: ``[F, 3F]``, ``[3F]``: its second layer, split into the gates
            ``(a_vv, a_sv, a_ss)``.
    """

    u: jax.Array
    w: jax.Array
    hidden: jax.Array
    hidden_bias: jax.Array
    out: jax.Array
    out_bias: jax.Array


def painn_update_reference(
    s: jax.Array, v: jax.Array, weights: UpdateWeights, norm_softening: float
) -> tuple[jax.Array, jax.Array]:
    """PaiNN update block in pure JAX (the module's reference path and the oracle).

    Args:
        s: ``[N, F]`` scalar features.
        v: ``[N, 3, F]`` vector features.
        weights: the block's parameters.
        norm_softening: ``c`` of the softened norm ``sqrt(|Wv|² + c²)``.

    Returns:
        Updated ``(s [N, F], v [N, 3, F])``.
    """
    # U and V read the same input: one matrix product with their kernels side by side
    # (a kernel fewer forward and backward, which counts at small sizes).
    kernel = jnp.concatenate([weights.u, weights.w], axis=1)
    u_v, w_v = jnp.split(v @ kernel, 2, axis=-1)
    # A softened norm sqrt(|w|² + c²): at a site whose symmetry leaves no invariant
    # vector (an atom of a perfect crystal) the vector features vanish, and with a small
    # c the energy has a |x|-like cusp there (phonons and vibrations come out wrong,
    # even imaginary); c = 1 keeps it smooth.
    w_norm = jnp.sqrt(jnp.sum(w_v**2, axis=1) + norm_softening**2)
    hidden = jax.nn.silu(
        jnp.concatenate([s, w_norm], axis=-1) @ weights.hidden + weights.hidden_bias
    )
    a_vv, a_sv, a_ss = jnp.split(hidden @ weights.out + weights.out_bias, 3, axis=-1)
    dv = a_vv[:, None, :] * u_v
    ds = a_sv * jnp.sum(u_v * w_v, axis=1) + a_ss
    return s + ds, v + dv


def use_node_kernels(mode: str) -> bool:
    """Whether a PaiNN update block runs the fused node kernel: only when asked.

    On an H100 (2026-12-06, ``benchmarks/node_kernels_gpu.sh``) the kernel made a PaiNN
    64×3 MD step slower at every size (64 Si atoms 323 against 182 µs, 512 875 against
    553, 4096 3099 against 2683), so nothing turns it on by default. :data:`ENV_VAR`
    ``=on`` does (interpreted on a CPU), for any student whose ``message_passing`` is
    not "reference" (which stays pure JAX: training, derivatives of any order). It is a
    ``custom_vjp``: forward-mode derivatives (Hessian-vector products) need it off.

    Args:
        mode: the student's ``message_passing``.
    """
    env = os.environ.get(ENV_VAR, "off").strip().lower() or "off"
    if env not in ("on", "off"):
        raise ValueError(f"{ENV_VAR} must be 'on' or 'off', got {env!r}")
    return check_mode(mode) != "reference" and env == "on"


class _NodeConfig(NamedTuple):
    n_node: int
    features: int
    norm_softening: float
    block_rows: int
    num_warps: int


def _node_config(n_node: int, features: int, norm_softening: float) -> _NodeConfig:
    value = os.environ.get(BLOCKS_ENV_VAR, "").strip()
    rows, warps = (int(x) for x in value.split(",")) if value else (BLOCK_ROWS, 4)
    if not _power_of_two(features) or not _power_of_two(rows):
        raise ValueError(
            f"the fused node kernel needs features and block rows to be powers of two "
            f"(>= 16), got features={features}, rows={rows}; unset {ENV_VAR}"
        )
    if features > MAX_GPU_FEATURES and not _interpret():
        raise ValueError(
            f"the fused node kernel does not fit a GPU's shared memory with {features} "
            f"features (at most {MAX_GPU_FEATURES}); unset {ENV_VAR}"
        )
    return _NodeConfig(int(n_node), int(features), float(norm_softening), rows, warps)


# ----------------------------------------------------------------------- kernels


class _Block(NamedTuple):
    """One program's rows: where they sit and which are real atoms."""

    rows: object  # pl.ds over the rows
    mask: jax.Array  # [rows, 1] bool


def _block(cfg: _NodeConfig) -> _Block:
    from jax.experimental import pallas as pl

    first = pl.program_id(0) * cfg.block_rows
    valid = first + jax.lax.broadcasted_iota(jnp.int32, (cfg.block_rows, 1), 0) < cfg.n_node
    return _Block(pl.ds(first, cfg.block_rows), valid)


def _columns(ref, block: _Block, column: int, features: int):
    """The view of column block ``column`` of a ``[N, k·F]`` array over the block's rows."""
    from jax.experimental import pallas as pl

    return ref.at[block.rows, pl.ds(jnp.int32(column * features), features)]


def _load(ref, block: _Block, column: int, features: int):
    """``[rows, F]`` column block ``column`` of a ``[N, k·F]`` array (0 past the end)."""
    from jax.experimental.pallas import triton as plgpu

    return plgpu.load(_columns(ref, block, column, features), mask=block.mask, other=0.0)


def _store(ref, block: _Block, column: int, features: int, value) -> None:
    from jax.experimental.pallas import triton as plgpu

    plgpu.store(_columns(ref, block, column, features), value, mask=block.mask)


class _Weights(NamedTuple):
    """The weights as ``[F, F]`` blocks and ``[1, F]`` biases, loaded in a program."""

    u: jax.Array
    w: jax.Array
    hidden_s: jax.Array  # rows of the hidden layer that read s
    hidden_n: jax.Array  # rows that read |Wv|
    hidden_bias: jax.Array
    out: tuple[jax.Array, jax.Array, jax.Array]  # (vv, sv, ss) column blocks
    out_bias: tuple[jax.Array, jax.Array, jax.Array]


def _load_weights(u_ref, w_ref, h_ref, hb_ref, o_ref, ob_ref, f: int) -> _Weights:
    from jax.experimental import pallas as pl

    return _Weights(
        u=u_ref[...],
        w=w_ref[...],
        hidden_s=h_ref[pl.ds(0, f), :],
        hidden_n=h_ref[pl.ds(f, f), :],
        hidden_bias=hb_ref[...],
        out=tuple(o_ref[:, pl.ds(k * f, f)] for k in range(3)),
        out_bias=tuple(ob_ref[:, pl.ds(k * f, f)] for k in range(3)),
    )


class _Forward(NamedTuple):
    u: list  # 3 × [rows, F]: U v_c
    w: list  # 3 × [rows, F]: W v_c
    norm: jax.Array  # softened |Wv|
    d_silu: jax.Array  # silu' at the hidden pre-activation
    gates: tuple  # (a_vv, a_sv, a_ss)
    uw: jax.Array  # Σ_c (U v_c)(W v_c)


def _forward(s, v, wt: _Weights, softening: float) -> _Forward:
    """The update block on one program's rows (same formulas as the reference)."""
    u = [_dot(vc, wt.u) for vc in v]
    w = [_dot(vc, wt.w) for vc in v]
    norm = jnp.sqrt(w[0] * w[0] + w[1] * w[1] + w[2] * w[2] + softening**2)
    hidden, d_silu = _silu_parts(_dot(s, wt.hidden_s) + _dot(norm, wt.hidden_n) + wt.hidden_bias)
    gates = tuple(_dot(hidden, wt.out[k]) + wt.out_bias[k] for k in range(3))
    uw = u[0] * w[0] + u[1] * w[1] + u[2] * w[2]
    return _Forward(u, w, norm, d_silu, gates, uw)


def _forward_kernel(s_ref, v_ref, u_ref, w_ref, h_ref, hb_ref, o_ref, ob_ref, s_out, v_out,
                    *, cfg: _NodeConfig):  # fmt: skip
    f = cfg.features
    block = _block(cfg)
    wt = _load_weights(u_ref, w_ref, h_ref, hb_ref, o_ref, ob_ref, f)
    s = _load(s_ref, block, 0, f)
    v = [_load(v_ref, block, c, f) for c in range(3)]
    fw = _forward(s, v, wt, cfg.norm_softening)
    a_vv, a_sv, a_ss = fw.gates
    _store(s_out, block, 0, f, s + a_sv * fw.uw + a_ss)
    for c in range(3):
        _store(v_out, block, c, f, v[c] + a_vv * fw.u[c])


def _backward_kernel(s_ref, v_ref, gs_ref, gv_ref, u_ref, w_ref, h_ref, hb_ref, o_ref, ob_ref,
                     ds_ref, dv_ref, *, cfg: _NodeConfig):  # fmt: skip
    f = cfg.features
    block = _block(cfg)
    wt = _load_weights(u_ref, w_ref, h_ref, hb_ref, o_ref, ob_ref, f)
    s = _load(s_ref, block, 0, f)
    v = [_load(v_ref, block, c, f) for c in range(3)]
    g_s = _load(gs_ref, block, 0, f)
    g_v = [_load(gv_ref, block, c, f) for c in range(3)]
    fw = _forward(s, v, wt, cfg.norm_softening)
    a_vv, a_sv, _ = fw.gates
    # s' = s + a_sv·Σ u_c w_c + a_ss and v'_c = v_c + a_vv·u_c, backwards.
    d_gates = (g_v[0] * fw.u[0] + g_v[1] * fw.u[1] + g_v[2] * fw.u[2], g_s * fw.uw, g_s)
    d_uw = g_s * a_sv
    d_pre = (
        _dot_t(d_gates[0], wt.out[0])
        + _dot_t(d_gates[1], wt.out[1])
        + _dot_t(d_gates[2], wt.out[2])
    ) * fw.d_silu
    ds = g_s + _dot_t(d_pre, wt.hidden_s)
    d_norm_over_norm = _dot_t(d_pre, wt.hidden_n) / fw.norm
    _store(ds_ref, block, 0, f, ds)
    for c in range(3):
        d_u = g_v[c] * a_vv + d_uw * fw.w[c]
        d_w = d_uw * fw.u[c] + d_norm_over_norm * fw.w[c]
        _store(dv_ref, block, c, f, g_v[c] + _dot_t(d_u, wt.u) + _dot_t(d_w, wt.w))


def _kernel_weights(weights: UpdateWeights) -> tuple:
    return (
        weights.u,
        weights.w,
        weights.hidden,
        weights.hidden_bias[None],
        weights.out,
        weights.out_bias[None],
    )


def _node_call(cfg: _NodeConfig, kernel, *args):
    """A node kernel over its grid (one program per ``block_rows`` atoms); its outputs
    are an ``[N, F]`` and an ``[N, 3F]`` array."""
    from jax.experimental import pallas as pl

    f, n = cfg.features, cfg.n_node
    shapes = (
        jax.ShapeDtypeStruct((n, f), args[0].dtype),
        jax.ShapeDtypeStruct((n, 3 * f), args[0].dtype),
    )
    return _call(
        functools.partial(kernel, cfg=cfg),
        (pl.cdiv(n, cfg.block_rows),),
        shapes,
        (pl.no_block_spec,) * 2,
        *args,
        num_warps=cfg.num_warps,
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _input_grads(cfg: _NodeConfig, s, v, weights: UpdateWeights, cot_s, cot_v):
    n, f = cfg.n_node, cfg.features
    ds, dv = _node_call(
        cfg, _backward_kernel,
        s, v.reshape(n, 3 * f), cot_s, cot_v.reshape(n, 3 * f), *_kernel_weights(weights),
    )  # fmt: skip
    return ds, dv.reshape(n, 3, f)


def _input_grads_fwd(cfg, *args):
    return _input_grads(cfg, *args), args


def _input_grads_bwd(cfg, args, cots):
    # Second derivatives (a force loss's gradient) through the reference backward.
    def reference_grads(s, v, weights, cot_s, cot_v):
        _, vjp = jax.vjp(
            lambda s, v: painn_update_reference(s, v, weights, cfg.norm_softening), s, v
        )
        return vjp((cot_s, cot_v))

    _, vjp = jax.vjp(reference_grads, *args)
    return vjp(cots)


_input_grads.defvjp(_input_grads_fwd, _input_grads_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _update_fused(cfg: _NodeConfig, s, v, weights: UpdateWeights):
    n, f = cfg.n_node, cfg.features
    s_new, v_new = _node_call(
        cfg, _forward_kernel, s, v.reshape(n, 3 * f), *_kernel_weights(weights)
    )
    return s_new, v_new.reshape(n, 3, f)


def _update_fused_fwd(cfg, s, v, weights):
    return _update_fused(cfg, s, v, weights), (s, v, weights)


def _update_fused_bwd(cfg, residuals, cots):
    s, v, weights = residuals
    cot_s, cot_v = cots
    ds, dv = _input_grads(cfg, s, v, weights, cot_s, cot_v)
    # Weight gradients by the reference formula: unused in MD, so XLA drops them.
    _, vjp = jax.vjp(lambda w: painn_update_reference(s, v, w, cfg.norm_softening), weights)
    (d_weights,) = vjp(cots)
    return ds, dv, d_weights


_update_fused.defvjp(_update_fused_fwd, _update_fused_bwd)


def painn_update_fused(
    s: jax.Array, v: jax.Array, weights: UpdateWeights, norm_softening: float
) -> tuple[jax.Array, jax.Array]:
    """PaiNN update block as one fused kernel each way; equals
    :func:`painn_update_reference` (same arguments and results)."""
    cfg = _node_config(s.shape[0], s.shape[1], norm_softening)
    return _update_fused(cfg, s, v, weights)
