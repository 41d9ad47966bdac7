"""What the command line prints: results on stdout; warnings and errors on stderr, one line each.

Text is printed as given: never read as rich markup or emoji codes (a path may hold ``[red]`` or
``:smile:``) and never hard-wrapped (a piped error stays one line that ``grep`` can find). The
package's own ``logging`` warnings are printed the same way (:class:`WarningLines`).
"""

from __future__ import annotations

import logging
import os

from rich.console import Console
from rich.text import Text

# Rich picks sys.stdout / sys.stderr when it prints, so a caller that swaps them still gets the text.
stdout = Console(markup=False, emoji=False, highlight=False, soft_wrap=True)
stderr = Console(stderr=True, markup=False, emoji=False, highlight=False, soft_wrap=True)


def warn(message: str) -> None:
    stderr.print(Text.assemble(("warning:", "yellow"), " ", message))


def error(message: str) -> None:
    """One ``error:`` line; under a launcher, other processes than the main one say which they are.
    A progress bar the failed work left open is closed first, so the line starts a line of its own."""
    _close_progress_bars()
    rank = os.environ.get("RANK", "0")
    where = "" if rank == "0" else f"(process {rank}) "
    stderr.print(Text.assemble(("error:", "red"), " ", where, message))


class WarningLines(logging.Formatter):
    """The package's log records as ``warning: message`` lines, like :func:`warn`; other libraries'
    as ``LEVEL name: message``."""

    def __init__(self) -> None:
        super().__init__("%(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        if record.name.split(".")[0] == "mpdistill":
            return f"{record.levelname.lower()}: {record.getMessage()}"
        return super().format(record)


def _close_progress_bars() -> None:
    import sys

    tqdm = sys.modules.get("tqdm.std")
    if tqdm is None:  # nothing drew a bar
        return
    for bar in list(getattr(tqdm.tqdm, "_instances", ())):
        try:
            bar.close()
        except Exception:  # noqa: BLE001 - a bar that cannot close is no reason to lose the error line
            pass
