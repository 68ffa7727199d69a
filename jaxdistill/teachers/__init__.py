"""Teachers: large force fields that label structures for distillation.

``load_teacher(spec)`` accepts ``orb:...``, ``fennol:...``, ``sevennet:...``,
``ase:<module>:<factory>``, an ASE calculator, or a ready teacher. Importing this package
imports neither torch nor any teacher package; adapters import theirs on use.
"""

from jaxdistill.teachers.ase import AseTeacher
from jaxdistill.teachers.base import (
    BaseTeacher,
    EnsembleTeacher,
    Teacher,
    TeacherCalculator,
    TeacherLabels,
    combine_ensemble,
    file_sha256,
)
from jaxdistill.teachers.registry import load_teacher

__all__ = [
    "AseTeacher",
    "BaseTeacher",
    "EnsembleTeacher",
    "Teacher",
    "TeacherCalculator",
    "TeacherLabels",
    "combine_ensemble",
    "file_sha256",
    "load_teacher",
]
