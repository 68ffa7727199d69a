"""``jaxdistill md``: molecular dynamics with a student from the command line.

A plain function with typer annotations; ``jaxdistill.cli.main`` registers it::

    app.command("md")(md_command)
"""

from __future__ import annotations

import enum
import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from jaxdistill.cli.common import select_device
from jaxdistill.cli.errors import report_errors

console = Console()


class Engine(enum.StrEnum):
    jax_md = "jax-md"
    ase = "ase"


class Ensemble(enum.StrEnum):
    nve = "nve"
    nvt = "nvt"
    npt = "npt"


class Thermostat(enum.StrEnum):
    langevin = "langevin"
    nose_hoover = "nose-hoover"


@report_errors
def md_command(
    student: Annotated[
        list[Path],
        typer.Option(
            "--student",
            help="Student directory (from Student.save / train); repeat it for a committee "
            "of students trained with different --seed: the MD follows their mean forces "
            "and logs their disagreement.",
        ),
    ],
    structure: Annotated[
        Path,
        typer.Option(
            "--structure", help="Starting structure, any format ASE reads (last frame used)."
        ),
    ],
    engine: Annotated[
        Engine, typer.Option(help="jax-md: whole chunks on the device; ase: ASE integrators.")
    ] = Engine.jax_md,
    ensemble: Annotated[Ensemble, typer.Option(help="Statistical ensemble.")] = Ensemble.nvt,
    temperature: Annotated[
        float, typer.Option(help="Target (NVT/NPT) or initial (NVE) temperature, K.", min=0.0)
    ] = 300.0,
    timestep_fs: Annotated[float, typer.Option(help="Time step, fs.")] = 1.0,
    steps: Annotated[int, typer.Option(help="Number of MD steps.", min=0)] = 1000,
    output: Annotated[
        Path | None,
        typer.Option(
            help="Trajectory file: .traj (ASE) or extxyz (other suffixes); an existing "
            "file is kept unless --overwrite."
        ),
    ] = None,
    overwrite: Annotated[
        bool, typer.Option(help="Replace existing --output, --log and --summary-json files.")
    ] = False,
    thermostat: Annotated[Thermostat, typer.Option(help="NVT thermostat.")] = Thermostat.langevin,
    friction_per_fs: Annotated[
        float, typer.Option(help="Langevin friction, 1/fs.", min=0.0)
    ] = 0.01,
    pressure_bar: Annotated[float, typer.Option(help="NPT target pressure, bar.")] = 1.0,
    sample_every: Annotated[
        int, typer.Option(help="Steps between logged samples and trajectory frames.", min=1)
    ] = 100,
    replicas: Annotated[
        int, typer.Option(help="Independent copies run together (jax-md engine).", min=1)
    ] = 1,
    seed: Annotated[int, typer.Option(help="Random seed (velocities, Langevin noise).")] = 0,
    dtype: Annotated[
        str | None, typer.Option(help="float32 or float64 (default: the student's).")
    ] = None,
    log: Annotated[Path | None, typer.Option(help="Write the per-sample thermo log here.")] = None,
    summary_json: Annotated[
        Path | None, typer.Option(help="Write the final summary as JSON here.")
    ] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    device: Annotated[
        str,
        typer.Option(
            help="Where JAX runs: cpu, gpu or auto (a GPU when there is one); sets "
            "JAX_PLATFORMS before JAX starts."
        ),
    ] = "auto",
    fragment_check: Annotated[
        bool,
        typer.Option(
            help="Stop when the structure breaks into more covalently bonded pieces than "
            "it started with (off for dissociation studies)."
        ),
    ] = True,
    uncertainty_threshold: Annotated[
        float | None,
        typer.Option(
            help="With a committee: stop (or with --record-uncertain, record and go on) "
            "when the largest per-atom force standard deviation over the members exceeds "
            "this many eV/Å; the frames go to <output>.uncertain.extxyz.",
            min=0.0,
        ),
    ] = None,
    record_uncertain: Annotated[
        bool, typer.Option(help="Record samples above --uncertainty-threshold, do not stop.")
    ] = False,
) -> None:
    """Run molecular dynamics with a trained student (jax-md on the GPU, or ASE)."""
    select_device(device)  # first: before anything below starts jax
    from jaxdistill.md import MDInstabilityError, run_md
    from jaxdistill.md.topology import DEFAULT_BOND_FACTOR
    from jaxdistill.student import load_student

    _refuse_overwrite(
        overwrite, ("--output", output), ("--log", log), ("--summary-json", summary_json)
    )
    if not timestep_fs > 0:
        raise ValueError(f"--timestep-fs must be > 0, got {timestep_fs}")
    if dtype is not None and dtype not in ("float32", "float64"):
        raise ValueError(f"--dtype must be float32 or float64, got {dtype!r}")
    if replicas > 1 and engine is Engine.ase:
        raise ValueError("--replicas needs --engine jax-md (the ASE engine runs one copy)")
    if record_uncertain and (uncertainty_threshold is None or output is None):
        raise ValueError(
            "--record-uncertain needs --uncertainty-threshold and --output (the frames go "
            "to <output>.uncertain.extxyz)"
        )
    if len(student) == 1:
        loaded = load_student(student[0], dtype=dtype)
    else:
        from jaxdistill.committee import load_committee

        loaded = load_committee(student, dtype=dtype)
    atoms = _read_structure(structure)
    console.print(
        f"student [bold]{loaded.architecture}[/] ({loaded.num_parameters} parameters, cutoff "
        f"{loaded.cutoff} Å, {loaded.dtype}); {len(atoms)} atoms from {structure}; "
        f"{ensemble.value.upper()} at {temperature:g} K via {engine.value}"
    )
    try:
        summary = run_md(
            loaded,
            atoms,
            engine=engine.value,
            ensemble=ensemble.value,
            temperature_kelvin=temperature,
            timestep_fs=timestep_fs,
            steps=steps,
            thermostat=thermostat.value,
            friction_per_fs=friction_per_fs,
            pressure_bar=pressure_bar,
            replicas=replicas if replicas > 1 else None,
            seed=seed,
            sample_every=sample_every,
            trajectory=output,
            log_file=log,
            progress=progress,
            bond_factor=DEFAULT_BOND_FACTOR if fragment_check else None,
            keep_on_interrupt=True,
            uncertainty_threshold=uncertainty_threshold,
            on_uncertain="record" if record_uncertain else "stop",
        )
    except MDInstabilityError as error:
        console.print(f"[red]MD stopped:[/] {error}", soft_wrap=True)
        raise typer.Exit(code=1) from None
    except ValueError as error:
        if engine is Engine.jax_md and "too small for jax-md" in str(error):
            raise ValueError(f"{structure}: {error}") from None
        raise
    console.print(summary.describe())
    if summary_json is not None:
        summary_json.parent.mkdir(parents=True, exist_ok=True)
        summary_json.write_text(json.dumps(summary.as_dict(), indent=2) + "\n")
    if summary.interrupted:
        # the run is saved, but it is not the run asked for
        raise typer.Exit(code=130)


def _refuse_overwrite(overwrite: bool, *files: tuple[str, Path | None]) -> None:
    """Refuse, naming the flag, to replace a user's file without --overwrite."""
    for flag, path in files:
        if path is not None and path.exists() and not overwrite:
            raise FileExistsError(f"{flag} {path} exists; pass --overwrite to replace it")
        if path is not None and path.is_dir():
            raise IsADirectoryError(f"{flag} {path} is a folder; give a file name")


def _read_structure(structure: Path):
    """The last frame of ``structure``, with one-line errors for a missing, empty or
    unreadable file."""
    import ase.io

    if not structure.is_file():
        raise FileNotFoundError(f"--structure {structure}: file not found")
    if structure.stat().st_size == 0:
        raise ValueError(f"--structure {structure} is an empty file")
    try:
        return ase.io.read(structure, index=-1)
    except Exception as error:  # ase raises many kinds for a file it cannot parse
        text = " ".join(str(error).split()) or type(error).__name__
        raise ValueError(f"--structure {structure}: cannot read it ({text})") from None
