"""Reading what ``mpdistill view`` shows into plain data: a training run folder, or an evaluation
(an ``mpdistill eval`` folder, or a samples ``.jsonl`` file such as the demo writes).

A run may still be writing while it is viewed: the last line of a JSONL log may be torn, and is
then left out with a warning. A bad line anywhere else is a :class:`ViewError` naming the file and
line.

A long run's ``rollouts.jsonl`` holds gigabytes of text, so it is read in two passes: the first
keeps each sample's metadata (a few integers) and where its line is; the second
(:func:`read_rollout_texts`) reads back only the lines whose texts go on the page.
"""

from __future__ import annotations

import json
import logging
from array import array
from dataclasses import dataclass, field
from pathlib import Path

from mpdistill.errors import MPDistillError
from mpdistill.evaluation.folder import EvalError, SAMPLES_FILE, read_eval_folder, read_sample_records
from mpdistill.models.record import RECORD
from mpdistill.utils.durable import LogError, read_jsonl_log
from mpdistill.utils.paths import ROLLOUTS, TRAIN_LOG

log = logging.getLogger(__name__)

# Any of these files (all written by `mpdistill train`) marks a training run folder.
RECIPE = "recipe.yaml"
MODEL_RECORD = f"model/{RECORD}"
RUN_MARKERS = (RECIPE, TRAIN_LOG, ROLLOUTS, MODEL_RECORD)

# Integer columns code a missing value as -1, so they fit typed arrays on the page.
MISSING = -1
# An extracted or gold answer longer than this is cut: it is a label in a table, not the text.
ANSWER_CHARS = 300
# Recipe keys shown in a run's header.
RECIPE_KEYS = ("method", "task", "student", "teacher", "training.steps", "training.batch_size",
               "training.learning_rate", "rewrite.max_ratio", "rewrite.on_reject")


class ViewError(MPDistillError, ValueError):
    """A path ``mpdistill view`` cannot show; the message names the file, and the line where one is bad."""


@dataclass
class Rollouts:
    """``rollouts.jsonl`` as columns, one entry per sample in file order, plus where each line is."""

    path: Path
    line: list[int] = field(default_factory=list)
    step: list[int] = field(default_factory=list)
    reason: list[int] = field(default_factory=list)  # index into ``reasons``
    accepted: list[int] = field(default_factory=list)  # 1 or 0
    student_tokens: list[int] = field(default_factory=list)
    rewrite_tokens: list[int] = field(default_factory=list)
    teacher_tokens: list[int] = field(default_factory=list)  # off-policy KD: the teacher's sample
    trained_on: list[int] = field(default_factory=list)  # index into ``trained_on_names``, or MISSING
    correct: list[int] = field(default_factory=list)  # the student's answer: 1, 0, or MISSING where not graded
    reasons: list[str] = field(default_factory=list)
    trained_on_names: list[str] = field(default_factory=list)
    offsets: array = field(default_factory=lambda: array("q"))  # byte offset of each sample's line
    torn_line: int | None = None  # a last line still being written, left out

    def __len__(self) -> int:
        return len(self.step)


@dataclass
class Run:
    path: Path
    recipe: dict  # RECIPE_KEYS found in recipe.yaml, flattened
    finished: bool  # the trained model is saved
    log: list[dict]  # train_log.jsonl's per-step entries, in order
    log_summary: dict | None  # the end-of-training entry (train_runtime, ...)
    rollouts: Rollouts | None
    warnings: list[str]


@dataclass
class Evaluation:
    path: Path
    model: str | None
    samples: list[dict]  # as mpdistill.evaluation.folder checks them, in file order
    warnings: list[str]


def read_path(path: Path) -> Run | Evaluation:
    """A run folder or an evaluation, whichever ``path`` is."""
    if not path.exists():
        raise ViewError(f"{path}: no such file or folder")
    if path.is_file() and path.name in (ROLLOUTS, TRAIN_LOG):
        raise ViewError(f"{path}: a training run's log; give the run's folder ({path.parent})")
    if path.is_file() and path.suffix == ".jsonl":
        return read_evaluation(path)
    if path.is_dir() and (path / SAMPLES_FILE).is_file():
        return read_evaluation(path)
    if path.is_dir() and any((path / name).is_file() for name in RUN_MARKERS):
        return read_run(path)
    raise ViewError(f"{path}: neither a training run folder (holding {', '.join(RUN_MARKERS[:-1])} or {RUN_MARKERS[-1]}) "
                    f"nor an evaluation (a folder holding {SAMPLES_FILE}, or a samples .jsonl file)")


