"""``jaxdistill phonons`` and ``jaxdistill vibrations``: a student's curvature against its
teacher's, for a student that already exists (the ``phonons`` and ``vibrations`` stages of
``jaxdistill distill`` do the same inside a run).

Plain functions with typer annotations; ``jaxdistill.cli.main`` registers them::

    app.command("phonons")(phonons_command)
    app.command("vibrations")(vibrations_command)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from jaxdistill.cli.errors import report_errors

console = Console()

_TEACHER_HELP = (
    "Teacher spec: sevennet:NAME-OR-PATH, fennol:MODEL.fnx (comma-separated paths or a glob "
    "= ensemble), orb:NAME or orb:NAME@WEIGHTS.ckpt, ase:MODULE:FACTORY."
)


def _check_output(output: Path, names: tuple[str, ...], overwrite: bool) -> None:
    """Refuse to replace earlier results without --overwrite."""
    if output.exists() and not output.is_dir():
        raise FileExistsError(f"--output {output} is a file; results go into a folder")
    existing = [name for name in names if (output / name).exists()]
    if existing and not overwrite:
        raise FileExistsError(
            f"{output / existing[0]} exists; pass --overwrite to replace it "
            "(or --output for another folder)"
        )


def _read_structure(path: Path):
    import ase.io

    if not path.is_file():
        raise FileNotFoundError(f"--structure {path}: file not found")
    return ase.io.read(path)  # the last frame


@report_errors
def phonons_command(
    student: Annotated[Path, typer.Option("--student", help="Student directory.")],
    teacher: Annotated[str, typer.Option("--teacher", help=_TEACHER_HELP)],
    structure: Annotated[
        Path,
        typer.Option(
            "--structure",
            help="The crystal, any file ASE reads (last frame); phonopy finds its primitive "
            "cell. Used as it is (not relaxed).",
        ),
    ],
    supercell: Annotated[
        tuple[int, int, int],
        typer.Option(help="Supercell of the structure's cell for the force constants.", min=1),
    ] = (2, 2, 2),
    displacement: Annotated[float, typer.Option(help="Finite displacement, Å.", min=0.0)] = 0.01,
    plus_minus: Annotated[
        bool, typer.Option(help="Displace both ways (central differences).")
    ] = True,
    q_spacing: Annotated[
        float,
        typer.Option(
            help="Spacing of q-points along the band path, 1/Å (2π included).",
        ),
    ] = 0.025,
    dos_mesh: Annotated[
        tuple[int, int, int], typer.Option(help="Γ-centred q-mesh of the DOS.", min=1)
    ] = (20, 20, 20),
    dos_sigma: Annotated[
        float, typer.Option(help="Gaussian smearing of the DOS, THz.", min=0.0)
    ] = 0.1,
    dtype: Annotated[str, typer.Option(help="Student precision: float32 or float64.")] = (
        "float32"
    ),
    device: Annotated[
        str, typer.Option(help="Device for a torch teacher: cpu, cuda, cuda:N.")
    ] = "cpu",
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Folder for phonons.json and phonons.png.")
    ] = Path("phonons"),
    overwrite: Annotated[bool, typer.Option(help="Replace earlier results there.")] = False,
) -> None:
    """Phonon bands and DOS of a crystal: student vs teacher (phonopy, finite displacements).

    Writes phonons.json (frequencies along the path and at Γ, X, L..., DOS, errors in
    THz), phonons.png (bands overlaid, both DOS) and each model's
    phonopy_params.yaml (phonopy's own file, for further analysis).
    """
    from jaxdistill.curvature import phonon_comparison, plot_phonons
    from jaxdistill.md.ase_calculator import StudentCalculator
    from jaxdistill.teachers import load_teacher

    if dtype not in ("float32", "float64"):
        raise ValueError(f"--dtype must be float32 or float64, got {dtype!r}")
    _check_output(output, ("phonons.json", "phonons.png"), overwrite)
    atoms = _read_structure(structure)
    calculator = StudentCalculator(student, dtype=dtype)
    loaded = load_teacher(teacher, device=device)
    console.print(
        f"phonons of {atoms.get_chemical_formula()} in a {list(supercell)} supercell, "
        f"student {student} vs teacher {teacher}"
    )
    comparison = phonon_comparison(
        calculator,
        loaded.as_calculator(),
        atoms,
        supercell,
        displacement,
        plus_minus=plus_minus,
        q_spacing_per_angstrom=q_spacing,
        dos_mesh=dos_mesh,
        dos_sigma_thz=dos_sigma,
    )
    output.mkdir(parents=True, exist_ok=True)
    (output / "phonons.json").write_text(json.dumps(comparison.to_dict(), indent=1) + "\n")
    plot_phonons(comparison, output / "phonons.png")
    comparison.student.phonon.save(output / "student_phonopy_params.yaml")
    comparison.teacher.phonon.save(output / "teacher_phonopy_params.yaml")
    m = comparison.metrics()
    console.print(
        f"frequency MAE {m['band_mae_thz']:.3f} THz, max {m['band_max_error_thz']:.3f} THz over "
        f"the path; DOS difference {100 * m['dos_relative_difference']:.1f} %"
    )
    for label, point in m["points"].items():
        console.print(
            f"  {label}: MAE {point['mae_thz']:.3f} THz, max {point['max_error_thz']:.3f} THz"
        )
    console.print(f"results and plot written to {output}")


@report_errors
def vibrations_command(
    student: Annotated[Path, typer.Option("--student", help="Student directory.")],
    teacher: Annotated[str, typer.Option("--teacher", help=_TEACHER_HELP)],
    structure: Annotated[
        list[Path] | None,
        typer.Option("--structure", help="A molecule file, any format ASE reads (repeatable)."),
    ] = None,
    molecule: Annotated[
        list[str] | None,
        typer.Option(help="An ase.build.molecule name, e.g. CH3CH2OH (repeatable)."),
    ] = None,
    delta: Annotated[float, typer.Option(help="Finite displacement, Å.", min=0.0)] = 0.01,
    fmax: Annotated[
        float,
        typer.Option(help="Relax until the largest force is below this, eV/Å.", min=0.0),
    ] = 1e-3,
    max_steps: Annotated[int, typer.Option(help="BFGS steps at most.", min=0)] = 1000,
    optimise: Annotated[
        bool, typer.Option(help="Relax each molecule with each model first.")
    ] = True,
    dtype: Annotated[str, typer.Option(help="Student precision: float32 or float64.")] = (
        "float32"
    ),
    device: Annotated[
        str, typer.Option(help="Device for a torch teacher: cpu, cuda, cuda:N.")
    ] = "cpu",
    output: Annotated[
        Path,
        typer.Option("--output", "-o", help="Folder for vibrations.json and vibrations.png."),
    ] = Path("vibrations"),
    overwrite: Annotated[bool, typer.Option(help="Replace earlier results there.")] = False,
) -> None:
    """Harmonic frequencies of molecules: student vs teacher, each at its own minimum.

    Each model relaxes each molecule (BFGS), then ASE Vibrations takes central
    differences of its forces. Writes vibrations.json (the 3N−6 frequencies of both,
    errors in cm⁻¹, minima RMSD) and vibrations.png.
    """
    import ase.build

    from jaxdistill.curvature import plot_vibrations, vibration_comparison
    from jaxdistill.md.ase_calculator import StudentCalculator
    from jaxdistill.teachers import load_teacher

    if dtype not in ("float32", "float64"):
        raise ValueError(f"--dtype must be float32 or float64, got {dtype!r}")
    molecules = [(str(path), _read_structure(path)) for path in structure or ()]
    for name in molecule or ():
        try:
            molecules.append((name, ase.build.molecule(name)))
        except KeyError:
            raise ValueError(f"--molecule {name}: not a molecule ase.build knows") from None
    if not molecules:
        raise ValueError("give at least one --structure FILE or --molecule NAME")
    _check_output(output, ("vibrations.json", "vibrations.png"), overwrite)
    calculator = StudentCalculator(student, dtype=dtype)
    loaded = load_teacher(teacher, device=device).as_calculator()
    comparisons = []
    for name, atoms in molecules:
        console.print(f"{name}: relaxing and displacing with both models")
        comparison = vibration_comparison(
            calculator,
            loaded,
            atoms,
            delta_angstrom=delta,
            fmax_ev_per_angstrom=fmax,
            max_steps=max_steps,
            optimise=optimise,
            name=name,
        )
        m = comparison.metrics()
        console.print(
            f"  {m['n_modes']} modes: MAE {m['mae_cm1']:.1f} cm⁻¹, max {m['max_error_cm1']:.1f} "
            f"cm⁻¹; minima {m.get('geometry_rmsd_angstrom', float('nan')):.3f} Å apart"
        )
        comparisons.append(comparison)
    output.mkdir(parents=True, exist_ok=True)
    results = {"molecules": [c.to_dict() for c in comparisons]}
    (output / "vibrations.json").write_text(json.dumps(results, indent=1) + "\n")
    plot_vibrations(comparisons, output / "vibrations.png")
    console.print(f"results and plot written to {output}")
