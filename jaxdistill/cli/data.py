"""CLI commands of the data stage: ``jaxdistill sample`` and ``jaxdistill label``.

Plain functions with typer annotations; ``jaxdistill.cli.main`` registers them with
``app.command("sample")(sample_command)`` and ``app.command("label")(label_command)``.
Each is a thin shell over :func:`jaxdistill.sampling.sample` and
:func:`jaxdistill.labelling.label`.
"""

from __future__ import annotations

import functools
import os
import shutil
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from jaxdistill.cli.errors import report_errors

__all__ = ["label_command", "sample_command"]

console = Console(stderr=True)


def _summary_table(title: str, rows: list[tuple[str, str]]) -> Table:
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    for key, value in rows:
        table.add_row(key, value)
    return table


def _format_counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items())


def _hessian_text(hessian: dict) -> str:
    step = hessian.get("step_angstrom")
    how = hessian.get("method", "?") + (f", step {step:g} Å" if step else "")
    return f"{hessian.get('directions')} directions per frame ({how})"


def _cluster_option(workers: int | None, cluster: str | None):
    """The Dask cluster of ``--workers N`` / ``--cluster ...``, or None (this process)."""
    from jaxdistill.config.cluster import ClusterConfig

    if workers is not None and workers < 1:
        raise ValueError(f"--workers must be >= 1, got {workers}")
    if cluster is not None:
        if workers is not None:
            raise ValueError("give --workers N or --cluster, not both (--cluster local:N)")
        return ClusterConfig.from_option(cluster)
    return ClusterConfig(workers=workers) if workers is not None and workers > 1 else None


CLUSTER_HELP = (
    "Run the teacher on Dask: local (one worker per GPU, or CPU workers), local:N, a "
    "scheduler address (tcp://host:8786) or a YAML file with a 'cluster:' section "
    "(e.g. SLURM; docs/cluster.md)."
)


def _sampling_config(path: Path):
    """The sampling section of ``path`` and, for a whole pipeline config, that config."""
    from jaxdistill.config import DistillConfig, SamplingConfig
    from jaxdistill.config.keys import read_yaml

    data = read_yaml(path, "sampling config")
    if isinstance(data, dict) and "sampling" in data and "teacher" in data:
        pipeline = DistillConfig.from_yaml(path)
        return pipeline.sampling, pipeline
    return SamplingConfig.from_yaml(path), None


def _pipeline_device(device: str) -> str:
    """A pipeline config's device, "auto" resolved as ``jaxdistill distill`` does."""
    if device != "auto":
        return device
    from jaxdistill.pipeline.runner import resolve_device

    return resolve_device(device)


def write_frames_atomically(output: Path, frames) -> None:
    """Write extxyz to a temporary file beside ``output`` and rename it into place: a
    full disk or a read-only folder leaves ``output`` (and nothing else) as it was."""
    import ase.io

    if not output.parent.exists():
        output.parent.mkdir(parents=True)
    temporary = output.with_name(f".{output.name}.{os.getpid()}.partial")
    try:
        ase.io.write(temporary, frames, format="extxyz")
        temporary.replace(output)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        reason = error.strerror or str(error)
        raise OSError(f"cannot write {output}: {reason}; nothing written") from None


@report_errors
def sample_command(
    config: Annotated[
        Path,
        typer.Argument(
            help="Sampling config (YAML); a pipeline config with a 'sampling' section works too."
        ),
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="Frames file to write (extxyz).")],
    teacher: Annotated[
        str | None,
        typer.Option(
            help="Teacher driving the MD sampler (e.g. ase:ase.calculators.emt:EMT); "
            "overrides md.teacher when given."
        ),
    ] = None,
    device: Annotated[
        str | None,
        typer.Option(
            help="Device for a torch teacher: cpu, cuda, cuda:N (default: a pipeline "
            "config's device, else cpu)."
        ),
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Override the config's master seed.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace OUTPUT if it exists.")] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    workers: Annotated[
        int,
        typer.Option(
            help="Teacher MD trajectories run side by side on a local Dask cluster of N "
            "worker processes (same frames; fastest for small systems on a GPU)."
        ),
    ] = 1,
    cluster: Annotated[str | None, typer.Option(help=CLUSTER_HELP)] = None,
) -> None:
    """Generate configurations (teacher MD, rattles, strains) and write them to extxyz.

    The MD teacher is --teacher, else the config's md.teacher, else (for a pipeline
    config such as configs/quickstart.yaml) its teacher with its teacher_options, so
    the frames are those of 'jaxdistill distill'. Finished teacher trajectories wait
    in OUTPUT's folder (.NAME.cache/) until the frames are written, so a killed run
    resumes with the trajectory it was in.
    """
    import dataclasses

    from jaxdistill.sampling import element_counts, sample, sampler_counts

    if output.exists() and not overwrite:
        raise FileExistsError(f"{output} exists; pass --overwrite to replace it")
    if output.is_dir():
        raise IsADirectoryError(f"--output {output} is a folder; give a file name")
    dask_cluster = _cluster_option(workers, cluster)
    cfg, pipeline = _sampling_config(config)
    if seed is not None:
        cfg = dataclasses.replace(cfg, seed=seed)
    # --teacher wins over md.teacher, which wins over a pipeline config's teacher.
    options: dict = {}
    spec = teacher or (cfg.md.teacher if cfg.md is not None else None)
    if teacher is not None and cfg.md is not None:
        cfg = dataclasses.replace(cfg, md=dataclasses.replace(cfg.md, teacher=None))
    if spec is None and pipeline is not None:
        spec = pipeline.teacher
        options.update(pipeline.teacher_options)
    if device is None:
        device = _pipeline_device(pipeline.device) if pipeline is not None else "cpu"
    options["device"] = device
    cache = output.parent / f".{output.name}.cache"
    start = time.perf_counter()
    frames = sample(
        cfg,
        teacher=spec,
        progress=progress,
        console=console,
        cache_dir=cache,
        teacher_options=options,
        cluster=dask_cluster,
    )
    seconds = time.perf_counter() - start
    if not frames:
        raise ValueError(f"{config} gives no frames; nothing written to {output}")
    write_frames_atomically(output, frames)
    shutil.rmtree(cache, ignore_errors=True)
    n_atoms = sum(len(a) for a in frames)
    console.print(
        _summary_table(
            f"sampled {output}",
            [
                ("frames", str(len(frames))),
                ("atoms", str(n_atoms)),
                ("elements", _format_counts(element_counts(frames))),
                ("samplers", _format_counts(sampler_counts(frames))),
                ("time", f"{seconds:.2f} s ({1e3 * seconds / len(frames):.1f} ms/frame)"),
                ("seed", str(cfg.seed)),
            ],
        )
    )


