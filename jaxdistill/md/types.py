"""What ``run_md`` takes and gives: options, stability rules, results, the one error.

Units: Å, eV, amu, fs and K (ASE's).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ase
import numpy as np

from jaxdistill.md.topology import DEFAULT_BOND_FACTOR

ENGINES = ("jax-md", "ase")
#: What a run does with a sample whose committee disagreement passes the threshold.
UNCERTAINTY_ACTIONS = ("stop", "record")
ENSEMBLES = ("nve", "nvt", "npt")
THERMOSTATS = ("langevin", "nose-hoover")
#: Temperatures below this floor (K) are raised to it for the blow-up limit, so an
#: NVE run started cold is not stopped for warming up.
BLOWUP_TEMPERATURE_FLOOR = 100.0


class MDInstabilityError(RuntimeError):
    """The simulation blew up: non-finite numbers, runaway temperature, a collapsed box,
    or a structure that broke into more bonded pieces than it started with.

    Attributes:
        reason: what went wrong, in words.
        step: the step at which the problem was detected (a sample point).
        last_good_step: the step of the last frame that passed the checks.
        atoms: that frame (an ``ase.Atoms`` with momenta, energy and forces), or a list
            of them for replicas.
        path: where the last good frame was written, or None.
        replicas: indices of the replicas that blew up.
        summary: the run up to the last good frame (an :class:`MDSummary`: thermo,
            timings and, with ``keep_frames``, the frames), or None.
    """

    def __init__(
        self,
        message: str,
        *,
        step: int,
        last_good_step: int,
        atoms: ase.Atoms | list[ase.Atoms],
        path: Path | None,
        replicas: list[int],
        reason: str = "",
        summary: MDSummary | None = None,
    ):
        super().__init__(message)
        self.reason = reason
        self.step = step
        self.last_good_step = last_good_step
        self.atoms = atoms
        self.path = path
        self.replicas = replicas
        self.summary = summary


class MDUncertaintyError(MDInstabilityError):
    """A committee's force disagreement passed ``uncertainty_threshold`` (with
    ``on_uncertain="stop"``): the students do not know this configuration, so the run
    stops before it goes where they are unreliable. Everything of
    :class:`MDInstabilityError` (the last good frame is the sample before), plus:

    Attributes:
        uncertain: the sample(s) above the threshold (``ase.Atoms`` with the committee's
            energy and forces, ``force_std`` per atom in ``arrays`` and
            ``max_force_std`` in ``info``; one per bad replica): the frames a teacher
            should label.
        uncertain_path: where they were written, or None.
    """

    def __init__(
        self,
        message: str,
        *,
        uncertain: list[ase.Atoms],
        uncertain_path: Path | None,
        **kwargs: Any,
    ):
        super().__init__(message, **kwargs)
        self.uncertain = uncertain
        self.uncertain_path = uncertain_path


@dataclass
class MDSummary:
    """What a run did and how fast.

    Speeds exclude compilation: ``us_per_step`` is wall time per step of the chunks
    run with an already compiled program (device work, neighbour updates and the
    once-per-chunk transfer included).

    Attributes:
        steps: the steps asked for.
        steps_done: the steps run and checked (``steps`` unless interrupted).
        interrupted: True when the run was stopped early by Ctrl-C or SIGTERM
            (``keep_on_interrupt``); everything here covers ``steps_done``.
        mean_temperature_kelvin: mean kinetic temperature, K, over replicas and over
            every step (jax-md) or over the samples after the first (ASE).
        energy_drift_ev_per_atom: final minus initial conserved energy per atom (NVE:
            total energy; Nose-Hoover NVT and NPT: the extended Hamiltonian), mean over
            replicas; None for Langevin, which conserves nothing.
        max_energy_deviation_ev_per_atom: largest |conserved(t) - conserved(0)| per atom
            over the samples (max over replicas); None for Langevin.
        thermo: per-sample arrays (``step``, ``time_fs``, ``temperature_kelvin``,
            ``potential_energy``, ``kinetic_energy``, ``conserved_energy``,
            ``pressure_bar``, ``volume``), shape ``[n_samples, n_replicas]`` except
            step and time.
        atoms: the final frame (a list for replicas).
        frames: with ``keep_frames``, every checked sample after step 0, one list per
            replica (``frames[0]`` for a single run); each frame holds the model's
            energy and forces (and stress when periodic and computed).
        max_force_std_ev_per_angstrom: with a student committee, the largest per-atom
            force disagreement over every checked sample and replica, eV/Å (the thermo
            column ``max_force_std`` has it per sample); None for a single model.
        uncertain_frames: samples whose disagreement passed ``uncertainty_threshold``
            (with ``on_uncertain="record"``: recorded, the run went on).
        uncertain_file: where those samples were written (extxyz), or None.
        uncertain: those samples as ``ase.Atoms`` (per-atom ``force_std`` in
            ``arrays``, ``max_force_std``, ``step`` and ``replica`` in ``info``).
    """

    engine: str
    ensemble: str
    thermostat: str | None
    n_atoms: int
    n_replicas: int
    steps: int
    steps_done: int
    timestep_fs: float
    wall_seconds: float
    compile_seconds: float
    us_per_step: float
    ns_per_day: float
    atom_steps_per_second: float
    mean_temperature_kelvin: float
    final_temperature_kelvin: float
    energy_drift_ev_per_atom: float | None
    max_energy_deviation_ev_per_atom: float | None
    mean_pressure_bar: float | None
    neighbor_list_rebuilds: int
    neighbor_reallocations: int
    chunks_redone: int
    compilations: int
    trajectory: str | None
    interrupted: bool = False
    chunk_us_per_step: list[float] = field(default_factory=list, repr=False)
    thermo: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    atoms: Any = field(default=None, repr=False)
    frames: list[list[ase.Atoms]] = field(default_factory=list, repr=False)
    max_force_std_ev_per_angstrom: float | None = None
    uncertain_frames: int = 0
    uncertain_file: str | None = None
    uncertain: list[ase.Atoms] = field(default_factory=list, repr=False)

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly fields (without ``thermo``, ``atoms`` and ``frames``)."""
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name not in ("thermo", "atoms", "chunk_us_per_step", "frames", "uncertain")
        }

    def describe(self) -> str:
        """A short human-readable summary."""
        replicas = f" x {self.n_replicas} replicas" if self.n_replicas > 1 else ""
        done = (
            f"interrupted after {self.steps_done} of {self.steps} steps"
            if self.interrupted
            else f"{self.steps} steps"
        )
        lines = [
            f"{done} of {self.ensemble.upper()} ({self.engine}) on "
            f"{self.n_atoms} atoms{replicas}, dt = {self.timestep_fs} fs",
            f"speed: {self.us_per_step:.1f} µs/step, {self.ns_per_day:.3g} ns/day, "
            f"{self.atom_steps_per_second:.3g} atom-steps/s "
            f"(wall {self.wall_seconds:.1f} s, compile {self.compile_seconds:.1f} s)",
            f"temperature: mean {self.mean_temperature_kelvin:.1f} K, "
            f"final {self.final_temperature_kelvin:.1f} K",
        ]
        if self.energy_drift_ev_per_atom is not None:
            lines.append(
                f"conserved-energy drift: {1e3 * self.energy_drift_ev_per_atom:+.4f} meV/atom "
                f"(max deviation {1e3 * self.max_energy_deviation_ev_per_atom:.4f} meV/atom)"
            )
        if self.mean_pressure_bar is not None:
            lines.append(f"mean pressure: {self.mean_pressure_bar:.1f} bar")
        lines.append(
            f"neighbour lists: {self.neighbor_list_rebuilds} rebuilds, "
            f"{self.neighbor_reallocations} reallocations, {self.chunks_redone} chunks redone"
        )
        if self.max_force_std_ev_per_angstrom is not None:
            line = (
                "committee disagreement: largest per-atom force std "
                f"{self.max_force_std_ev_per_angstrom:.4g} eV/Å"
            )
            if self.uncertain_frames:
                line += f"; {self.uncertain_frames} samples above the threshold"
                if self.uncertain_file:
                    line += f" ({self.uncertain_file})"
            lines.append(line)
        if self.trajectory:
            lines.append(f"trajectory: {self.trajectory}")
        return "\n".join(lines)


