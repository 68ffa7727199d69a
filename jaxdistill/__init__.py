"""jaxdistill: distil machine-learned force fields into small, fast JAX students.

Importing this package never imports torch or a teacher's package; teachers load
lazily behind extras.
"""

__version__ = "0.1.0"

from jaxdistill.evaluate import evaluate
from jaxdistill.graph import Graph, batch_graphs, graph_from_atoms
from jaxdistill.md.ase_calculator import StudentCalculator
from jaxdistill.student import Student, create_student, load_student
from jaxdistill.train import TrainConfig, train

__all__ = [
    "Graph",
    "Student",
    "StudentCalculator",
    "TrainConfig",
    "__version__",
    "batch_graphs",
    "create_student",
    "evaluate",
    "graph_from_atoms",
    "load_student",
    "train",
]
