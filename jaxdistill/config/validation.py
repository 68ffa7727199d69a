"""The ``md_validation`` section: how student and teacher MD are compared."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from jaxdistill.config.keys import as_temperatures, check_keys


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
