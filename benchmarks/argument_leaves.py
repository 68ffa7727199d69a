"""What each argument leaf costs a jitted call's dispatch (issue 18).

    python benchmarks/argument_leaves.py --output benchmarks/results/argument_leaves.json

The calculator passes its student's parameters and graph to the compiled program as
pytrees: 57 device arrays for PaiNN 64×3 (43 parameters, 13 graph fields) beside the
packed input. JAX checks and unpacks every leaf on every call (``ParseArguments`` in a
trace). This times a jitted call that does no work, taking the packed input (a host
array, as the calculator passes it) and ``N`` small device arrays, for several ``N``,
in rotating order, and fits the cost per leaf.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from records import header


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--leaves", default="1,8,32,57,128")
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args()
    counts = [int(n) for n in args.leaves.split(",")]
    packed = np.ones((1004, 3), np.float32)
    calls = {}
    for n in counts:
        leaves = [jnp.full((64,), float(i)) for i in range(n)]
        function = jax.jit(lambda tree, x: x[0, 0] + tree[0][0])
        np.asarray(function(leaves, packed))
        calls[n] = (function, leaves)
    times: dict[int, list[float]] = {n: [] for n in counts}
    for i in range(args.calls):
        turn = i % len(counts)
        for n in counts[turn:] + counts[:turn]:
            function, leaves = calls[n]
            start = time.perf_counter()
            np.asarray(function(leaves, packed))
            times[n].append((time.perf_counter() - start) * 1e6)
    medians = {n: float(np.median(v)) for n, v in times.items()}
    slope, intercept = np.polyfit(counts, [medians[n] for n in counts], 1)
    record = header(
        median_us={str(n): medians[n] for n in counts},
        us_per_leaf=float(slope),
        us_at_zero_leaves=float(intercept),
    )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(record, indent=1) + "\n")
    print(
        f"[leaves] {record['devices'][0]}: "
        + ", ".join(f"{n}: {medians[n]:.1f} us" for n in counts)
        + f"; {slope:.2f} us per leaf",
        flush=True,
    )


if __name__ == "__main__":
    main()
