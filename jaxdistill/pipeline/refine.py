"""Active learning: let the student show where it is wrong, and teach it there.

A student trained on teacher MD only knows the configurations the teacher visited. Its
own MD drifts elsewhere (a crystal that melts too early, a bond stretched further than
the teacher ever stretched it) and can blow up there. Each round of :func:`refine`:

1. **explores**: student Langevin MD (``run_md``) from every MD starting structure at
   every exploration temperature; a run that blows up or breaks apart stops there;
2. **selects** frames: evenly spaced over each run, plus every one of the last
   ``frames_before_failure`` good frames of a failed run (the configurations that led
   the student astray);
3. **labels** them with the teacher into the round's own store (resumable);
4. **fine-tunes** the previous round's student on the original training split plus
   every round's frames so far (``train(..., extra_training=...)``); the original
   validation and test frames stay untouched, so later metrics remain comparable.

Everything lives under one folder, a subfolder per round; a killed run resumes at the
step it was in (exploration is redone whole, labelling and training resume)::

    refine/
      round-1/explore/*.extxyz   student trajectories (good frames only)
      round-1/explore.json       what each run did (steps, failure)
      round-1/frames.extxyz      selected frames
      round-1/labels.h5          their teacher labels
      round-1/student/           the fine-tuned student
      round-1/round.json         the round's summary (written last: the round is done)
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import ase
import ase.io
import numpy as np

from jaxdistill.config.active import ActiveLearningConfig
from jaxdistill.config.sampling import SamplingConfig
from jaxdistill.config.train import TrainConfig
from jaxdistill.md import MDInstabilityError, choose_engine, run_md
from jaxdistill.sampling import (
    CARRIED_INFO,
    derive_seed,
    load_structures,
    tag_frame,
)
from jaxdistill.student import Student, load_student

__all__ = [
    "exploration_temperatures",
    "explore",
    "refine",
    "select_frames",
]

ROUND_FILE = "round.json"


def exploration_temperatures(config: ActiveLearningConfig, sampling: SamplingConfig) -> list[float]:
    """The configured temperatures, or else every sampling MD temperature (sorted)."""
    if config.temperatures_kelvin:
        return [float(t) for t in config.temperatures_kelvin]
    md = sampling.md
    if md is None:
        raise ValueError(
            "active_learning needs temperatures_kelvin when the sampling has no md section"
        )
    temperatures = set(md.temperatures_kelvin)
    if md.melt is not None:
        temperatures |= set(md.melt.temperatures_kelvin)
    return sorted(float(t) for t in temperatures)


def select_frames(
    frames: Sequence[ase.Atoms], failed: bool, max_frames: int, before_failure: int
) -> list[ase.Atoms]:
    """Evenly spaced frames of one run, and all of the last few when the run failed.

    Args:
        frames: the run's good frames in time order (the starting frame excluded).
        failed: whether the run stopped on an instability.
        max_frames: at most this many frames in all.
        before_failure: how many of the last frames a failed run keeps whatever the
            spacing (capped by ``max_frames``).

    Returns:
        The chosen frames, in time order.
    """
    n = len(frames)
    tail = min(before_failure, max_frames, n) if failed else 0
    head = n - tail
    budget = max_frames - tail
    chosen = list(range(head, n))
    if head and budget > 0:
        if head <= budget:
            chosen = list(range(head)) + chosen
        else:
            # Evenly spaced, ending at the last frame before the tail.
            picks = np.unique(np.round(np.linspace(head - 1, 0, budget)).astype(int))
            chosen = sorted(picks.tolist()) + chosen
    return [frames[i] for i in chosen]


def explore(
    student: Student,
    sampling: SamplingConfig,
    config: ActiveLearningConfig,
    output_dir: str | Path,
    round_index: int,
    on_steps: Callable[[int], None] | None = None,
) -> tuple[list[ase.Atoms], list[dict[str, Any]]]:
    """Student MD from every MD starting structure at every exploration temperature.

    Args:
        student: the student to explore with.
        sampling: the sampling config (starting structures, MD defaults).
        config: the active-learning settings.
        output_dir: where the trajectories go (one extxyz per run).
        round_index: the round (1, 2, ...): part of every run's seed.
        on_steps: called with the number of MD steps each run did (progress).

    Returns:
        The selected frames (tagged ``sampler="active"``, with ``round``) and one
        record per run: structure, temperature, steps done, failure (None if stable).
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    md = sampling.md
    timestep = config.timestep_fs or (md.timestep_fs if md else 1.0)
    friction = config.friction_per_fs
    if friction is None:
        friction = md.friction_per_fs if md else 0.01
    temperatures = exploration_temperatures(config, sampling)
    selected: list[ase.Atoms] = []
    runs: list[dict[str, Any]] = []
    for atoms in md_structures(sampling):
        s_idx = int(atoms.info["structure_index"])
        start = atoms.copy()
        start.info = {}
        for t_idx, temperature in enumerate(temperatures):
            # run_md seeds a jax PRNG key from an int32
            seed = derive_seed(config.seed, round_index, s_idx, t_idx) % 2**31
            trajectory = output_dir / f"s{s_idx}-{temperature:g}K.extxyz"
            failure, done = None, config.steps
            try:
                run_md(
                    student,
                    start,
                    engine=choose_engine(config.engine, start, student.cutoff),
                    ensemble="nvt",
                    temperature_kelvin=temperature,
                    timestep_fs=timestep,
                    friction_per_fs=friction,
                    steps=config.steps,
                    seed=seed,
                    sample_every=config.stride,
                    chunk_steps=10 * config.stride,
                    trajectory=trajectory,
                )
            except MDInstabilityError as error:
                failure, done = error.reason, error.step
            if on_steps is not None:
                on_steps(config.steps)
            frames = ase.io.read(trajectory, index=":")[1:]  # [0] is the start itself
            chosen = select_frames(
                frames, failure is not None, config.max_frames_per_run, config.frames_before_failure
            )
            for frame in chosen:
                step = int(frame.info.get("step", -1))
                tagged = tag_frame(frame.copy(), "active", temperature, seed, s_idx)
                # charge and spin of the start, for teachers that need them
                tagged.info.update({k: atoms.info[k] for k in CARRIED_INFO if k in atoms.info})
                tagged.info.update(round=round_index, md_step=step)
                selected.append(tagged)
            runs.append(
                {
                    "structure_index": s_idx,
                    "structure": start.get_chemical_formula(),
                    "temperature_kelvin": temperature,
                    "steps": config.steps,
                    "steps_done": done,
                    "failure": failure,
                    "frames_kept": len(chosen),
                    "trajectory": trajectory.name,
                }
            )
    return selected, runs


