"""Curvature validation: a student's phonons and molecular vibrations against its teacher's.

Forces tell how well a student matches its teacher at the frames it saw; the second
derivatives of the energy decide phonons, vibrational spectra, heat capacities and
free energies. Both comparisons here use finite differences of each model's own
forces, through any two ASE calculators (a :class:`~jaxdistill.StudentCalculator` and
``teacher.as_calculator()``), with the same displacements for both:

- :func:`phonon_comparison`: force constants of a crystal in a supercell by phonopy's
  finite displacements, phonon bands along seekpath's standard path through the
  Brillouin zone of the primitive cell and the density of states on a Γ-centred mesh.
  Both models see the same structure (no relaxation): the comparison is of the force
  constants at one geometry, not of the lattice constants.
- :func:`vibration_comparison`: harmonic frequencies of a molecule (ASE
  ``Vibrations``, central differences) after relaxing it with each model's own
  calculator (BFGS): frequencies are defined at a minimum, and each model's minimum is
  where its molecule would sit. The difference of the two minima is reported (RMSD).

Units: frequencies of phonons in THz, of molecular vibrations in cm⁻¹ (the fields'
customs; 1 THz = 33.356 cm⁻¹); imaginary frequencies are given as negative numbers.
:func:`plot_phonons` and :func:`plot_vibrations` draw the comparisons (matplotlib, Agg).
"""

from __future__ import annotations

import math
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ase
import numpy as np

__all__ = [
    "THZ_TO_CM1",
    "BandPath",
    "ModelPhonons",
    "ModelVibrations",
    "PhononComparison",
    "VibrationComparison",
    "band_path",
    "model_phonons",
    "model_vibrations",
    "phonon_comparison",
    "plot_phonons",
    "plot_vibrations",
    "prepare_phonopy",
    "real_mode_count",
    "vibration_comparison",
]

#: cm⁻¹ per THz (1e12 / c with c in cm/s).
THZ_TO_CM1 = 1e12 / 2.99792458e10


def _finite(value: float) -> float | None:
    """A float for JSON: NaN and infinities become None."""
    return float(value) if math.isfinite(value) else None


# --------------------------------------------------------------------------- phonons


@dataclass
class BandPath:
    """q-points along the standard path through the Brillouin zone (seekpath, HPKOT).

    Attributes:
        qpoints: ``[n_q, 3]`` reduced coordinates in the reciprocal basis of phonopy's
            primitive cell (no 2π).
        distances: ``[n_q]`` position along the path, 1/Å (2π included); equal at both
            ends of a jump (``X|K``).
        labels: ``(index, label)`` of each high-symmetry point on the path ("Γ", "X", ...).
        segments: ``(start, stop)`` index ranges of the straight, continuous pieces.
    """

    qpoints: np.ndarray
    distances: np.ndarray
    labels: list[tuple[int, str]]
    segments: list[tuple[int, int]]

    def to_dict(self) -> dict[str, Any]:
        return {
            "qpoints": self.qpoints.tolist(),
            "distances_per_angstrom": self.distances.tolist(),
            "labels": [[i, label] for i, label in self.labels],
            "segments": [list(s) for s in self.segments],
        }


def _greek(label: str) -> str:
    return {"GAMMA": "Γ", "SIGMA_0": "Σ₀", "DELTA_0": "Δ₀", "LAMBDA_0": "Λ₀"}.get(label, label)


