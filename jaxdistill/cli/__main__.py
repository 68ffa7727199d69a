"""``python -m jaxdistill.cli COMMAND``: the same app as the ``jaxdistill`` script."""

from jaxdistill.cli.main import app

app(prog_name="jaxdistill")
