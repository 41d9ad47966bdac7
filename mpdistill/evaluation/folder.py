"""The evaluation folder: what ``mpdistill eval`` writes and ``mpdistill compare`` reads.

- ``eval_config.json``: the settings, written before anything is sampled; a run resumed in the
  folder must ask for the same :data:`RESUME_KEYS`.
- ``samples.jsonl``: one graded sample per line (``benchmark``, ``id``, ``sample``, ``response``,
  ``tokens``, ``thinking_tokens``, ``answer_tokens``, ``truncated``, ``extracted``, ``gold``,
  ``correct``), appended batch by batch (:mod:`mpdistill.utils.durable`): an interrupted run leaves at
  most a torn last line.
- ``summary.json``: ``model``, ``settings`` (those of ``eval_config.json``) and per-benchmark
  statistics; ``summary.md`` the same as a table. Both are written once the run finishes.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from mpdistill.errors import MPDistillError
from mpdistill.utils.durable import LogError, changed_settings, read_jsonl_log, write_text

log = logging.getLogger(__name__)

SAMPLES_FILE = "samples.jsonl"
SUMMARY_FILE = "summary.json"
SUMMARY_MARKDOWN_FILE = "summary.md"
CONFIG_FILE = "eval_config.json"

# Settings that decide what is sampled: a resumed run must use the same ones.
RESUME_KEYS = ("model", "benchmarks", "task", "backend", "n_samples", "max_new_tokens", "temperature", "top_p",
               "top_k", "thinking", "chat_template", "prompt_template", "batch_size", "seed", "limit")


class EvalError(MPDistillError, ValueError):
    """An evaluation that cannot run, resume or be read; the message names the file, line or setting."""


def samples_file(folder: str | os.PathLike) -> Path:
    return Path(folder) / SAMPLES_FILE


def read_samples(path: Path) -> tuple[list[tuple[int, dict]], int | None]:
    """``(line number, record)`` of a samples file, and where a torn last line starts, if any
    (see :func:`mpdistill.utils.durable.read_jsonl_log`)."""
    try:
        return read_jsonl_log(path)
    except LogError as err:
        raise EvalError(str(err)) from None


# ---------------------------------------------------------------------------------------------
# Writing (``mpdistill eval``).


def check_or_write_config(out: Path, config: dict) -> None:
    """Write ``eval_config.json``, or check that a resumed run asks for the same settings."""
    path = out / CONFIG_FILE
    if path.exists():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            raise EvalError(f"{path}: not valid JSON; remove it (and {SAMPLES_FILE}) or use a new --out") from None
        old.setdefault("task", "math")  # evaluations from before --task graded every answer as math
        changed = changed_settings(old, config, RESUME_KEYS)
        if changed:
            diffs = "; ".join(changed)
            raise EvalError(f"{out} holds an evaluation with other settings ({diffs}); use a new --out to keep both")
        return
    out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(config, indent=2) + "\n"
    write_text(path, text)


def write_summary(out: Path, summary: dict, markdown: str) -> None:
    """``summary.json`` (NaN written as null) and ``summary.md``, each atomically."""
    from mpdistill.evaluation.stats import nan_to_none

    text = json.dumps(nan_to_none(summary), indent=2, allow_nan=False) + "\n"
    write_text(out / SUMMARY_FILE, text)
    write_text(out / SUMMARY_MARKDOWN_FILE, markdown)


# ---------------------------------------------------------------------------------------------
# Reading (``mpdistill compare``).


def read_eval_folder(path: str | os.PathLike) -> dict:
    """Read one evaluation folder: ``{"model", "settings", "samples", "warnings"}``.

    ``model`` and ``settings`` come from ``summary.json``. ``mpdistill eval`` writes that file only
    when it finishes, but records the same settings in ``eval_config.json`` before sampling, so a
    folder of an interrupted run is read from that file instead, with a warning.

    ``samples`` are the records of ``samples.jsonl`` in file order. An unparsable *last* line is
    what an interrupted run leaves behind, so it is skipped with a warning; an unparsable line
    anywhere else means the file is corrupt and raises :class:`EvalError` naming the file and
    line. Lines are decoded one by one, so a torn multi-byte character on the last line is also only
    a warning. A repeated (benchmark, id, sample) keeps its first record, as ``mpdistill eval`` does
    when it resumes. Warnings are logged and listed in ``warnings``.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise EvalError(f"evaluation folder not found: {folder}")
    samples_path, summary_path, config_path = samples_file(folder), folder / SUMMARY_FILE, folder / CONFIG_FILE
    if not samples_path.is_file():
        raise EvalError(f"missing {SAMPLES_FILE} in evaluation folder {folder}: expected {samples_path}")
    warnings: list[str] = []
    if summary_path.is_file():
        summary = _read_json_object(summary_path)
        settings = summary.get("settings") or {}
        if not isinstance(settings, dict):
            raise EvalError(f"{summary_path}: 'settings' must be an object, got {type(settings).__name__}")
        model = summary.get("model", settings.get("model"))
    elif config_path.is_file():
        settings = _read_json_object(config_path)
        model = settings.get("model")
        warnings.append(f"{folder}: no {SUMMARY_FILE} (unfinished run?); settings read from {CONFIG_FILE}")
        log.warning(warnings[-1])
    else:
        raise EvalError(f"missing {SUMMARY_FILE} in evaluation folder {folder}: expected {summary_path}")

    samples, sample_warnings = read_sample_records(samples_path)
    return {"model": model, "settings": settings, "samples": samples, "warnings": warnings + sample_warnings}


