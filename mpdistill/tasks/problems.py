"""Problem sets for training and evaluation: the embedded chain task or user files/datasets.

A problem row is ``{"prompt", "problem", "answer"}``: ``prompt`` is what the student is given
(plain text, or a chat conversation), ``problem`` the bare question (what the rewriter sees),
``answer`` the gold answer (optional for training).
"""

from __future__ import annotations

import json
import numbers
import random
import re
from pathlib import Path
from typing import Iterator

from mpdistill.errors import MPDistillError
from mpdistill.tasks import chain
from mpdistill.tasks.math import normalize_gold


class DataError(MPDistillError, ValueError):
    """A dataset that cannot be used; the message names the file, the row and the field."""


def chain_problems(n: int, seed: int, split: str = "train", exclude: set[str] | None = None) -> list[dict]:
    """``n`` distinct chain problems of ``split`` drawn with ``seed``, none of whose prompt is in ``exclude``."""
    rng = random.Random(seed)
    seen = set(exclude or ())
    rows = []
    attempts = 0
    while len(rows) < n:
        attempts += 1
        if attempts > 50 * n + 1000:
            raise DataError(f"could not draw {n} distinct chain problems (got {len(rows)})")
        p = chain.sample_problem(rng, split)
        if p.prompt in seen:
            continue
        seen.add(p.prompt)
        rows.append({"prompt": p.prompt, "problem": p.prompt, "answer": p.answer})
    return rows


_DIGITS = re.compile(r"[0-9]+")


def normalize_gold_answer(raw, rule: str, label: str) -> str:
    """A gold answer as graded, by ``rule``: a shipped benchmark's name, else the rule for any other
    set (see :func:`mpdistill.tasks.benchmarks.normalize_answer`); ``label`` names the set in errors."""
    if isinstance(raw, bool) or not isinstance(raw, (str, numbers.Real)):
        raise DataError(f"{label}: gold answer {raw!r} is not a string or a number")
    if not isinstance(raw, (str, numbers.Integral)) and raw != raw:
        raise DataError(f"{label}: gold answer is NaN")
    if rule == "gsm8k":
        answer = normalize_gold(str(raw))
    elif rule in ("aime24", "aime25"):
        answer = _number_text(raw)
        if _DIGITS.fullmatch(answer):
            answer = str(int(answer))
    elif rule in ("math500", "amc23"):
        answer = _number_text(raw)
    else:
        answer = _number_text(raw)
        if "####" in answer:
            answer = normalize_gold(answer)
    if not answer:
        raise DataError(f"{label}: gold answer {raw!r} is empty")
    return answer


def _number_text(raw) -> str:
    """A string stripped; an integer-valued float as an integer; other numbers as Python writes them."""
    if isinstance(raw, str):
        return raw.strip()
    if isinstance(raw, numbers.Integral):
        return str(int(raw))
    value = float(raw)
    return str(int(value)) if value.is_integer() else repr(value)


