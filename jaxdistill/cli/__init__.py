"""Command-line interface: ``jaxdistill COMMAND``; each command a thin shell over the library.

- :mod:`~jaxdistill.cli.main`: the typer ``app`` and ``demo``, ``distill``, ``info``;
- :mod:`~jaxdistill.cli.data`: ``sample`` and ``label``;
- :mod:`~jaxdistill.cli.train`: ``train`` and ``evaluate``;
- :mod:`~jaxdistill.cli.md`: ``md``.

Importing the CLI imports neither jax nor a teacher: each command imports what it runs.
"""

from jaxdistill.cli.main import app

__all__ = ["app"]