def band_path(
    cell: np.ndarray, scaled_positions: np.ndarray, numbers: np.ndarray, q_spacing: float = 0.025
) -> BandPath:
    """The standard band path of a primitive cell, in that cell's reciprocal basis.

    seekpath standardises the cell (possibly rotating it and changing its basis);
    ``get_explicit_k_path_orig_cell`` transforms the path back to the cell given, so the
    q-points can go to phonopy as they are. (phonopy's own ``auto_band_structure`` uses
    seekpath's coordinates of the *standardised* cell with phonopy's primitive cell,
    which agree only when the two cells coincide.)

    Args:
        cell: ``[3, 3]`` primitive cell vectors as rows, Å.
        scaled_positions: ``[n, 3]`` fractional coordinates.
        numbers: ``[n]`` atomic numbers.
        q_spacing: distance between consecutive q-points, 1/Å (2π included).
    """
    import seekpath

    path = seekpath.get_explicit_k_path_orig_cell(
        (np.asarray(cell), np.asarray(scaled_positions), np.asarray(numbers)),
        reference_distance=q_spacing,
    )
    labels = [(i, _greek(l)) for i, l in enumerate(path["explicit_kpoints_labels"]) if l]
    # seekpath's segments are half-open [start, stop); consecutive ones share a point
    # when the path is continuous there
    segments = [(int(a), int(b)) for a, b in path["explicit_segments"]]
    return BandPath(
        qpoints=np.asarray(path["explicit_kpoints_rel"], dtype=np.float64),
        distances=np.asarray(path["explicit_kpoints_linearcoord"], dtype=np.float64),
        labels=labels,
        segments=segments,
    )


def prepare_phonopy(
    atoms: ase.Atoms,
    supercell: Sequence[int] | Sequence[Sequence[int]],
    displacement_angstrom: float = 0.01,
    plus_minus: bool = True,
    symprec: float = 1e-5,
) -> Any:
    """A phonopy object with its displacements generated (one per symmetry-distinct
    atom and direction; both signs with ``plus_minus``).

    The primitive cell is found by phonopy (``primitive_matrix="auto"``); masses are
    the structure's own (ASE's), so student and teacher see the same ones.

    Args:
        atoms: the crystal (periodic in three directions).
        supercell: ``[n1, n2, n3]`` or a 3×3 integer matrix applied to ``atoms.cell``.
        displacement_angstrom: displacement, Å.
        plus_minus: displace both ways.
        symprec: symmetry tolerance, Å.

    Returns:
        ``phonopy.Phonopy`` with ``supercells_with_displacements`` set.
    """
    from phonopy import Phonopy
    from phonopy.structure.atoms import PhonopyAtoms

    if not np.all(atoms.pbc) or abs(atoms.cell.volume) < 1e-9:
        raise ValueError("phonons need a crystal: periodic in three directions with a cell")
    unitcell = PhonopyAtoms(
        symbols=atoms.get_chemical_symbols(),
        cell=np.asarray(atoms.cell.array),
        scaled_positions=atoms.get_scaled_positions(),
        masses=atoms.get_masses(),
    )
    matrix = np.asarray(supercell, dtype=int)
    if matrix.shape == (3,):
        matrix = np.diag(matrix)
    with warnings.catch_warnings():
        # phonopy 4 warns that "auto" became the default even when it is passed
        # explicitly; "auto" (phonopy finds the primitive cell) is what is wanted here.
        warnings.simplefilter("ignore")
        phonon = Phonopy(
            unitcell, supercell_matrix=matrix, primitive_matrix="auto", symprec=symprec
        )
    phonon.generate_displacements(distance=displacement_angstrom, is_plusminus=bool(plus_minus))
    return phonon


def _phonopy_to_ase(cell: Any) -> ase.Atoms:
    atoms = ase.Atoms(
        symbols=cell.symbols, cell=cell.cell, scaled_positions=cell.scaled_positions, pbc=True
    )
    atoms.set_masses(cell.masses)
    return atoms


