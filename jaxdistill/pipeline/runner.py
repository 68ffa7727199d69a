"""``jaxdistill distill``: sample → label → train → (refine) → evaluate → MD validation →
report.

Every stage writes into one run directory and records its completion (with a hash of
the configuration it ran with) in ``stages.json``. Re-running the same command skips
finished stages; an interrupted stage resumes (labelling and training are resumable
themselves); a stage whose configuration changed is redone, with every stage after
it.

    run_dir/
      config.yaml         the resolved configuration
      stages.json         finished stages: config hash, summary, seconds
      frames.extxyz       sampled configurations (sample; sample_cache/ while running)
      labels.h5           teacher labels (label)
      student/            the trained student (train; checkpoints in student/training)
      refine/             active-learning rounds, when configured (refine; the last
                          round's student is the one evaluated and validated)
      evaluation/         metrics on held-out frames, parity plots (evaluate)
      md/                 MD validation: trajectories, results.json (md)
      phonons/            student vs teacher phonons, when configured (phonons)
      vibrations/         student vs teacher molecular vibrations, when configured
      report.md, *.png    the report (report)
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console

from jaxdistill.config.distill import STAGES, DistillConfig, stage_hashes
from jaxdistill.pipeline.rundir import RunDirectory
from jaxdistill.pipeline.stages import STAGE_FUNCTIONS, StageContext

__all__ = ["distill", "resolve_device"]


def _only_rounds_changed(
    previous: DistillConfig | None, config: DistillConfig, done: Mapping[str, Any]
) -> bool:
    """Whether the finished refine stage differs from ``config`` in ``rounds`` alone.

    ``previous`` is the configuration the run directory last ran with; its refine hash
    must be the recorded one (so it is the configuration that made those rounds).
    """
    if previous is None or previous.active_learning is None or config.active_learning is None:
        return False
    if stage_hashes(previous)["refine"] != done["config_hash"]:
        return False
    same_rounds = dataclasses.replace(
        previous,
        active_learning=dataclasses.replace(
            previous.active_learning, rounds=config.active_learning.rounds
        ),
    )
    return stage_hashes(same_rounds)["refine"] == stage_hashes(config)["refine"]


def resolve_device(device: str) -> str:
    """ "auto" → "cuda" when torch is installed and sees a GPU, else "cpu"."""
    if device != "auto":
        return device
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    except ImportError:
        return "cpu"


def distill(
    config: DistillConfig | Mapping[str, Any] | str | Path,
    run_dir: str | Path | None = None,
    *,
    stages: tuple[str, ...] = STAGES,
    console: Console | None = None,
) -> dict[str, Any]:
    """Run (or resume) a whole distillation.

    Args:
        config: a :class:`DistillConfig`, a mapping, or a YAML path.
        run_dir: the run directory (default ``runs/<name>``).
        stages: the stages to run, in order (earlier ones must be done already).
        console: where progress and the summary go.

    Returns:
        The record of every finished stage (``stages.json``'s content).
    """
    if not isinstance(config, DistillConfig):
        config = (
            DistillConfig.from_dict(config)
            if isinstance(config, Mapping)
            else DistillConfig.from_yaml(config)
        )
    console = console or Console()
    run = RunDirectory(run_dir or Path("runs") / config.name)
    run.path.mkdir(parents=True, exist_ok=True)
    previous_config = run.config()
    (run.path / "config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    hashes = stage_hashes(config)
    context = StageContext(
        config=config, run=run, console=console, device=resolve_device(config.device)
    )
    unknown = set(stages) - set(STAGES)
    if unknown:
        raise ValueError(f"unknown stage(s) {sorted(unknown)}; stages are {list(STAGES)}")
    for stage in STAGES:
        if stage not in stages:
            continue
        if (
            (stage == "md" and config.md_validation is None)
            or (stage == "refine" and config.active_learning is None)
            or (stage in ("phonons", "vibrations") and getattr(config, stage) is None)
        ):
            continue
        done = run.record().get(stage)
        if done and done["config_hash"] == hashes[stage]:
            console.print(f"[green]✓[/] {stage}: done already (skipped)")
            continue
        if done and stage == "refine" and _only_rounds_changed(previous_config, config, done):
            # refine() skips finished rounds: raising `rounds` adds rounds, lowering it
            # ends at an earlier one; either way no finished round is thrown away.
            console.print(
                f"[yellow]![/] refine: rounds {previous_config.active_learning.rounds} → "
                f"{config.active_learning.rounds}; finished rounds are kept, later stages redone"
            )
            run.forget_from(STAGES[STAGES.index(stage) + 1])
        elif done:
            console.print(
                f"[yellow]![/] {stage}: configuration changed, redoing it and later stages"
            )
            run.forget_from(stage)
        console.rule(f"[bold]{stage}")
        start = time.perf_counter()
        summary = STAGE_FUNCTIONS[stage](context)
        seconds = time.perf_counter() - start
        run.mark_done(stage, hashes[stage], summary, seconds)
        console.print(f"[green]✓[/] {stage} finished in {seconds:.1f} s")
    return run.record()
