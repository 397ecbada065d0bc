"""``python -m featstore.cli``: the same as the ``featstore`` command."""

from featstore.cli import app

app()
