"""The stages of ``jaxdistill distill``: each a thin shell over the library function that
does the work, taking the :class:`StageContext` and returning a JSON-able summary."""

from __future__ import annotations

import json
import platform
import shutil
import time
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import ase.io
import numpy as np
from rich.console import Console

from jaxdistill.config.distill import DistillConfig
from jaxdistill.pipeline.report import write_report
from jaxdistill.pipeline.rundir import RunDirectory
from jaxdistill.progress import JaxdistillProgress, progress_bar


def hardware_description(device: str = "cpu") -> str:
    """A line naming where something ran (CPU model and cores, or the GPU)."""
    import os

    import jax

    if device.startswith("cuda"):
        try:
            import torch

            return f"{torch.cuda.get_device_name()} (torch)"
        except Exception:
            pass
    accelerator = jax.devices()[0]
    if accelerator.platform != "cpu":
        return f"{accelerator.device_kind} (jax)"
    return f"{platform.processor() or platform.machine()} CPU, {os.cpu_count()} cores"


@dataclass
class StageContext:
    """What every stage needs: the config, the run directory, a console, the device."""

    config: DistillConfig
    run: RunDirectory
    console: Console
    device: str = "cpu"
    _cache: dict[str, Any] = field(default_factory=dict)

    @cached_property
    def teacher(self):
        """The teacher, loaded on first use (loading costs seconds)."""
        from jaxdistill.teachers import load_teacher

        self.console.print(f"loading teacher [bold]{self.config.teacher}[/] on {self.device}")
        return load_teacher(self.config.teacher, device=self.device, **self.config.teacher_options)

    def progress(self) -> JaxdistillProgress:
        return progress_bar(self.console)

    @property
    def final_student(self):
        """The student that is evaluated and validated: the last active-learning
        round's when active learning is configured, else the trained one."""
        active = self.config.active_learning
        if active is None:
            return self.run.student
        return self.run.refine / f"round-{active.rounds}" / "student"


def sample_stage(context: StageContext) -> dict[str, Any]:
    """Generate configurations (teacher MD, rattles, strains) into frames.extxyz.

    Each finished teacher MD trajectory is kept in ``sample_cache/`` until the stage
    ends, so a killed run resumes with the trajectory it was in.
    """
    from jaxdistill.sampling import element_counts, sample, sampler_counts

    config = context.config.sampling
    cluster = context.config.cluster
    options = {"device": context.device}
    if config.md is not None and config.md.teacher is None:
        # Dask workers load the teacher from its spec; one process uses the loaded one.
        teacher = context.config.teacher if cluster is not None else context.teacher
        options.update(context.config.teacher_options)
    else:
        teacher = None
    start = time.perf_counter()
    frames = sample(
        config,
        teacher=teacher,
        progress=True,
        console=context.console,
        cache_dir=context.run.sample_cache,
        teacher_options=options,
        cluster=cluster,
    )
    temporary = context.run.frames.with_suffix(".partial.extxyz")
    ase.io.write(temporary, frames, format="extxyz")
    temporary.replace(context.run.frames)
    shutil.rmtree(context.run.sample_cache, ignore_errors=True)  # in frames.extxyz now
    temperatures = sorted(
        {
            float(f.info["temperature_kelvin"])
            for f in frames
            if np.isfinite(f.info.get("temperature_kelvin", np.nan))
        }
    )
    summary = {
        "frames": len(frames),
        "atoms": int(sum(len(f) for f in frames)),
        "elements": element_counts(frames),
        "samplers": sampler_counts(frames),
        "temperatures_kelvin": temperatures,
        "seconds": time.perf_counter() - start,
        "hardware": hardware_description(context.device),
    }
    context.console.print(
        f"{summary['frames']} frames, {summary['atoms']} atoms, elements {summary['elements']},"
        f" samplers {summary['samplers']}"
    )
    return summary


def label_stage(context: StageContext) -> dict[str, Any]:
    """Label the frames with the teacher into labels.h5 (resumes a killed run); on the
    config's Dask cluster when it has one (shards merged into the same labels.h5), with
    Hessian-vector products when the config has a ``hessian_labels`` section."""
    hessian = context.config.hessian_labels
    hessian_arguments = hessian.label_arguments() if hessian is not None else {}
    if context.config.cluster is not None:
        from jaxdistill.data.store import LabelStore
        from jaxdistill.fanout import label_on_cluster

        result = label_on_cluster(
            context.config.teacher,
            context.run.frames,
            context.run.labels,
            context.config.cluster,
            teacher_options={"device": context.device, **context.config.teacher_options},
            batch_size=context.config.label_batch_size,
            progress=True,
            console=context.console,
            **hessian_arguments,
        )
        with LabelStore(context.run.labels) as store:
            provenance = store.teacher  # the workers' teacher; none is loaded here
    else:
        from jaxdistill.labelling import label

        result = label(
            context.teacher,
            context.run.frames,
            context.run.labels,
            batch_size=context.config.label_batch_size,
            progress=True,
            console=context.console,
            **hessian_arguments,
        )
        provenance = context.teacher.provenance()
    return {
        "frames": result.n_frames,
        "labelled_now": result.n_labelled,
        "resumed": result.n_resumed,
        "atoms": result.n_atoms,
        "elements": result.elements,
        "seconds_per_frame": result.seconds_per_frame,
        **({"hessian": result.hessian} if result.hessian else {}),
        "teacher": provenance,
        "hardware": hardware_description(context.device),
    }


