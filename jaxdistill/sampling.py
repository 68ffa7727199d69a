"""Sampling: which configurations the teacher labels.

Starting structures come from files (anything ``ase.io.read`` reads: extxyz, cif,
POSCAR, pdb ...) or from ``ase.build`` calls described in a small dict/YAML. Generators,
combinable in one configuration, turn each starting structure into frames:

- ``md``: teacher-driven Langevin molecular dynamics (``ase.md.langevin``) at a list of
  temperatures: velocities drawn from Maxwell–Boltzmann at the temperature, the first
  ``equilibration_steps`` discarded, then one frame every ``stride`` steps;
- ``rattle``: Gaussian displacements of every atom (``sigma_angstrom``);
- ``strain``: a random symmetric strain of the cell (components uniform in
  ``[-max_strain, max_strain]``, atoms scaled with the cell), optionally rattled too.

Every frame is tagged in ``atoms.info`` with ``sampler``, ``temperature_kelvin`` (NaN
when not from MD), ``seed`` (the seed that reproduces that frame or trajectory) and
``structure_index``. Exact duplicates are removed, element coverage is checked (every
element of the starting structures must appear in the frames), and everything follows
from ``SamplingConfig.seed``.

Example YAML (the ``sampling`` section of a pipeline config)::

    seed: 0
    structures:
      - build: bulk
        args: {name: Si, crystalstructure: diamond, a: 5.43, cubic: true}
        repeat: [2, 2, 2]
      - file: water.xyz
    md:
      temperatures_kelvin: [300, 900]
      frames_per_temperature: 50
      stride: 10
      equilibration_steps: 200
      timestep_fs: 1.0
    rattle: {count: 20, sigma_angstrom: 0.05}
    strain: {count: 20, max_strain: 0.03, sigma_angstrom: 0.02}
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ase
import ase.build
import ase.data
import ase.io
import numpy as np

from jaxdistill.config_keys import as_temperatures, check_keys
from jaxdistill.data.store import frame_hash
from jaxdistill.teachers.base import Teacher

__all__ = [
    "GENERATORS",
    "MDConfig",
    "MeltConfig",
    "RattleConfig",
    "SamplingConfig",
    "StrainConfig",
    "StructureSpec",
    "check_element_coverage",
    "deduplicate",
    "derive_seed",
    "element_counts",
    "load_structures",
    "sample",
    "sampler_counts",
    "tag_frame",
]

#: Generator names, in the order they run; also the ``sampler`` tag of their frames.
GENERATORS = ("md", "rattle", "strain")
# Fixed stream ids, so adding a generator never changes another generator's frames.
_STREAM = {"initial": 0, "md": 1, "rattle": 2, "strain": 3, "md-melt": 4}


@dataclass(frozen=True)
class StructureSpec:
    """One source of starting structures: a file, or an ``ase.build`` call.

    Attributes:
        file: Path of a structure file (any format ``ase.io.read`` reads). Relative
            paths are resolved against the YAML file's folder.
        index: Which frames of the file (``ase.io`` index string), default all (``":"``).
        format: ``ase.io`` format, when the file extension is not enough.
        build: Name of an ``ase.build`` function (``bulk``, ``molecule``, ``fcc111`` ...).
        args: Keyword arguments of that function, e.g.
            ``{name: Si, crystalstructure: diamond, a: 5.43, cubic: true}``.
        repeat: Supercell repetitions ``[n1, n2, n3]`` (``atoms.repeat``).
        vacuum_angstrom: If set, centre the structure in a box with this much vacuum on
            each side (``atoms.center(vacuum=...)``), e.g. for a molecule. Periodicity is
            unchanged.
        generators: Generators to apply to these structures (default: every configured
            one); ``[]`` keeps them only as a source of elements / ``include_initial``.
    """

    file: str | None = None
    index: str = ":"
    format: str | None = None
    build: str | None = None
    args: Mapping[str, Any] = field(default_factory=dict)
    repeat: tuple[int, int, int] | None = None
    vacuum_angstrom: float | None = None
    generators: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if (self.file is None) == (self.build is None):
            raise ValueError("a structure needs exactly one of 'file' or 'build'")
        if self.build is not None and self.build not in ase.build.__all__:
            raise ValueError(
                f"unknown ase.build function {self.build!r}; known: {', '.join(ase.build.__all__)}"
            )
        if self.repeat is not None and (
            len(self.repeat) != 3 or any(int(r) < 1 for r in self.repeat)
        ):
            raise ValueError(f"repeat must be three positive integers, got {self.repeat!r}")
        if self.generators is not None:
            bad = set(self.generators) - set(GENERATORS)
            if bad:
                raise ValueError(f"unknown generator(s) {sorted(bad)}; known: {list(GENERATORS)}")

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any] | str, base_dir: Path | None = None
    ) -> StructureSpec:
        """Build from a dict (or a bare file path string)."""
        if isinstance(data, str):
            data = {"file": data}
        check_keys(cls, data, "a structure entry")
        values = dict(data)
        if values.get("file") is not None and base_dir is not None:
            path = Path(values["file"]).expanduser()
            values["file"] = str(path if path.is_absolute() else base_dir / path)
        if values.get("repeat") is not None:
            values["repeat"] = tuple(int(r) for r in values["repeat"])
        if values.get("generators") is not None:
            values["generators"] = tuple(values["generators"])
        values["args"] = dict(values.get("args") or {})
        return cls(**values)

    def load(self) -> list[ase.Atoms]:
        """The structures this entry describes."""
        if self.file is not None:
            path = Path(self.file)
            if not path.is_file():
                raise FileNotFoundError(f"structure file not found: {path}")
            read = ase.io.read(path, index=self.index, format=self.format)
            structures = list(read) if isinstance(read, list) else [read]
        else:
            builder: Callable[..., ase.Atoms] = getattr(ase.build, str(self.build))
            structures = [builder(**dict(self.args))]
        out = []
        for atoms in structures:
            atoms = atoms.copy()  # drop any calculator that came with the file
            if self.repeat is not None:
                atoms = atoms.repeat(self.repeat)
            if self.vacuum_angstrom is not None:
                atoms.center(vacuum=float(self.vacuum_angstrom))
            out.append(atoms)
        if not out:
            raise ValueError(f"structure entry {self} gave no structures")
        return out


@dataclass(frozen=True)
class MeltConfig:
    """Extra teacher MD trajectories that start from a melt (liquid or amorphous frames).

    A crystal heated for a few picoseconds stays crystalline well above its melting
    point (superheating), so plain MD never shows the liquid the student may wander
    into. Each trajectory here first runs ``steps`` at ``melt_kelvin`` (discarded), then
    the usual equilibration and kept frames at its target temperature. Frames are
    tagged with sampler ``md-melt``.

    Attributes:
        temperatures_kelvin: Targets of the melted trajectories, K (one per structure
            and temperature, in addition to the plain ``md`` ones).
        melt_kelvin: Temperature of the melting run, K.
        steps: Steps of the melting run.
    """

    temperatures_kelvin: tuple[float, ...] = ()
    melt_kelvin: float = 3000.0
    steps: int = 2000

    def __post_init__(self) -> None:
        if any(t <= 0 for t in self.temperatures_kelvin) or self.melt_kelvin <= 0:
            raise ValueError("md.melt temperatures must be positive")
        if self.steps < 0:
            raise ValueError(f"md.melt.steps must be >= 0, got {self.steps}")


@dataclass(frozen=True)
class MDConfig:
    """Teacher-driven Langevin MD (``ase.md.langevin.Langevin``, NVT, fixed cell).

    Attributes:
        temperatures_kelvin: Thermostat temperatures, K; one trajectory per structure and
            temperature.
        frames_per_temperature: Frames kept per trajectory.
        stride: MD steps between kept frames.
        equilibration_steps: Steps run (and discarded) before the first kept frame.
        timestep_fs: Time step, fs.
        friction_per_fs: Langevin friction, 1/fs (0.01/fs = a 100 fs relaxation time).
        teacher: Teacher spec driving the MD (``load_teacher`` form); None = the teacher
            given to :func:`sample` (normally the labelling teacher).
        melt: Extra trajectories started from a melt (:class:`MeltConfig`), or None.
    """

    temperatures_kelvin: tuple[float, ...] = (300.0,)
    frames_per_temperature: int = 10
    stride: int = 10
    equilibration_steps: int = 100
    timestep_fs: float = 1.0
    friction_per_fs: float = 0.01
    teacher: str | None = None
    melt: MeltConfig | None = None

    def __post_init__(self) -> None:
        if not self.temperatures_kelvin or any(t <= 0 for t in self.temperatures_kelvin):
            raise ValueError(
                f"md.temperatures_kelvin must be positive, got {self.temperatures_kelvin}"
            )
        if self.frames_per_temperature < 0 or self.stride < 1 or self.equilibration_steps < 0:
            raise ValueError(
                "md needs frames_per_temperature >= 0, stride >= 1, equilibration_steps >= 0"
            )
        if self.timestep_fs <= 0 or self.friction_per_fs < 0:
            raise ValueError("md needs timestep_fs > 0 and friction_per_fs >= 0")


@dataclass(frozen=True)
class RattleConfig:
    """Random Gaussian displacements of the starting structures.

    Attributes:
        count: Frames per starting structure.
        sigma_angstrom: Standard deviation of each Cartesian displacement, Å.
    """

    count: int = 10
    sigma_angstrom: float = 0.05

    def __post_init__(self) -> None:
        if self.count < 0 or self.sigma_angstrom < 0:
            raise ValueError("rattle needs count >= 0 and sigma_angstrom >= 0")


@dataclass(frozen=True)
class StrainConfig:
    """Random cell strains of the starting structures.

    Attributes:
        count: Frames per starting structure.
        max_strain: Each component of the symmetric strain tensor is uniform in
            ``[-max_strain, max_strain]`` (dimensionless; 0.03 = 3 %). Periodic cells are
            deformed with atoms scaled; non-periodic structures are deformed about their
            centroid.
        sigma_angstrom: Gaussian rattle added after straining, Å (0 = none).
    """

    count: int = 10
    max_strain: float = 0.03
    sigma_angstrom: float = 0.0

    def __post_init__(self) -> None:
        if self.count < 0 or not 0 <= self.max_strain < 1 or self.sigma_angstrom < 0:
            raise ValueError("strain needs count >= 0, 0 <= max_strain < 1, sigma_angstrom >= 0")


@dataclass(frozen=True)
class SamplingConfig:
    """How configurations are generated (the ``sampling`` section of a pipeline config).

    Attributes:
        structures: Starting structures.
        md: Teacher MD settings, or None for no MD.
        rattle: Rattle settings, or None.
        strain: Strain settings, or None.
        include_initial: Also keep the starting structures themselves (sampler
            ``initial``).
        seed: Master seed; every random stream derives from it (see :func:`derive_seed`).
        deduplicate: Remove exact duplicates (same numbers, positions, cell, pbc).
        check_coverage: Refuse a data set in which an element of the starting
            structures never appears.
    """

    structures: tuple[StructureSpec, ...]
    md: MDConfig | None = None
    rattle: RattleConfig | None = None
    strain: StrainConfig | None = None
    include_initial: bool = False
    seed: int = 0
    deduplicate: bool = True
    check_coverage: bool = True

    def __post_init__(self) -> None:
        if not self.structures:
            raise ValueError("sampling needs at least one structure")

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any], base_dir: str | Path | None = None
    ) -> SamplingConfig:
        """Build from a plain dict (e.g. parsed YAML).

        Args:
            data: The mapping; unknown keys are refused (catches typos).
            base_dir: Folder against which relative structure file paths are resolved.
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"sampling config must be a mapping, got {type(data).__name__}")
        check_keys(cls, data, "the sampling config")
        base = Path(base_dir) if base_dir is not None else None
        values: dict[str, Any] = dict(data)
        structures = data.get("structures")
        if not isinstance(structures, Sequence) or isinstance(structures, str):
            raise ValueError("'structures' must be a list of structure entries")
        values["structures"] = tuple(StructureSpec.from_dict(s, base) for s in structures)
        for key, sub in (("md", MDConfig), ("rattle", RattleConfig), ("strain", StrainConfig)):
            section = data.get(key)
            if section is None or section is False:
                values[key] = None
                continue
            if section is True:
                section = {}
            check_keys(sub, section, f"the '{key}' section")
            section = dict(section)
            if key == "md":
                section = _temperatures_as_tuple(section)
                if section.get("melt"):
                    check_keys(MeltConfig, section["melt"], "the 'md.melt' section")
                    section["melt"] = MeltConfig(**_temperatures_as_tuple(section["melt"]))
                else:
                    section["melt"] = None
            values[key] = sub(**section)
        return cls(**values)

    @classmethod
    def from_yaml(cls, path: str | Path) -> SamplingConfig:
        """Load from a YAML file (relative structure paths resolve against its folder).

        A file whose top level has a ``sampling`` key (a whole pipeline config) is
        accepted too; that section is used.
        """
        import yaml

        path = Path(path)
        with open(path) as handle:
            data = yaml.safe_load(handle)
        if isinstance(data, Mapping) and "sampling" in data and "structures" not in data:
            data = data["sampling"]
        return cls.from_dict(data, base_dir=path.parent)

    def to_dict(self) -> dict[str, Any]:
        """Plain, YAML-serialisable dict (round-trips through :meth:`from_dict`)."""

        def clean(value: Any) -> Any:
            if isinstance(value, Mapping):
                return {k: clean(v) for k, v in value.items()}
            if isinstance(value, (tuple, list)):
                return [clean(v) for v in value]
            return value

        data = clean(dataclasses.asdict(self))
        if data["md"] is not None and data["md"]["melt"] is None:
            # Omitted when unused, so configs written before melt existed keep their
            # hash (and a finished run is not redone).
            del data["md"]["melt"]
        return data

    def enabled_generators(self) -> tuple[str, ...]:
        """Names of the configured generators, in run order."""
        return tuple(name for name in GENERATORS if getattr(self, name) is not None)


