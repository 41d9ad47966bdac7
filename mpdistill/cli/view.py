"""``mpdistill view``: runs and evaluations as one HTML page."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from mpdistill.cli.app import app, one_line_errors
from mpdistill.utils.console import stdout as console


@app.command("view")
@one_line_errors
def view_cmd(
    paths: list[Path] = typer.Argument(..., help="Training run folders, evaluation folders (mpdistill eval) or samples "
                                       ".jsonl files; each evaluation after the first is compared with it, problem "
                                       "by problem."),
    out: Optional[Path] = typer.Option(None, "--out", help="HTML file to write (default: view.html in the first folder)."),
    max_texts: int = typer.Option(2000, "--max-texts", help="Samples whose texts go on the page, per run or evaluation "
                                  "(every sample's metadata always does)."),
) -> None:
    """One self-contained HTML page of runs and evaluations: curves, every sample with its diff, and comparisons."""
    from mpdistill.utils.paths import check_output_file
    from mpdistill.view import default_output, write_view

    target = out if out is not None else default_output(paths)
    check_output_file(target, "--out")
    written = write_view(paths, target, max_texts=max_texts)
    console.print(f"wrote {written}", markup=False)