def train_stage(context: StageContext) -> dict[str, Any]:
    """Train the student on the labels (resumes from its last checkpoint)."""
    from jaxdistill.train import train

    student = train(
        context.run.labels, context.run.student, context.config.train, console=context.console
    )
    summary = dict(student.metadata.get("training", {}))
    summary.update(
        architecture=student.architecture,
        parameters=student.num_parameters,
        hardware=hardware_description("cpu"),
    )
    return summary


def refine_stage(context: StageContext) -> dict[str, Any]:
    """Active learning: student MD finds weak spots, the teacher labels them, fine-tune."""
    from jaxdistill.pipeline.refine import refine

    result = refine(
        context.run.student,
        context.run.labels,
        context.teacher,
        context.config.sampling,
        context.config.train,
        context.config.active_learning,
        context.run.refine,
        label_batch_size=context.config.label_batch_size,
        console=context.console,
    )
    result["hardware"] = hardware_description(context.device)
    return result


def evaluate_stage(context: StageContext) -> dict[str, Any]:
    """Accuracy against the teacher on held-out frames, with parity plots."""
    from jaxdistill.evaluate import evaluate, summary_lines

    result = evaluate(
        context.final_student,
        context.run.labels,
        split=context.config.evaluate_split,
        output_dir=context.run.evaluation,
    )
    for line in summary_lines(result):
        context.console.print(line)
    return {k: v for k, v in result.items() if k not in ("provenance",)}


