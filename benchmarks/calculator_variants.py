"""Why is the calculator's program slower than a jax-md force call on the same slots?
(issue 18; docs/benchmarks.md, "Where a PaiNN call at 1000 atoms goes")

    python benchmarks/calculator_variants.py --output benchmarks/results/calculator_variants.json

At 1000 Si atoms the two backward sums over slots took 60 µs each in the calculator's
program against 41 µs in the jax-md force call: the same operations on 32 slots, but
1024 node rows against 1001, and a row's pairs ordered by sender index (the host list)
against jax-md's cell order. This times the calculator's own compiled forces program
(compacted to its width, result fetched to the host) on variants of its graph, in
paired rounds:

- ``as_built``: the calculator's graph (node capacity 1024);
- ``rows_N``: the same pairs in a graph of ``N`` node rows, for each of
  ``--node-capacities`` (default: the fewest, n_atoms + 1, and the bucket + 16);
- ``shuffled_slots``: each row's pairs in a random order (reverse map carried over).

Results agree to float rounding; the script records the largest force difference.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from student_call import structures, untrained_student

from jaxdistill import StudentCalculator
from jaxdistill.graph import Graph, batch_graphs, neighbour_pairs


def _graph(atoms, calculator, node_capacity: int) -> Graph:
    """The calculator's graph of ``atoms`` with another node capacity."""
    neighbours = neighbour_pairs(atoms, calculator.student.cutoff + calculator.skin)
    return batch_graphs(
        [atoms], calculator.student.cutoff, neighbours=[neighbours],
        node_capacity=node_capacity, edge_capacity=1, graph_capacity=2,
        dtype=calculator.dtype, slots_per_node=calculator._slots,
    )  # fmt: skip


def _shuffled(graph: Graph, seed: int = 0) -> Graph:
    """Each row's slots in a random order; the reverse map follows its edges."""
    n_node = graph.positions.shape[0]
    n_edge = graph.senders.shape[0]
    slots = n_edge // n_node
    rng = np.random.default_rng(seed)
    order = np.argsort(rng.random((n_node, slots)), axis=1)  # new slot k <- old order[k]
    old_of_new = (np.arange(n_node)[:, None] * slots + order).reshape(-1)
    new_of_old = np.empty(n_edge, dtype=np.int64)
    new_of_old[old_of_new] = np.arange(n_edge)
    reverse = np.asarray(graph.reverse_edges)
    return graph._replace(
        senders=np.asarray(graph.senders)[old_of_new],
        receivers=np.asarray(graph.receivers)[old_of_new],
        shifts=np.asarray(graph.shifts)[old_of_new],
        edge_mask=np.asarray(graph.edge_mask)[old_of_new],
        reverse_edges=new_of_old[reverse[old_of_new]].astype(np.int32),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--system", default="si1000")
    parser.add_argument("--architecture", default="painn")
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--edge-layout", default="receiver_major")
    parser.add_argument("--node-capacities", default="", help="e.g. 1001,1008,1040")
    parser.add_argument(
        "--output", type=Path, default=Path("benchmarks/results/calculator_variants.json")
    )
    args = parser.parse_args()
    atoms = structures(quick=False)[args.system]
    student = untrained_student(args.architecture, atoms)
    calculator = StudentCalculator(student, edge_layout=args.edge_layout, compact_rows=True)
    atoms = atoms.copy()
    atoms.calc = calculator
    atoms.get_forces()
    n_atoms = len(atoms)
    device = calculator.jax_device
    base = calculator._graph
    capacities = [int(c) for c in args.node_capacities.split(",") if c] or [
        n_atoms + 1,
        calculator._node_capacity + 16,
    ]
    variants = {"as_built": base}
    for capacity in capacities:
        variants[f"rows_{capacity}"] = _graph(atoms, calculator, capacity)
    variants["shuffled_slots"] = _shuffled(jax.device_get(base))
    programs, buffers, first = {}, {}, {}
    for name, graph in variants.items():
        graph = jax.device_put(graph, device)
        n_node = graph.positions.shape[0]
        packed = np.zeros((n_node + 3, 3), calculator.dtype)
        packed[:n_atoms] = atoms.positions
        packed[n_node:] = atoms.cell.array
        program = calculator.program()
        programs[name] = (program.func, (*program.args[:2], graph), program.keywords)
        buffers[name] = packed
        func, head, keywords = programs[name]
        out = np.asarray(func(*head, packed, **keywords))
        first[name] = out[1 : 1 + 3 * n_atoms].reshape(n_atoms, 3)
    names = list(variants)
    times = {name: [] for name in names}
    for i in range(args.rounds):
        turn = i % len(names)
        for name in names[turn:] + names[:turn]:
            func, head, keywords = programs[name]
            start = time.perf_counter()
            np.asarray(func(*head, buffers[name], **keywords))
            times[name].append((time.perf_counter() - start) * 1e3)
    rows = []
    for name in names:
        row = {
            "variant": name,
            "edges": int(variants[name].senders.shape[0]),
            "node_capacity": int(variants[name].positions.shape[0]),
            "median_ms": float(np.median(times[name])),
            "paired_minus_as_built_ms": float(
                np.median(np.subtract(times[name], times["as_built"]))
            ),
            "max_force_difference": float(np.abs(first[name] - first["as_built"]).max()),
        }
        rows.append(row)
        print(f"[variant] {json.dumps(row)}", flush=True)
    record = {
        "script": "benchmarks/calculator_variants.py",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "device": str(device.device_kind),
        "jax": jax.__version__,
        "command": " ".join(sys.argv),
        "compact_width": calculator._compact_width,
        "rows": rows,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
