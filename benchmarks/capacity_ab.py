"""The ASE calculator's graph capacities before and after 2026-12-06, side by side.

Before, node and edge capacities came from 2-per-octave buckets and receiver-major slot
counts from power-of-two buckets (512 Si atoms: 768 node rows of 48 slots); after, from
8-per-octave buckets (edges with 5 % head-room) and the largest neighbour count + 10 %
rounded to a multiple of 4 (576 rows of 40 slots). Both calculators live in one
process; their ``get_forces`` calls alternate, with the atoms moved before every call
as MD does, so both see the same seconds of the machine's life. Forces of the two are
compared (they differ by float rounding only).

    python benchmarks/capacity_ab.py --output results/capacity_ab_h200.json
    python benchmarks/capacity_ab.py --quick --output /tmp/capacity_ab.json   # CPU check
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
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from student_call import stats, structures

from jaxdistill import create_student
from jaxdistill.graph import bucket_capacity
from jaxdistill.md import ase_calculator


def slots_before(neighbours) -> int:
    """The slot count before 2026-12-06: a power-of-two bucket of the largest count."""
    largest = max(int(np.bincount(nb.receivers).max()) for nb in neighbours if len(nb.receivers))
    return bucket_capacity(largest, minimum=4)


def edges_before(n_edges: int) -> int:
    """The edge capacity before 2026-12-06: a 2-per-octave bucket, no head-room."""
    return bucket_capacity(n_edges + 1)


#: name -> (CAPACITY_PER_OCTAVE, slot function, edge-capacity function)
VARIANTS = {
    "before": (2, slots_before, edges_before),
    "after": (8, ase_calculator.slots_for, ase_calculator._edge_capacity),
}


def build(student, atoms, device: str, layout: str, variant: str):
    """A calculator that sized its graph with ``variant``'s capacities (they are read
    only when the graph is built, so restoring the module's values afterwards keeps
    each calculator's own)."""
    per_octave, slots, edges = VARIANTS[variant]
    names = ("CAPACITY_PER_OCTAVE", "slots_for", "_edge_capacity")
    saved = [getattr(ase_calculator, name) for name in names]
    for name, value in zip(names, (per_octave, slots, edges), strict=True):
        setattr(ase_calculator, name, value)
    try:
        calculator = ase_calculator.StudentCalculator(student, device=device, edge_layout=layout)
        copy = atoms.copy()
        copy.calc = calculator
        forces = copy.get_forces()  # builds the graph and compiles
    finally:
        for name, value in zip(names, saved, strict=True):
            setattr(ase_calculator, name, value)
    return copy, calculator, forces


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--systems", default="si64,si512,water648,si1000")
    parser.add_argument("--architectures", default="painn,schnet")
    parser.add_argument("--layouts", default="auto")
    parser.add_argument("--repeats", type=int, default=300)
    parser.add_argument("--budget-seconds", type=float, default=200.0)
    parser.add_argument("--quick", action="store_true", help="Si 64 only, few calls")
    args = parser.parse_args()
    device = "gpu" if any(d.platform == "gpu" for d in jax.devices()) else "cpu"
    systems = ["si64"] if args.quick else args.systems.split(",")
    repeats = 10 if args.quick else args.repeats
    record = {
        "benchmark": "capacity_ab",
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "device": str(jax.devices()[0].device_kind),
        "jax": jax.__version__,
        "command": " ".join(sys.argv),
        "rows": [],
    }
    start = time.perf_counter()
    available = structures(args.quick)
    for name in systems:
        atoms = available[name]
        for architecture in args.architectures.split(","):
            for layout in args.layouts.split(","):
                if time.perf_counter() - start > args.budget_seconds:
                    record.setdefault("skipped", []).append(f"{name}/{architecture}/{layout}")
                    continue
                species = sorted(set(atoms.get_chemical_symbols()))
                student = create_student(architecture, species, cutoff=5.0)
                built = {v: build(student, atoms, device, layout, v) for v in VARIANTS}
                row = {
                    "system": name,
                    "n_atoms": len(atoms),
                    "architecture": architecture,
                    "device": device,
                    "edge_layout": layout,
                    "force_max_difference": float(
                        np.abs(built["before"][2] - built["after"][2]).max()
                    ),
                }
                for variant, (_, calculator, _) in built.items():
                    row[variant] = {
                        "node_capacity": calculator._node_capacity,
                        "edge_capacity": calculator._edge_capacity,
                        "slots": calculator._slots,
                        "edges_computed": len(calculator._graph.senders),
                    }
                base = atoms.positions.copy()
                rng = np.random.default_rng(0)
                times = {variant: [] for variant in built}
                for i in range(repeats):
                    order = list(built) if i % 2 == 0 else list(built)[::-1]
                    for variant in order:
                        copy = built[variant][0]
                        copy.positions = base + rng.normal(scale=0.01, size=base.shape)
                        t0 = time.perf_counter()
                        copy.get_forces()
                        times[variant].append(time.perf_counter() - t0)
                for variant in built:
                    row[variant].update(stats(times[variant]))
                row["after_over_before"] = row["after"]["median_ms"] / row["before"]["median_ms"]
                record["rows"].append(row)
                print(
                    f"[capacity] {architecture} {name} {layout}: before "
                    f"{row['before']['median_ms']:.3f} ms ({row['before']['edges_computed']} "
                    f"edges), after {row['after']['median_ms']:.3f} ms "
                    f"({row['after']['edges_computed']}), |dF| {row['force_max_difference']:.1e}",
                    flush=True,
                )
                args.output.parent.mkdir(parents=True, exist_ok=True)
                args.output.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
