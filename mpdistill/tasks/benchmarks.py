"""Real math benchmarks: the shipped test sets (GSM8K, MATH-500, AIME 2024/2025, AMC 2023) and custom ones.

A benchmark is a tuple of :class:`BenchmarkItem` with a normalised gold answer and a ``reference``
text, graded as if it were a model response (``--model gold``). ``check_grader`` uses those
references to measure the grader itself: each reference against its own gold (should be correct)
and against the gold of another problem (should be wrong).

The shipped files are byte-for-byte copies of public releases; see
``mpdistill/assets/benchmarks/README.md`` for their origin, licenses and the measured grader check.
"""

from __future__ import annotations

import numbers
import random
from dataclasses import dataclass
from pathlib import Path

from mpdistill.tasks.math import answers_match, extract_answer
from mpdistill.tasks.problems import DataError, normalize_gold_answer, read_source
from mpdistill.utils.paths import ASSETS

__all__ = [
    "Benchmark",
    "BenchmarkItem",
    "check_grader",
    "shuffled_gold_check",
    "known_benchmarks",
    "load_benchmark",
    "load_custom_benchmark",
    "normalize_answer",
]

ASSETS_DIR = ASSETS / "benchmarks"


@dataclass(frozen=True)
class BenchmarkItem:
    benchmark: str  # benchmark name
    id: str  # the file's id / unique_id field as str, else the 0-based row index as str
    problem: str  # the question text
    answer: str  # gold answer, normalised by `normalize_answer`
    reference: str | None  # text to grade as if it were a model response (`--model gold`)
    at: str | None = None  # where it is read from: "file:line" (JSONL) or "source: row N" (from 1)


@dataclass(frozen=True)
class Benchmark:
    name: str
    source: str  # file path or "hf-name[split]"
    items: tuple[BenchmarkItem, ...]
    size: int = 0  # problems in the whole set, before any --limit


@dataclass(frozen=True)
class _Shipped:
    question_field: str
    answer_field: str
    id_field: str | None  # None: the row index is the id
    solution_field: str | None  # a worked solution to use as the reference when an answer is found in it
    records: int


_SHIPPED: dict[str, _Shipped] = {
    # GSM8K's `answer` is the worked solution ending in "#### n": it is its own reference.
    "gsm8k": _Shipped("question", "answer", None, "answer", 1319),
    "math500": _Shipped("problem", "answer", "unique_id", "solution", 500),
    "aime24": _Shipped("problem", "answer", "id", "solution", 30),
    "aime25": _Shipped("problem", "answer", "id", None, 30),
    "amc23": _Shipped("problem", "answer", "id", None, 40),
}


def known_benchmarks() -> list[str]:
    """Names of the benchmarks shipped with the package, sorted."""
    return sorted(_SHIPPED)


def normalize_answer(benchmark: str, raw) -> str:
    """The gold answer of ``benchmark`` as graded: a stripped string.

    - ``gsm8k``: the number after the last ``####``, thousands commas dropped (``"... #### 1,234"`` -> ``"1234"``);
    - ``aime24`` / ``aime25``: zero padding dropped (``"025"`` -> ``"25"``);
    - ``amc23``: an integer-valued float becomes an integer (``27.0`` -> ``"27"``); others keep their decimals;
    - ``math500``: the LaTeX answer, stripped;
    - any other name (custom sets): strings stripped, a GSM8K-style ``####`` answer reduced as for
      ``gsm8k``, integer-valued floats written as integers.

    Raises DataError for a value that is not a string or a number, or that is empty.
    """
    rule = benchmark if benchmark in _SHIPPED else "custom"
    return normalize_gold_answer(raw, rule, benchmark)


def _raw_text(raw) -> str:
    """The gold as written in the file (``"025"``, ``27.0``), for the fallback reference."""
    if isinstance(raw, str):
        return raw.strip()
    if isinstance(raw, numbers.Integral):
        return str(int(raw))
    return repr(float(raw))


def _boxed_reference(raw) -> str:
    """Fallback reference: the raw gold in a box. It checks normalisation, not extraction from a solution."""
    return f"The final answer is $\\boxed{{{_raw_text(raw)}}}$."


def load_benchmark(name: str, *, limit: int | None = None) -> Benchmark:
    """One of the shipped benchmarks (see ``known_benchmarks()``), optionally its first ``limit`` items."""
    spec = _SHIPPED.get(name)
    if spec is None:
        raise DataError(
            f"unknown benchmark {name!r}; the shipped ones are: {', '.join(known_benchmarks())}. "
            "A local .jsonl/.parquet file or a Hugging Face dataset goes through load_custom_benchmark"
        )
    path = ASSETS_DIR / name / "test.jsonl"
    return _build(
        name,
        str(path),
        question_field=spec.question_field,
        answer_field=spec.answer_field,
        id_field=spec.id_field,
        solution_field=spec.solution_field,
        normalize=lambda raw: normalize_answer(name, raw),
        limit=limit,
    )