def _temperatures_as_tuple(section: Mapping[str, Any]) -> dict[str, Any]:
    section = dict(section)
    if "temperatures_kelvin" in section:
        section["temperatures_kelvin"] = as_temperatures(section["temperatures_kelvin"])
    return section


def derive_seed(seed: int, *keys: int) -> int:
    """A 32-bit seed derived from a master seed and integer keys (``SeedSequence``).

    Each (generator, structure, temperature or frame) gets its own independent stream,
    so a frame can be reproduced alone and adding structures never changes the frames
    of the others.
    """
    return int(np.random.SeedSequence([int(seed), *(int(k) for k in keys)]).generate_state(1)[0])


def load_structures(config: SamplingConfig) -> list[ase.Atoms]:
    """All starting structures of a config, in order (``info['structure_index']`` set)."""
    structures = []
    for spec in config.structures:
        for atoms in spec.load():
            atoms.info["structure_index"] = len(structures)
            atoms.info["_generators"] = spec.generators
            structures.append(atoms)
    return structures


#: ``info`` keys carried from a starting structure to its frames (OMol-style teachers
#: need the total charge and spin multiplicity); everything else is replaced by tags.
CARRIED_INFO = ("charge", "spin")


def tag_frame(
    atoms: ase.Atoms, sampler: str, temperature: float, seed: int, structure_index: int
) -> ase.Atoms:
    """Replace ``atoms.info`` by the sampling tags (keeping charge and spin), drop any
    calculator, and wrap periodic atoms into the cell; returns ``atoms`` (changed)."""
    atoms.info = {
        **{k: atoms.info[k] for k in CARRIED_INFO if k in atoms.info},
        "sampler": sampler,
        "temperature_kelvin": float(temperature),
        "seed": int(seed),
        "structure_index": int(structure_index),
    }
    atoms.calc = None
    if np.all(atoms.pbc):
        atoms.wrap()
    return atoms


