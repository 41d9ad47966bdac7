"""Answer extraction and equivalence tests for the math task (mpdistill.tasks.math)."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from mpdistill.tasks.math import extract_answer, normalize_gold, verify

# --- extraction ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "response, expected",
    [
        ("so \\boxed{\\frac{1}{2}}.", "\\frac{1}{2}"),
        ("first \\boxed{3}, then \\boxed{4}", "4"),
        ("\\fbox{7}", "7"),
        ("\\boxed {x = 5}", "x = 5"),
        ("set \\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),
        ("\\boxed{f(x) = \\left\\{ x \\right.}", "f(x) = \\left\\{ x \\right."),  # escaped brace
        ("\\boxed{\\boxed{9}}", "9"),  # the box that starts last
        ("\\boxed{2} and then \\boxed{3", "2"),  # unclosed last box: previous complete one
        ("Natalia sold 48 + 24 = 72 clips.\n#### 72", "72"),
        ("#### 5\nmore text\n#### 1,000 \nbye", "1,000"),
        ("So the answer is 42. Done.", "42"),
        ("The final answer is $\\frac{3}{4}$.", "\\frac{3}{4}"),
        ("The answer is 3.5 cm. Next", "3.5 cm"),
        ("the answer is 1\nthe answer is 2\n", "2"),
        ("The final answer is: 12", "12"),
        ("we get \\boxed{3 but then the answer is 8.", "8"),  # unclosed box falls back
    ],
)
def test_extract_answer(response, expected):
    assert extract_answer(response) == expected


@pytest.mark.parametrize(
    "response",
    ["", "no answer here, just 12 and 13.", "\\boxed{", "\\boxed{}", "####   \n", "the answer is ."],
)
def test_extract_answer_none(response):
    assert extract_answer(response) is None


def _best_of_3(fn, arg) -> float:
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        fn(arg)
        best = min(best, time.perf_counter() - start)
    return best


ADVERSARIAL = {
    "unclosed boxes": "\\boxed{" * 14_286,
    "deep nesting": "\\boxed{" + "\\frac{" * 8_000 + "1" * 50_000 + "}" * 7_999,
    "open braces": "\\boxed{" + "{" * 99_993,
    "brace pairs": "\\boxed{}" * 12_500,
    "digit run": "the answer is " + "9" * 100_000,
    "boxed digit run": "\\boxed{" + "1" * 99_990 + "}",
    "backslashes": "\\" * 100_000,
    "spaces after box": ("\\boxed" + " " * 60) * 1_500,
    "hashes": "#" * 100_000,
    "repeated answer is": "the answer is " * 7_200,
}


@pytest.mark.parametrize("name", list(ADVERSARIAL))
def test_extract_answer_is_fast_on_adversarial_input(name):
    text = ADVERSARIAL[name]
    assert len(text) >= 99_000
    assert _best_of_3(extract_answer, text) < 0.05


@pytest.mark.parametrize("name", ["digit run", "boxed digit run", "deep nesting"])
def test_verify_is_fast_on_adversarial_input(name):
    text = ADVERSARIAL[name]
    assert _best_of_3(lambda t: verify(t, "72"), text) < 0.05


def test_extracted_answers_of_adversarial_input():
    assert extract_answer(ADVERSARIAL["unclosed boxes"]) is None
    assert extract_answer(ADVERSARIAL["brace pairs"]) is None  # every box is empty
    assert extract_answer(ADVERSARIAL["boxed digit run"]) == "1" * 99_990


# --- equivalence ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "response, gold",
    [
        ("\\boxed{0.5}", "\\frac{1}{2}"),
        ("\\boxed{\\frac{1}{2}}", "0.5"),
        ("\\boxed{3.0}", "3"),
        ("\\boxed{\\dfrac{14}{3}}", "\\frac{14}{3}"),
        ("\\boxed{x=5}", "5"),
        ("\\boxed{$72$}", "72"),
        ("#### 1,000", "1000"),
        ("The answer is 72.", "72"),
        ("\\boxed{\\frac{\\sqrt{3}}{2}}", "\\frac{1}{2}\\sqrt{3}"),
        ("\\boxed{[1, 2)}", "[1,2)"),
        ("\\boxed{3, 2}", "2,3"),
    ],
)
def test_verify_equivalent(response, gold):
    assert verify(response, gold)


@pytest.mark.parametrize(
    "response, gold",
    [
        ("\\boxed{3}", "2"),
        ("\\boxed{0.1}", "10"),
        ("\\boxed{x=6}", "5"),
        ("\\boxed{5, 6}", "5"),
        ("\\boxed{0.333}", "\\frac{1}{3}"),
        ("72", "72"),  # no marked answer: the bare text is never graded
        ("\\boxed{\\frac{", "1"),  # malformed: no complete box
        ("\\boxed{)(}", "1"),  # unparsable answer
    ],
)
def test_verify_not_equivalent(response, gold):
    assert not verify(response, gold)


def test_verify_works_off_the_main_thread():
    # math_verify's signal-based timeout cannot run in a worker thread.
    cases = [("\\boxed{0.5}", "\\frac{1}{2}", True), ("\\boxed{x=5}", "5", True), ("\\boxed{3}", "2", False)]
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda c: verify(c[0], c[1]), cases))
    assert results == [expected for _, _, expected in cases]


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("She sold 48/2 = <<48/2=24>>24 clips.\n#### 72", "72"),
        ("#### 1,000", "1000"),
        ("#### 1,234,567", "1234567"),
        ("  42 ", "42"),
        ("#### -3.5", "-3.5"),
    ],
)
def test_normalize_gold(raw, expected):
    assert normalize_gold(raw) == expected


@pytest.mark.parametrize("got, gold", [("-3", "3"), ("3", "-3"), ("-\\frac{1}{2}", "\\frac{1}{2}"), ("-0.5", "0.5"),
                                       ("x=-2", "2"), ("(-1,2)", "(1,2)")])
def test_an_answer_of_the_other_sign_is_wrong(got, gold):
    from mpdistill.tasks.math import answers_match

    assert not answers_match(got, gold)
    assert answers_match(gold, gold)
