"""The ``sampling`` section: which structures, and which generators turn them into frames.

Imports neither jax nor a teacher (reading a YAML stays cheap); the generators that use
these settings are in :mod:`jaxdistill.sampling`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ase
import ase.build
import ase.io

from jaxdistill.config.keys import as_temperatures, check_keys, read_yaml

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
        path = Path(path)
        data = read_yaml(path, "sampling config")
        if data is None:
            raise ValueError(f"sampling config {path} is empty")
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
