"""Which compacted width an MD step takes as an untrained student heats Si.

``md_speed.py``'s user NVE loop (300 K start, 1 fs, a ``Dense`` list at capacity 1.6,
``compact_rows=True``) runs in chunks; after each chunk this records the temperature
and the most pairs within the cutoff that any atom has (``largest``), beside the
compacted widths of :class:`jaxdistill.md.jaxmd.RowCompaction`. A step whose
``largest`` exceeds every width runs on the full list. Runs on any device::

    python benchmarks/compact_widths.py --atoms 512 --chunks 12 --steps 25 \\
        --output benchmarks/results/compact_widths_cpu.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from ase import units

sys.path.insert(0, str(Path(__file__).parent))
from md_speed import FUSED_STUDENTS, nve_chunk
from structures import silicon_cell

from jaxdistill import create_student
from jaxdistill.md import jaxmd

CAPACITY = 1.6
CUTOFF = 5.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--atoms", type=int, default=512)
    parser.add_argument("--student", default="painn 64x3", choices=sorted(FUSED_STUDENTS))
    parser.add_argument("--chunks", type=int, default=12)
    parser.add_argument("--steps", type=int, default=25, help="steps per chunk")
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args()
    from jax_md import space

    atoms = silicon_cell(args.atoms)
    n_atoms = len(atoms)
    box = jnp.asarray(np.diag(atoms.cell.array), jnp.float32)
    displacement, _ = space.periodic(box)
    architecture, hyper = FUSED_STUDENTS[args.student]
    student = create_student(architecture, ["Si"], cutoff=CUTOFF, **hyper)
    neighbor_fn, energy_fn = jaxmd.jax_md_potential(
        student, displacement, box, atoms.numbers, format="dense",
        capacity_multiplier=CAPACITY, compact_rows=True,
    )  # fmt: skip
    chunk, state, nbrs = nve_chunk(neighbor_fn, energy_fn, atoms, args.steps)
    compaction = jaxmd.RowCompaction(jaxmd.DEFAULT_DR_THRESHOLD, CAPACITY)
    pairwise = jax.vmap(displacement)

    @jax.jit
    def largest(positions, nbrs):
        table = jaxmd.receiver_major_table(nbrs, n_atoms)
        padded = jnp.concatenate([positions, jnp.zeros_like(positions[:1])])
        # Only the count is wanted: the narrowest table will do.
        return jaxmd.compact_table(table, padded, pairwise, CUTOFF, 1)[1]

    rows = []
    for index in range(args.chunks):
        start = time.perf_counter()
        state, nbrs = chunk(state, nbrs)
        if nbrs.did_buffer_overflow:
            nbrs = neighbor_fn.allocate(state.position)
        kinetic = float(jnp.sum(jnp.sum(state.momentum**2, axis=1) / (2 * state.mass[:, 0])))
        widths = compaction.widths(nbrs.idx.shape[1], CUTOFF)
        row = {
            "step": (index + 1) * args.steps,
            "temperature_kelvin": 2 * kinetic / (3 * n_atoms * units.kB),
            "largest": int(largest(state.position, nbrs)),
            "slots": int(nbrs.idx.shape[1]),
            "widths": list(widths),
            "seconds": time.perf_counter() - start,
        }
        row["branch"] = sum(row["largest"] > w for w in widths)
        rows.append(row)
        print(row, flush=True)
    record = {
        "benchmark": "compact_widths",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
        "device": str(jax.devices()[0]),
        "host": platform.node(),
        "student": args.student,
        "n_atoms": n_atoms,
        "capacity_multiplier": CAPACITY,
        "rows": rows,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
