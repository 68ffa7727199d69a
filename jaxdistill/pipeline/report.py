"""The distillation report: report.md with PNG plots, and a one-screen terminal summary."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from jaxdistill.config.distill import DistillConfig
from jaxdistill.pipeline.rundir import RunDirectory


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _active_learning_lines(refine: dict[str, Any]) -> list[str]:
    """The report section of the refine stage: what each round found and fixed."""
    lines = [
        "## Active learning",
        "",
        "Each round runs student MD (NVT) from the starting structures, has the teacher "
        "label frames from it (and every one of the last frames before a failure), and "
        "fine-tunes on them. The evaluated student is the last round's.",
        "",
        "| round | runs failed | frames labelled | left out (teacher unsure) | forces only "
        "(teacher unsure) | student force MAE on the frames trained on, before → after "
        "(meV/Å) | failures |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in refine["rounds"]:
        before = r["student_before_on_new_frames"]["force_mae_mev_per_angstrom"]
        after = r["student_after_on_new_frames"]["force_mae_mev_per_angstrom"]
        failures = "; ".join(
            f"{run['structure']} {run['temperature_kelvin']:g} K at step {run['steps_done']}"
            for run in r["runs"]
            if run["failure"]
        )
        lines.append(
            f"| round {r['round']} | {r['failed_runs']}/{len(r['runs'])} | {r['frames']} | "
            f"{r.get('frames_dropped_teacher_uncertain', 0)} | {r.get('frames_forces_only', 0)} | "
            f"{_fmt(before, 1)} → {_fmt(after, 1)} | {failures or 'none'} |"
        )
    return [*lines, ""]


def _phonon_lines(results: dict[str, Any]) -> list[str]:
    """The report section of the phonons stage: errors over the path and at Γ, X, L..."""
    m = results["metrics"]
    s, t = results["student"], results["teacher"]
    lines = [
        f"## Phonons: student vs teacher ({results['formula']}, primitive cell of "
        f"{results['n_primitive']} atom{'s' if results['n_primitive'] > 1 else ''})",
        "",
        f"Force constants by finite displacements of {results['displacement_angstrom']:g} Å "
        f"({results['displacements']} displaced supercells of {results['n_supercell']} atoms, "
        f"supercell {results['supercell']}, phonopy), both models at the same geometry; bands "
        "along seekpath's standard path, branches matched by rank at each q-point.",
        "",
        "| quantity | value |",
        "|---|---|",
        f"| frequency MAE over the path | {_fmt(m['band_mae_thz'], 3)} THz |",
        f"| largest frequency error over the path | {_fmt(m['band_max_error_thz'], 3)} THz |",
        f"| DOS difference (relative L1) | {_fmt(100 * m['dos_relative_difference'], 1)} % |",
        f"| highest frequency, student / teacher | {_fmt(s['max_frequency_thz'])} / "
        f"{_fmt(t['max_frequency_thz'])} THz |",
        f"| lowest frequency, student / teacher (negative: imaginary) | "
        f"{_fmt(s['min_frequency_thz'], 3)} / {_fmt(t['min_frequency_thz'], 3)} THz |",
        f"| acoustic modes at Γ, largest magnitude, student / teacher | "
        f"{_fmt(m['student_acoustic_gamma_max_thz'], 3)} / "
        f"{_fmt(m['teacher_acoustic_gamma_max_thz'], 3)} THz |",
        f"| largest residual force on the undisplaced supercell, student / teacher | "
        f"{_fmt(1e3 * s['max_residual_force_ev_per_angstrom'], 1)} / "
        f"{_fmt(1e3 * t['max_residual_force_ev_per_angstrom'], 1)} meV/Å |",
        "",
        "| point | frequency MAE (THz) | max error (THz) | teacher frequencies (THz) |",
        "|---|---|---|---|",
    ]
    for label, point in m["points"].items():
        teacher = ", ".join(f"{f:.2f}" for f in point["teacher_thz"])
        lines.append(
            f"| {label} | {_fmt(point['mae_thz'], 3)} | {_fmt(point['max_error_thz'], 3)} "
            f"| {teacher} |"
        )
    return [*lines, "", "![phonons](phonons/phonons.png)", ""]


def _vibration_lines(results: dict[str, Any]) -> list[str]:
    """The report section of the vibrations stage: per molecule errors in cm⁻¹."""
    lines = [
        "## Molecular vibrations: student vs teacher",
        "",
        "Harmonic frequencies (ASE `Vibrations`, central differences) of each molecule "
        "relaxed by each model (BFGS); the 3N−6 modes matched by rank.",
        "",
        "| molecule | modes | MAE (cm⁻¹) | max error (cm⁻¹) | relative MAE | imaginary modes, "
        "student / teacher | minima RMSD (Å) | relaxed: student / teacher |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for molecule in results["molecules"]:
        m = molecule["metrics"]
        relaxed = " / ".join(
            "yes"
            if molecule[who]["converged"]
            else f"no ({molecule[who]['optimisation_steps']} steps)"
            for who in ("student", "teacher")
        )
        lines.append(
            f"| {molecule['name']} | {m['n_modes']} | {_fmt(m['mae_cm1'], 1)} | "
            f"{_fmt(m['max_error_cm1'], 1)} | "
            f"{_fmt(100 * (m.get('relative_mae') or math.nan), 1)} % | "
            f"{m.get('student_imaginary_modes', '–')} / {m.get('teacher_imaginary_modes', '–')} | "
            f"{_fmt(m.get('geometry_rmsd_angstrom'), 3)} | {relaxed} |"
        )
    return [*lines, "", "![vibrations](vibrations/vibrations.png)", ""]


def plot_md(results: dict[str, Any], output_dir: Path) -> dict[str, str]:
    """RDF overlays per temperature and the NVE energy/temperature traces."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = {}
    entries = results.get("temperatures", [])
    if entries:
        fig, axes = plt.subplots(1, len(entries), figsize=(4 * len(entries), 3.2), squeeze=False)
        for ax, entry in zip(axes[0], entries, strict=True):
            r = entry["rdf_r_angstrom"]
            ax.plot(r, entry["rdf_teacher"], label="teacher", lw=2, color="0.3")
            ax.plot(r, entry["rdf_student"], label="student", lw=1.2, ls="--", color="C3")
            unseen = entry["temperature_kelvin"] in results.get("unseen_temperatures_kelvin", [])
            ax.set_title(f"{entry['temperature_kelvin']:g} K" + (" (unseen)" if unseen else ""))
            ax.set_xlabel("r (Å)")
        axes[0][0].set_ylabel("g(r)")
        axes[0][0].legend()
        fig.tight_layout()
        fig.savefig(output_dir / "rdf.png", dpi=110)
        plt.close(fig)
        files["rdf"] = "rdf.png"
    nve = results.get("nve")
    if nve:
        fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(6, 4.5), sharex=True)
        t = nve["time_ps"]
        e0 = nve["total_energy_ev_per_atom"][0]
        ax1.plot(t, [1e3 * (e - e0) for e in nve["total_energy_ev_per_atom"]], color="C0")
        ax1.set_ylabel("ΔE_total (meV/atom)")
        ax1.set_title(f"student NVE: drift {nve['drift_mev_per_atom_per_ps']:.3g} meV/atom/ps")
        ax2.plot(t, nve["temperature_kelvin"], color="C1")
        ax2.set_ylabel("T (K)")
        ax2.set_xlabel("time (ps)")
        fig.tight_layout()
        fig.savefig(output_dir / "nve.png", dpi=110)
        plt.close(fig)
        files["nve"] = "nve.png"
    return files