# ---------------------------------------------------------------------------------------------
# Evaluations.


def read_evaluation(path: Path) -> Evaluation:
    try:
        if path.is_dir():
            folder = read_eval_folder(path)
            return Evaluation(path, folder["model"], folder["samples"], folder["warnings"])
        samples, warnings = read_sample_records(path)
    except EvalError as err:
        raise ViewError(str(err)) from None
    return Evaluation(path, None, samples, warnings)


def short_answer(value) -> str | None:
    """An extracted or gold answer as a short string (None stays None)."""
    if value is None:
        return None
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return text if len(text) <= ANSWER_CHARS else text[:ANSWER_CHARS - 1] + "…"


# ---------------------------------------------------------------------------------------------
# Training runs.


def read_run(folder: Path) -> Run:
    warnings: list[str] = []
    entries, summary = read_train_log(folder / TRAIN_LOG, warnings)
    rollouts = None
    if (folder / ROLLOUTS).is_file():
        rollouts = scan_rollouts(folder / ROLLOUTS)
        if rollouts.torn_line is not None:
            warnings.append(f"{rollouts.path}: line {rollouts.torn_line} is still being written (or was cut "
                            "short); left out")
    return Run(folder, _read_recipe(folder / RECIPE), (folder / MODEL_RECORD).is_file(), entries, summary,
               rollouts, warnings)


def _read_recipe(path: Path) -> dict:
    if not path.is_file():
        return {}
    import yaml

    try:
        recipe = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        mark = getattr(err, "problem_mark", None)
        where = f", line {mark.line + 1}" if mark is not None else ""
        raise ViewError(f"{path}{where}: not a readable recipe ({getattr(err, 'problem', None) or err})") from None
    if not isinstance(recipe, dict):
        raise ViewError(f"{path}: expected a recipe (a YAML mapping), got {type(recipe).__name__}")
    shown = {}
    method = _registered_method(recipe.get("method"))
    for key in RECIPE_KEYS:
        # Only what the run's method used: no rewrite settings where nothing was rewritten, and the
        # teacher it really had (the student itself for self-distillation, none for GRPO).
        if method is not None and key.startswith("rewrite.") and not method.rewrites:
            continue
        if method is not None and key == "teacher" and (method.self_teacher or not method.uses_teacher):
            if method.self_teacher:
                training = recipe.get("training") if isinstance(recipe.get("training"), dict) else {}
                sync = training.get("teacher_sync_steps")
                how = "frozen" if sync is None else f"refreshed every {sync} steps"
                shown[key] = f"{recipe.get('student', 'embedded:student')} ({how}, asked to be concise)"
            continue
        value = recipe
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if value is not None and not isinstance(value, (dict, list)):
            # YAML reads some scalars as dates and the like, which JSON cannot hold: shown as written.
            shown[key] = value if isinstance(value, (str, int, float, bool)) else str(value)
    return shown


def _registered_method(name):
    from mpdistill.trainers.methods import METHODS

    return METHODS.get(name) if isinstance(name, str) else None


def read_train_log(path: Path, warnings: list[str]) -> tuple[list[dict], dict | None]:
    """Per-step entries (those logged at one step merged: training and evaluation metrics) and the
    end-of-training summary, if the run got there."""
    try:
        records, torn_at = read_jsonl_log(path)
    except LogError as err:
        raise ViewError(str(err)) from None
    if torn_at is not None:
        warnings.append(f"{path}: its last line is still being written (or was cut short); left out")
    by_step: dict[int, dict] = {}
    summary = None
    for lineno, record in records:
        step = record.get("step")
        if isinstance(step, bool) or not isinstance(step, int):
            raise ViewError(f"{path}, line {lineno}: 'step' must be an integer, got {step!r}")
        if "train_runtime" in record:
            summary = record
        else:
            by_step.setdefault(step, {}).update(record)
    return [by_step[s] for s in sorted(by_step)], summary