def md_stage(context: StageContext) -> dict[str, Any]:
    """Student and teacher MD side by side; held-out frames at an unseen temperature."""
    from jaxdistill.md.ase_calculator import StudentCalculator
    from jaxdistill.sampling import load_structures
    from jaxdistill.student import load_student
    from jaxdistill.validation import (
        time_student_jaxmd,
        total_steps,
        validate_md,
        validation_temperatures,
    )

    config = context.config.md_validation
    structures = load_structures(context.config.sampling)
    if not 0 <= config.structure_index < len(structures):
        raise ValueError(
            f"md_validation.structure_index {config.structure_index} out of range: "
            f"{len(structures)} starting structures"
        )
    structure = structures[config.structure_index]
    sampled = context.config.sampling.md.temperatures_kelvin if context.config.sampling.md else ()
    temperatures = validation_temperatures(sampled, config.temperatures_kelvin)
    student = load_student(context.final_student)
    teacher = context.teacher
    context.console.print(
        f"MD validation on {structure.get_chemical_formula()} at {temperatures} K "
        f"(training temperatures {list(sampled)})"
    )
    with context.progress() as bar:
        task = bar.add_task("MD student + teacher", total=total_steps(config, len(temperatures)))
        results = validate_md(
            structure,
            lambda: StudentCalculator(student),
            teacher.as_calculator,
            temperatures,
            config,
            context.run.md,
            progress=lambda n: bar.advance(task, n),
        )
    context.console.print("timing the student's jax-md step on the same structure")
    results["student_jaxmd"] = time_student_jaxmd(
        student,
        structure,
        min(temperatures),
        config,
        [entry["teacher"]["seconds_per_step"] for entry in results["temperatures"]],
    )
    results["training_temperatures_kelvin"] = [float(t) for t in sampled]
    results["unseen_temperatures_kelvin"] = [t for t in temperatures if t not in sampled]
    results["structure"] = structure.get_chemical_formula()
    results["n_atoms"] = len(structure)
    results["hardware"] = hardware_description(context.device)
    (context.run.md / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    return {
        "temperatures_kelvin": temperatures,
        "unseen_temperatures_kelvin": results["unseen_temperatures_kelvin"],
        "nve_drift_mev_per_atom_per_ps": results.get("nve", {}).get("drift_mev_per_atom_per_ps"),
        "results_file": str(context.run.md / "results.json"),
    }


def _student_calculator(context: StageContext, dtype: str):
    """A fresh calculator of the evaluated student (the last refine round's, if any)."""
    from jaxdistill.md.ase_calculator import StudentCalculator
    from jaxdistill.student import load_student

    return StudentCalculator(load_student(context.final_student), dtype=dtype)


def phonons_stage(context: StageContext) -> dict[str, Any]:
    """Student vs teacher phonons of a crystal (phonopy): bands, DOS, errors in THz."""
    from jaxdistill.curvature import phonon_comparison, plot_phonons
    from jaxdistill.sampling import load_structures

    config = context.config.phonons
    if config.structure is not None:
        structure = config.structure.load()[0]
    else:
        crystals = [s for s in load_structures(context.config.sampling) if all(s.pbc)]
        if not crystals:
            raise ValueError(
                "phonons: no structure given and no periodic starting structure in sampling"
            )
        structure = crystals[0]
    context.console.print(
        f"phonons of {structure.get_chemical_formula()} in a {config.supercell} supercell "
        f"(displacement {config.displacement_angstrom} Å), student and teacher"
    )
    comparison = phonon_comparison(
        _student_calculator(context, config.dtype),
        context.teacher.as_calculator(),
        structure,
        config.supercell,
        config.displacement_angstrom,
        plus_minus=config.plus_minus,
        q_spacing_per_angstrom=config.q_spacing_per_angstrom,
        dos_mesh=config.dos_mesh,
        dos_sigma_thz=config.dos_sigma_thz,
    )
    out = context.run.phonons
    out.mkdir(parents=True, exist_ok=True)
    results = comparison.to_dict()
    results["hardware"] = hardware_description(context.device)
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    plot_phonons(comparison, out / "phonons.png")
    # phonopy's own files (displacements, forces): phonopy-load reads them
    comparison.student.phonon.save(out / "student_phonopy_params.yaml")
    comparison.teacher.phonon.save(out / "teacher_phonopy_params.yaml")
    metrics = {k: v for k, v in results["metrics"].items() if k != "points"}
    context.console.print(
        f"phonon frequencies: MAE {metrics['band_mae_thz']:.3f} THz, "
        f"max {metrics['band_max_error_thz']:.3f} THz over the path"
    )
    return {**metrics, "results_file": str(out / "results.json")}


def vibrations_stage(context: StageContext) -> dict[str, Any]:
    """Student vs teacher harmonic frequencies of molecules, each at its own minimum."""
    from jaxdistill.curvature import plot_vibrations, vibration_comparison
    from jaxdistill.sampling import load_structures

    config = context.config.vibrations
    molecules = []
    for spec in config.molecules:
        name = spec.args.get("name") if spec.build == "molecule" else None
        molecules += [(name or m.get_chemical_formula(), m) for m in spec.load()]
    if not config.molecules:
        molecules = [
            (m.get_chemical_formula(), m)
            for m in load_structures(context.config.sampling)
            if not any(m.pbc)
        ]
        if not molecules:
            raise ValueError(
                "vibrations: no molecules given and no non-periodic starting structure in sampling"
            )
    student = _student_calculator(context, config.dtype)
    teacher = context.teacher.as_calculator()
    comparisons = []
    for name, molecule in molecules:
        context.console.print(f"vibrations of {name}: relaxing and displacing, both models")
        comparison = vibration_comparison(
            student,
            teacher,
            molecule,
            delta_angstrom=config.delta_angstrom,
            fmax_ev_per_angstrom=config.fmax_ev_per_angstrom,
            max_steps=config.max_optimisation_steps,
            optimise=config.optimise,
            name=name,
        )
        m = comparison.metrics()
        context.console.print(
            f"  {m['n_modes']} modes: MAE {m['mae_cm1']:.1f} cm⁻¹, "
            f"max {m['max_error_cm1']:.1f} cm⁻¹"
        )
        comparisons.append(comparison)
    out = context.run.vibrations
    out.mkdir(parents=True, exist_ok=True)
    molecules_out = [c.to_dict() for c in comparisons]
    errors = np.concatenate(
        [np.abs(c.student.modes_cm1 - c.teacher.modes_cm1) for c in comparisons]
    )
    overall = {
        "molecules": len(comparisons),
        "modes": len(errors),
        "mae_cm1": float(errors.mean()) if len(errors) else None,
        "max_error_cm1": float(errors.max()) if len(errors) else None,
    }
    results = {
        "overall": overall,
        "molecules": molecules_out,
        "hardware": hardware_description(context.device),
    }
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    plot_vibrations(comparisons, out / "vibrations.png")
    return {**overall, "results_file": str(out / "results.json")}


def report_stage(context: StageContext) -> dict[str, Any]:
    """Write report.md (+ plots) from the stage records and print a summary table."""
    return write_report(context.run, context.config, context.console)


#: stage name -> its function, one for every name of :data:`~jaxdistill.config.STAGES`
STAGE_FUNCTIONS = {
    "sample": sample_stage,
    "label": label_stage,
    "train": train_stage,
    "refine": refine_stage,
    "evaluate": evaluate_stage,
    "md": md_stage,
    "phonons": phonons_stage,
    "vibrations": vibrations_stage,
    "report": report_stage,
}
