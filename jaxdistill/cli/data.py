"""CLI commands of the data stage: ``jaxdistill sample`` and ``jaxdistill label``.

Plain functions with typer annotations; ``jaxdistill.cli.main`` registers them with
``app.command("sample")(sample_command)`` and ``app.command("label")(label_command)``.
Each is a thin shell over :func:`jaxdistill.sampling.sample` and
:func:`jaxdistill.labelling.label`.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

__all__ = ["label_command", "sample_command"]

console = Console(stderr=True)

# Errors a user can fix (bad config, missing file or extra, wrong store): one red line,
# exit code 1, no traceback.
_USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, ImportError, RuntimeError)


@contextmanager
def _user_errors() -> Iterator[None]:
    try:
        yield
    except _USER_ERRORS as error:
        # escape: messages quote lists like ['H', 'O'], which rich would read as markup.
        console.print(f"[bold red]error:[/] {escape(str(error))}")
        raise typer.Exit(code=1) from None


def _summary_table(title: str, rows: list[tuple[str, str]]) -> Table:
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    for key, value in rows:
        table.add_row(key, value)
    return table


def _format_counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items())


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
        str, typer.Option(help="Device for a torch teacher: cpu, cuda, cuda:N.")
    ] = "cpu",
    seed: Annotated[int | None, typer.Option(help="Override the config's master seed.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace OUTPUT if it exists.")] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    workers: Annotated[
        int,
        typer.Option(
            help="Teacher MD trajectories run side by side in worker processes (same frames; "
            "fastest for small systems on a GPU)."
        ),
    ] = 1,
) -> None:
    """Generate configurations (teacher MD, rattles, strains) and write them to extxyz.

    Finished teacher trajectories wait in OUTPUT's folder (``.<name>.cache/``) until
    the frames are written, so a killed run resumes with the trajectory it was in.
    """
    import dataclasses

    import ase.io

    from jaxdistill.config import SamplingConfig
    from jaxdistill.sampling import element_counts, sample, sampler_counts

    with _user_errors():
        if output.exists() and not overwrite:
            raise FileExistsError(f"{output} exists; pass --overwrite to replace it")
        cfg = SamplingConfig.from_yaml(config)
        if seed is not None:
            cfg = dataclasses.replace(cfg, seed=seed)
        # --teacher wins over md.teacher; the spec is loaded with --device.
        spec = teacher or (cfg.md.teacher if cfg.md is not None else None)
        if teacher is not None and cfg.md is not None:
            cfg = dataclasses.replace(cfg, md=dataclasses.replace(cfg.md, teacher=None))
        if workers < 1:
            raise ValueError(f"--workers must be >= 1, got {workers}")
        cache = output.parent / f".{output.name}.cache"
        start = time.perf_counter()
        frames = sample(
            cfg,
            teacher=spec,
            progress=progress,
            console=console,
            cache_dir=cache,
            workers=workers,
            teacher_options={"device": device},
        )
        seconds = time.perf_counter() - start
        output.parent.mkdir(parents=True, exist_ok=True)
        ase.io.write(output, frames, format="extxyz")
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
) -> None:
    """Label frames with a teacher into an HDF5 store (resumes an interrupted run)."""
    from jaxdistill.labelling import label
    from jaxdistill.teachers import load_teacher

    with _user_errors():
        if not input.is_file():
            raise FileNotFoundError(f"input frames not found: {input}")
        loaded = load_teacher(teacher, device=device)
        summary = label(
            loaded, input, output, batch_size=batch_size, progress=progress, console=console
        )
    per_frame = (
        f"{1e3 * summary.seconds_per_frame:.1f} ms/frame"
        if summary.n_labelled
        else "nothing left to label"
    )
    console.print(
        _summary_table(
            f"labelled {output} with {loaded.name}",
            [
                (
                    "frames",
                    f"{summary.n_frames} ({summary.n_labelled} new, "
                    f"{summary.n_resumed} already labelled)",
                ),
                ("atoms", str(summary.n_atoms)),
                ("elements", _format_counts(summary.elements)),
                ("time", f"{summary.seconds:.2f} s ({per_frame})"),
            ],
        )
    )
