"""The typer app ``jaxdistill COMMAND``: ``demo`` and ``distill`` here; the stage
commands (``sample``, ``label``, ``train``, ``evaluate``, ``md``) and ``import``,
``export``, ``info`` from their modules."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from jaxdistill._version import __version__
from jaxdistill.cli.curvature import phonons_command, vibrations_command
from jaxdistill.cli.data import label_command, sample_command
from jaxdistill.cli.errors import JaxdistillGroup, report_errors, set_debug
from jaxdistill.cli.exchange import export_command, import_command, info_command
from jaxdistill.cli.md import md_command
from jaxdistill.cli.train import evaluate_command, train_command

app = typer.Typer(
    name="jaxdistill",
    help="Distil machine-learned force fields into small, fast JAX students.",
    no_args_is_help=True,
    add_completion=False,
    cls=JaxdistillGroup,
)
console = Console()


def _version_callback(value: bool) -> None:
    if value:
        console.print(f"jaxdistill {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    ctx: typer.Context,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version_callback, is_eager=True, help="Show version."),
    ] = False,
    debug: Annotated[
        bool,
        typer.Option(
            "--debug",
            help="Show the full traceback of an error (accepted anywhere on the line; "
            "also JAXDISTILL_DEBUG=1). Without it an error is one line.",
        ),
    ] = False,
    log_file: Annotated[
        Path | None,
        typer.Option(
            "--log-file",
            help="Also append what the command prints, as plain text with periodic "
            "progress lines, to this file (accepted anywhere on the line).",
        ),
    ] = None,
) -> None:
    """Distil machine-learned force fields into small, fast JAX students.

    An error in the input (a file, frame, config key or flag) is one line naming it,
    with exit code 2; an MD run that stops unstable exits with 1.
    """
    if debug:
        set_debug(True)
    if log_file is not None:
        from jaxdistill.cli.common import start_log_file

        # stopped when the command's context closes, after its last line (errors too)
        ctx.call_on_close(start_log_file(log_file, ctx.meta.get("jaxdistill_argv")))
    # before any command imports torch or starts jax: CPU threads that sleep rather
    # than spin when a core is busy, and bit-reproducible GPU sums (docs/training.md)
    from jaxdistill import runtime

    runtime.configure()


@app.command()
@report_errors
def demo(
    architecture: Annotated[str, typer.Option(help="Student architecture.")] = "painn",
    steps: Annotated[int, typer.Option(help="Velocity-Verlet steps.")] = 200,
    temperature: Annotated[float, typer.Option(help="Initial temperature, K.")] = 300.0,
    output: Annotated[Path | None, typer.Option(help="Save the student to this folder.")] = None,
) -> None:
    """Build an untrained student for silicon and run a short NVE MD through ASE.

    Shows the moving parts (graph, student, calculator) working together; an untrained
    student is not a physical model, but energy must still be conserved.
    """
    import ase.build
    import numpy as np
    from ase import units
    from ase.md.velocitydistribution import thermalize_momenta
    from ase.md.verlet import VelocityVerlet
    from rich.progress import track

    from jaxdistill.md.ase_calculator import StudentCalculator
    from jaxdistill.student import create_student

    atoms = ase.build.bulk("Si", "diamond", a=5.43, cubic=True) * (2, 2, 2)
    student = create_student(architecture, ["Si"], cutoff=5.0)
    console.print(
        f"student [bold]{architecture}[/]: {student.num_parameters} parameters, "
        f"cutoff {student.cutoff} Å, {len(atoms)} Si atoms"
    )
    atoms.calc = StudentCalculator(student)
    thermalize_momenta(atoms, temperature_K=temperature, rng=np.random.default_rng(0))
    dynamics = VelocityVerlet(atoms, timestep=1.0 * units.fs)
    e0 = atoms.get_total_energy()
    start = time.perf_counter()
    for _ in track(range(steps), description="NVE MD", console=console):
        dynamics.run(1)
    elapsed = time.perf_counter() - start
    drift = (atoms.get_total_energy() - e0) / len(atoms)
    console.print(
        f"{steps} steps in {elapsed:.2f} s ({1e3 * elapsed / steps:.2f} ms/step); "
        f"T = {atoms.get_temperature():.0f} K; total-energy change {1e3 * drift:+.3f} meV/atom"
    )
    if output is not None:
        student.save(output)
        console.print(f"student saved to {output}")


@app.command()
@report_errors
def distill(
    config: Annotated[
        Path, typer.Argument(help="Distillation config (YAML), e.g. configs/quickstart.yaml.")
    ],
    run_dir: Annotated[
        Path | None, typer.Option(help="Run directory (default: runs/<name from the config>).")
    ] = None,
    stage: Annotated[
        list[str] | None,
        typer.Option(
            help="Run only these stages (repeatable): sample, label, train, evaluate, md, report."
        ),
    ] = None,
) -> None:
    """Sample, label, train, evaluate, validate by MD and report; resumes when re-run."""
    from jaxdistill.config import STAGES
    from jaxdistill.pipeline import distill as run_distill

    unknown = sorted(set(stage or ()) - set(STAGES))
    if unknown:
        raise ValueError(f"--stage {', '.join(unknown)}: no such stage; choose from {STAGES}")
    run_distill(config, run_dir, stages=tuple(stage) if stage else STAGES, console=console)


# The stage commands, defined beside one another in cli/data.py, cli/train.py, cli/md.py.
app.command("sample")(sample_command)
app.command("label")(label_command)
app.command("train")(train_command)
app.command("evaluate")(evaluate_command)
app.command("md")(md_command)
app.command("phonons")(phonons_command)
app.command("vibrations")(vibrations_command)
app.command("import")(import_command)
app.command("export")(export_command)
app.command("info")(info_command)
