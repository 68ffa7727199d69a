"""What a Hessian label costs a teacher, with and without one evaluation for both (issue 15).

    python benchmarks/hessian_label_cost.py --directions 4 \\
        --output benchmarks/results/hessian_label_cost_cpu.json
    python benchmarks/hessian_label_cost.py --teacher sevennet:7net-0 --system si64 \\
        --directions 2 --output benchmarks/results/hessian_label_cost_sevennet_cpu.json

A teacher with ``label_with_hessian`` gives a frame's energy, forces (and stress) and
``H·u`` from one evaluation instead of a label call beside a Hessian call: FeNNol from
one preprocessing and one ``jax.linearize``, SevenNet and Orb conservative from the
forward pass whose force graph the double backward differentiates. This times, per
frame, on rattled frames (ethanol, the molecule of docs/results/hessian.md, by default
with the ANI-1x ensemble of ../shared; or 64-atom Si): ``plain`` (``teacher.label``),
``separate`` and
``merged`` (``labels_and_hessian(..., merged=False / True)``), in rounds that rotate
their order, after a first pass that compiles. Reported: ms per frame (median over
rounds of each round's mean) and each Hessian variant's cost in plain frames, the
``c`` of the equal-cost comparisons.
"""

from __future__ import annotations

import argparse
import json
import os
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
    parser.add_argument(
        "--teacher",
        default=f"fennol:{SHARED / 'ani1x_model*.fnx'}",
        help="teacher spec, as in a config (default: the FeNNol ANI-1x ensemble of ../shared)",
    )
    parser.add_argument("--system", choices=("ethanol", "si64"), default="ethanol")
    parser.add_argument("--device", default="cpu", help="the teacher's device (cpu, cuda)")
    parser.add_argument("--directions", default="4", help="K, or several: 2,4")
    parser.add_argument(
        "--hvp-batched",
        default="auto",
        help="torch teachers' double backward: auto, on (one vmapped pass), off (one pass "
        "per direction), or several: on,off",
    )
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args()
    teacher = load_teacher(args.teacher, device=args.device)
    if args.system == "ethanol":
        structure = ase.build.molecule("CH3CH2OH")
    else:
        structure = ase.build.bulk("Si", "diamond", a=5.43, cubic=True).repeat(2)
    rng = np.random.default_rng(0)
    frames = []
    for _ in range(args.frames):
        atoms = structure.copy()
        atoms.positions += rng.normal(scale=0.05, size=atoms.positions.shape)
        frames.append(atoms)
    runs = []
    for k in (int(k) for k in args.directions.split(",")):
        directions = [random_directions(len(structure), k, rng) for _ in frames]
        for batched in args.hvp_batched.split(","):
            os.environ["JAXDISTILL_HVP_BATCHED"] = {"on": "1", "off": "0"}.get(batched, "")
            runs.append(
                {
                    "directions": k,
                    "hvp_batched": batched,
                    **timed(teacher, frames, directions, args.rounds),
                }
            )
            print(
                json.dumps(
                    {
                        key: runs[-1][key]
                        for key in (
                            "directions",
                            "hvp_batched",
                            "ms_per_frame",
                            "cost_in_plain_frames",
                        )
                    }
                )
            )
    record = header(
        teacher=teacher.name,
        teacher_spec=args.teacher,
        system=args.system,
        teacher_device=args.device,
        frames=len(frames),
        runs=runs,
    )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(record, indent=1) + "\n")


def timed(teacher, frames: list, directions: list, rounds: int) -> dict:
    """ms per frame of ``plain``, ``separate`` and ``merged`` (medians over rounds that
    rotate their order, after a pass that compiles) and the two costs in plain frames."""
    variants = {
        "plain": lambda: teacher.label(frames),
        "separate": lambda: labels_and_hessian(teacher, frames, directions, merged=False),
        "merged": lambda: labels_and_hessian(teacher, frames, directions, merged=True),
    }
    for run in variants.values():
        run()  # compiles
    times = {name: [] for name in variants}
    names = list(variants)
    for r in range(rounds):
        for name in names[r % 3 :] + names[: r % 3]:
            began = time.perf_counter()
            variants[name]()
            times[name].append((time.perf_counter() - began) / len(frames) * 1e3)
    median = {name: float(np.median(values)) for name, values in times.items()}
    return {
        "ms_per_frame": median,
        "ms_per_frame_rounds": times,
        "cost_in_plain_frames": {k: median[k] / median["plain"] for k in ("separate", "merged")},
    }


if __name__ == "__main__":
    main()