def load_custom_benchmark(
    source: str,
    *,
    question_field: str = "problem",
    answer_field: str = "answer",
    id_field: str | None = None,
    split: str = "test",
    name: str | None = None,
    limit: int | None = None,
) -> Benchmark:
    """A benchmark from a local JSONL/Parquet file or a Hugging Face dataset name (needs the Hub).

    ``id_field`` names the field holding each item's id (ids must be unique); without it the
    0-based row index is the id. ``name`` defaults to the file stem (or the dataset name). Gold
    answers are normalised with the custom-set rule of ``normalize_answer`` whatever ``name`` is.
    The reference is the answer itself when it is a GSM8K-style solution (``... #### n``), else the
    boxed raw answer. Every error is a DataError naming the file (or dataset), the row and the field;
    with ``limit``, only the first ``limit`` rows are validated.
    """
    if name is None:
        path = Path(source)
        name = path.stem if path.suffix in (".jsonl", ".json", ".parquet") or path.exists() else source
    label = name

    def normalize(raw) -> str:
        # The custom rule, also for a set named like a shipped one.
        return normalize_gold_answer(raw, "custom", label)

    return _build(
        name,
        source,
        question_field=question_field,
        answer_field=answer_field,
        id_field=id_field,
        solution_field=None,
        gsm8k_style_reference=True,
        normalize=normalize,
        limit=limit,
        split=split,
    )


def _build(
    name: str,
    source: str,
    *,
    question_field: str,
    answer_field: str,
    id_field: str | None,
    solution_field: str | None,
    normalize,
    limit: int | None,
    split: str = "test",
    gsm8k_style_reference: bool = False,
) -> Benchmark:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive integer or None, got {limit!r}")
    raw_rows, where = read_source(source, split=split)
    items: list[BenchmarkItem] = []
    first_row_of_id: dict[str, str] = {}
    for i, (at, row) in enumerate(raw_rows):
        if limit is not None and len(items) >= limit:
            break
        fields = sorted(row)
        question = row.get(question_field)
        if not isinstance(question, str) or not question.strip():
            raise DataError(f"{at}: missing or empty field {question_field!r} (fields: {fields})")
        raw = row.get(answer_field)
        if raw is None or (isinstance(raw, float) and raw != raw) or (isinstance(raw, str) and not raw.strip()):
            raise DataError(f"{at}: missing or empty answer field {answer_field!r} (fields: {fields})")
        if isinstance(raw, bool) or not isinstance(raw, (str, numbers.Real)):
            raise DataError(
                f"{at}: answer field {answer_field!r} is a {type(raw).__name__}; "
                "expected a string or a number"
            )
        try:
            answer = normalize(raw)
        except DataError as err:
            raise DataError(f"{at}: field {answer_field!r}: {err}") from None
        if id_field is None:
            item_id = str(i)
        else:
            value = row.get(id_field)
            if value is None or (isinstance(value, float) and value != value) or not str(value).strip():
                raise DataError(f"{at}: missing or empty id field {id_field!r} (fields: {fields})")
            if isinstance(value, float) and value.is_integer():
                value = int(value)  # a Parquet integer column with nulls is read as floats
            item_id = str(value).strip()
            if item_id in first_row_of_id:
                raise DataError(
                    f"{first_row_of_id[item_id]} and {at}: duplicate id {item_id!r} in field {id_field!r}"
                )
            first_row_of_id[item_id] = at
        solution = row.get(solution_field) if solution_field else None
        if gsm8k_style_reference and isinstance(raw, str) and "####" in raw:
            solution = raw  # a GSM8K-style answer is a worked solution
        items.append(
            BenchmarkItem(
                benchmark=name,
                id=item_id,
                problem=question,
                answer=answer,
                reference=_reference(solution, raw),
                at=at,
            )
        )
    return Benchmark(name=name, source=where, items=tuple(items), size=len(raw_rows))


def _reference(solution, raw) -> str:
    """The dataset's own solution when the extractor finds a final answer in it, else the boxed raw gold."""
    if isinstance(solution, str) and extract_answer(solution) is not None:
        return solution
    return _boxed_reference(raw)


# ------------------------------------------------------------------ grader check


