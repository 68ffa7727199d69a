"""Does learning the teacher's curvature pay, at equal teacher cost? (issue 15)

    python benchmarks/hessian_distillation.py --system si --device cuda \
        --output benchmarks/results/hessian_si_h200.json

One command does the whole comparison, writing the JSON after every phase (a run cut
short keeps what it measured):

1. sample training frames with the teacher (Langevin MD at the system's training
   temperatures, plus rattles and strains for crystals) and test frames at a
   temperature never sampled (Si: 600 K; molecules: 450 K);
2. label every training frame with energies and forces (store ``full``), the test
   frames likewise (store ``test``), and every training frame again with ``K``
   Hessian-vector products as well (store ``hessian_all``),
   timing the teacher per frame: the cost of a frame with Hessian labels in teacher
   force calls is ``c = t_hessian_frame / t_force_frame``;
3. train, from the same seed and schedule:
   - ``force_full``: force-only on all ``N`` frames;
   - ``hessian``: a random ``N / c`` of the frames with their Hessian labels (equal
     teacher cost);
   - ``force_same_frames``: force-only on that same subset (what the curvature adds);
   - ``force_third``: force-only on ``N / 3`` frames (the "same error from a third of
     the frames" comparison);
   - ``hessian_all_frames``: all ``N`` frames with their Hessian labels (what the
     curvature adds at ``c`` times the teacher cost);
   - ``force_more_frames`` (with ``--more-frames F``): force-only on ``c N`` frames,
     the ``N`` and more from the same trajectories (``F`` times as many MD frames are
     sampled per temperature and the first ones make the ``N``), so at the teacher
     cost of ``hessian_all_frames``: equal cost the other way, with every frame
     carrying Hessian labels instead of a subset;
4. evaluate every student's force and energy error on the unseen-temperature frames,
   and its curvature against the teacher's: phonons of the crystal (band path MAE, THz)
   or the molecule's harmonic frequencies (cm⁻¹), :mod:`jaxdistill.curvature`;
5. with ``--committee K``, train ``K - 1`` more force-only students on all frames from
   other seeds and rank the test frames by the committee's disagreement against the
   true error (Spearman, issue 19).

``--seed 0,1`` trains every student once per seed on the same frames and labels (the
further seeds' students are named ``NAME_seedS``), so a seed's spread is measured
without sampling and labelling again.

The systems: ``si`` (SevenNet-0, 64-atom diamond Si, 300/900/1500 K MD) and ``ethanol``
(FeNNol ANI-1x ensemble, ``--fennol-glob``, 300/600/900 K MD at 0.5 fs).
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SYSTEMS = {
    "si": {
        "teacher": "sevennet:7net-0",
        "structure": {
            "build": "bulk",
            "args": {"name": "Si", "crystalstructure": "diamond", "a": 5.43, "cubic": True},
            "repeat": [2, 2, 2],
        },
        "temperatures": [300, 900, 1500],
        "test_temperature": 600,
        "timestep_fs": 2.0,
        "stride": 4,
        "extra": {
            "rattle": {"count": 40, "sigma_angstrom": 0.1},
            "strain": {"count": 40, "max_strain": 0.04, "sigma_angstrom": 0.04},
        },
        "train": {
            "model": {"features": 64, "num_layers": 3, "num_radial": 16},
            "cutoff_angstrom": 5.0,
            "batch_size": 8,
            "learning_rate": 2e-3,
            "final_learning_rate": 2e-5,
            "forces_weight": 20.0,
            "energy_weight": 300.0,
        },
    },
    "ethanol": {
        "teacher": None,  # --fennol-glob
        "structure": {
            "build": "molecule",
            "args": {"name": "CH3CH2OH"},
            "vacuum_angstrom": 6.0,
        },
        "temperatures": [300, 600, 900],
        "test_temperature": 450,
        "timestep_fs": 0.5,
        "stride": 10,
        "extra": {"rattle": {"count": 40, "sigma_angstrom": 0.05}},
        "train": {
            "model": {"features": 64, "num_layers": 3},
            "cutoff_angstrom": 5.0,
            "batch_size": 16,
            "learning_rate": 2e-3,
            "final_learning_rate": 2e-5,
            "forces_weight": 50.0,
        },
    },
}


def _sampling(
    system: dict,
    temperatures: list[float],
    frames: int,
    seed: int,
    extra: bool,
    small: bool,
    md_teacher: str | None = None,
):
    structure = dict(system["structure"])
    if small:  # a smoke run on a CPU: the primitive-size cell, short equilibration
        structure.pop("repeat", None)
    config = {
        "seed": seed,
        "structures": [structure],
        "md": {
            "temperatures_kelvin": temperatures,
            "frames_per_temperature": frames,
            "stride": system["stride"],
            "equilibration_steps": 10 if small else 100,
            "timestep_fs": system["timestep_fs"],
            "friction_per_fs": 0.02,
        },
        **(system["extra"] if extra else {}),
    }
    if md_teacher is not None:  # cheaper MD; the labels still come from the teacher
        config["md"]["teacher"] = md_teacher
    return config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--system", choices=sorted(SYSTEMS), default="si")
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--workdir", type=Path, default=Path("runs/hessian"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--frames-per-temperature", type=int, default=150)
    parser.add_argument("--test-frames", type=int, default=40)
    parser.add_argument("--directions", type=int, default=4)
    parser.add_argument(
        "--hessian-method", default="auto", help="auto, autodiff or finite-difference"
    )
    parser.add_argument("--hessian-weight", type=float, default=None)
    parser.add_argument(
        "--features", type=int, default=None, help="student channels (default: the system's)"
    )
    parser.add_argument(
        "--cost-ratio",
        type=float,
        default=None,
        help="use this teacher cost of a Hessian frame (in force frames) for the "
        "equal-cost subset instead of the one measured in the run (to compare runs on "
        "the same frames; the measured one is still recorded)",
    )
    parser.add_argument(
        "--more-frames",
        type=float,
        default=0.0,
        help="sample this many times the MD frames per temperature, so that the student "
        "force_more_frames can train on c x N frames (>= the expected cost c; 0: off)",
    )
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument(
        "--seed",
        default="0",
        help="training seed of every student (initial parameters, batch order, the "
        "Hessian directions drawn per step); the frames do not depend on it. Several, "
        "comma-separated: each further seed S trains every student again on the same "
        "frames and labels as NAME_seedS (select them with --only like the others)",
    )
    parser.add_argument(
        "--temperatures",
        default=None,
        help="comma-separated teacher MD temperatures of the training frames, K "
        "(default: the system's)",
    )
    parser.add_argument("--fennol-glob", default="../shared/teachers/fennol-ani1x/ani1x_model*.fnx")
    parser.add_argument("--small", action="store_true", help="a quick smoke run on a CPU")
    parser.add_argument("--committee", type=int, default=0, help="committee size (0: none)")
    parser.add_argument("--supercell", type=int, default=3, help="phonon supercell (crystals)")
    parser.add_argument(
        "--only", default="", help="comma-separated students to train (default: all)"
    )
    args = parser.parse_args()

    from jaxdistill.data import LabelStore
    from jaxdistill.data.store import copy_frames
    from jaxdistill.evaluate import evaluate
    from jaxdistill.labelling import label
    from jaxdistill.sampling import sample
    from jaxdistill.teachers import load_teacher
    from jaxdistill.train import train

    system = SYSTEMS[args.system]
    if args.features is not None:
        model = {**system["train"]["model"], "features": args.features}
        system = {**system, "train": {**system["train"], "model": model}}
    if args.temperatures:
        system = {**system, "temperatures": [float(t) for t in args.temperatures.split(",")]}
    spec = system["teacher"] or f"fennol:{args.fennol_glob}"
    # Molecules: the MD runs on one ensemble member (8x cheaper per step), as in
    # configs/molecules-fennol.yaml; every kept frame is labelled by the whole ensemble.
    md_teacher = None if system["teacher"] else f"fennol:{args.fennol_glob.replace('*', '0')}"
    seeds = [int(x) for x in args.seed.split(",") if x]
    work = args.workdir / args.system
    work.mkdir(parents=True, exist_ok=True)
    result: dict = {
        "benchmark": "hessian_distillation",
        "date": datetime.date.today().isoformat(),
        "command": " ".join(sys.argv),
        "python": platform.python_version(),
        "system": args.system,
        "teacher": spec,
        "directions": args.directions,
        "seed": seeds[0],
        "seeds": seeds,
    }

    def save() -> None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(result, indent=2, default=str) + "\n")

    import jax

    result["jax_devices"] = [str(d) for d in jax.devices()]
    teacher = load_teacher(spec, device=args.device)

    # 1. Frames.
    start = time.perf_counter()
    per_temperature = args.frames_per_temperature
    if args.more_frames > 1:
        per_temperature = int(np.ceil(args.more_frames * args.frames_per_temperature))
    sampled_frames = sample(
        _sampling(system, system["temperatures"], per_temperature, 0, True, args.small, md_teacher),
        teacher=teacher,
    )
    # The N frames of every student but force_more_frames: each temperature's first
    # frames (a prefix of its trajectory) and every rattle and strain.
    base = first_md_frames(sampled_frames, args.frames_per_temperature)
    train_frames = [sampled_frames[i] for i in base]
    more_sampled = len(sampled_frames) > len(train_frames)
    test_frames = sample(
        _sampling(
            system, [system["test_temperature"]], args.test_frames, 1, False, args.small, md_teacher
        ),
        teacher=teacher,
    )
    result["sampling"] = {
        "train_frames": len(train_frames),
        "sampled_frames": len(sampled_frames),
        "test_frames": len(test_frames),
        "seconds": time.perf_counter() - start,
    }
    save()

    # 2. Labels, timed per frame.
    def timed_label(frames, path, **kwargs):
        path.unlink(missing_ok=True)
        start = time.perf_counter()
        label(teacher, frames, path, progress=False, **kwargs)
        return (time.perf_counter() - start) / len(frames)

    full, test = work / "full.h5", work / "test.h5"
    sampled = work / "sampled.h5"
    if more_sampled:
        t_force = timed_label(sampled_frames, sampled)
        copy_frames(sampled, full, base)
    else:
        t_force = timed_label(train_frames, full)
    timed_label(test_frames, test)
    # Every training frame is labelled with Hessian-vector products too, so that the
    # cost ratio c is measured over the same frames (teachers that compile per shape,
    # like FeNNol, pay their compilations in both); the equal-cost student then trains
    # on a random N / c of them.
    hessian_all = work / "hessian_all.h5"
    t_hessian = timed_label(
        train_frames,
        hessian_all,
        hessian_directions=args.directions,
        hessian_method=args.hessian_method,
    )
    # Steady state: the same first frames again, every shape compiled by now (a long
    # labelling amortises the compilations; FeNNol compiles once per neighbour count).
    again = train_frames[: min(48, len(train_frames))]
    t_force_steady = timed_label(again, work / "again.h5")
    t_hessian_steady = timed_label(
        again,
        work / "again_hessian.h5",
        hessian_directions=args.directions,
        hessian_method=args.hessian_method,
    )
    cost = t_hessian_steady / t_force_steady
    n_full = len(train_frames)
    n_equal = max(8, int(n_full / (args.cost_ratio or cost)))
    rng = np.random.default_rng(0)
    subset = np.sort(rng.permutation(n_full)[:n_equal])
    hessian = work / "hessian.h5"
    copy_frames(hessian_all, hessian, subset)
    with LabelStore(hessian) as store:
        hessian_info = store.hessian
    same = work / "same_frames.h5"
    copy_frames(full, same, subset)
    more = None
    if more_sampled:
        n_more = round(n_full * (args.cost_ratio or cost))
        extra = max(0, n_more - n_full)
        md_groups = len(system["temperatures"])
        more_indices = first_md_frames(
            sampled_frames, args.frames_per_temperature + int(np.ceil(extra / md_groups))
        )
        more = work / "more_frames.h5"
        copy_frames(sampled, more, more_indices)
        result["more_frames"] = {
            "wanted": n_more,
            "frames": len(more_indices),
            "capped_by_sampling": len(more_indices) < n_more,
        }
    n_third = max(8, n_full // 3)
    third = work / "third.h5"
    copy_frames(full, third, np.sort(rng.permutation(n_full)[:n_third]))
    result["labels"] = {
        "seconds_per_force_frame": t_force,
        "seconds_per_hessian_frame": t_hessian,
        "hessian_frame_cost_in_force_frames_first_pass": t_hessian / t_force,
        "seconds_per_force_frame_steady": t_force_steady,
        "seconds_per_hessian_frame_steady": t_hessian_steady,
        "hessian_frame_cost_in_force_frames": cost,
        "cost_ratio_used_for_equal_cost": args.cost_ratio or cost,
        "hessian": hessian_info,
        "n_full": n_full,
        "n_equal_cost": n_equal,
        "n_third": n_third,
    }
    save()

    # 3-4. Students.
    base = {
        **system["train"],
        "steps": args.steps,
        "validation_interval": max(args.steps // 8, 1),
        "checkpoint_interval": args.steps,
        "patience": None,
        "split": {"train": 0.9, "validation": 0.1},
        "seed": seeds[0],
    }
    hessian_overrides = (
        {} if args.hessian_weight is None else {"hessian_weight": args.hessian_weight}
    )
    runs = {
        "force_full": (full, {}),
        "hessian": (hessian, hessian_overrides),
        "force_same_frames": (same, {}),
        "force_third": (third, {}),
        "hessian_all_frames": (hessian_all, hessian_overrides),
    }
    if more is not None:
        runs["force_more_frames"] = (more, {})
    # Further seeds, then committee members (force-only on all frames, seeds 1..K-1):
    # one name per student and seed, so a committee member a --seed list already
    # trains is trained once.
    for seed in seeds[1:]:
        for name, (store, overrides) in list(runs.items()):
            runs[f"{name}_seed{seed}"] = (store, {**overrides, "seed": seed})
    committee_only = set()
    for seed in range(1, args.committee):
        if f"force_full_seed{seed}" not in runs:
            runs[f"force_full_seed{seed}"] = (full, {"seed": seed})
            committee_only.add(f"force_full_seed{seed}")
    only = [x for x in args.only.split(",") if x]
    result["students"] = {}
    students = {}
    for name, (store, overrides) in runs.items():
        if only and name not in only:
            continue
        start = time.perf_counter()
        student = train(store, work / name, {**base, **overrides}, progress=False)
        seconds = time.perf_counter() - start
        students[name] = student
        metrics = evaluate(student, test, split="all", plots=False)
        training = student.metadata["training"]
        result["students"][name] = {
            "store": store.name,
            "train_frames": student.metadata["split"]["sizes"]["train"],
            "hessian_frames": student.metadata["split"].get("hessian_frames", 0),
            "hessian_weight": student.metadata["split"].get("hessian_weight", 0.0),
            "train_seconds": seconds,
            "steps": training["steps_completed"],
            "structures_per_second": training.get("structures_per_second_this_call"),
            "validation": training.get("last_validation"),
            "test_force_mae_meV_per_A": metrics["forces"]["mae_meV_per_A"],
            "test_energy_mae_meV_per_atom": metrics["energy"]["mae_meV_per_atom"],
            "test": {k: metrics[k] for k in ("frames", "energy", "forces") if k in metrics},
        }
        if name not in committee_only:
            result["students"][name]["curvature"] = curvature(
                system, student, teacher, args.supercell, args.small
            )
        save()
    if args.committee > 1:
        members = [students["force_full"]] + [
            students[f"force_full_seed{k}"] for k in range(1, args.committee)
        ]
        result["committee"] = committee_ranking(members, test)
        save()
    print(json.dumps(result, indent=2, default=str))


def first_md_frames(frames: list, per_temperature: int) -> list[int]:
    """Indices, in order, of each MD temperature's first ``per_temperature`` frames and
    of every frame of the other samplers (initial, rattle, strain)."""
    seen: dict = {}
    kept = []
    for i, atoms in enumerate(frames):
        if atoms.info.get("sampler") == "md":
            key = atoms.info.get("temperature_kelvin")
            seen[key] = seen.get(key, 0) + 1
            if seen[key] > per_temperature:
                continue
        kept.append(i)
    return kept


def curvature(system: dict, student, teacher, supercell: int, small: bool) -> dict:
    """Phonons (crystal) or harmonic frequencies (molecule), student against teacher."""
    from jaxdistill.curvature import phonon_comparison, vibration_comparison
    from jaxdistill.md.ase_calculator import StudentCalculator
    from jaxdistill.sampling import load_structures

    structure = dict(system["structure"])
    structure.pop("repeat", None)
    atoms = load_structures(_config(structure))[0]
    start = time.perf_counter()
    calc = StudentCalculator(student)
    if system["structure"]["build"] == "bulk":
        size = 1 if small else supercell
        comparison = phonon_comparison(
            calc, teacher.as_calculator(), atoms, supercell=(size, size, size)
        )
    else:
        comparison = vibration_comparison(calc, teacher.as_calculator(), atoms)
    return {**comparison.metrics(), "seconds": time.perf_counter() - start}


def _config(structure: dict):
    from jaxdistill.config.sampling import SamplingConfig

    return SamplingConfig.from_dict({"structures": [structure]})


def committee_ranking(members, test: Path) -> dict:
    """Does the committee's disagreement rank the test frames by true force error?"""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from ensemble_ranking import frame_numbers, spearman, top_recall

    from jaxdistill.committee import load_committee
    from jaxdistill.data import LabelStore
    from jaxdistill.md.ase_calculator import StudentCalculator

    calculator = StudentCalculator(load_committee(members))
    with LabelStore(test) as store:
        frames = store.to_atoms()
    rows = [frame_numbers(calculator, atoms) for atoms in frames]
    table = {k: np.array([r[k] for r in rows]) for k in ("max_force_std", "max_force_error")}
    table["rms_force_std"] = np.array([r["rms_force_std"] for r in rows])
    table["force_rmse"] = np.array([r["force_rmse"] for r in rows])
    atom_std = np.concatenate([r["atom_std"] for r in rows])
    atom_error = np.concatenate([r["atom_error"] for r in rows])
    return {
        "members": len(members),
        "frames": len(rows),
        "spearman_max_force_std_vs_max_force_error": spearman(
            table["max_force_std"], table["max_force_error"]
        ),
        "spearman_rms_force_std_vs_force_rmse": spearman(
            table["rms_force_std"], table["force_rmse"]
        ),
        "spearman_atoms": spearman(atom_std, atom_error),
        "top10_recall": top_recall(table["max_force_std"], table["max_force_error"]),
        "mean_max_force_std_eV_per_A": float(table["max_force_std"].mean()),
        "mean_max_force_error_eV_per_A": float(table["max_force_error"].mean()),
    }


if __name__ == "__main__":
    main()
