"""jaxdistill: distil machine-learned force fields into small, fast JAX students.

The public names below load on first use (PEP 562), so ``import jaxdistill`` is cheap
and importing one part (``jaxdistill.config`` reads a YAML without jax) does not pull
in the rest. Importing never imports torch or a teacher's package; teachers load lazily
behind extras.
"""

from __future__ import annotations

import sys
import types
from typing import TYPE_CHECKING, Any

from jaxdistill._lazy import lazy_exports
from jaxdistill._version import __version__

#: public name -> the module that defines it
_EXPORTS = {
    "DistillConfig": "jaxdistill.config",
    "SamplingConfig": "jaxdistill.config",
    "TrainConfig": "jaxdistill.config",
    "Graph": "jaxdistill.graph",
    "batch_graphs": "jaxdistill.graph",
    "graph_from_atoms": "jaxdistill.graph",
    "LabelStore": "jaxdistill.data",
    "label": "jaxdistill.labelling",
    "evaluate": "jaxdistill.evaluate",
    "StudentCalculator": "jaxdistill.md.ase_calculator",
    "StudentCommittee": "jaxdistill.committee",
    "load_committee": "jaxdistill.committee",
    "jax_md_potential": "jaxdistill.md.jaxmd",
    "MDInstabilityError": "jaxdistill.md",
    "MDSummary": "jaxdistill.md",
    "run_md": "jaxdistill.md",
    "distill": "jaxdistill.pipeline",
    "sample": "jaxdistill.sampling",
    "Student": "jaxdistill.student",
    "create_student": "jaxdistill.student",
    "load_student": "jaxdistill.student",
    "load_teacher": "jaxdistill.teachers",
    "train": "jaxdistill.train",
}

__all__ = [
    "DistillConfig",
    "Graph",
    "LabelStore",
    "MDInstabilityError",
    "MDSummary",
    "SamplingConfig",
    "Student",
    "StudentCalculator",
    "StudentCommittee",
    "TrainConfig",
    "__version__",
    "batch_graphs",
    "create_student",
    "distill",
    "evaluate",
    "graph_from_atoms",
    "jax_md_potential",
    "label",
    "load_committee",
    "load_student",
    "load_teacher",
    "run_md",
    "sample",
    "train",
]


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())


class _Package(types.ModuleType):
    """``jaxdistill.train`` and ``jaxdistill.evaluate`` are functions, as the API says,
    although submodules carry the same names: importing such a submodule must not
    replace the package's attribute with the module (Python's import system would)."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _EXPORTS and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


if TYPE_CHECKING:  # for type checkers and IDEs: the same names, eagerly
    from jaxdistill.committee import StudentCommittee, load_committee
    from jaxdistill.config import DistillConfig, SamplingConfig, TrainConfig
    from jaxdistill.data import LabelStore
    from jaxdistill.evaluate import evaluate
    from jaxdistill.graph import Graph, batch_graphs, graph_from_atoms
    from jaxdistill.labelling import label
    from jaxdistill.md import MDInstabilityError, MDSummary, run_md
    from jaxdistill.md.ase_calculator import StudentCalculator
    from jaxdistill.md.jaxmd import jax_md_potential
    from jaxdistill.pipeline import distill
    from jaxdistill.sampling import sample
    from jaxdistill.student import Student, create_student, load_student
    from jaxdistill.teachers import load_teacher
    from jaxdistill.train import train
