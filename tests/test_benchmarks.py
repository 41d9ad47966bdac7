"""Shipped benchmarks, custom benchmark files, gold normalisation and the grader check."""

from __future__ import annotations

import hashlib
import json
import math
import threading
import time
from pathlib import Path

import pytest

from mpdistill.tasks.benchmarks import (
    ASSETS_DIR,
    Benchmark,
    BenchmarkItem,
    check_grader,
    known_benchmarks,
    load_benchmark,
    load_custom_benchmark,
    normalize_answer,
)
from mpdistill.tasks.math import extract_answer, verify
from mpdistill.tasks.problems import DataError

SHIPPED = {
    # name: (records, sha256 of test.jsonl as recorded in its SOURCE.md)
    "aime24": (30, "af2b8bd2aa911b6333ad0df32f3ca05c7ae8ed10f1731f4372c8ae26990bf7ac"),
    "aime25": (30, "aa9d80ede088cb16ef2f5149e284a5720e0eae1ba234c4893c15ef57d38783c7"),
    "amc23": (40, "43707e1ca784602d8479de24ee8ce36609dbebc46dd152b0b12a46611aa898a4"),
    "gsm8k": (1319, "3730d312f6e3440559ace48831e51066acaca737f6eabec99bccb9e4b3c39d14"),
    "math500": (500, "35dc41080a3680858b27fa7e0533d2d547825316fc5dafe5d316f4ccc5a06132"),
}


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


# ------------------------------------------------------------------ shipped sets


def test_known_benchmarks_are_the_shipped_folders():
    assert known_benchmarks() == sorted(SHIPPED)
    assert sorted(p.name for p in ASSETS_DIR.iterdir() if p.is_dir()) == sorted(SHIPPED)


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_files_are_the_recorded_copies(name):
    folder = ASSETS_DIR / name
    assert hashlib.sha256((folder / "test.jsonl").read_bytes()).hexdigest() == SHIPPED[name][1]
    assert (folder / "SOURCE.md").is_file()


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_every_shipped_benchmark_loads_complete(name):
    bench = load_benchmark(name)
    assert isinstance(bench, Benchmark) and bench.name == name
    assert Path(bench.source) == ASSETS_DIR / name / "test.jsonl"
    assert len(bench.items) == SHIPPED[name][0]
    for item in bench.items:
        assert isinstance(item, BenchmarkItem) and item.benchmark == name
        assert item.id and item.problem.strip() and item.answer and item.reference
        assert item.answer == item.answer.strip()
    assert len({item.id for item in bench.items}) == len(bench.items)


def test_shipped_ids_and_golds():
    gsm8k = load_benchmark("gsm8k")
    assert [it.id for it in gsm8k.items[:3]] == ["0", "1", "2"]  # no id field: the row index
    assert gsm8k.items[0].answer == "18"
    assert gsm8k.items[0].reference.endswith("#### 18")  # the worked solution is the reference
    assert all("," not in it.answer and "####" not in it.answer for it in gsm8k.items)

    math500 = load_benchmark("math500")
    assert math500.items[0].id == "test/precalculus/807.json"
    assert math500.items[0].answer == "\\left( 3, \\frac{\\pi}{2} \\right)"  # LaTeX kept as is
    assert "\\boxed" in math500.items[0].reference

    aime24 = {it.id: it for it in load_benchmark("aime24").items}
    assert sorted(aime24, key=int) == [str(i) for i in range(60, 90)]
    assert aime24["67"].answer == "25"  # "025" in the file
    assert aime24["75"].answer == "73"  # "073"

    aime25 = load_benchmark("aime25")
    assert aime25.items[0].id == "2025-I-1" and aime25.items[0].answer == "70"
    assert aime25.items[0].reference == "The final answer is $\\boxed{70}$."

    amc23 = load_benchmark("amc23")
    assert amc23.items[0].id == "0" and amc23.items[0].answer == "27"
    # No solution in the file: the raw gold (a JSON float) is boxed, so normalisation is exercised.
    assert amc23.items[0].reference == "The final answer is $\\boxed{27.0}$."


def test_aime_answers_are_integers_without_padding():
    for name in ("aime24", "aime25"):
        for item in load_benchmark(name).items:
            assert item.answer.isdigit() and str(int(item.answer)) == item.answer


def test_limit_takes_the_first_items():
    assert [it.id for it in load_benchmark("gsm8k", limit=5).items] == ["0", "1", "2", "3", "4"]
    assert len(load_benchmark("aime25", limit=1000).items) == 30
    with pytest.raises(ValueError, match="limit"):
        load_benchmark("gsm8k", limit=0)


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(DataError) as info:
        load_benchmark("gsm9k")
    message = str(info.value)
    assert "'gsm9k'" in message
    for name in SHIPPED:
        assert name in message
    assert "load_custom_benchmark" in message


