"""jaxdistill: distil machine-learned force fields into small, fast JAX students.

Importing this package never imports torch or a teacher's package; teachers load
lazily behind extras.
"""

__version__ = "0.1.0"

from jaxdistill.graph import Graph, batch_graphs, graph_from_atoms
from jaxdistill.md.ase_calculator import StudentCalculator
from jaxdistill.student import Student, create_student, load_student

__all__ = [
    "Graph",
    "Student",
    "StudentCalculator",
    "__version__",
    "batch_graphs",
    "create_student",
    "graph_from_atoms",
    "load_student",
]