def md_structures(sampling: SamplingConfig) -> list[ase.Atoms]:
    """The starting structures the sampling's MD generator applies to."""
    return [
        atoms
        for atoms in load_structures(sampling)
        if atoms.info.get("_generators") is None or "md" in atoms.info["_generators"]
    ]


def _errors_on(student: Student, store_path: Path) -> dict[str, float]:
    """The student's energy and force MAE on a store's frames (meV/atom, meV/Å)."""
    from jaxdistill.data.store import LabelStore
    from jaxdistill.evaluate import compute_metrics, predict_frames

    with LabelStore(store_path) as store:
        if len(store) == 0:
            return {"force_mae_mev_per_angstrom": math.nan, "energy_mae_mev_per_atom": math.nan}
        metrics = compute_metrics(predict_frames(student, store.arrays()))
    return {
        "force_mae_mev_per_angstrom": metrics["forces"]["mae_meV_per_A"],
        "energy_mae_mev_per_atom": metrics["energy"]["mae_meV_per_atom"],
    }


def refine(
    student_dir: str | Path,
    store: str | Path,
    teacher: Any,
    sampling: SamplingConfig,
    train_config: TrainConfig,
    config: ActiveLearningConfig,
    output_dir: str | Path,
    *,
    label_batch_size: int | None = None,
    console: Any | None = None,
) -> dict[str, Any]:
    """Run (or resume) the active-learning rounds.

    Args:
        student_dir: the trained student to start from.
        store: the label store it was trained on (its split is kept).
        teacher: the labelling :class:`~jaxdistill.teachers.Teacher`.
        sampling: the sampling config (starting structures, MD settings).
        train_config: the main training config (fine-tuning starts from it).
        config: the active-learning settings.
        output_dir: the refine folder (one subfolder per round).
        label_batch_size: frames per teacher call.
        console: a ``rich.console.Console`` for progress and messages.

    Returns:
        ``{"rounds": [per-round summaries], "student": final student directory}``.
    """
    from jaxdistill.labelling import label
    from jaxdistill.progress import progress_bar
    from jaxdistill.train import train

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    fine_tune = config.fine_tune_config(train_config)
    n_runs = len(exploration_temperatures(config, sampling)) * len(md_structures(sampling))
    previous = Path(student_dir)
    summaries: list[dict[str, Any]] = []
    stores: list[Path] = []
    for round_index in range(1, config.rounds + 1):
        folder = output_dir / f"round-{round_index}"
        round_file = folder / ROUND_FILE
        # what the fine-tuning reads: every labelled frame, or the confident ones
        training_file = folder / (
            "labels.h5" if config.max_force_disagreement is None else "confident.h5"
        )
        stores.append(training_file)
        if round_file.is_file():
            summaries.append(json.loads(round_file.read_text()))
            previous = folder / "student"
            continue
        folder.mkdir(parents=True, exist_ok=True)
        student = load_student(previous)
        frames_file = folder / "frames.extxyz"
        runs_file = folder / "explore.json"
        if not frames_file.is_file():
            with progress_bar(console) as bar:
                task = bar.add_task(f"round {round_index}: student MD", total=n_runs * config.steps)
                frames, runs = explore(
                    student,
                    sampling,
                    config,
                    folder / "explore",
                    round_index,
                    on_steps=lambda n, task=task: bar.update(task, advance=n),
                )
            runs_file.write_text(json.dumps(runs, indent=1) + "\n")
            partial = frames_file.with_suffix(".partial.extxyz")
            ase.io.write(partial, frames, format="extxyz")
            partial.replace(frames_file)
        runs = json.loads(runs_file.read_text())
        if console is not None:
            for run in runs:
                outcome = (
                    f"failed at step {run['steps_done']}: {run['failure']}"
                    if run["failure"]
                    else "stable"
                )
                console.print(
                    f"  round {round_index}: {run['structure']} at {run['temperature_kelvin']:g} K "
                    f"{outcome}; {run['frames_kept']} frames"
                )
        labelled = label(
            teacher,
            frames_file,
            folder / "labels.h5",
            batch_size=label_batch_size,
            console=console,
        )
        dropped = 0
        if config.max_force_disagreement is not None:
            dropped = _keep_confident(
                folder / "labels.h5", training_file, config.max_force_disagreement
            )
        # on the frames it trains on (not those left out as teacher-uncertain)
        before = _errors_on(student, training_file)
        refined = train(
            store,
            folder / "student",
            fine_tune,
            student=student,
            extra_training=stores,
            # The validation split holds none of the new frames: its best step can be
            # step 0, which would hand back the unchanged student.
            export="last",
            console=console,
        )
        after = _errors_on(refined, training_file)
        summary = {
            "round": round_index,
            "runs": runs,
            "failed_runs": sum(1 for run in runs if run["failure"]),
            "frames": labelled.n_frames,
            "frames_dropped_teacher_uncertain": dropped,
            "frames_forces_only": _forces_only(training_file, fine_tune.force_disagreement_limit),
            "training_frames_added_so_far": int(sum(_store_length(path) for path in stores)),
            "label_seconds_per_frame": labelled.seconds_per_frame,
            "student_before_on_new_frames": before,
            "student_after_on_new_frames": after,
            "fine_tune": {
                key: value
                for key, value in refined.metadata.get("training", {}).items()
                if key in ("steps_completed", "last_validation", "train_seconds", "devices")
            },
        }
        partial = round_file.with_suffix(".partial")
        partial.write_text(json.dumps(summary, indent=1, default=float) + "\n")
        partial.replace(round_file)
        summaries.append(summary)
        previous = folder / "student"
        if console is not None:
            console.print(
                f"round {round_index}: {summary['failed_runs']}/{len(runs)} runs failed; "
                f"{labelled.n_frames} frames labelled; student force MAE on them "
                f"{before['force_mae_mev_per_angstrom']:.1f} -> "
                f"{after['force_mae_mev_per_angstrom']:.1f} meV/Å (now trained on them)"
            )
    return {"rounds": summaries, "student": str(previous)}


def _keep_confident(labels: Path, destination: Path, limit: float) -> int:
    """Copy the frames whose teacher force disagreement is at most ``limit`` (or not
    known: a single teacher); returns how many were left out."""
    from jaxdistill.data.store import LabelStore, copy_frames

    with LabelStore(labels) as store:
        disagreement = store.arrays().force_disagreement
    keep = np.where(~(disagreement > limit))[0]
    copy_frames(labels, destination, keep)
    return int(len(disagreement) - len(keep))


def _forces_only(path: Path, limit: float | None) -> int:
    """Frames of a store that the fine-tuning trains on their forces alone."""
    from jaxdistill.data.store import LabelStore
    from jaxdistill.train.loss import disagreement_weights

    with LabelStore(path) as store:
        weights = disagreement_weights(store.arrays(), limit) if len(store) else None
    return 0 if weights is None else int((weights[:, 0] == 0).sum())


def _store_length(path: Path) -> int:
    from jaxdistill.data.store import LabelStore

    with LabelStore(path) as store:
        return len(store)