# ------------------------------------------------------------------ normalisation


@pytest.mark.parametrize(
    "benchmark, raw, expected",
    [
        ("gsm8k", "She sold 48/2 = <<48/2=24>>24 clips.\n#### 1,234", "1234"),
        ("gsm8k", "#### 1,234,567", "1234567"),
        ("gsm8k", "#### -3.5", "-3.5"),
        ("aime24", "025", "25"),
        ("aime24", "000", "0"),
        ("aime25", "70", "70"),
        ("aime25", " 007 ", "7"),
        ("amc23", 27.0, "27"),
        ("amc23", 2.5, "2.5"),
        ("amc23", 3, "3"),
        ("math500", " \\frac{1}{2} ", "\\frac{1}{2}"),
        ("math500", "10,100", "10,100"),  # a MATH list keeps its comma
        ("my-set", " x = 5 ", "x = 5"),
        ("my-set", "Work.\n#### 1,000", "1000"),
        ("my-set", 3.0, "3"),
        ("my-set", 0.25, "0.25"),
        ("my-set", 7, "7"),
        ("my-set", "025", "025"),  # zero padding is only dropped for AIME
    ],
)
def test_normalize_answer(benchmark, raw, expected):
    assert normalize_answer(benchmark, raw) == expected


@pytest.mark.parametrize("raw", [None, ["1"], True, float("nan"), "", "   ", "#### "])
def test_normalize_answer_rejects_unusable_golds(raw):
    with pytest.raises(DataError):
        normalize_answer("my-set", raw)


# ------------------------------------------------------------------ custom sets


def test_custom_jsonl_with_field_mapping(tmp_path):
    path = write_jsonl(tmp_path / "mine.jsonl", [
        {"uid": "a", "question": "What is 2+2?", "gold": "4"},
        {"uid": "b", "question": "What is 1/2 + 1/2?", "gold": 1.0},
        {"uid": "c", "question": "Count to 1000.", "gold": "Counting.\n#### 1,000"},
    ])
    bench = load_custom_benchmark(str(path), question_field="question", answer_field="gold", id_field="uid")
    assert bench.name == "mine" and bench.source == str(path)
    assert [(it.id, it.problem, it.answer) for it in bench.items] == [
        ("a", "What is 2+2?", "4"),
        ("b", "What is 1/2 + 1/2?", "1"),
        ("c", "Count to 1000.", "1000"),
    ]
    assert bench.items[0].reference == "The final answer is $\\boxed{4}$."
    assert bench.items[1].reference == "The final answer is $\\boxed{1.0}$."
    assert bench.items[2].reference == "Counting.\n#### 1,000"  # a GSM8K-style answer is a solution
    assert all(verify(it.reference, it.answer) for it in bench.items)


def test_custom_defaults_row_index_ids_name_and_limit(tmp_path):
    path = write_jsonl(tmp_path / "set.jsonl", [{"problem": f"q{i}", "answer": str(i)} for i in range(5)])
    bench = load_custom_benchmark(str(path), limit=3, name="named")
    assert bench.name == "named"
    assert [(it.id, it.answer, it.benchmark) for it in bench.items] == [("0", "0", "named"), ("1", "1", "named"),
                                                                       ("2", "2", "named")]
    assert load_custom_benchmark(str(path)).name == "set"


def test_custom_set_named_like_a_shipped_one_uses_the_custom_rule(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"problem": "p", "answer": "025"}])
    assert load_custom_benchmark(str(path), name="aime24").items[0].answer == "025"


def test_custom_parquet(tmp_path):
    pd = pytest.importorskip("pandas")
    path = tmp_path / "d.parquet"
    pd.DataFrame({"problem": ["1+1?", "2+3?"], "answer": [2.0, 5.0], "id": [10, 11]}).to_parquet(path)
    bench = load_custom_benchmark(str(path), id_field="id")
    assert [(it.id, it.answer) for it in bench.items] == [("10", "2"), ("11", "5")]