def _rattled(atoms: ase.Atoms, sigma: float, rng: np.random.Generator) -> ase.Atoms:
    out = atoms.copy()
    if sigma > 0:
        out.positions = out.positions + rng.normal(0.0, sigma, size=out.positions.shape)
    return out


def _strained(
    atoms: ase.Atoms, max_strain: float, sigma: float, rng: np.random.Generator
) -> ase.Atoms:
    eps = rng.uniform(-max_strain, max_strain, size=(3, 3))
    deformation = np.eye(3) + 0.5 * (eps + eps.T)  # symmetric: no rigid rotation
    out = atoms.copy()
    if np.any(out.pbc):
        out.set_cell(out.cell.array @ deformation, scale_atoms=True)
    else:
        centre = out.positions.mean(axis=0)
        out.positions = centre + (out.positions - centre) @ deformation
    return _rattled(out, sigma, rng)


def _run_md(
    atoms: ase.Atoms,
    md: MDConfig,
    temperature: float,
    seed: int,
    calculator: Any,
    on_steps: Callable[[int], None],
    melt: MeltConfig | None = None,
) -> list[ase.Atoms]:
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

    from jaxdistill.md.ase_dynamics import langevin

    rng = np.random.default_rng(seed)
    work = atoms.copy()
    work.info = {k: atoms.info[k] for k in CARRIED_INFO if k in atoms.info}
    work.calc = calculator
    start_kelvin = melt.melt_kelvin if melt is not None else temperature
    MaxwellBoltzmannDistribution(work, temperature_K=start_kelvin, rng=rng)
    dynamics = langevin(work, md.timestep_fs, start_kelvin, md.friction_per_fs, rng)
    if melt is not None and melt.steps:
        dynamics.run(melt.steps)
        on_steps(melt.steps)
        dynamics.set_temperature(temperature_K=temperature)
    if md.equilibration_steps:
        dynamics.run(md.equilibration_steps)
        on_steps(md.equilibration_steps)
    frames = []
    for k in range(md.frames_per_temperature):
        dynamics.run(md.stride)
        on_steps(md.stride)
        if not np.all(np.isfinite(work.positions)):
            raise RuntimeError(
                f"teacher MD at {temperature} K produced non-finite positions (seed {seed})"
            )
        frame = work.copy()  # keeps momenta, so kinetic temperatures can be checked
        frame.info["md_step"] = (
            (melt.steps if melt is not None else 0) + md.equilibration_steps + (k + 1) * md.stride
        )
        frames.append(frame)
    return frames


