"""``mpdistill.json`` in a saved model folder: how the model was trained to be prompted and read.

Training (and the demo, and ``mpdistill bootstrap``) writes it beside the weights, so that
``mpdistill eval`` on that folder uses the same task, prompt and prompt style without being told:
a chain-task model graded by the math grader, or prompted with the math instruction it never saw,
would be reported near 0% while it answers correctly.
"""

from __future__ import annotations

import json
from pathlib import Path

from mpdistill.utils.durable import write_text

RECORD = "mpdistill.json"


def write_record(folder: str | Path, *, task: str, prompt_template: str, prompt_style: str,
                 thinking: bool | None = None, **extra) -> None:
    """``extra``: ``max_new_tokens`` (the evaluation budget), and how the model was made."""
    record = {"task": task, "prompt_template": prompt_template, "prompt_style": prompt_style,
              "thinking": thinking, **extra}
    write_text(Path(folder) / RECORD, json.dumps(record, indent=2) + "\n")


def read_record(folder: str | Path) -> dict:
    """The record of a model folder; {} for a Hub name or a folder without one."""
    path = Path(folder).expanduser() / RECORD
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}
