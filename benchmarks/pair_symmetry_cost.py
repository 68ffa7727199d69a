"""What XLA's cost model says of a force evaluation with neighbour sums transposed by
symmetry (``JAXDISTILL_PAIR_SYMMETRY=on``) and by the reverse-edge map (``off``).

Per student and Si size: the jitted forces of ``jax_md_potential`` (rows compacted to
the cutoff, as "auto" does from 512 atoms) are lowered and compiled on the machine's
backend once per setting, and the compiled program's own accounting is recorded: bytes
accessed and flops (``compiled.cost_analysis()``), temporary buffer bytes
(``compiled.memory_analysis()``), how many fusions, gathers and scatters the
optimised HLO holds, and the bytes of per-edge float32 arrays (at least
``[n_edge, features]``) its fusions, gathers and products write. No timing: this says
how much memory traffic the program asks for, on any backend it is run on (the figures
are the backend's, so compare only within one).

    python benchmarks/pair_symmetry_cost.py --sizes 512,4096 \
        --output benchmarks/results/pair_symmetry_cpu/cost.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from edge_remat_ab import fresh_potential
from md_speed import FUSED_STUDENTS, versions
from structures import silicon_cell

from jaxdistill.models.edges import PAIR_SYMMETRY_ENV_VAR


def compiled_forces(label: str, atoms, setting: str, capacity: float, compact: bool):
    """The compiled forces program of one student and setting, its forces, and the
    neighbour list's slot count."""
    neighbor_fn, energy_fn = fresh_potential(
        label, atoms, capacity, compact, PAIR_SYMMETRY_ENV_VAR, setting
    )
    positions = jnp.asarray(atoms.positions, jnp.float32)
    nbrs = neighbor_fn.allocate(positions)
    forces = jax.jit(jax.grad(lambda r, n: -energy_fn(r, neighbor=n)))
    compiled = forces.lower(positions, nbrs).compile()
    return compiled, forces(positions, nbrs), int(np.prod(nbrs.idx.shape))


def per_edge_writes(text: str, n_edge: int, features: int) -> float:
    """Bytes of float32 results of at least ``[n_edge, features]`` elements that the
    program's fusions, gathers and matrix products write (each instruction once, in
    whichever branch it sits)."""
    total = 0
    for line in text.splitlines():
        match = re.match(r"\s*%\S+ = \(?f32\[([\d,]+)\]", line)
        if not match or not re.search(r"\b(fusion|gather|dot)\(", line):
            continue
        size = int(np.prod([int(d) for d in match.group(1).split(",")]))
        if size >= 0.9 * n_edge * features:
            total += 4 * size
    return float(total)


def accounting(compiled, n_edge: int, features: int) -> dict:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    memory = compiled.memory_analysis()
    text = compiled.as_text()
    return {
        "bytes_accessed": float(cost.get("bytes accessed", float("nan"))),
        "flops": float(cost.get("flops", float("nan"))),
        "temp_bytes": int(getattr(memory, "temp_size_in_bytes", -1)),
        "fusions": len(re.findall(r"= [^\n]*\bfusion\(", text)),
        "gathers": len(re.findall(r"\bgather\(", text)),
        "scatters": len(re.findall(r"\bscatter\(", text)),
        "per_edge_write_bytes": per_edge_writes(text, n_edge, features),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--students", default="painn 64x3,painn 128x3 + ZBL,schnet 64x3")
    parser.add_argument("--sizes", default="512,4096")
    parser.add_argument("--capacity-multiplier", type=float, default=1.25)
    parser.add_argument("--compact", default="true", help="rows compacted: true or false")
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args()
    record = {
        "script": "benchmarks/pair_symmetry_cost.py",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "device": str(jax.devices()[0].device_kind),
        "versions": versions(),
        "args": {k: str(v) for k, v in vars(args).items()},
        "rows": [],
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    for n in [int(s) for s in args.sizes.split(",") if s]:
        atoms = silicon_cell(n)
        for label in [s.strip() for s in args.students.split(",")]:
            row = {"student": label, "n_atoms": n}
            forces = {}
            features = FUSED_STUDENTS[label][1].get("features", 64)
            for setting in ("off", "on"):
                compiled, forces[setting], n_edge = compiled_forces(
                    label, atoms, setting, args.capacity_multiplier, args.compact == "true"
                )
                row[setting] = accounting(compiled, n_edge, features)
            row["n_edge_allocated"] = n_edge
            row["max_force_difference"] = float(
                np.abs(np.asarray(forces["on"]) - np.asarray(forces["off"])).max()
            )
            off, on = row["off"], row["on"]
            print(
                f"[cost] {label}/{n}: bytes {off['bytes_accessed'] / 1e6:.1f} -> "
                f"{on['bytes_accessed'] / 1e6:.1f} MB, temp {off['temp_bytes'] / 1e6:.1f} -> "
                f"{on['temp_bytes'] / 1e6:.1f} MB, fusions {off['fusions']} -> {on['fusions']}, "
                f"gathers {off['gathers']} -> {on['gathers']}, per-edge writes "
                f"{off['per_edge_write_bytes'] / 1e6:.0f} -> {on['per_edge_write_bytes'] / 1e6:.0f}"
                " MB, "
                f"dF {row['max_force_difference']:.1e}",
                flush=True,
            )
            record["rows"].append(row)
            args.output.write_text(json.dumps(record, indent=1))
    os.environ.pop(PAIR_SYMMETRY_ENV_VAR, None)


if __name__ == "__main__":
    main()
