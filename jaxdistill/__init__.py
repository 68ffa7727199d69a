"""jaxdistill: distil machine-learned force fields into small, fast JAX students.

Importing this package never imports torch or a teacher's package; teachers load
lazily behind extras.
"""

__version__ = "0.1.0"

from jaxdistill.data import LabelStore, label
from jaxdistill.evaluate import evaluate
from jaxdistill.graph import Graph, batch_graphs, graph_from_atoms
from jaxdistill.md.ase_calculator import StudentCalculator
from jaxdistill.md.jaxmd import jax_md_potential
from jaxdistill.md.run import MDInstabilityError, MDSummary, run_md
from jaxdistill.pipeline import DistillConfig, distill
from jaxdistill.sampling import SamplingConfig, sample
from jaxdistill.student import Student, create_student, load_student
from jaxdistill.teachers import load_teacher
from jaxdistill.train import TrainConfig, train

__all__ = [
    "DistillConfig",
    "Graph",
    "LabelStore",
    "MDInstabilityError",
    "MDSummary",
    "SamplingConfig",
    "Student",
    "StudentCalculator",
    "TrainConfig",
    "__version__",
    "batch_graphs",
    "create_student",
    "distill",
    "evaluate",
    "graph_from_atoms",
    "jax_md_potential",
    "label",
    "load_student",
    "load_teacher",
    "run_md",
    "sample",
    "train",
]
