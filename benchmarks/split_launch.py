"""Does a calculator call get faster split in two programs? (issue 18)

    python benchmarks/split_launch.py --systems si64,si1000 \\
        --output benchmarks/results/split_launch.json

A single GPU call's floor is XLA's CUDA-graph launch: the host spends 110-420 µs in
``cuGraphLaunch`` while the GPU waits for it (docs/benchmarks.md, "A single call's
floor"). Two programs, forward (the energy and the residuals of its gradient,
``jax.vjp``) and backward (the forces), each launch half the kernels: while the GPU runs
the forward program the host launches the backward one, so up to half the launch time
could hide behind the GPU's work, at the price of a second dispatch and of the residuals
passing between the programs as arguments.

For each student and structure this times, in paired rounds in one process on the
calculator's ready input (its forces program, compacted as the calculator compacts):
``one``, the calculator's own program; ``split``, the two programs called back to
back. Each round also records how long each dispatch held the host (``*_dispatch``):
the time until the call returned, before the result was fetched. Reported: medians,
99th percentiles, the paired difference ``split - one`` with its 25-75 % range, the
residuals' leaf count and bytes, and the largest difference of the results.
"""

from __future__ import annotations

import os

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import argparse
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from calculator_ab import _stats, paired_rounds
from records import sweep_students

from jaxdistill import StudentCalculator
from jaxdistill.md import ase_calculator
from jaxdistill.md.ase_calculator import _unpack_input, fetch
from jaxdistill.potential import compact_graph


def split_programs(calculator):
    """``(forward, backward)``: ``forward(params, graph, packed) -> (energy, pullback)``
    and ``backward(energy, pullback) -> [energy, forces]`` flat, the latter written where
    the calculator's result lands (pinned host memory on a GPU)."""
    width = calculator._compact_width
    potential = calculator._potential_for(compacted=width is not None)
    cutoff = calculator.student.cutoff

    def forward(params, graph, packed):
        graph = _unpack_input(graph, packed)
        if width is not None:
            graph, _ = compact_graph(graph, cutoff, width)

        def total(positions):
            energies = potential.energy(params, graph._replace(positions=positions))
            return jnp.sum(jnp.where(graph.graph_mask, energies, 0.0))

        energy, pullback = jax.vjp(total, graph.positions)
        return energy, pullback, graph.node_mask

    def backward(energy, pullback, node_mask):
        (d_positions,) = pullback(jnp.ones_like(energy))
        forces = jnp.where(node_mask[:, None], -d_positions, 0.0)
        return jnp.concatenate([energy[None], forces.reshape(-1)])

    memory = "device" if calculator._evaluate is ase_calculator._program else "pinned_host"
    sharding = jax.sharding.SingleDeviceSharding(calculator.jax_device, memory_kind=memory)
    return jax.jit(forward), jax.jit(backward, out_shardings=sharding)


def compare(student, atoms, calls: int) -> dict:
    atoms = atoms.copy()
    atoms.calc = StudentCalculator(student)
    atoms.get_forces()
    calculator = atoms.calc
    one = calculator.program()
    packed = jax.device_put(calculator._input_buffer.copy(), calculator.jax_device)
    params, graph = calculator._params, calculator._graph
    forward, backward = split_programs(calculator)
    spin = calculator._spin
    energy, pullback, mask = forward(params, graph, packed)
    leaves = jax.tree_util.tree_leaves(pullback)
    reference = fetch(one(packed))
    split_result = fetch(backward(energy, pullback, mask))
    n = split_result.size
    difference = float(np.max(np.abs(split_result - reference[:n])))
    dispatch: dict[str, list[float]] = {"one": [], "split_forward": [], "split_backward": []}

    def time_one() -> float:
        start = time.perf_counter()
        result = one(packed)
        dispatch["one"].append((time.perf_counter() - start) * 1e3)
        fetch(result, spin)
        return (time.perf_counter() - start) * 1e3

    def time_split() -> float:
        start = time.perf_counter()
        outputs = forward(params, graph, packed)
        middle = time.perf_counter()
        result = backward(*outputs)
        end = time.perf_counter()
        dispatch["split_forward"].append((middle - start) * 1e3)
        dispatch["split_backward"].append((end - middle) * 1e3)
        fetch(result, spin)
        return (time.perf_counter() - start) * 1e3

    cases = {"one": time_one, "split": time_split}
    for case in cases.values():
        case()
    for values in dispatch.values():
        values.clear()
    times = paired_rounds(cases, calls)
    return {
        **{name: _stats(values) for name, values in times.items()},
        "split_minus_one": _stats(np.subtract(times["split"], times["one"])),
        **{f"{name}_dispatch": _stats(values) for name, values in dispatch.items()},
        "residual_leaves": len(leaves),
        "residual_bytes": int(sum(leaf.size * leaf.dtype.itemsize for leaf in leaves)),
        "compact_width": calculator._compact_width,
        "max_result_difference": difference,
        "device": str(calculator.jax_device),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--architectures", default="painn,schnet")
    parser.add_argument("--systems", default="si64,si1000")
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args()

    def describe(row: dict) -> str:
        paired = row["split_minus_one"]
        return (
            f"one {row['one']['median_ms']:.3f} ms (dispatch "
            f"{row['one_dispatch']['median_ms']:.3f}), split {row['split']['median_ms']:.3f} "
            f"(dispatch {row['split_forward_dispatch']['median_ms']:.3f} + "
            f"{row['split_backward_dispatch']['median_ms']:.3f}); paired "
            f"{paired['median_ms']:+.3f} [{paired['p25_ms']:+.3f}, {paired['p75_ms']:+.3f}]; "
            f"residuals {row['residual_leaves']} leaves, {row['residual_bytes'] / 1e6:.1f} MB; "
            f"dF {row['max_result_difference']:.1e}"
        )

    sweep_students(
        args.output,
        args.systems,
        args.architectures,
        lambda student, atoms: compare(student, atoms, args.calls),
        describe,
        "split",
    )


if __name__ == "__main__":
    main()