def check_grader(benchmark: Benchmark, *, shuffle_seed: int = 0) -> dict:
    """Grade every item's reference against its own gold and against another item's gold.

    Returns ``{"benchmark", "n", "correct", "accuracy", "failures", "shuffled"}``:

    - ``correct``: items whose reference grades correct against their own gold (``accuracy`` =
      correct / n); each other item is listed in ``failures`` as ``{"id", "extracted", "gold"}``;
    - ``shuffled``: each reference graded against the gold of the item it is sent to by a
      derangement drawn with ``shuffle_seed`` (no item keeps its own gold). ``correct`` / ``rate``
      count all pairs; ``same_gold_pairs`` counts pairs whose normalised golds are equal strings
      (GSM8K repeats answers), and ``rate_distinct`` is the rate over the other pairs only. The
      pairs graded correct despite different golds are listed in ``false_positives``.

    An item without a reference counts as a failure with ``extracted`` None.
    """
    items = benchmark.items
    extracted = [extract_answer(it.reference) if it.reference is not None else None for it in items]
    correct = 0
    failures = []
    for it, pred in zip(items, extracted):
        if pred is not None and answers_match(pred, it.answer):
            correct += 1
        else:
            failures.append({"id": it.id, "extracted": pred, "gold": it.answer})
    n = len(items)
    return {
        "benchmark": benchmark.name,
        "n": n,
        "correct": correct,
        "accuracy": correct / n if n else float("nan"),
        "failures": failures,
        "shuffled": shuffled_gold_check(benchmark, extracted, shuffle_seed=shuffle_seed),
    }


def shuffled_gold_check(benchmark: Benchmark, extracted: list[str | None], *, shuffle_seed: int = 0) -> dict:
    """Each item's extracted answer graded against the gold of another item (a seeded derangement).

    ``extracted[i]`` is the answer read from item ``i``'s reference (None: none found). See
    :func:`check_grader` for the fields.
    """
    items = benchmark.items
    if len(extracted) != len(items):
        raise ValueError(f"got {len(extracted)} extracted answers for {len(items)} items")
    n = len(items)
    perm = _derangement(n, shuffle_seed)
    shuffled_correct = same_gold = distinct_correct = 0
    false_positives = []
    for i, j in enumerate(perm):
        gold = items[j].answer
        same = items[i].answer == gold
        same_gold += same
        ok = extracted[i] is not None and answers_match(extracted[i], gold)
        shuffled_correct += ok
        if ok and not same:
            distinct_correct += 1
            false_positives.append({"id": items[i].id, "extracted": extracted[i], "gold": gold, "gold_of": items[j].id})
    pairs = len(perm)
    distinct = pairs - same_gold
    return {
        "n": pairs,
        "correct": shuffled_correct,
        "rate": shuffled_correct / pairs if pairs else float("nan"),
        "same_gold_pairs": same_gold,
        "rate_distinct": distinct_correct / distinct if distinct else float("nan"),
        "false_positives": false_positives,
    }


def _derangement(n: int, seed: int) -> list[int]:
    """A permutation of range(n) with no fixed point (Sattolo's algorithm: one n-cycle); [] if n < 2."""
    if n < 2:
        return []
    perm = list(range(n))
    rng = random.Random(seed)
    for i in range(n - 1, 0, -1):
        j = rng.randrange(i)  # j < i: the element never stays in place
        perm[i], perm[j] = perm[j], perm[i]
    return perm


def _main(argv: list[str] | None = None) -> int:
    """``python -m mpdistill.tasks.benchmarks [NAME ...] [--seed S]``: print the grader check of shipped sets."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m mpdistill.tasks.benchmarks", description=_main.__doc__)
    parser.add_argument("names", nargs="*", default=known_benchmarks(), help="shipped benchmarks (default: all)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the shuffled-gold derangement")
    args = parser.parse_args(argv)
    print("| benchmark | n | references correct | shuffled correct | same-gold pairs | rate | rate_distinct |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    reports = [check_grader(load_benchmark(name), shuffle_seed=args.seed) for name in args.names]
    for r in reports:
        s = r["shuffled"]
        print(
            f"| {r['benchmark']} | {r['n']} | {r['correct']} ({r['accuracy']:.2%}) | {s['correct']}/{s['n']} "
            f"| {s['same_gold_pairs']} | {s['rate']:.2%} | {s['rate_distinct']:.2%} |"
        )
    for r in reports:
        for f in r["failures"]:
            print(f"{r['benchmark']}: reference failed: id={f['id']} extracted={f['extracted']!r} gold={f['gold']!r}")
        for f in r["shuffled"]["false_positives"]:
            print(
                f"{r['benchmark']}: shuffled pair graded correct: reference of {f['id']} "
                f"(extracted {f['extracted']!r}) vs gold of {f['gold_of']} ({f['gold']!r})"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