def scan_rollouts(path: Path) -> Rollouts:
    """First pass over ``rollouts.jsonl``: every sample's metadata, and the offset of its line."""
    rollouts = Rollouts(path)
    reason_codes: dict[str, int] = {}
    trained_codes: dict[str, int] = {}
    bad_line: int | None = None  # a line that did not parse: only the last line may be so
    offset = 0
    with path.open("rb") as f:
        for lineno, line in enumerate(f, 1):
            if bad_line is not None:
                raise ViewError(f"{path}, line {bad_line}: not a valid JSON record (only the last line of a "
                                "log may be incomplete)")
            start, offset = offset, offset + len(line)
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except (ValueError, RecursionError):  # UnicodeDecodeError included: a torn multi-byte character
                bad_line = lineno
                continue
            _add_rollout(rollouts, record, path, lineno, reason_codes, trained_codes)
            rollouts.offsets.append(start)
    if bad_line is not None:
        log.warning("%s: line %d is incomplete (a run still writing, or interrupted); it is left out", path, bad_line)
        rollouts.torn_line = bad_line
    rollouts.reasons = list(reason_codes)
    rollouts.trained_on_names = list(trained_codes)
    return rollouts


def _add_rollout(rollouts: Rollouts, record, path: Path, lineno: int, reason_codes: dict, trained_codes: dict) -> None:
    where = f"{path}, line {lineno}"
    if not isinstance(record, dict):
        raise ViewError(f"{where}: expected a JSON object, got {type(record).__name__}")
    step = record.get("step")
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ViewError(f"{where}: 'step' must be a non-negative integer, got {step!r}")
    # A method that never asks for a rewrite (OPD, self-distillation, GRPO) trains each sample as sampled.
    reason = _field(record, "reason", str, where) or ("none" if "accepted" in record else "as_sampled")
    trained_on = _field(record, "trained_on", str, where)
    correct = _field(record, "student_correct", bool, where)
    rollouts.line.append(lineno)
    rollouts.step.append(step)
    rollouts.reason.append(reason_codes.setdefault(reason, len(reason_codes)))
    rollouts.accepted.append(int(bool(_field(record, "accepted", bool, where))))
    for name, column in (("student_tokens", rollouts.student_tokens), ("rewrite_tokens", rollouts.rewrite_tokens),
                         ("teacher_tokens", rollouts.teacher_tokens)):
        tokens = _field(record, name, int, where)
        column.append(MISSING if tokens is None else tokens)
    rollouts.trained_on.append(MISSING if trained_on is None else trained_codes.setdefault(trained_on, len(trained_codes)))
    rollouts.correct.append(MISSING if correct is None else int(correct))


def _field(record: dict, key: str, kind: type, where: str):
    """``record[key]`` if it is of ``kind`` (a non-negative count for int), None if absent or null."""
    value = record.get(key)
    if value is None:
        return None
    wrong = not isinstance(value, kind) or (kind is int and (isinstance(value, bool) or value < 0))
    if wrong:
        wanted = {str: "a string", bool: "true or false", int: "a non-negative integer"}[kind]
        raise ViewError(f"{where}: '{key}' must be {wanted} or null, got {value!r}")
    return value


def read_rollout_texts(rollouts: Rollouts, indices: list[int]) -> list[dict]:
    """Second pass: the texts of the samples at ``indices`` (sorted), read back from their lines."""
    texts = []
    with rollouts.path.open("rb") as f:
        for i in indices:
            f.seek(rollouts.offsets[i])
            try:
                record = json.loads(f.readline())
            except ValueError:
                record = None
            if not isinstance(record, dict) or record.get("step") != rollouts.step[i]:
                # Appending never moves a line; a resumed run that rewound the file does.
                raise ViewError(f"{rollouts.path} changed while it was read (line {rollouts.line[i]} is not what it "
                                "was); run mpdistill view again")
            texts.append({
                "prompt": prompt_text(record.get("prompt")),
                **{key: as_text(record.get(key)) for key in ("student", "rewrite", "teacher")},
                "gold": short_answer(record.get("gold")),
                "answer": short_answer(record.get("student_answer")),
            })
    return texts


def as_text(value) -> str | None:
    """A text field as a string (None stays None); anything else as its JSON."""
    return value if value is None or isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def prompt_text(prompt) -> str:
    """A prompt as text: plain text as it is, a chat conversation one message after another."""
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and all(isinstance(m, dict) for m in prompt):
        return "\n\n".join(f"[{m.get('role', '?')}]\n{as_text(m.get('content')) or ''}" for m in prompt)
    return as_text(prompt) or ""