def _trajectory(
    atoms: ase.Atoms,
    md: MDConfig,
    sampler: str,
    temperature: float,
    seed: int,
    calculator: Any,
    on_steps: Callable[[int], None],
    cache: Path | None,
) -> list[ase.Atoms]:
    """One teacher MD trajectory, tagged; saved to ``cache`` (atomically) when given."""
    s_idx = int(atoms.info["structure_index"])
    melt = md.melt if sampler == "md-melt" else None
    tagged = []
    for frame in _run_md(atoms, md, temperature, seed, calculator, on_steps, melt=melt):
        step = frame.info["md_step"]
        tagged.append(tag_frame(frame, sampler, temperature, seed, s_idx))
        tagged[-1].info["md_step"] = step
    if cache is not None:
        # Written whole, then renamed: a kill never leaves half a file.
        cache.parent.mkdir(parents=True, exist_ok=True)
        partial = cache.with_suffix(".partial.extxyz")
        ase.io.write(partial, tagged, format="extxyz")
        partial.replace(cache)
    return tagged


_WORKER_TEACHERS: dict[str, Any] = {}


def _worker_init() -> None:
    import os

    # Several processes share one GPU: JAX teachers must not each grab 75 % of it.
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")


def _trajectory_job(
    spec: str,
    options: dict[str, Any],
    atoms: ase.Atoms,
    md: MDConfig,
    sampler: str,
    temperature: float,
    seed: int,
    cache: Path,
) -> int:
    """A worker process's trajectory (its teacher is loaded once per process)."""
    from jaxdistill.teachers.base import load_teacher

    key = repr((spec, sorted(options.items())))
    if key not in _WORKER_TEACHERS:
        _WORKER_TEACHERS[key] = load_teacher(spec, **options).as_calculator()
    frames = _trajectory(
        atoms, md, sampler, temperature, seed, _WORKER_TEACHERS[key], lambda n: None, cache
    )
    return len(frames)


