"""``python -m jaxdistill COMMAND``: the same app as the ``jaxdistill`` script."""

from jaxdistill.cli.main import app

app(prog_name="jaxdistill")
