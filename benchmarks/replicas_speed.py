"""Many replicas in one vmapped ``run_md``, on the list as allocated against rows
compacted to the pairs within the cutoff (issue 13: atom-steps per second).

    python benchmarks/replicas_speed.py --replicas 128 --steps 400 \\
        --output benchmarks/results/replicas_speed.json

For each system (64-atom Si with PaiNN 64×3; 1-hexanol, 21 atoms, with PaiNN 64×3 +
ZBL, whose repulsion keeps the untrained student from pulling it apart) and replica
count, ``run_md`` runs NVT Langevin (300 K, 0.5 fs, a ``Dense`` list at capacity 1.25)
with ``compact_rows=False`` and ``True``, in alternating order for ``--rounds`` rounds
(a device's speed drifts between minutes). Each run reports its µs per step over the
timed chunks (compilation excluded), atom-steps per second, chunks redone (a
neighbour-list overflow, or a compacted width too narrow) and reallocations.
Untrained students: speed does not depend on the weights.
"""

from __future__ import annotations

import os

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from records import header
from structures import hexanol, silicon_cell

from jaxdistill import create_student
from jaxdistill.md import run_md


def systems() -> dict:
    si = silicon_cell(64)
    molecule = hexanol()
    species = sorted(set(molecule.get_chemical_symbols()))
    return {
        "si64": (si, create_student("painn", ["Si"], cutoff=5.0)),
        "hexanol": (molecule, create_student("painn", species, cutoff=5.0, repulsion="zbl")),
    }


def one_run(atoms, student, replicas: int, steps: int, compact) -> dict:
    summary = run_md(
        student,
        atoms,
        replicas=replicas,
        ensemble="nvt",
        temperature_kelvin=300.0,
        timestep_fs=0.5,
        steps=steps,
        sample_every=max(1, steps // 4),
        chunk_steps=max(1, steps // 4),
        neighbor_format="dense",
        capacity_multiplier=1.25,
        compact_rows=compact,
        max_temperature_factor=1e9,
        bond_factor=None,  # an untrained student may pull a molecule apart
    )
    return {
        "compact_rows": compact,
        "us_per_step": summary.us_per_step,
        "atom_steps_per_second": summary.atom_steps_per_second,
        "chunks_redone": summary.chunks_redone,
        "neighbor_reallocations": summary.neighbor_reallocations,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--systems", default="si64,hexanol")
    parser.add_argument("--replicas", default="128", help="comma-separated replica counts")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args()
    record = header(rows=[])
    available = systems()
    for name in args.systems.split(","):
        atoms, student = available[name]
        for replicas in (int(r) for r in args.replicas.split(",")):
            for round_ in range(args.rounds):
                order = (False, True) if round_ % 2 == 0 else (True, False)
                for compact in order:
                    row = {"system": name, "n_atoms": len(atoms), "replicas": replicas}
                    row["round"] = round_
                    try:
                        row.update(one_run(atoms, student, replicas, args.steps, compact))
                    except Exception as error:  # record and go on
                        row["error"] = f"{type(error).__name__}: {error}"[:500]
                    record["rows"].append(row)
                    args.output.parent.mkdir(parents=True, exist_ok=True)
                    args.output.write_text(json.dumps(record, indent=1) + "\n")
                    print(
                        f"[replicas] {name} x{replicas} round {round_} compact={compact}: "
                        + (
                            row["error"]
                            if "error" in row
                            else f"{row['us_per_step']:.1f} us/step, "
                            f"{row['atom_steps_per_second']:.3g} atom-steps/s, "
                            f"redone {row['chunks_redone']}, "
                            f"reallocations {row['neighbor_reallocations']}"
                        ),
                        flush=True,
                    )
    medians = {}
    for row in record["rows"]:
        if "error" not in row:
            key = (row["system"], row["replicas"], row["compact_rows"])
            medians.setdefault(key, []).append(row["atom_steps_per_second"])
    for key, values in sorted(medians.items(), key=str):
        print(f"[median] {key}: {np.median(values):.3g} atom-steps/s", flush=True)


if __name__ == "__main__":
    main()