def _run_parallel(
    jobs: list[tuple[ase.Atoms, str, float, int, int, Path]],
    spec: str,
    options: dict[str, Any],
    md: MDConfig,
    workers: int,
    on_steps: Callable[[int], None],
) -> None:
    """Run trajectories in worker processes; each lands in its cache file."""
    if not jobs:
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    # spawn: a forked child would inherit the parent's CUDA and JAX state.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(
        max_workers=min(workers, len(jobs)), mp_context=context, initializer=_worker_init
    ) as pool:
        futures = {
            pool.submit(_trajectory_job, spec, options, atoms, md, sampler, t, seed, path): steps
            for atoms, sampler, t, seed, steps, path in jobs
        }
        for future in as_completed(futures):
            future.result()  # a worker's exception surfaces here
            on_steps(futures[future])


def _md_trajectories(md: MDConfig | None) -> list[tuple[str, int, float, int]]:
    """(sampler, index, target temperature, steps) of every MD trajectory per structure."""
    if md is None or md.frames_per_temperature == 0:
        return []
    kept = md.equilibration_steps + md.frames_per_temperature * md.stride
    plain = [("md", i, t, kept) for i, t in enumerate(md.temperatures_kelvin)]
    melted = []
    if md.melt is not None:
        melted = [
            ("md-melt", i, t, md.melt.steps + kept)
            for i, t in enumerate(md.melt.temperatures_kelvin)
        ]
    return plain + melted