@dataclass
class MDProgress:
    """Passed to ``callback`` after every chunk."""

    step: int
    total_steps: int
    temperature_kelvin: float
    potential_energy: float
    us_per_step: float | None


@dataclass(frozen=True)
class StabilityRules:
    """When an MD run counts as blown up: one set of rules for every MD of the project
    (teacher sampling, MD validation, active learning, ``jaxdistill md``).

    Non-finite positions, energies or temperatures always stop a run. Beyond that:

    Attributes:
        max_temperature_factor: stop when the kinetic temperature exceeds this multiple
            of ``max(target, temperature_floor_kelvin)`` (NVE: the starting
            temperature is the target).
        temperature_floor_kelvin: targets below this are raised to it for the limit,
            so a run started cold is not stopped for warming up.
        bond_factor: stop when the structure falls into more covalently bonded pieces
            than it started with (atoms closer than this multiple of the sum of their
            covalent radii are bonded); None switches the check off (a dissociation
            study, a teacher trajectory that may legitimately break bonds).
    """

    max_temperature_factor: float = 5.0
    temperature_floor_kelvin: float = BLOWUP_TEMPERATURE_FLOOR
    bond_factor: float | None = DEFAULT_BOND_FACTOR

    def __post_init__(self) -> None:
        if not self.max_temperature_factor > 1:
            raise ValueError(
                f"max_temperature_factor must be > 1, got {self.max_temperature_factor}"
            )
        if self.bond_factor is not None and not self.bond_factor > 0:
            raise ValueError(f"bond_factor must be positive or None, got {self.bond_factor}")

    def temperature_limits(self, targets: np.ndarray) -> np.ndarray:
        """The temperature (K) above which each replica counts as blown up."""
        return self.max_temperature_factor * np.maximum(
            np.asarray(targets, dtype=np.float64), self.temperature_floor_kelvin
        )

    def check_thermo(
        self,
        temperatures: np.ndarray,
        energies: np.ndarray,
        positions_finite: np.ndarray,
        targets: np.ndarray,
    ) -> tuple[str | None, list[int]]:
        """The first problem among replicas (non-finite numbers, then a runaway
        temperature) and the replicas that have it; ``(None, [])`` when all is well.

        Args:
            temperatures: kinetic temperatures, K, [n_replicas].
            energies: potential energies, eV, [n_replicas].
            positions_finite: whether each replica's positions are all finite.
            targets: target temperatures, K, [n_replicas].
        """
        temperatures = np.atleast_1d(np.asarray(temperatures, dtype=np.float64))
        finite = np.atleast_1d(positions_finite) & np.isfinite(np.atleast_1d(energies))
        finite &= np.isfinite(temperatures)
        if not np.all(finite):
            return "non-finite positions or energy", np.where(~finite)[0].tolist()
        limits = self.temperature_limits(targets)
        hot = temperatures > limits
        if np.any(hot):
            k = int(np.where(hot)[0][0])
            return (
                f"temperature {temperatures[k]:.4g} K exceeds {limits[k]:.4g} K "
                f"({self.max_temperature_factor:g} x max(target, "
                f"{self.temperature_floor_kelvin:g} K))",
                np.where(hot)[0].tolist(),
            )
        return None, []


