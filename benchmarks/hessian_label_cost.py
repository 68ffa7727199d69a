"""What a Hessian label costs a teacher, with and without one evaluation for both (issue 15).

    python benchmarks/hessian_label_cost.py --directions 4 \\
        --output benchmarks/results/hessian_label_cost_cpu.json

FeNNol gives a frame's energy, forces and ``H·u`` from one preprocessing and one
``jax.linearize`` (``label_with_hessian``) instead of a label call beside a Hessian call.
This times, per frame, on rattled ethanol (the molecule of docs/results/hessian.md) and
the ANI-1x ensemble of ../shared: ``plain`` (``teacher.label``), ``separate`` and
``merged`` (``labels_and_hessian(..., merged=False / True)``), in rounds that rotate
their order, after a first pass that compiles. Reported: ms per frame (median over
rounds of each round's mean) and each Hessian variant's cost in plain frames, the
``c`` of the equal-cost comparisons.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import ase.build
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from records import header

from jaxdistill.teachers import load_teacher
from jaxdistill.teachers.hessian import labels_and_hessian, random_directions

SHARED = Path(__file__).resolve().parents[2] / "shared" / "teachers" / "fennol-ani1x"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=str(SHARED / "ani1x_model*.fnx"))
    parser.add_argument("--directions", type=int, default=4)
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args()
    teacher = load_teacher(f"fennol:{args.models}")
    molecule = ase.build.molecule("CH3CH2OH")
    rng = np.random.default_rng(0)
    frames = []
    for _ in range(args.frames):
        atoms = molecule.copy()
        atoms.positions += rng.normal(scale=0.05, size=atoms.positions.shape)
        frames.append(atoms)
    directions = [random_directions(len(molecule), args.directions, rng) for _ in frames]
    variants = {
        "plain": lambda: teacher.label(frames),
        "separate": lambda: labels_and_hessian(teacher, frames, directions, merged=False),
        "merged": lambda: labels_and_hessian(teacher, frames, directions, merged=True),
    }
    for run in variants.values():
        run()  # compiles
    times = {name: [] for name in variants}
    names = list(variants)
    for r in range(args.rounds):
        for name in names[r % 3 :] + names[: r % 3]:
            start = time.perf_counter()
            variants[name]()
            times[name].append((time.perf_counter() - start) / len(frames) * 1e3)
    median = {name: float(np.median(values)) for name, values in times.items()}
    record = header(
        teacher=teacher.name,
        frames=len(frames),
        directions=args.directions,
        ms_per_frame=median,
        ms_per_frame_rounds=times,
        cost_in_plain_frames={k: median[k] / median["plain"] for k in ("separate", "merged")},
    )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps({k: record[k] for k in ("ms_per_frame", "cost_in_plain_frames")}))


if __name__ == "__main__":
    main()