@dataclass
class ModelPhonons:
    """One model's phonons: bands along the path and the density of states.

    Attributes:
        frequencies_thz: ``[n_q, 3 n_primitive]`` frequencies along the path, sorted at
            each q-point, THz (imaginary ones negative).
        dos_frequencies_thz: ``[n_dos]`` frequency grid of the DOS, THz.
        dos: ``[n_dos]`` total density of states, states/THz per primitive cell
            (integrates to ``3 n_primitive``).
        max_residual_force_ev_per_angstrom: largest force on the undisplaced supercell,
            eV/Å (not zero when the structure is not at this model's equilibrium).
        supercell_calls: force calls made (displaced supercells plus the undisplaced one).
        seconds: wall time of the force calls, s.
        phonon: the phonopy object with this model's forces and force constants (for
            further analysis; ``phonon.save(...)`` writes phonopy's own file).
    """

    frequencies_thz: np.ndarray
    dos_frequencies_thz: np.ndarray
    dos: np.ndarray
    max_residual_force_ev_per_angstrom: float
    supercell_calls: int
    seconds: float
    phonon: Any = field(repr=False, default=None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "frequencies_thz": self.frequencies_thz.tolist(),
            "dos_frequencies_thz": self.dos_frequencies_thz.tolist(),
            "dos": self.dos.tolist(),
            "max_residual_force_ev_per_angstrom": self.max_residual_force_ev_per_angstrom,
            "supercell_calls": self.supercell_calls,
            "seconds": self.seconds,
            "min_frequency_thz": float(self.frequencies_thz.min()),
            "max_frequency_thz": float(self.frequencies_thz.max()),
        }


def model_phonons(
    calculator: Any,
    phonon: Any,
    path: BandPath,
    dos_mesh: Sequence[int] = (20, 20, 20),
    dos_sigma_thz: float = 0.1,
    dos_range_thz: tuple[float, float] | None = None,
    dos_pitch_thz: float = 0.02,
) -> ModelPhonons:
    """Force constants, bands and DOS of one model on a prepared phonopy object.

    Args:
        calculator: any ASE calculator (used for every displaced supercell).
        phonon: from :func:`prepare_phonopy`, one per model: it receives this model's
            forces and force constants.
        path: from :func:`band_path` on ``phonon.primitive``.
        dos_mesh: Γ-centred q-mesh of the DOS (Γ-centred keeps the point-group
            symmetry; phonopy's default half shift for even meshes does not).
        dos_sigma_thz: Gaussian smearing, THz.
        dos_range_thz: DOS frequency range, THz (None: from the mesh frequencies).
        dos_pitch_thz: DOS grid spacing, THz.
    """
    start = time.perf_counter()
    reference = _phonopy_to_ase(phonon.supercell)
    reference.calc = calculator
    residual = float(np.abs(reference.get_forces()).max())
    forces = []
    for displaced in phonon.supercells_with_displacements:
        atoms = _phonopy_to_ase(displaced)
        atoms.calc = calculator
        forces.append(np.array(atoms.get_forces(), dtype=np.float64))
    seconds = time.perf_counter() - start
    phonon.forces = np.asarray(forces)
    phonon.produce_force_constants()
    phonon.run_qpoints(path.qpoints)
    frequencies = np.asarray(phonon.qpoints.frequencies, dtype=np.float64)
    phonon.run_mesh(list(dos_mesh), is_gamma_center=True)
    if dos_range_thz is None:
        mesh = phonon.mesh.frequencies
        dos_range_thz = (
            float(mesh.min()) - 5 * dos_sigma_thz,
            float(mesh.max()) + 5 * dos_sigma_thz,
        )
    phonon.run_total_dos(
        sigma=dos_sigma_thz,
        freq_min=dos_range_thz[0],
        freq_max=dos_range_thz[1],
        freq_pitch=dos_pitch_thz,
        use_tetrahedron_method=False,
    )
    return ModelPhonons(
        frequencies_thz=frequencies,
        dos_frequencies_thz=np.asarray(phonon.total_dos.frequency_points, dtype=np.float64),
        dos=np.asarray(phonon.total_dos.dos, dtype=np.float64),
        max_residual_force_ev_per_angstrom=residual,
        supercell_calls=1 + len(forces),
        seconds=seconds,
        phonon=phonon,
    )


