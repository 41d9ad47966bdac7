"""What the command line prints: results on stdout; warnings and errors on stderr, one line each.

Text is printed as given: never read as rich markup (a path may hold ``[red]``) and never
hard-wrapped (a piped error stays one line that ``grep`` can find).
"""

from __future__ import annotations

import os

from rich.console import Console
from rich.text import Text

# Rich picks sys.stdout / sys.stderr when it prints, so a caller that swaps them still gets the text.
stdout = Console(markup=False, highlight=False, soft_wrap=True)
stderr = Console(stderr=True, markup=False, highlight=False, soft_wrap=True)


def warn(message: str) -> None:
    stderr.print(Text.assemble(("warning:", "yellow"), " ", message))


def error(message: str) -> None:
    """One ``error:`` line; under a launcher, other processes than the main one say which they are."""
    rank = os.environ.get("RANK", "0")
    where = "" if rank == "0" else f"(process {rank}) "
    stderr.print(Text.assemble(("error:", "red"), " ", where, message))
