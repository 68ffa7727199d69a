"""``jaxdistill train`` and ``jaxdistill evaluate``: thin shells over the library.

Plain functions with typer annotations, registered in ``jaxdistill.cli.main``::

    app.command("train")(train_command)
    app.command("evaluate")(evaluate_command)
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from jaxdistill.cli.common import select_device
from jaxdistill.cli.errors import report_errors

console = Console()

_DEVICE_HELP = (
    "Where JAX runs: cpu, gpu or auto (a GPU when there is one); sets JAX_PLATFORMS "
    "before JAX starts."
)


@report_errors
def train_command(
    data: Annotated[
        Path,
        typer.Option("--data", help="Label store (HDF5) written by `jaxdistill label`."),
    ],
    output: Annotated[
        Path,
        typer.Option(
            "--output", help="Student directory to write (training files go to OUTPUT/training)."
        ),
    ],
    config: Annotated[
        Path | None,
        typer.Option("--config", help="Training config (YAML; keys of TrainConfig)."),
    ] = None,
    max_steps: Annotated[
        int | None,
        typer.Option("--max-steps", help="Override the config's number of steps.", min=1),
    ] = None,
    seed: Annotated[
        int | None,
        typer.Option(
            "--seed",
            help="Override the config's seed (initialisation and batch order; the split "
            "keeps its own split_seed).",
        ),
    ] = None,
    device: Annotated[str, typer.Option("--device", help=_DEVICE_HELP)] = "auto",
    restart: Annotated[
        bool,
        typer.Option("--restart", help="Ignore and delete checkpoints in OUTPUT; start afresh."),
    ] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    skip_bad_frames: Annotated[
        bool,
        typer.Option(
            help="Leave out frames with non-finite (or absurd) positions, cell, energy or "
            "forces, each named, instead of refusing the store."
        ),
    ] = False,
    distributed: Annotated[
        bool,
        typer.Option(
            "--distributed",
            help="One of several processes (one per host, started together) training one "
            "student over all their devices; under SLURM or Open MPI nothing else is "
            "needed, elsewhere give --coordinator, --num-processes and --process-id.",
        ),
    ] = False,
    coordinator: Annotated[
        str | None,
        typer.Option("--coordinator", help="host:port of process 0 (implies --distributed)."),
    ] = None,
    num_processes: Annotated[
        int | None, typer.Option("--num-processes", help="Processes in all.", min=1)
    ] = None,
    process_id: Annotated[
        int | None, typer.Option("--process-id", help="This process's rank, from 0.", min=0)
    ] = None,
) -> None:
    """Train a student on a label store (resumes from OUTPUT's last checkpoint)."""
    from jaxdistill.train import TrainConfig, train

    if not data.is_file():
        raise FileNotFoundError(f"--data {data}: label store not found")
    if output.exists() and not output.is_dir():
        raise FileExistsError(f"--output {output} is a file; training writes a folder")
    multi_process = distributed or coordinator is not None
    if (num_processes is not None or process_id is not None) and not multi_process:
        raise ValueError(
            "--num-processes and --process-id belong to a multi-process run: add "
            "--coordinator HOST:PORT (or --distributed under SLURM or Open MPI)"
        )
    if multi_process:
        from jaxdistill.runtime import initialize_processes

        # before anything starts JAX's backends
        initialize_processes(coordinator, num_processes, process_id)
    devices = select_device(device)
    train_config = TrainConfig.from_yaml(config) if config else TrainConfig()
    if seed is not None:
        train_config = train_config.replace(seed=seed)
    student = train(
        data,
        output,
        train_config,
        max_steps=max_steps,
        resume=not restart,
        progress=progress,
        console=console,
        skip_bad_frames=skip_bad_frames,
        devices=devices,
    )
    summary = student.metadata["training"]
    best = summary.get("best_validation_force_mae_meV_per_A")
    if multi_process:
        import jax

        if jax.process_index() != 0:
            return  # process 0 wrote the student and says so
    console.print(
        f"student [bold]{student.architecture}[/] ({student.num_parameters} parameters) written to "
        f"{output}; {summary['steps_completed']} steps"
        + (f", best validation force MAE {best:.2f} meV/Å" if best is not None else "")
        + (" (stopped early)" if summary["early_stopped"] else "")
    )


@report_errors
def evaluate_command(
    student: Annotated[Path, typer.Option("--student", help="Student directory.")],
    data: Annotated[Path, typer.Option("--data", help="Label store (HDF5).")],
    split: Annotated[
        str,
        typer.Option("--split", help="test, validation or train (of the training split), or all."),
    ] = "test",
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            help="Folder for evaluation.json and plots (default: STUDENT/evaluation-SPLIT).",
        ),
    ] = None,
    overwrite: Annotated[
        bool, typer.Option(help="Replace an earlier evaluation.json in the output folder.")
    ] = False,
    skip_bad_frames: Annotated[
        bool,
        typer.Option(
            help="Leave out frames with non-finite (or absurd) positions or labels, each "
            "named, instead of refusing the store."
        ),
    ] = False,
    device: Annotated[str, typer.Option("--device", help=_DEVICE_HELP)] = "auto",
) -> None:
    """Compare a student with the teacher labels of a store (JSON + parity plots)."""
    from jaxdistill.evaluate import evaluate, summary_lines

    select_device(device)
    if not student.is_dir():
        raise FileNotFoundError(f"--student {student}: student directory not found")
    if not data.is_file():
        raise FileNotFoundError(f"--data {data}: label store not found")
    output = output or student / f"evaluation-{split}"
    if (output / "evaluation.json").exists() and not overwrite:
        raise FileExistsError(
            f"{output / 'evaluation.json'} exists; pass --overwrite to replace it "
            "(or --output for another folder)"
        )
    result = evaluate(
        student, data, split=split, output_dir=output, skip_bad_frames=skip_bad_frames
    )
    for line in summary_lines(result):
        console.print(line)
    console.print(f"results and plots written to {output}")