@dataclass
class PhononComparison:
    """Student and teacher phonons of one crystal on the same path and DOS grid.

    Metrics (branches matched by rank: sorted frequencies at each q-point):

    - ``band_mae_thz``: mean over the path's q-points and all branches of
      |ν_student − ν_teacher|, THz;
    - ``band_max_error_thz``: the largest such difference, THz;
    - ``band_rmse_thz``: root mean square, THz;
    - ``points``: per high-symmetry point (Γ, X, L, ...): both models' frequencies and
      their mean and largest absolute difference, THz;
    - ``dos_relative_difference``: ∫|g_student − g_teacher| dν / ∫ g_teacher dν;
    - ``acoustic_gamma_max_thz``: per model, the largest |ν| of the three branches of
      smallest |ν| at Γ (0 for exact force constants; finite differences leave a residue).
    """

    formula: str
    n_primitive: int
    n_supercell: int
    supercell: list
    displacement_angstrom: float
    displacements: int
    path: BandPath
    student: ModelPhonons
    teacher: ModelPhonons

    @property
    def errors(self) -> np.ndarray:
        return self.student.frequencies_thz - self.teacher.frequencies_thz

    def points(self) -> dict[str, dict[str, Any]]:
        """Both models' frequencies at each high-symmetry point of the path (first visit)."""
        out: dict[str, dict[str, Any]] = {}
        for index, label in self.path.labels:
            if label in out:
                continue
            s, t = self.student.frequencies_thz[index], self.teacher.frequencies_thz[index]
            out[label] = {
                "qpoint": self.path.qpoints[index].tolist(),
                "student_thz": s.tolist(),
                "teacher_thz": t.tolist(),
                "mae_thz": float(np.mean(np.abs(s - t))),
                "max_error_thz": float(np.max(np.abs(s - t))),
            }
        return out

    def acoustic_gamma_max_thz(self, model: ModelPhonons) -> float | None:
        gamma = np.flatnonzero(np.all(np.abs(self.path.qpoints) < 1e-9, axis=1))
        if not len(gamma):
            return None
        # the three of smallest magnitude: an unstable model's imaginary optical modes
        # sort below its acoustic ones
        return float(np.sort(np.abs(model.frequencies_thz[gamma[0]]))[2])

    def metrics(self) -> dict[str, Any]:
        errors = np.abs(self.errors)
        s, t = self.student, self.teacher
        width = t.dos_frequencies_thz[1] - t.dos_frequencies_thz[0]
        dos_difference = float(
            np.sum(np.abs(s.dos - t.dos)) * width / max(np.sum(np.abs(t.dos)) * width, 1e-300)
        )
        return {
            "band_mae_thz": float(errors.mean()),
            "band_max_error_thz": float(errors.max()),
            "band_rmse_thz": float(np.sqrt(np.mean(errors**2))),
            "dos_relative_difference": dos_difference,
            "student_min_frequency_thz": float(s.frequencies_thz.min()),
            "teacher_min_frequency_thz": float(t.frequencies_thz.min()),
            "student_acoustic_gamma_max_thz": self.acoustic_gamma_max_thz(s),
            "teacher_acoustic_gamma_max_thz": self.acoustic_gamma_max_thz(t),
            "points": self.points(),
        }

    def to_dict(self) -> dict[str, Any]:
        """Everything as JSON-serialisable numbers (THz, 1/Å, eV/Å, s)."""
        return {
            "formula": self.formula,
            "n_primitive": self.n_primitive,
            "n_supercell": self.n_supercell,
            "supercell": self.supercell,
            "displacement_angstrom": self.displacement_angstrom,
            "displacements": self.displacements,
            "metrics": self.metrics(),
            "path": self.path.to_dict(),
            "student": self.student.to_dict(),
            "teacher": self.teacher.to_dict(),
        }