def test_malformed_jsonl_names_file_and_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"problem": "a", "answer": "1"}\n\n{"problem": "b", "answer": \n', encoding="utf-8")
    with pytest.raises(DataError) as info:
        load_custom_benchmark(str(path))
    assert str(info.value).startswith(f"{path}:3: not valid JSON (")


def test_missing_answer_field_names_field_row_and_fields(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [
        {"problem": "a", "answer": "1"},
        {"problem": "b", "solution": "2"},
    ])
    with pytest.raises(DataError) as info:
        load_custom_benchmark(str(path))
    message = str(info.value)
    assert message.startswith(f"{path}:2: ")  # file:line, as for a JSON error
    assert "'answer'" in message and "(fields: ['problem', 'solution'])" in message


@pytest.mark.parametrize("bad", ["", "  ", None])
def test_empty_answer_is_missing(tmp_path, bad):
    path = write_jsonl(tmp_path / "d.jsonl", [{"problem": "a", "answer": bad}])
    with pytest.raises(DataError, match=r"d\.jsonl:1: missing or empty answer field 'answer'"):
        load_custom_benchmark(str(path))


def test_missing_question_field_names_field_and_row(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"question": "a", "answer": "1"}])
    with pytest.raises(DataError) as info:
        load_custom_benchmark(str(path))
    message = str(info.value)
    assert message.startswith(f"{path}:1: ") and "'problem'" in message
    assert "(fields: ['answer', 'question'])" in message


def test_answer_of_the_wrong_type(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"problem": "a", "answer": ["1", "2"]}])
    with pytest.raises(DataError, match=r"d\.jsonl:1: answer field 'answer' is a list"):
        load_custom_benchmark(str(path))


def test_duplicate_ids_name_both_rows(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [
        {"id": 7, "problem": "a", "answer": "1"},
        {"id": 8, "problem": "b", "answer": "2"},
        {"id": 7, "problem": "c", "answer": "3"},
    ])
    with pytest.raises(DataError) as info:
        load_custom_benchmark(str(path), id_field="id")
    message = str(info.value)
    assert message.startswith(f"{path}:1 and {path}:3: duplicate id '7'")


def test_missing_id_names_field_and_row(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [
        {"id": "x", "problem": "a", "answer": "1"},
        {"problem": "b", "answer": "2"},
    ])
    with pytest.raises(DataError, match=r"d\.jsonl:2: missing or empty id field 'id'"):
        load_custom_benchmark(str(path), id_field="id")