def _read_json_object(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise EvalError(f"{path} is not valid JSON: {err}") from err
    if not isinstance(data, dict):
        raise EvalError(f"{path} must hold a JSON object, got {type(data).__name__}")
    return data


def read_sample_records(path: Path) -> tuple[list[dict], list[str]]:
    """The checked records of a samples file (``samples.jsonl``, or one file of the same lines) and
    the warnings about it; see :func:`read_eval_folder`."""
    found, torn_at = read_samples(path)
    warnings: list[str] = []
    if torn_at is not None:
        lineno = path.read_bytes()[:torn_at].count(b"\n") + 1
        warnings.append(f"{path}: skipped the incomplete last line {lineno} (interrupted run?)")
    samples: list[dict] = []
    seen: dict[tuple, int] = {}
    duplicates: list[int] = []
    for lineno, record in found:
        record = _check_sample(record, path, lineno)
        key = (record["benchmark"], record["id"], record.get("sample"))
        if record.get("sample") is not None and key in seen:
            duplicates.append(lineno)
            continue
        seen[key] = lineno
        samples.append(record)
    if duplicates:
        warnings.append(
            f"{path}: {len(duplicates)} repeated (benchmark, id, sample) record(s) skipped, the first kept "
            f"(first repeat on line {duplicates[0]})"
        )
        log.warning(warnings[-1])
    if not samples:
        raise EvalError(f"{path} holds no samples")
    return samples, warnings


def _check_sample(record: Any, path: Path, lineno: int) -> dict:
    """The fields a reader relies on, checked so that a bad record fails with its line."""
    where = f"{path}, line {lineno}"
    if not isinstance(record, dict):
        raise EvalError(f"{where}: expected a JSON object, got {type(record).__name__}")
    missing = [k for k in ("benchmark", "id", "correct") if k not in record]
    if missing:
        raise EvalError(f"{where}: missing field(s) {', '.join(missing)}")
    if not isinstance(record["benchmark"], str):
        raise EvalError(f"{where}: 'benchmark' must be a string, got {record['benchmark']!r}")
    if not isinstance(record["id"], (str, int)) or isinstance(record["id"], bool):
        raise EvalError(f"{where}: 'id' must be a string or an integer, got {record['id']!r}")
    record["id"] = str(record["id"])
    if not isinstance(record["correct"], bool):
        raise EvalError(f"{where}: 'correct' must be true or false, got {record['correct']!r}")
    tokens = record.get("tokens")
    if tokens is not None and (isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 0):
        raise EvalError(f"{where}: 'tokens' must be a non-negative integer or null, got {tokens!r}")
    return record