def phonon_comparison(
    student_calculator: Any,
    teacher_calculator: Any,
    atoms: ase.Atoms,
    supercell: Sequence[int] | Sequence[Sequence[int]] = (2, 2, 2),
    displacement_angstrom: float = 0.01,
    *,
    plus_minus: bool = True,
    q_spacing_per_angstrom: float = 0.025,
    dos_mesh: Sequence[int] = (20, 20, 20),
    dos_sigma_thz: float = 0.1,
    symprec: float = 1e-5,
) -> PhononComparison:
    """Phonons of a crystal from both calculators, with the same displacements.

    Args:
        student_calculator, teacher_calculator: ASE calculators (any two models).
        atoms: the crystal; phonopy finds its primitive cell. Used as it is (not
            relaxed): both models' force constants at the same geometry.
        supercell: ``[n1, n2, n3]`` or a 3×3 integer matrix on ``atoms.cell``; the
            force constants reach as far as half the supercell.
        displacement_angstrom: finite displacement, Å.
        plus_minus: displace both ways (central differences).
        q_spacing_per_angstrom: spacing of the band path's q-points, 1/Å (2π included).
        dos_mesh: Γ-centred q-mesh of the DOS.
        dos_sigma_thz: Gaussian smearing of the DOS, THz.
        symprec: symmetry tolerance, Å.

    Returns:
        The :class:`PhononComparison` (``.metrics()``, ``.to_dict()``).
    """
    setup = (atoms, supercell, displacement_angstrom, plus_minus, symprec)
    phonon = prepare_phonopy(*setup)
    primitive = phonon.primitive
    path = band_path(
        primitive.cell, primitive.scaled_positions, primitive.numbers, q_spacing_per_angstrom
    )
    teacher = model_phonons(teacher_calculator, phonon, path, dos_mesh, dos_sigma_thz)
    # the student's DOS on the teacher's grid (so they can be subtracted), widened when
    # the student's frequencies reach further
    student_probe = model_phonons(
        student_calculator, prepare_phonopy(*setup), path, dos_mesh, dos_sigma_thz
    )
    low = min(teacher.dos_frequencies_thz[0], student_probe.dos_frequencies_thz[0])
    high = max(teacher.dos_frequencies_thz[-1], student_probe.dos_frequencies_thz[-1])
    student, teacher = (
        _redo_dos(model, (low, high), dos_mesh, dos_sigma_thz) for model in (student_probe, teacher)
    )
    return PhononComparison(
        formula=atoms.get_chemical_formula(empirical=True),
        n_primitive=len(primitive),
        n_supercell=len(phonon.supercell),
        supercell=np.asarray(supercell).tolist(),
        displacement_angstrom=float(displacement_angstrom),
        displacements=len(phonon.supercells_with_displacements),
        path=path,
        student=student,
        teacher=teacher,
    )


def _redo_dos(
    model: ModelPhonons, dos_range: tuple[float, float], mesh: Sequence[int], sigma: float
) -> ModelPhonons:
    """The same model's DOS on another frequency range (force constants reused)."""
    phonon = model.phonon
    phonon.run_mesh(list(mesh), is_gamma_center=True)
    phonon.run_total_dos(
        sigma=sigma,
        freq_min=dos_range[0],
        freq_max=dos_range[1],
        freq_pitch=float(model.dos_frequencies_thz[1] - model.dos_frequencies_thz[0]),
        use_tetrahedron_method=False,
    )
    model.dos_frequencies_thz = np.asarray(phonon.total_dos.frequency_points, dtype=np.float64)
    model.dos = np.asarray(phonon.total_dos.dos, dtype=np.float64)
    return model