def write_report(run: RunDirectory, config: DistillConfig, console: Console) -> dict[str, Any]:
    """Write report.md (+ plots) from the stage records and print a summary table."""
    record = run.record()
    sample = record.get("sample", {}).get("summary", {})
    label = record.get("label", {}).get("summary", {})
    training = record.get("train", {}).get("summary", {})
    evaluation_file = run.evaluation / "evaluation.json"
    evaluation = json.loads(evaluation_file.read_text()) if evaluation_file.is_file() else {}
    md_file = run.md / "results.json"
    md = json.loads(md_file.read_text()) if md_file.is_file() else {}
    plots = plot_md(md, run.path) if md else {}

    lines = [f"# Distillation report: {config.name}", ""]
    teacher = label.get("teacher", {})
    lines += [
        f"Teacher: `{config.teacher}` ({teacher.get('package', '')} "
        f"{teacher.get('version', '')}). Student: {training.get('architecture', '?')} with "
        f"{training.get('parameters', '?')} parameters.",
        "",
        "## Data",
        "",
        f"- frames: {sample.get('frames', '–')} ({sample.get('atoms', '–')} atoms); "
        f"samplers: {sample.get('samplers', {})}",
        f"- elements: {sample.get('elements', {})}",
        f"- teacher MD temperatures: {sample.get('temperatures_kelvin', [])} K",
        f"- labelling: {_fmt(label.get('seconds_per_frame'), 3)} s/frame on "
        f"{label.get('hardware', '?')}",
        "",
    ]
    table = Table(title=f"jaxdistill: {config.name}")
    table.add_column("quantity")
    table.add_column("value", justify="right")
    refine = record.get("refine", {}).get("summary", {})
    if refine:
        lines += _active_learning_lines(refine)
        added = sum(r["frames"] for r in refine["rounds"])
        table.add_row("active learning", f"{len(refine['rounds'])} rounds, +{added} frames")
    if evaluation:
        e, f, s = evaluation["energy"], evaluation["forces"], evaluation.get("stress") or {}
        lines += [
            f"## Accuracy against the teacher ({evaluation['split']} split: "
            f"{evaluation['frames']} held-out frames)",
            "",
            "| quantity | value |",
            "|---|---|",
            f"| energy MAE | {_fmt(e['mae_meV_per_atom'], 3)} meV/atom |",
            f"| force MAE / RMSE | {_fmt(f['mae_meV_per_A'])} / "
            f"{_fmt(f['rmse_meV_per_A'])} meV/Å |",
            f"| relative force MAE | {_fmt(100 * f['relative_mae'])} % |",
            f"| force angle (mean) | {_fmt(f['angle_mean_deg'])}° |",
        ]
        if s:
            lines.append(f"| stress MAE | {_fmt(s['mae_meV_per_A3'], 3)} meV/Å³ |")
        for symbol, m in evaluation.get("per_element", {}).items():
            if m.get("atoms"):
                lines.append(f"| force MAE {symbol} | {_fmt(m['mae_meV_per_A'])} meV/Å |")
        lines += [""]
        for name in ("energy", "forces", "stress", "force_error_histogram"):
            path = (
                run.evaluation / f"{'parity_' if name != 'force_error_histogram' else ''}{name}.png"
            )
            if path.is_file():
                lines.append(f"![{name}](evaluation/{path.name})")
        lines.append("")
        table.add_row("energy MAE (meV/atom)", _fmt(e["mae_meV_per_atom"], 3))
        table.add_row("force MAE (meV/Å)", _fmt(f["mae_meV_per_A"]))
    if md:
        lines += [
            f"## MD: student vs teacher ({md.get('structure')}, {md.get('n_atoms')} atoms, "
            f"ASE Langevin for both, on {md.get('hardware')})",
            "",
            "| T target (K) | seen in training | T student (K) | T teacher (K) | RDF difference |"
            " force MAE on teacher frames (meV/Å) | energy MAE on teacher frames (meV/atom) |"
            " student ms/step | teacher ms/step | speed-up |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for entry in md["temperatures"]:
            st, te = entry["student"], entry["teacher"]
            unseen = entry["temperature_kelvin"] in md.get("unseen_temperatures_kelvin", [])
            errors = entry["student_on_teacher_frames"] or {}
            student_t = (
                f"blew up at step {st['blew_up_at_step']}"
                + (f" ({st['failure']})" if st.get("failure") else "")
                if st.get("blew_up_at_step") is not None
                else f"{_fmt(st['mean_temperature_kelvin'], 0)} ± "
                f"{_fmt(st['std_temperature_kelvin'], 0)}"
            )
            lines.append(
                f"| {entry['temperature_kelvin']:g} | {'no' if unseen else 'yes'} | {student_t}"
                f" | {_fmt(te['mean_temperature_kelvin'], 0)} ± "
                f"{_fmt(te['std_temperature_kelvin'], 0)} | "
                f"{_fmt(100 * entry['rdf_relative_difference'], 1)} % | "
                f"{_fmt(errors.get('force_mae_mev_per_angstrom'))} | "
                f"{_fmt(errors.get('energy_mae_mev_per_atom'), 3)} | "
                f"{_fmt(1e3 * st['seconds_per_step'], 2)} | {_fmt(1e3 * te['seconds_per_step'], 1)}"
                f" | {_fmt(entry['speedup_ase'], 1)}× |"
            )
            table.add_row(
                f"force MAE at {entry['temperature_kelvin']:g} K{' (unseen)' if unseen else ''}",
                _fmt(errors.get("force_mae_mev_per_angstrom")),
            )
            if st.get("blew_up_at_step") is not None:
                table.add_row(f"student MD at {entry['temperature_kelvin']:g} K", "[red]blew up")
        lines.append("")
        if "rdf" in plots:
            lines += ["![RDF](rdf.png)", ""]
        nve = md.get("nve")
        if nve and nve.get("blew_up_at_step") is not None:
            why = f" ({nve['failure']})" if nve.get("failure") else ""
            lines += [f"Student NVE blew up at step {nve['blew_up_at_step']}{why}.", ""]
        elif nve:
            lines += [
                f"Student NVE over {nve['duration_ps']:g} ps: drift "
                f"{_fmt(nve['drift_mev_per_atom_per_ps'], 4)} meV/atom/ps, fluctuation "
                f"{_fmt(nve['energy_std_mev_per_atom'], 4)} meV/atom, mean T "
                f"{_fmt(nve['mean_temperature_kelvin'], 0)} K.",
                "",
                "![NVE](nve.png)",
                "",
            ]
            table.add_row("NVE drift (meV/atom/ps)", _fmt(nve["drift_mev_per_atom_per_ps"], 4))
        speedups = [entry["speedup_ase"] for entry in md["temperatures"]]
        table.add_row("student speed-up (ASE step)", f"{min(speedups):.1f}–{max(speedups):.1f}×")
        jaxmd = md.get("student_jaxmd") or {}
        if jaxmd.get("speedup_vs_teacher_ase"):
            ratios = jaxmd["speedup_vs_teacher_ase"]
            lines += [
                f"Student jax-md NVT step on the same structure ({jaxmd['steps']} steps at "
                f"{jaxmd['temperature_kelvin']:g} K, after compilation): "
                f"{_fmt(jaxmd['us_per_step'], 1)} µs/step, {min(ratios):.0f}–{max(ratios):.0f}× "
                f"faster than the teacher's ASE step above (on {md.get('hardware')}).",
                "",
            ]
            table.add_row("student speed-up (jax-md step)", f"{min(ratios):.0f}–{max(ratios):.0f}×")
        elif "skipped" in jaxmd:
            lines += [f"Student jax-md step not timed: {jaxmd['skipped']}.", ""]
    phonons_file = run.phonons / "results.json"
    if config.phonons is not None and phonons_file.is_file():
        phonons = json.loads(phonons_file.read_text())
        lines += _phonon_lines(phonons)
        table.add_row("phonon MAE (THz)", _fmt(phonons["metrics"]["band_mae_thz"], 3))
    vibrations_file = run.vibrations / "results.json"
    if config.vibrations is not None and vibrations_file.is_file():
        vibrations = json.loads(vibrations_file.read_text())
        lines += _vibration_lines(vibrations)
        table.add_row("vibration MAE (cm⁻¹)", _fmt(vibrations["overall"]["mae_cm1"], 1))
    missing = [
        f"{stage} (add a `{stage}` section: docs/validation.md)"
        for stage in ("phonons", "vibrations")
        if getattr(config, stage) is None
    ]
    if missing:
        lines += [f"Curvature checks not configured: {'; '.join(missing)}.", ""]
    lines += [
        "## Times",
        "",
        *[f"- {stage}: {_fmt(entry.get('seconds'), 1)} s" for stage, entry in record.items()],
        "",
    ]
    run.report.write_text("\n".join(lines))
    console.print(table)
    console.print(f"report: {run.report}")
    return {"report": str(run.report), "plots": sorted(plots.values())}
