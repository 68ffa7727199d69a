"""Per-call time of each student architecture through StudentCalculator.

    python benchmarks/student_call.py [--repeats 200] [--output benchmarks/results/F.json]

Default (untrained) students; timing does not depend on parameter values. Each call
moves the atoms slightly (as MD does), so the numbers include the host-side work of a
real MD step: padding positions, one jitted evaluation, one transfer back.
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
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from structures import hexanol, silicon_cell

import jaxdistill
from jaxdistill import StudentCalculator, create_student
from jaxdistill.diagnostics import count_compilations
from jaxdistill.models import ARCHITECTURES


def time_calls(atoms, calculator, repeats: int) -> dict:
    atoms.calc = calculator
    atoms.get_forces()  # compile
    rng = np.random.default_rng(0)
    times = []
    with count_compilations() as compiled:
        for _ in range(repeats):
            atoms.positions += rng.normal(scale=1e-3, size=atoms.positions.shape)
            start = time.perf_counter()
            atoms.get_forces()
            times.append(time.perf_counter() - start)
    times = np.array(times) * 1e3
    return {
        "n_atoms": len(atoms),
        "median_ms": float(np.median(times)),
        "p95_ms": float(np.percentile(times, 95)),
        "compilations_after_first": compiled.count,
        "neighbour_list_builds": calculator.neighbour_list_builds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    systems = {"si64": silicon_cell(64), "hexanol21": hexanol()}
    results = []
    for architecture in sorted(ARCHITECTURES):
        for name, atoms in systems.items():
            species = sorted(set(atoms.get_chemical_symbols()) | {"Si", "C", "H", "O"})
            student = create_student(architecture, species, cutoff=5.0)
            row = time_calls(atoms.copy(), StudentCalculator(student), args.repeats)
            row.update(architecture=architecture, system=name, parameters=student.num_parameters)
            results.append(row)
            print(json.dumps(row))
    record = {
        "benchmark": "student_call",
        "date": datetime.date.today().isoformat(),
        "device": str(jax.devices()[0].device_kind),
        "platform": platform.platform(),
        "cpu_count": __import__("os").cpu_count(),
        "jax": jax.__version__,
        "jaxdistill": jaxdistill.__version__,
        "command": " ".join(sys.argv),
        "results": results,
    }
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