def plot_phonons(comparison: PhononComparison, path: str | Path, title: str | None = None) -> Path:
    """Band structures overlaid (teacher solid, student dashed) beside both DOS; a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    bands = comparison.path
    fig, (ax, ax_dos) = plt.subplots(
        1, 2, figsize=(9, 4.2), sharey=True, gridspec_kw={"width_ratios": [3.2, 1]}
    )
    x = bands.distances
    for name, model, style in (
        ("teacher", comparison.teacher, {"color": "0.25", "lw": 1.8}),
        ("student", comparison.student, {"color": "C3", "lw": 1.1, "ls": "--"}),
    ):
        for k, (start, stop) in enumerate(bands.segments):
            lines = ax.plot(x[start:stop], model.frequencies_thz[start:stop], **style)
            if k == 0:
                lines[0].set_label(name)
        ax_dos.plot(model.dos, model.dos_frequencies_thz, **style, label=name)
    # ticks at the high-symmetry points; a jump (two labels at one position) is "X|K"
    ticks: dict[float, list[str]] = {}
    for index, label in bands.labels:
        names = ticks.setdefault(round(float(x[index]), 9), [])
        if label not in names:
            names.append(label)
    ax.set_xticks(list(ticks), ["|".join(n) for n in ticks.values()])
    for position in ticks:
        ax.axvline(position, color="0.8", lw=0.6, zorder=0)
    ax.axhline(0.0, color="0.6", lw=0.6)
    ax.set_xlim(x[0], x[-1])
    ax.set_ylabel("frequency (THz)")
    m = comparison.metrics()
    ax.set_title(
        title
        or f"{comparison.formula}: phonons, MAE {m['band_mae_thz']:.3f} THz, "
        f"max {m['band_max_error_thz']:.3f} THz"
    )
    ax.legend(loc="lower right", fontsize=8)
    ax_dos.set_xlabel("DOS (1/THz)")
    ax_dos.set_xlim(left=0)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------- vibrations


def real_mode_count(atoms: ase.Atoms) -> int:
    """3N − 6 vibrational modes (3N − 5 for a linear molecule, 0 for one atom)."""
    n = len(atoms)
    if n == 1:
        return 0
    inertia = np.sort(atoms.get_moments_of_inertia())
    linear = inertia[0] < 1e-6 * max(inertia[-1], 1e-12)
    return 3 * n - (5 if linear else 6)


def _signed_frequencies(frequencies: np.ndarray) -> np.ndarray:
    """ASE's complex frequencies as real numbers, imaginary ones negative."""
    frequencies = np.asarray(frequencies)
    return np.where(
        np.abs(frequencies.imag) > np.abs(frequencies.real),
        -np.abs(frequencies.imag),
        frequencies.real,
    )


@dataclass
class ModelVibrations:
    """One model's harmonic frequencies of one molecule.

    Attributes:
        frequencies_cm1: all ``3N`` frequencies sorted by magnitude, cm⁻¹ (imaginary
            ones negative); the first ``3N − n_modes`` are translations and rotations.
        n_modes: real vibrational modes (3N − 6, or 3N − 5 if linear).
        atoms: the geometry the Hessian was taken at (this model's minimum).
        optimisation_steps: BFGS steps taken.
        converged: whether the largest force fell below ``fmax``.
        max_force_ev_per_angstrom: largest force at that geometry, eV/Å.
        seconds: wall time (relaxation and Hessian), s.
    """

    frequencies_cm1: np.ndarray
    n_modes: int
    atoms: ase.Atoms = field(repr=False)
    optimisation_steps: int
    converged: bool
    max_force_ev_per_angstrom: float
    seconds: float

    @property
    def modes_cm1(self) -> np.ndarray:
        """The ``n_modes`` vibrational frequencies, ascending, cm⁻¹."""
        return np.sort(self.frequencies_cm1[len(self.frequencies_cm1) - self.n_modes :])

    @property
    def zero_modes_cm1(self) -> np.ndarray:
        """The translations and rotations (ideally 0), cm⁻¹."""
        return self.frequencies_cm1[: len(self.frequencies_cm1) - self.n_modes]

    def to_dict(self) -> dict[str, Any]:
        zero = self.zero_modes_cm1
        return {
            "modes_cm1": self.modes_cm1.tolist(),
            "zero_modes_max_abs_cm1": float(np.max(np.abs(zero))) if len(zero) else 0.0,
            "imaginary_modes": int(np.sum(self.modes_cm1 < 0)),
            "optimisation_steps": self.optimisation_steps,
            "converged": self.converged,
            "max_force_ev_per_angstrom": self.max_force_ev_per_angstrom,
            "seconds": self.seconds,
            "positions_angstrom": self.atoms.positions.tolist(),
        }


