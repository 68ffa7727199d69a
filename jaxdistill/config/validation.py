"""The validation sections: ``md_validation`` (student and teacher MD compared),
``phonons`` and ``vibrations`` (their curvature compared)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jaxdistill.config.keys import as_temperatures, check_keys
from jaxdistill.config.sampling import StructureSpec


@dataclass(frozen=True)
class MDValidationConfig:
    """The ``md_validation`` section of a pipeline config.

    Attributes:
        temperatures_kelvin: NVT temperatures, K. Empty = the training temperatures
            plus one between the lowest two that was not sampled.
        student_steps: Student NVT steps per temperature (after equilibration).
        teacher_steps: Teacher NVT steps per temperature (after equilibration); the
            teacher is slow, so this is usually shorter.
        equilibration_steps: Steps discarded before statistics, both models.
        nve_steps: Student NVE steps, from the equilibrated state at the lowest
            temperature; their total-energy drift is reported in meV/atom/ps.
        timestep_fs: Time step, fs.
        friction_per_fs: Langevin friction, 1/fs.
        stride: Steps between frames kept for RDFs and held-out labels.
        rdf_rmax_angstrom: Largest RDF distance, Å (capped by the cell).
        rdf_bins: RDF histogram bins.
        structure_index: Which starting structure of the sampling config to use.
        seed: Velocity and thermostat seed.
    """

    temperatures_kelvin: tuple[float, ...] = ()
    student_steps: int = 2000
    teacher_steps: int = 400
    equilibration_steps: int = 200
    nve_steps: int = 2000
    timestep_fs: float = 1.0
    friction_per_fs: float = 0.01
    stride: int = 10
    rdf_rmax_angstrom: float = 6.0
    rdf_bins: int = 120
    structure_index: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        if (
            min(self.student_steps, self.teacher_steps, self.equilibration_steps, self.nve_steps)
            < 0
        ):
            raise ValueError("md_validation step counts must be >= 0")
        if self.timestep_fs <= 0 or self.stride < 1 or self.rdf_bins < 2:
            raise ValueError("md_validation needs timestep_fs > 0, stride >= 1, rdf_bins >= 2")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> MDValidationConfig:
        """Build from a mapping; unknown keys raise ValueError naming them."""
        data = dict(data or {})
        check_keys(cls, data, "md_validation")
        if "temperatures_kelvin" in data:
            data["temperatures_kelvin"] = as_temperatures(data["temperatures_kelvin"])
        return cls(**data)


def _as_int_list(value: Any, key: str, where: str) -> tuple[int, ...]:
    """A list of positive integers from YAML, named when it is not one."""
    if (
        not isinstance(value, list | tuple)
        or not value
        or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in value)
    ):
        raise ValueError(f"{where}: {key} must be a list of positive integers, got {value!r}")
    return tuple(int(v) for v in value)


def _as_supercell(value: Any) -> tuple[int, int, int] | tuple[tuple[int, int, int], ...]:
    """``[n1, n2, n3]`` (diagonal) or a 3×3 integer matrix with a positive determinant."""
    if isinstance(value, list | tuple) and len(value) == 3:
        if all(isinstance(row, list | tuple) for row in value):
            matrix = []
            for row in value:
                if len(row) != 3 or any(isinstance(v, bool) or not isinstance(v, int) for v in row):
                    break
                matrix.append(tuple(int(v) for v in row))
            else:
                a = matrix
                det = (
                    a[0][0] * (a[1][1] * a[2][2] - a[1][2] * a[2][1])
                    - a[0][1] * (a[1][0] * a[2][2] - a[1][2] * a[2][0])
                    + a[0][2] * (a[1][0] * a[2][1] - a[1][1] * a[2][0])
                )
                if det > 0:
                    return tuple(matrix)
        elif all(not isinstance(v, bool) and isinstance(v, int) and v >= 1 for v in value):
            return tuple(int(v) for v in value)
    raise ValueError(
        "phonons: supercell must be three positive integers [n1, n2, n3] or a 3x3 integer "
        f"matrix with a positive determinant, got {value!r}"
    )


def _structure_spec(
    value: Any, where: str, base_dir: Path | None, molecule_names: bool
) -> StructureSpec:
    """A structure entry (as in ``sampling.structures``) from YAML.

    A bare string is an ``ase.build.molecule`` name when ``molecule_names`` (the
    ``vibrations`` section), else a file path (as in ``sampling.structures``).
    """
    if isinstance(value, str) and molecule_names:
        value = {"build": "molecule", "args": {"name": value}}
    if not isinstance(value, Mapping | str):
        raise ValueError(f"{where} must be a structure entry (a mapping), got {value!r}")
    return StructureSpec.from_dict(value, base_dir)


def _spec_to_dict(spec: StructureSpec) -> dict[str, Any]:
    """A structure entry as a plain dict, without the keys left at their defaults."""
    defaults = StructureSpec(build="bulk")
    out = {}
    for f in dataclasses.fields(spec):
        value = getattr(spec, f.name)
        if f.name in ("file", "build") or value != getattr(defaults, f.name):
            if value is None:
                continue
            out[f.name] = (
                dict(value)
                if isinstance(value, Mapping)
                else list(value)
                if isinstance(value, tuple)
                else value
            )
    return out


@dataclass(frozen=True)
class PhononConfig:
    """The ``phonons`` section: student and teacher phonons of a crystal (phonopy).

    Attributes:
        structure: The crystal (a structure entry as in ``sampling.structures``: a file
            or an ``ase.build`` call); None = the first fully periodic starting
            structure of the sampling. Phonopy finds its primitive cell.
        supercell: Supercell of ``structure`` in which force constants are computed by
            finite displacements: ``[n1, n2, n3]`` or a 3×3 integer matrix.
        displacement_angstrom: Finite displacement, Å.
        plus_minus: Displace each atom both ways (central differences: the forces the
            structure may have at rest cancel, error O(displacement²)).
        q_spacing_per_angstrom: Spacing of q-points along the band path, 1/Å (2π
            included, seekpath's ``reference_distance``).
        dos_mesh: q-point mesh (Γ-centred) for the density of states.
        dos_sigma_thz: Gaussian smearing of the density of states, THz.
        dtype: Precision of the student's calculator ("float32" or "float64"; float64
            switches on ``jax_enable_x64`` for the process).
    """

    structure: StructureSpec | None = None
    supercell: tuple[int, int, int] | tuple[tuple[int, int, int], ...] = (2, 2, 2)
    displacement_angstrom: float = 0.01
    plus_minus: bool = True
    q_spacing_per_angstrom: float = 0.025
    dos_mesh: tuple[int, ...] = (20, 20, 20)
    dos_sigma_thz: float = 0.1
    dtype: str = "float32"

    def __post_init__(self) -> None:
        if self.displacement_angstrom <= 0 or self.q_spacing_per_angstrom <= 0:
            raise ValueError(
                "phonons: displacement_angstrom and q_spacing_per_angstrom must be > 0"
            )
        if self.dos_sigma_thz <= 0:
            raise ValueError("phonons: dos_sigma_thz must be > 0")
        if len(self.dos_mesh) != 3:
            raise ValueError(f"phonons: dos_mesh must be three integers, got {self.dos_mesh}")
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"phonons: dtype must be float32 or float64, got {self.dtype!r}")

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any] | None, base_dir: str | Path | None = None
    ) -> PhononConfig:
        """Build from a mapping; unknown keys or wrong types raise ValueError naming them."""
        data = dict(data or {})
        check_keys(cls, data, "phonons")
        base = Path(base_dir) if base_dir is not None else None
        if data.get("structure") is not None:
            data["structure"] = _structure_spec(
                data["structure"], "phonons: structure", base, molecule_names=False
            )
        if "supercell" in data:
            data["supercell"] = _as_supercell(data["supercell"])
        if "dos_mesh" in data:
            data["dos_mesh"] = _as_int_list(data["dos_mesh"], "dos_mesh", "phonons")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        """A plain dict that :meth:`from_dict` reads back."""
        out = dataclasses.asdict(self)
        out["structure"] = _spec_to_dict(self.structure) if self.structure else None
        out["supercell"] = [list(r) if isinstance(r, tuple) else r for r in self.supercell]
        out["dos_mesh"] = list(self.dos_mesh)
        return out


@dataclass(frozen=True)
class VibrationsConfig:
    """The ``vibrations`` section: harmonic frequencies of molecules (ASE ``Vibrations``).

    Each molecule is first relaxed with each model's own calculator (BFGS), then its
    Hessian comes from central differences of the forces.

    Attributes:
        molecules: The molecules: ``ase.build.molecule`` names (``CH3CH2OH``) or
            structure entries as in ``sampling.structures`` (``{file: mol.xyz}``).
            Empty = every non-periodic starting structure of the sampling.
        delta_angstrom: Finite displacement of ``Vibrations``, Å.
        fmax_ev_per_angstrom: Geometry optimisation stops below this largest force, eV/Å.
        max_optimisation_steps: BFGS steps at most (a run that ends unconverged is
            reported as such).
        optimise: Relax each molecule with each model first (False: both at the given
            geometry, where forces need not vanish).
        dtype: Precision of the student's calculator ("float32" or "float64").
    """

    molecules: tuple[StructureSpec, ...] = ()
    delta_angstrom: float = 0.01
    fmax_ev_per_angstrom: float = 1e-3
    max_optimisation_steps: int = 1000
    optimise: bool = True
    dtype: str = "float32"

    def __post_init__(self) -> None:
        if self.delta_angstrom <= 0 or self.fmax_ev_per_angstrom <= 0:
            raise ValueError("vibrations: delta_angstrom and fmax_ev_per_angstrom must be > 0")
        if self.max_optimisation_steps < 0:
            raise ValueError("vibrations: max_optimisation_steps must be >= 0")
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"vibrations: dtype must be float32 or float64, got {self.dtype!r}")

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any] | None, base_dir: str | Path | None = None
    ) -> VibrationsConfig:
        """Build from a mapping; unknown keys or wrong types raise ValueError naming them."""
        data = dict(data or {})
        check_keys(cls, data, "vibrations")
        base = Path(base_dir) if base_dir is not None else None
        molecules = data.get("molecules") or ()
        if isinstance(molecules, str | Mapping):
            molecules = [molecules]
        if not isinstance(molecules, list | tuple):
            raise ValueError(f"vibrations: molecules must be a list, got {molecules!r}")
        data["molecules"] = tuple(
            _structure_spec(m, f"vibrations: molecules[{i}]", base, molecule_names=True)
            for i, m in enumerate(molecules)
        )
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        """A plain dict that :meth:`from_dict` reads back."""
        out = dataclasses.asdict(self)
        out["molecules"] = [_spec_to_dict(m) for m in self.molecules]
        return out
