"""The ``jaxdistill distill`` pipeline: sample → label → train → (refine) → evaluate →
MD validation → report, resumable stage by stage in one run directory.

- :mod:`~jaxdistill.pipeline.rundir`: the run directory and its record of finished stages;
- :mod:`~jaxdistill.pipeline.stages`: the stages, each a thin shell over the library;
- :mod:`~jaxdistill.pipeline.refine`: active learning (the ``refine`` stage);
- :mod:`~jaxdistill.pipeline.report`: report.md, its plots and the terminal summary;
- :mod:`~jaxdistill.pipeline.runner`: :func:`distill`, which runs (or resumes) them.

The configuration (:class:`~jaxdistill.config.DistillConfig`) lives in
:mod:`jaxdistill.config`, which imports without jax.
"""

# Imported eagerly: the function ``refine`` shares its name with its module, and a lazy
# export would be shadowed by the module once anything imported it.
from jaxdistill.pipeline.refine import refine
from jaxdistill.pipeline.rundir import RunDirectory
from jaxdistill.pipeline.runner import distill

__all__ = ["RunDirectory", "distill", "refine"]