def model_vibrations(
    calculator: Any,
    atoms: ase.Atoms,
    delta_angstrom: float = 0.01,
    fmax_ev_per_angstrom: float = 1e-3,
    max_steps: int = 1000,
    optimise: bool = True,
) -> ModelVibrations:
    """Relax a molecule with one model (BFGS) and take its harmonic frequencies there.

    ASE's ``Vibrations`` displaces every atom by ±``delta_angstrom`` along x, y, z (6N
    force calls) in a temporary directory (its cache files never reach the working
    directory) and diagonalises the mass-weighted Hessian.

    Args:
        calculator: any ASE calculator.
        atoms: the molecule (not changed).
        delta_angstrom: displacement, Å.
        fmax_ev_per_angstrom: BFGS stops when the largest force is below this, eV/Å.
        max_steps: BFGS steps at most.
        optimise: relax first (False: the given geometry).
    """
    from ase.optimize import BFGS
    from ase.vibrations import Vibrations

    start = time.perf_counter()
    atoms = atoms.copy()
    atoms.calc = calculator
    steps, converged = 0, True
    if optimise:
        optimiser = BFGS(atoms, logfile=None)
        converged = bool(optimiser.run(fmax=fmax_ev_per_angstrom, steps=max_steps))
        steps = int(optimiser.get_number_of_steps())
    max_force = float(np.linalg.norm(atoms.get_forces(), axis=1).max())
    if not optimise:
        converged = max_force < fmax_ev_per_angstrom
    with tempfile.TemporaryDirectory(prefix="jaxdistill-vib-") as folder:
        vibrations = Vibrations(
            atoms, name=str(Path(folder) / "vib"), delta=delta_angstrom, nfree=2
        )
        vibrations.run()
        frequencies = _signed_frequencies(vibrations.get_vibrations().get_frequencies())
    order = np.argsort(np.abs(frequencies), kind="stable")
    result_atoms = atoms.copy()  # without the calculator
    return ModelVibrations(
        frequencies_cm1=frequencies[order],
        n_modes=real_mode_count(atoms),
        atoms=result_atoms,
        optimisation_steps=steps,
        converged=converged,
        max_force_ev_per_angstrom=max_force,
        seconds=time.perf_counter() - start,
    )


def _aligned_rmsd(a: ase.Atoms, b: ase.Atoms) -> float:
    """RMSD of two geometries of one molecule after the best rotation and translation, Å."""
    from ase.build import minimize_rotation_and_translation

    moved = a.copy()
    minimize_rotation_and_translation(b, moved)
    return float(np.sqrt(np.mean(np.sum((moved.positions - b.positions) ** 2, axis=1))))


@dataclass
class VibrationComparison:
    """Student and teacher harmonic frequencies of one molecule, each at its own minimum.

    Metrics (modes matched by rank: both sets sorted ascending):

    - ``mae_cm1``: mean over the 3N − 6 modes of |ν_student − ν_teacher|, cm⁻¹;
    - ``max_error_cm1``: the largest such difference, cm⁻¹;
    - ``relative_mae``: mean of |ν_student − ν_teacher| / |ν_teacher|;
    - ``geometry_rmsd_angstrom``: RMSD of the two minima after alignment, Å.
    """

    name: str
    formula: str
    student: ModelVibrations
    teacher: ModelVibrations

    def metrics(self) -> dict[str, Any]:
        s, t = self.student.modes_cm1, self.teacher.modes_cm1
        if not len(t):
            nan = math.nan
            return {"n_modes": 0, "mae_cm1": nan, "max_error_cm1": nan, "rmse_cm1": nan}
        errors = np.abs(s - t)
        return {
            "n_modes": len(t),
            "mae_cm1": float(errors.mean()),
            "max_error_cm1": float(errors.max()),
            "rmse_cm1": float(np.sqrt(np.mean(errors**2))),
            "relative_mae": float(np.mean(errors / np.maximum(np.abs(t), 1e-9))),
            "geometry_rmsd_angstrom": _aligned_rmsd(self.student.atoms, self.teacher.atoms),
            "student_imaginary_modes": int(np.sum(s < 0)),
            "teacher_imaginary_modes": int(np.sum(t < 0)),
        }

    def to_dict(self) -> dict[str, Any]:
        """Everything as JSON-serialisable numbers (cm⁻¹, Å, eV/Å, s)."""
        return {
            "name": self.name,
            "formula": self.formula,
            "symbols": self.teacher.atoms.get_chemical_symbols(),
            "metrics": {
                k: _finite(v) if isinstance(v, float) else v for k, v in self.metrics().items()
            },
            "student": self.student.to_dict(),
            "teacher": self.teacher.to_dict(),
        }


