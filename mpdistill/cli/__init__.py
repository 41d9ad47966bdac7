"""Command line: ``mpdistill demo | study | bootstrap | train | eval | compare | view | rewrite | bench | recipes``.

One module per group of commands; :mod:`mpdistill.cli.app` holds what they share. The work itself
lives in the package (``run``, ``evaluation``, ``rewriting``, ``experiments``): a command reads its
options, calls one function and prints what it returns."""

from __future__ import annotations

import logging
import sys

# Each module registers its commands; in this order they are listed by --help.
from mpdistill.cli import experiments, train, evaluate, view, rewrite, bench, recipes  # noqa: F401, I001
from mpdistill.cli.app import app


def main() -> None:
    from mpdistill.utils.console import WarningLines

    handler = logging.StreamHandler()
    handler.setFormatter(WarningLines())
    logging.basicConfig(level=logging.WARNING, handlers=[handler])
    from mpdistill.plugins import PluginError, load_plugins

    try:
        load_plugins()  # tasks, rewriter backends and methods other packages add
    except PluginError as err:
        from mpdistill.utils.console import error

        error(str(err))
        sys.exit(2)
    app()