def iter_jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    """``(line number, object)`` for each non-blank line of a JSONL file; a bad line names file and line.

    Lines end at ``\\n`` only: a ``\\r`` inside a line is JSON whitespace, not a line break.
    """
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as err:
                raise DataError(f"{path}:{lineno}: not UTF-8 text (byte {err.start + 1} of the line)") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{path}:{lineno}: not valid JSON ({err.msg})") from None
            except RecursionError:
                raise DataError(f"{path}:{lineno}: not valid JSON (nested too deeply)") from None
            except ValueError as err:  # an integer of over 4300 digits, which Python refuses to convert
                raise DataError(f"{path}:{lineno}: not valid JSON ({str(err).split(':')[0]})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
            yield lineno, row


def _read_rows(path: Path) -> list[tuple[str, dict]]:
    if path.suffix == ".parquet":
        import pandas as pd

        return [(f"{path}: row {i}", r) for i, r in enumerate(pd.read_parquet(path).to_dict(orient="records"), 1)]
    return [(f"{path}:{lineno}", row) for lineno, row in iter_jsonl(path)]


def read_source(source: str, *, split: str = "train", config: str | None = None) -> tuple[list[tuple[str, dict]], str]:
    """The raw rows of a local JSONL/Parquet file or a Hugging Face dataset, each with where it is
    (``file:line`` for JSONL, as JSON errors say; else ``source: row N``, counted from 1), and
    where they came from.

    ``config`` names the dataset's configuration where it has several (``openai/gsm8k``: "main").
    ``where`` is the file path, or ``"name[split]"`` for a dataset. Raises DataError for a folder,
    a malformed JSONL line (naming file and line), a dataset that cannot be loaded, or no rows.
    """
    path = Path(source).expanduser()
    if path.is_dir():
        raise DataError(f"{path}: is a folder; expected a .jsonl or .parquet file")
    from mpdistill.utils.paths import looks_local

    if path.exists():
        raw = _read_rows(path)
        where = str(path)
    elif looks_local(source, data_file=True):  # a path, never sent to the Hub as a dataset name
        raise DataError(f"{source}: no such file")
    else:
        try:
            import datasets

            rows = list(datasets.load_dataset(source, config, split=split))
        except Exception as err:  # offline, unknown name, ...: say which source failed and why
            raise DataError(f"cannot load dataset {source!r} (not a local file; Hugging Face said: {err})") from None
        where = f"{source}[{split}]" if config is None else f"{source}/{config}[{split}]"
        raw = [(f"{where}: row {i}", r) for i, r in enumerate(rows, 1)]
    if not raw:
        raise DataError(f"{where}: the dataset is empty")
    return raw, where


def load_problems(
    source: str,
    *,
    question_field: str = "problem",
    answer_field: str | None = "answer",
    split: str = "train",
    prompt_style: str = "plain",
    limit: int | None = None,
    config: str | None = None,
    prompt_template: str = "{problem}",
    answer_from: str = "field",
) -> list[dict]:
    """Rows from a local JSONL/Parquet file or a Hugging Face dataset name, validated up front.

    ``prompt_template`` (the task's, e.g. the math instruction to box the answer) turns each
    question into the user message the student is given; ``problem`` is that same message and
    ``question`` the question alone, which the rewrite prompt shows the teacher (the instruction to
    solve it would invite the teacher to solve instead of rewrite). Gold answers are normalised as evaluation's are
    (a GSM8K-style solution ``... #### 1,234`` becomes ``1234``).
    """
    from mpdistill.tasks.prompts import user_message

    raw, _ = read_source(source, split=split, config=config)
    rows = []
    for at, r in raw:
        q = r.get(question_field)
        if not isinstance(q, str) or not q.strip():
            raise DataError(f"{at}: missing or empty field {question_field!r} (fields: {sorted(r)})")
        a = None
        if answer_field is not None:
            a = r.get(answer_field)
            # Parquet/pandas turn a null into NaN, and a numeric column with a null into floats.
            if isinstance(a, float) and a != a:
                a = None
            elif isinstance(a, float) and a.is_integer():
                a = int(a)
            if a is None or (isinstance(a, str) and not a.strip()):
                raise DataError(f"{at}: missing answer field {answer_field!r}")
            if answer_from == "boxed":
                from mpdistill.tasks.math import boxed_answers

                boxes = boxed_answers(a) if isinstance(a, str) else []
                if not boxes:
                    raise DataError(f"{at}: field {answer_field!r} has no \\boxed{{}} answer to read "
                                    "(data.answer_from: boxed)")
                a = boxes[-1]
            try:
                a = normalize_gold_answer(a, "custom", "custom")
            except DataError as err:
                raise DataError(f"{at}: field {answer_field!r}: {str(err).split(': ', 1)[-1]}") from None
        message = user_message(prompt_template, q)
        prompt = [{"role": "user", "content": message}] if prompt_style == "chat" else message
        rows.append({"prompt": prompt, "problem": message, "question": q, "answer": a})
        if limit is not None and len(rows) >= limit:
            break
    return rows