def _trajectory_cache(
    cache_dir: str | Path | None,
    atoms: ase.Atoms,
    md: MDConfig,
    sampler: str,
    temperature: float,
    seed: int,
) -> Path | None:
    if cache_dir is None:
        return None
    import hashlib
    import json

    key = json.dumps(
        [dataclasses.asdict(md), sampler, temperature, seed, frame_hash(atoms)],
        sort_keys=True,
        default=str,
    )
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return Path(cache_dir) / f"{sampler}-{temperature:g}K-{digest}.extxyz"


def element_counts(frames: Sequence[ase.Atoms]) -> dict[str, int]:
    """Atom counts per element symbol over frames, ordered by atomic number."""
    counter: Counter[int] = Counter()
    for atoms in frames:
        counter.update(int(z) for z in atoms.numbers)
    return {ase.data.chemical_symbols[z]: counter[z] for z in sorted(counter)}


def sampler_counts(frames: Sequence[ase.Atoms]) -> dict[str, int]:
    """Frame counts per ``info['sampler']``."""
    return dict(Counter(str(a.info.get("sampler", "unknown")) for a in frames))


def check_element_coverage(
    frames: Sequence[ase.Atoms], elements: Sequence[str] | set[str]
) -> dict[str, int]:
    """Check that every element appears in the frames.

    Args:
        frames: The data set.
        elements: Element symbols that must appear (e.g. those of the starting
            structures).

    Returns:
        Atom counts per element (see :func:`element_counts`).

    Raises:
        ValueError: Some element never appears; the message lists it and the counts.
    """
    counts = element_counts(frames)
    missing = sorted(set(elements) - set(counts), key=lambda s: ase.data.atomic_numbers[s])
    if missing:
        raise ValueError(
            f"element(s) {missing} of the starting structures never appear in the {len(frames)} "
            f"sampled frames (element counts: {counts}); a student trained on them would know "
            "nothing about these elements. Enable a generator for the structures that hold them."
        )
    return counts


