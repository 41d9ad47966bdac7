"""``train_log.jsonl``: the run's metrics, one JSON line per logging step, written as they are logged.

transformers keeps every logged dict in ``trainer.state.log_history`` and saves it only inside a
checkpoint. :class:`TrainLogFile` appends each entry to a file (flushed to disk) the moment it is
logged, so a live run can be watched (``mpdistill view``, ``tail -f``) and a killed run keeps its
curve up to its last logging step. A resumed run starts the file again from the history its
checkpoint holds, so the steps that are trained again are not there twice. A NaN or infinite value
(the loss of a step the NaN guard skipped) is written as ``null``, so every line is valid JSON.
"""

from __future__ import annotations

import math
from pathlib import Path

from transformers import TrainerCallback

from mpdistill.utils.durable import append_jsonl, write_jsonl


class TrainLogFile(TrainerCallback):
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._written = 0  # entries of log_history already in the file

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            # Fresh: empty. Resumed: the checkpoint's history, which ends at the step training goes on from.
            write_train_log(self.path, state.log_history)
        self._written = len(state.log_history)

    # Entries come from transformers' log() (on_log follows) and from callbacks that add their own
    # (the mix monitor's warnings, at a step's end): whatever is new is appended at each of these.
    def on_log(self, args, state, control, logs=None, **kwargs):
        self._append_new(state)

    def on_step_end(self, args, state, control, **kwargs):
        self._append_new(state)

    def on_train_end(self, args, state, control, **kwargs):
        self._append_new(state)

    def _append_new(self, state) -> None:
        if state.is_world_process_zero:
            append_jsonl(self.path, map(_json_safe, state.log_history[self._written:]))
        self._written = len(state.log_history)


def write_train_log(path: Path, history: list[dict]) -> None:
    """The whole file from a trainer's ``log_history`` (replacing what was there)."""
    write_jsonl(path, map(_json_safe, history))


def _json_safe(entry: dict) -> dict:
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in entry.items()}