def test_empty_file_and_missing_source(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n", encoding="utf-8")
    with pytest.raises(DataError, match="the dataset is empty"):
        load_custom_benchmark(str(empty))
    missing = tmp_path / "missing.jsonl"
    with pytest.raises(DataError, match="missing.jsonl: no such file"):
        load_custom_benchmark(str(missing))


# ------------------------------------------------------------------ the grader check


def _item(i: int, reference: str | None, answer: str) -> BenchmarkItem:
    return BenchmarkItem(benchmark="t", id=str(i), problem=f"q{i}", answer=answer, reference=reference)


def test_check_grader_counts_failures_and_shuffled_pairs():
    items = (
        _item(0, "\\boxed{1}", "1"),
        _item(1, "\\boxed{2}", "2"),
        _item(2, "#### 2", "2"),  # same gold as item 1
        _item(3, "no answer here", "4"),
        _item(4, "\\boxed{0.5}", "\\frac{1}{2}"),
        _item(5, None, "6"),
    )
    report = check_grader(Benchmark("t", "mem", items), shuffle_seed=3)
    assert report["benchmark"] == "t" and report["n"] == 6 and report["correct"] == 4
    assert report["accuracy"] == pytest.approx(4 / 6)
    assert report["failures"] == [
        {"id": "3", "extracted": None, "gold": "4"},
        {"id": "5", "extracted": None, "gold": "6"},
    ]
    shuffled = report["shuffled"]
    assert shuffled["n"] == 6
    assert shuffled["correct"] == shuffled["same_gold_pairs"]  # only equal golds are graded correct
    assert shuffled["rate"] == pytest.approx(shuffled["correct"] / 6)
    assert shuffled["rate_distinct"] == 0.0
    assert shuffled["false_positives"] == []


def test_check_grader_shuffle_is_a_seeded_derangement():
    items = tuple(_item(i, f"\\boxed{{{i}}}", str(i)) for i in range(50))
    bench = Benchmark("t", "mem", items)
    a = check_grader(bench, shuffle_seed=1)["shuffled"]
    # Every gold is distinct and no reference keeps its own gold: nothing is graded correct.
    assert a == {"n": 50, "correct": 0, "rate": 0.0, "same_gold_pairs": 0, "rate_distinct": 0.0, "false_positives": []}
    one = check_grader(Benchmark("t", "mem", items[:1]))
    assert one["correct"] == 1 and one["shuffled"]["n"] == 0 and math.isnan(one["shuffled"]["rate"])


def test_check_grader_lists_shuffled_false_positives():
    # "1/2" and "0.5" are different strings for the same value: a pair graded correct across golds.
    items = (_item(0, "\\boxed{0.5}", "0.5"), _item(1, "\\boxed{1/2}", "\\frac{1}{2}"))
    shuffled = check_grader(Benchmark("t", "mem", items))["shuffled"]
    assert shuffled["same_gold_pairs"] == 0 and shuffled["correct"] == 2 and shuffled["rate_distinct"] == 1.0
    assert {fp["id"] for fp in shuffled["false_positives"]} == {"0", "1"}


# The targets: references graded correct on >= 99% of MATH-500 and >= 99.5% of GSM8K, and
# a reference graded correct against another problem's (different) gold in <= 1% of the pairs.
# All five sets take a few seconds on one core.
TARGETS = {"gsm8k": 0.995, "math500": 0.99, "aime24": 1.0, "aime25": 1.0, "amc23": 1.0}


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_grader_check_meets_the_targets(name):
    report = check_grader(load_benchmark(name), shuffle_seed=0)
    assert report["n"] == SHIPPED[name][0]
    assert report["accuracy"] >= TARGETS[name], report["failures"]
    shuffled = report["shuffled"]
    assert shuffled["n"] == report["n"]
    assert shuffled["rate_distinct"] <= 0.01, shuffled["false_positives"]
    # Over all pairs, only pairs of equal golds (GSM8K repeats answers) may add to the rate.
    assert shuffled["correct"] - shuffled["same_gold_pairs"] <= 0.01 * shuffled["n"]


# ------------------------------------------------------------------ adversarial responses

N = 100_000
ADVERSARIAL = {
    "nested braces in a box": "\\boxed{" + "{" * (N // 2) + "1" + "}" * (N // 2) + "}",
    "open braces": "\\boxed{" + "{" * N,
    "unclosed boxes": "\\boxed{" * (N // 7),
    "digit run": "7" * N,
    "box then 100k digits": "\\boxed{" + "1" * N,
    "boxed 100k digits": "\\boxed{" + "1" * N + "}",
    "answer is repeats": "the answer is " * (N // 14),
    "hash repeats": "#### " * (N // 5),
    "hash lines": "#### 1\n" * (N // 7),
    # Short answers that stand for numbers with millions of digits, at the end of a long response.
    "power tower": "x" * N + "\\boxed{9^{9^{9}}}",
    "huge power": "x" * N + "\\boxed{2^{10^{9}} + 1}",
    "huge factorial": "x" * N + "\\boxed{\\frac{10^{9}!}{2}}",
    "huge binomial": "x" * N + "\\boxed{\\binom{10^{9}}{5 \\cdot 10^{8}}}",
}
LONG_GOLD = "1" * N
# Timed asserts are flaky on loaded CI machines: the bound is generous (typical: under 50 ms).
BOUND_S = 1.0


def _seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


@pytest.mark.parametrize("name", list(ADVERSARIAL))
def test_extract_and_verify_are_fast_on_adversarial_responses(name):
    text = ADVERSARIAL[name]
    assert len(text) >= 99_000
    assert _seconds(lambda: extract_answer(text)) < BOUND_S
    assert _seconds(lambda: verify(text, "72")) < BOUND_S
    assert _seconds(lambda: verify(text, LONG_GOLD)) < BOUND_S
    assert not verify(text, "72")


def test_verify_is_fast_with_a_long_gold():
    assert _seconds(lambda: verify("\\boxed{1}", LONG_GOLD)) < BOUND_S
    assert _seconds(lambda: verify("\\boxed{1}", "{" * N + "}" * N)) < BOUND_S
    assert verify("\\boxed{" + LONG_GOLD + "}", LONG_GOLD)  # equal strings still match


def test_huge_numbers_do_not_hang_a_worker_thread():
    # Off the main thread math_verify has no timeout: the huge-number guard must return first.
    results = []
    worker = threading.Thread(target=lambda: results.extend(
        verify(ADVERSARIAL[name], "72") for name in ("power tower", "huge power", "huge factorial", "huge binomial")
    ), daemon=True)
    start = time.perf_counter()
    worker.start()
    worker.join(timeout=30)
    assert not worker.is_alive(), "verify hung on a huge number"
    assert results == [False] * 4 and time.perf_counter() - start < 4 * BOUND_S


@pytest.mark.parametrize(
    "response, gold",
    [
        ("\\boxed{2^{10}}", "1024"),  # small powers are still compared symbolically
        ("\\boxed{256}", "2^{2^{3}}"),
        ("\\boxed{\\binom{10}{3}}", "120"),
        ("\\boxed{\\textbf{(073)}}", "73"),  # AoPS writes answers in bold
        ("\\boxed{\\mathbf{127}}", "127"),
        ("so $\\framebox{204}$ minutes", "204"),
    ],
)
def test_guards_keep_ordinary_answers(response, gold):
    assert verify(response, gold)