@report_errors
def label_command(
    teacher: Annotated[
        str,
        typer.Option(
            help="Teacher spec: orb:NAME or orb:NAME@WEIGHTS.ckpt, fennol:MODEL.fnx "
            "(comma-separated paths or a glob = ensemble), sevennet:NAME-OR-PATH, "
            "ase:MODULE:FACTORY."
        ),
    ],
    input: Annotated[
        Path,
        typer.Option("--input", "-i", help="Frames to label (any file ase.io reads, e.g. extxyz)."),
    ],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="HDF5 label store; resumed when it exists.")
    ],
    device: Annotated[
        str, typer.Option(help="Device for a torch teacher: cpu, cuda, cuda:N.")
    ] = "cpu",
    batch_size: Annotated[
        int | None,
        typer.Option(
            help="Frames per teacher call and per commit (default: teacher's, at least 8)."
        ),
    ] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    workers: Annotated[
        int | None,
        typer.Option(
            help="Label on a local Dask cluster of N worker processes (HDF5 shards merged "
            "into OUTPUT; a rerun resumes them)."
        ),
    ] = None,
    cluster: Annotated[str | None, typer.Option(help=CLUSTER_HELP)] = None,
    skip_bad_frames: Annotated[
        bool,
        typer.Option(
            help="Leave out input frames that cannot be labelled (non-finite positions or "
            "cell, coincident atoms) instead of refusing; each is named."
        ),
    ] = False,
    hessian_directions: Annotated[
        int,
        typer.Option(
            help="Also label K Hessian-vector products per frame (random unit directions; "
            "for Hessian distillation). 0: none."
        ),
    ] = 0,
    hessian_method: Annotated[
        str,
        typer.Option(
            help="auto (the teacher's autodiff when it has one, else finite differences), "
            "autodiff, or finite-difference."
        ),
    ] = "auto",
    hessian_step: Annotated[
        float, typer.Option(help="Finite-difference step along each unit direction, Å.")
    ] = 0.01,
) -> None:
    """Label frames with a teacher into an HDF5 store (resumes an interrupted run).

    Frames are checked before the teacher sees them and the teacher's labels before
    they are stored: a bad frame stops the run with its number (frames before it stay
    stored) unless --skip-bad-frames leaves it out.
    """
    from jaxdistill.labelling import label
    from jaxdistill.teachers import load_teacher

    if not input.is_file():
        raise FileNotFoundError(f"--input {input}: file not found")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
    dask_cluster = _cluster_option(workers, cluster)
    if dask_cluster is None:
        loaded = load_teacher(teacher, device=device)
        labeller, name = functools.partial(label, loaded), loaded.name
    else:  # each Dask worker loads the teacher from its spec
        from jaxdistill.fanout import label_on_cluster

        labeller = functools.partial(
            label_on_cluster, teacher, cluster=dask_cluster, teacher_options={"device": device}
        )
        name = teacher
    summary = labeller(
        input,
        output,
        batch_size=batch_size,
        progress=progress,
        console=console,
        skip_bad_frames=skip_bad_frames,
        hessian_directions=hessian_directions,
        hessian_method=hessian_method,
        hessian_step_angstrom=hessian_step,
    )
    for line in summary.skipped:
        console.print(f"[yellow]skipped:[/] {escape(line)}", soft_wrap=True)
    per_frame = (
        f"{1e3 * summary.seconds_per_frame:.1f} ms/frame"
        if summary.n_labelled
        else "nothing left to label"
    )
    console.print(
        _summary_table(
            f"labelled {output} with {name}",
            [
                (
                    "frames",
                    f"{summary.n_frames} ({summary.n_labelled} new, "
                    f"{summary.n_resumed} already labelled)",
                ),
                ("atoms", str(summary.n_atoms)),
                ("elements", _format_counts(summary.elements)),
                ("time", f"{summary.seconds:.2f} s ({per_frame})"),
                *([("Hessian labels", _hessian_text(summary.hessian))] if summary.hessian else []),
            ],
        )
    )