def deduplicate(frames: Sequence[ase.Atoms]) -> list[ase.Atoms]:
    """Remove exact duplicates (same numbers, positions, cell and pbc, bit for bit),
    keeping the first occurrence and the order."""
    seen: set[str] = set()
    out = []
    for atoms in frames:
        key = frame_hash(atoms)
        if key not in seen:
            seen.add(key)
            out.append(atoms)
    return out


def sample(
    config: SamplingConfig | Mapping[str, Any],
    teacher: Teacher | str | None = None,
    progress: bool = False,
    console: Any | None = None,
    cache_dir: str | Path | None = None,
    workers: int = 1,
    teacher_options: Mapping[str, Any] | None = None,
) -> list[ase.Atoms]:
    """Generate frames from a sampling config.

    Args:
        config: A :class:`SamplingConfig` or a dict for :meth:`SamplingConfig.from_dict`.
        teacher: Teacher (or spec) driving the MD generator; ``config.md.teacher`` wins
            when set. Not needed without MD.
        progress: Show a rich progress bar (MD steps).
        console: ``rich.console.Console`` for the bar (default: stderr).
        cache_dir: If given, each finished MD trajectory is saved there (named by a
            hash of everything that determines it) and read back instead of rerun: a
            killed sampling run loses at most the trajectory in progress.
        workers: Teacher MD trajectories run at once, each in its own process (needs
            ``cache_dir`` and the teacher as a spec string). A small system leaves a
            GPU mostly idle per step, so several trajectories side by side finish
            several times sooner; the frames are the same as with one worker.
        teacher_options: Keyword arguments of :func:`~jaxdistill.load_teacher` for the
            MD teacher (e.g. ``{"device": "cuda"}``).

    Returns:
        The frames: per structure, MD frames (by temperature), then rattled, then
        strained (and the initial structure first if ``include_initial``). Each has
        ``info`` tags ``sampler``, ``temperature_kelvin``, ``seed``, ``structure_index``
        (and ``md_step`` for MD); MD frames carry momenta.

    Raises:
        ValueError: Nothing is generated, MD is requested without a teacher, or an
            element of the starting structures never appears (``check_coverage``).
    """
    if not isinstance(config, SamplingConfig):
        config = SamplingConfig.from_dict(config)
    structures = load_structures(config)
    seed = config.seed

    def applies(atoms: ase.Atoms, name: str) -> bool:
        chosen = atoms.info.get("_generators")
        return getattr(config, name) is not None and (chosen is None or name in chosen)

    md = config.md
    md_structures = [a for a in structures if applies(a, "md")]
    spec = None
    if md is not None and md_structures and md.frames_per_temperature > 0:
        spec = md.teacher if md.teacher is not None else teacher
        if spec is None:
            raise ValueError(
                "MD sampling needs a teacher: pass teacher= (or --teacher) or set md.teacher"
            )
    loaded: dict[str, Any] = {}

    def calculator() -> Any:
        """The MD teacher's calculator, loaded on first use (not at all when cached)."""
        if "calculator" not in loaded:
            from jaxdistill.teachers.base import load_teacher

            options = dict(teacher_options or {})
            loaded["calculator"] = load_teacher(spec, **options).as_calculator()
        return loaded["calculator"]

    trajectories = _md_trajectories(md) if spec is not None else []
    md_steps_total = len(md_structures) * sum(steps for _, _, _, steps in trajectories)

    from jaxdistill.progress import progress_bar

    # (structure, sampler, temperature, seed, steps, cache file) of every trajectory
    md_jobs: list[tuple[ase.Atoms, str, float, int, int, Path | None]] = []
    for atoms in md_structures:
        s_idx = int(atoms.info["structure_index"])
        for sampler, t_idx, temperature, steps in trajectories:
            md_seed = derive_seed(seed, _STREAM[sampler], s_idx, t_idx)
            path = _trajectory_cache(cache_dir, atoms, md, sampler, temperature, md_seed)
            md_jobs.append((atoms, sampler, temperature, md_seed, steps, path))

    frames: list[ase.Atoms] = []
    with progress_bar(console, enabled=progress and md_steps_total > 0) as bar:
        task = bar.add_task("teacher MD (steps)", total=md_steps_total)
        if workers > 1 and md_jobs:
            if cache_dir is None:
                raise ValueError("parallel teacher MD (workers > 1) needs a cache_dir")
            if not isinstance(spec, str):
                raise ValueError(
                    "parallel teacher MD (workers > 1) needs the teacher as a spec string "
                    "(each worker process loads its own)"
                )
            pending = [job for job in md_jobs if not job[-1].is_file()]
            bar.update(task, advance=md_steps_total - sum(job[4] for job in pending))
            _run_parallel(
                pending,
                spec,
                dict(teacher_options or {}),
                md,
                workers,
                lambda n: bar.update(task, advance=n),
            )
        by_structure: dict[int, list] = {}
        for job in md_jobs:
            by_structure.setdefault(int(job[0].info["structure_index"]), []).append(job)
        for atoms in structures:
            s_idx = int(atoms.info["structure_index"])
            if config.include_initial:
                frames.append(tag_frame(atoms.copy(), "initial", math.nan, -1, s_idx))
            if applies(atoms, "md"):
                for _, sampler, temperature, md_seed, steps, cached in by_structure.get(s_idx, []):
                    if cached is not None and cached.is_file():
                        frames.extend(ase.io.read(cached, index=":"))
                        if workers <= 1:
                            bar.update(task, advance=steps)
                        continue
                    frames.extend(
                        _trajectory(
                            atoms,
                            md,
                            sampler,
                            temperature,
                            md_seed,
                            calculator(),
                            lambda n: bar.update(task, advance=n),
                            cached,
                        )
                    )
            if config.rattle is not None and applies(atoms, "rattle"):
                for i in range(config.rattle.count):
                    f_seed = derive_seed(seed, _STREAM["rattle"], s_idx, i)
                    new = _rattled(
                        atoms, config.rattle.sigma_angstrom, np.random.default_rng(f_seed)
                    )
                    frames.append(tag_frame(new, "rattle", math.nan, f_seed, s_idx))
            if config.strain is not None and applies(atoms, "strain"):
                for i in range(config.strain.count):
                    f_seed = derive_seed(seed, _STREAM["strain"], s_idx, i)
                    rng = np.random.default_rng(f_seed)
                    new = _strained(
                        atoms, config.strain.max_strain, config.strain.sigma_angstrom, rng
                    )
                    frames.append(tag_frame(new, "strain", math.nan, f_seed, s_idx))

    if not frames:
        raise ValueError(
            "the sampling config produces no frames: enable md, rattle, strain (with count > 0) "
            "or include_initial"
        )
    if config.deduplicate:
        before = len(frames)
        frames = deduplicate(frames)
        if len(frames) < before:
            warnings.warn(f"removed {before - len(frames)} exact duplicate frame(s)", stacklevel=2)
    if config.check_coverage:
        required = {ase.data.chemical_symbols[int(z)] for a in structures for z in a.numbers}
        check_element_coverage(frames, required)
    return frames