def vibration_comparison(
    student_calculator: Any,
    teacher_calculator: Any,
    atoms: ase.Atoms,
    delta_angstrom: float = 0.01,
    fmax_ev_per_angstrom: float = 1e-3,
    max_steps: int = 1000,
    optimise: bool = True,
    name: str | None = None,
) -> VibrationComparison:
    """Harmonic frequencies of a molecule from both calculators, each at its own minimum.

    Each model relaxes the molecule from the same start (BFGS to
    ``fmax_ev_per_angstrom``), then ASE ``Vibrations`` takes central differences of its
    forces (``delta_angstrom``). Frequencies are properties of a minimum: comparing at
    one shared geometry would mix in the forces one model still feels there.

    Args:
        student_calculator, teacher_calculator: ASE calculators.
        atoms: the molecule (its starting geometry).
        delta_angstrom: displacement, Å.
        fmax_ev_per_angstrom: relaxation threshold, eV/Å.
        max_steps: BFGS steps at most.
        optimise: relax first (False: both at the given geometry).
        name: how to call it in results (default: the chemical formula).
    """
    options = dict(
        delta_angstrom=delta_angstrom,
        fmax_ev_per_angstrom=fmax_ev_per_angstrom,
        max_steps=max_steps,
        optimise=optimise,
    )
    teacher = model_vibrations(teacher_calculator, atoms, **options)
    student = model_vibrations(student_calculator, atoms, **options)
    formula = atoms.get_chemical_formula()
    return VibrationComparison(name or formula, formula, student, teacher)


def plot_vibrations(comparisons: Sequence[VibrationComparison], path: str | Path) -> Path:
    """Parity of the frequencies (all molecules) and the error of each mode; a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    fig, (ax, ax_err) = plt.subplots(1, 2, figsize=(9, 4))
    top = 0.0
    for k, comparison in enumerate(comparisons):
        s, t = comparison.student.modes_cm1, comparison.teacher.modes_cm1
        if not len(t):
            continue
        m = comparison.metrics()
        label = f"{comparison.name} (MAE {m['mae_cm1']:.0f} cm⁻¹)"
        ax.scatter(t, s, s=14, color=f"C{k}", label=label)
        ax_err.scatter(t, s - t, s=14, color=f"C{k}")
        top = max(top, float(np.max(np.abs(t))), float(np.max(np.abs(s))))
    limit = 1.05 * top if top else 1.0
    low = min(
        0.0, *(float(c.student.modes_cm1.min()) for c in comparisons if len(c.student.modes_cm1))
    )
    ax.plot([low, limit], [low, limit], color="0.5", lw=0.8)
    ax.set_xlabel("teacher frequency (cm⁻¹)")
    ax.set_ylabel("student frequency (cm⁻¹)")
    ax.set_title("harmonic frequencies, each at its own minimum")
    ax.legend(fontsize=8)
    ax_err.axhline(0.0, color="0.5", lw=0.8)
    ax_err.set_xlabel("teacher frequency (cm⁻¹)")
    ax_err.set_ylabel("student − teacher (cm⁻¹)")
    ax_err.set_title("error per mode (sorted modes matched)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
