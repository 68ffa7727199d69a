"""Time one message-passing round trip (gather at senders, sum at receivers, and
the backward pass forces need) with plain gather/segment_sum against the
scatter-free receiver-major ops of jaxdistill.models.edges.

The graph is a symmetric ring with 32 neighbours per node (offsets ±1..±16), a
stand-in for a silicon neighbour list at a 5 Å cutoff: same width, spatially
ordered like a jax-md Dense list. Features are 192 wide (PaiNN 64 × 3 gates).

    python benchmarks/edge_ops.py --out benchmarks/results/edge_ops.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxdistill.models import edges

SLOTS, FEATURES = 32, 192


def ring_graph(n_node: int):
    offsets = np.concatenate([np.arange(1, SLOTS // 2 + 1), -np.arange(1, SLOTS // 2 + 1)])
    senders = (np.arange(n_node)[:, None] + offsets[None]) % n_node
    return jnp.asarray(senders.reshape(-1), jnp.int32), jnp.repeat(jnp.arange(n_node), SLOTS)


def make_step(senders, receivers, n_node, dense: bool):
    layout = edges.receiver_major_layout(senders, n_node) if dense else None

    def energy(x, w):
        if dense:
            messages = edges.gather_senders(x, senders, layout) * w
            summed = edges.sum_at_receivers(messages, n_node)
        else:
            summed = jax.ops.segment_sum(x[senders] * w, receivers, num_segments=n_node)
        return jnp.sum(jnp.tanh(summed) * x)

    return jax.jit(jax.value_and_grad(energy))


def median_us(fn, *args, repeats: int = 300) -> float:
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1e6)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="benchmarks/results/edge_ops.json")
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 512, 4096, 32768])
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    rows = []
    for n_node in args.sizes:
        senders, receivers = ring_graph(n_node)
        x = jnp.asarray(rng.normal(size=(n_node, FEATURES)), jnp.float32)
        w = jnp.asarray(rng.normal(size=(n_node * SLOTS, FEATURES)), jnp.float32)
        row = {"n_node": n_node, "slots": SLOTS, "features": FEATURES}
        results = {}
        for name, dense in (("segment_sum", False), ("receiver_major", True)):
            step = make_step(senders, receivers, n_node, dense)
            results[name] = step(x, w)
            row[f"{name}_us"] = median_us(step, x, w)
        gap = float(jnp.max(jnp.abs(results["segment_sum"][1] - results["receiver_major"][1])))
        row["max_grad_difference"] = gap
        rows.append(row)
        print(row, flush=True)
    report = {
        "benchmark": "edge_ops",
        "device": str(jax.devices()[0].device_kind),
        "jax": jax.__version__,
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "command": "python benchmarks/edge_ops.py",
        "rows": rows,
    }
    with open(args.out, "w") as handle:
        json.dump(report, handle, indent=2)


if __name__ == "__main__":
    main()
