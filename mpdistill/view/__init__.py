"""``mpdistill view``: training runs and evaluations as one self-contained HTML page.

Each path is a training run folder or an evaluation (an ``mpdistill eval`` folder, or a samples
``.jsonl`` file); with two or more evaluations, each later one is also compared with the first,
problem by problem. See :mod:`mpdistill.view.load` (reading), :mod:`.sampling` (which texts go
on the page), :mod:`.flips` (the comparison), :mod:`.sections` (the page's data) and :mod:`.page`.
"""

from __future__ import annotations

import datetime
from pathlib import Path

from mpdistill.utils.durable import atomic_write
from mpdistill.view.flips import compare_problems
from mpdistill.view.load import Evaluation, ViewError, read_path
from mpdistill.view.page import render_page
from mpdistill.view.sections import comparison_section, eval_section, flipped_samples, run_section

__all__ = ["OUTPUT_NAME", "ViewError", "build_page", "default_output", "write_view"]

OUTPUT_NAME = "view.html"


def default_output(paths: list[Path]) -> Path:
    """``view.html`` in the first folder given (the folder of the first file, if it is a file)."""
    first = paths[0]
    return (first if first.is_dir() else first.parent) / OUTPUT_NAME


def build_page(paths: list[Path], *, max_texts: int) -> str:
    """The HTML page of ``paths``, with the texts of at most ``max_texts`` samples of each."""
    if max_texts < 0:
        raise ViewError(f"--max-texts must be at least 0, got {max_texts}")
    paths = [Path(p) for p in paths]
    loaded = [read_path(p) for p in paths]
    labels = tab_labels(paths)
    evaluations = [i for i, item in enumerate(loaded) if isinstance(item, Evaluation)]
    comparisons, flipped = [], {i: set() for i in evaluations}
    for new in evaluations[1:]:
        base = evaluations[0]
        result = compare_problems(loaded[base].samples, loaded[new].samples)
        comparisons.append((base, new, result))
        flipped[base] |= flipped_samples(result, "base")
        flipped[new] |= flipped_samples(result, "new")
    sections = [
        eval_section(item, labels[i], max_texts, first=flipped[i]) if isinstance(item, Evaluation)
        else run_section(item, labels[i], max_texts)
        for i, item in enumerate(loaded)
    ]
    sections += [comparison_section(f"{labels[base]} → {labels[new]}", base, new, result)
                 for base, new, result in comparisons]
    built = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")
    title = "mpdistill view: " + ", ".join(labels)
    data = {"title": title, "built": built, "max_texts": max_texts, "sections": sections}
    return render_page(data, title=title, built=built)


def write_view(paths: list[Path], out: Path | None = None, *, max_texts: int) -> Path:
    """Build the page of ``paths`` and write it (atomically) to ``out``; returns where it was written."""
    out = default_output(paths) if out is None else out
    page = build_page(paths, max_texts=max_texts)
    # A model's output may hold a lone surrogate, which UTF-8 cannot encode; written as a \\u escape
    # it reads back as the same character in the page's JSON.
    atomic_write(out, lambda tmp: tmp.write_bytes(page.encode("utf-8", "backslashreplace")))
    return out


def tab_labels(paths: list[Path]) -> list[str]:
    """Each path's folder or file name; where two are the same, with their parent folder."""
    names = [p.resolve().name for p in paths]
    return [f"{p.resolve().parent.name}/{name}" if names.count(name) > 1 else name for p, name in zip(paths, names)]