@dataclass(frozen=True)
class UncertaintyRule:
    """What a run does when a student committee disagrees (see
    ``jaxdistill.committee``): the largest per-atom force standard deviation over the
    members, ``max_force_std``, is compared at every sample with a threshold.

    Attributes:
        threshold_ev_per_angstrom: the limit on ``max_force_std``, eV/Å (typical
            values: a few times the committee's disagreement on its own validation
            frames; 0.1-0.3 eV/Å for a converged Si committee is a start).
        action: "stop" (raise :class:`MDUncertaintyError` at the first sample above it;
            its frame is saved) or "record" (keep going; every such sample is written
            to ``path`` and kept in ``MDSummary.uncertain``, the frames for the teacher).
        path: extxyz file for the samples above the threshold, or None.
    """

    threshold_ev_per_angstrom: float
    action: str = "stop"
    path: Path | None = None

    def __post_init__(self) -> None:
        threshold = self.threshold_ev_per_angstrom
        if not (np.isfinite(threshold) and threshold > 0):
            raise ValueError(f"uncertainty_threshold must be > 0 eV/Å, got {threshold}")
        if self.action not in UNCERTAINTY_ACTIONS:
            raise ValueError(
                f"on_uncertain must be one of {UNCERTAINTY_ACTIONS}, got {self.action!r}"
            )

    def exceeded(self, max_force_std: np.ndarray) -> list[int]:
        """The replicas whose ``max_force_std`` (eV/Å, ``[n_replicas]``) passes it."""
        values = np.atleast_1d(np.asarray(max_force_std, dtype=np.float64))
        return np.where(values > self.threshold_ev_per_angstrom)[0].tolist()


@dataclass(frozen=True)
class EngineOptions:
    """What both engines of :func:`~jaxdistill.md.run_md` take, checked and converted
    by it (units as in its arguments; ``temperatures`` has one entry per replica;
    ``rng``: the ASE engine's source of velocities and Langevin noise, None for fresh
    generators seeded by ``seed``; ``uncertainty``: the committee-disagreement rule, or
    None)."""

    ensemble: str
    temperatures: np.ndarray
    timestep_fs: float
    steps: int
    thermostat: str
    friction_per_fs: float
    thermostat_time_fs: float
    pressure_bar: float
    barostat_time_fs: float
    seed: int
    initial_velocities: str
    sample_every: int
    chunk_steps: int
    trajectory: str | Path | None
    log_file: str | Path | None
    last_good_path: Path | None
    progress: bool
    callback: Callable[[MDProgress], None] | None
    skin: float
    stability: StabilityRules
    keep_on_interrupt: bool = False
    keep_frames: bool = False
    rng: np.random.Generator | None = None
    uncertainty: UncertaintyRule | None = None
