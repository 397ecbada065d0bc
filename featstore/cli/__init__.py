"""The ``featstore`` command: parse options, call one API function, print (entry point ``featstore.cli:app``).

:mod:`featstore.cli.main` holds the application, its global options and the error handling; each sibling module
registers its commands on it when imported, in the order ``--help`` lists them.
"""

from featstore.cli import store_cmds  # noqa: F401, I001  (registers the commands, in this order)
from featstore.cli import fit_cmds  # noqa: F401, I001
from featstore.cli import runs_cmds  # noqa: F401, I001
from featstore.cli import probe_cmds  # noqa: F401, I001
from featstore.cli import report_cmds  # noqa: F401, I001
from featstore.cli.main import app

__all__ = ["app"]
