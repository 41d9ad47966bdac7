"""Fuzz tests: malformed input gives the project's own errors, with a useful message, in bounded time.

Each property runs on small generated inputs and on ~1 MB inputs built by repeating generated
fragments (generating 1 MB directly would be slow); every call on a large input must return within
``BOUND_S``. Runs are reproducible: examples are derived from the test, never from a database.
The regression tests at the end hold the minimal inputs of the defects found while fuzzing.
"""

from __future__ import annotations

import json
import re
import threading
import time
import typing
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from mpdistill.tasks import prompts
from mpdistill.rewriting import rewrite
from mpdistill.tasks import math as grading
from mpdistill.tasks.benchmarks import load_custom_benchmark
from mpdistill.errors import ConfigError
from mpdistill.run.recipe import Recipe, load_recipe, recipe_from_dict
from mpdistill.tasks import TASKS, chain, get_task
from mpdistill.tasks.problems import DataError, iter_jsonl, load_problems

BIG = 1_000_000  # characters (or bytes) of a "large" input
BOUND_S = 10.0  # generous: typical calls on BIG inputs take well under a second


def fuzz(max_examples: int, *, shrink: bool = True):
    """Reproducible settings: derived examples, no saved database, no per-example deadline.

    ``shrink=False`` reports a failing example as found: for 1 MB inputs and for calls that may
    hang, where each shrinking step would take seconds (and leave one more thread running).
    """
    return settings(
        max_examples=max_examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        phases=tuple(Phase) if shrink else (Phase.explicit, Phase.reuse, Phase.generate),
    )


def bounded(fn, *args, errors: tuple[type[BaseException], ...] = (), **kwargs):
    """``(fn(*args, **kwargs), None)``, or ``(None, err)`` for an error of type ``errors``.

    Any other exception propagates (and fails the test); the call must take under ``BOUND_S``.
    """
    start = time.perf_counter()
    try:
        outcome = fn(*args, **kwargs), None
    except errors as err:
        outcome = None, err
    elapsed = time.perf_counter() - start
    assert elapsed < BOUND_S, f"{fn.__name__} took {elapsed:.1f}s"
    return outcome


def off_main_thread(fn, *args):
    """``fn(*args)`` in a worker thread, where math_verify has no timeout: only the grader's own
    guards bound the work. A call still running after ``BOUND_S`` fails the test."""
    box: dict = {}

    def target():
        try:
            box["result"] = fn(*args)
        except BaseException as err:  # re-raised below, on the test's thread
            box["error"] = err

    worker = threading.Thread(target=target, daemon=True)
    start = time.perf_counter()
    worker.start()
    worker.join(BOUND_S)
    assert not worker.is_alive(), f"{fn.__name__} still running after {time.perf_counter() - start:.0f}s on {args!r:.300}"
    if "error" in box:
        raise box["error"]
    return box["result"]


def to_size(piece: str, size: int = BIG) -> str:
    """``piece`` repeated (and cut) to ``size`` characters; an empty piece becomes ``"x"``."""
    piece = piece or "x"
    return (piece * (size // len(piece) + 1))[:size]


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


# ------------------------------------------------------------------ generated text

# Pieces of model output, mostly adversarial LaTeX; whole responses are random sequences of them.
LATEX = [
    "\\boxed{", "\\boxed {", "\\fbox{", "\\framebox{", "\\boxed", "\\textbf{", "{", "}", "\\{", "\\}",
    "\\", "\\\\", "####", "#", "the answer is", "The final answer is: ", "answer is ", "$", "\\$", ".",
    ". ", ",", ":", "!", "\n", " ", "\t", "\x0b", "\xa0", "\r\n", "\u2028", "\\frac{", "\\dfrac{1}{2}",
    "9^{9^{9}}", "10^{", "^", "^{", "\\binom{", "\\sqrt{", "\\left(", "\\right)", "(", ")", "[", "]",
    "\\sum_{i=1}^{", "\\prod_{", "\\int", "\\lim_{x \\to 0}", "\\infty", "\\pi", "x", "i", "=", "+", "-",
    "1,000", "0.5", "3", "42", "9" * 40, "<think>", "</think>", "A:", "A:7", "Q:7+3-5", "\x00", "é",
    "∞", "😀", "\ud800",
]
texts = st.lists(st.one_of(st.sampled_from(LATEX), st.text(max_size=6)), max_size=40).map("".join)
# A large text: generated head and tail around a generated piece repeated to ~1 MB.
big_texts = st.tuples(texts, texts, texts).map(lambda t: t[0] + to_size(t[1], BIG - len(t[0]) - len(t[2])) + t[2])


# ------------------------------------------------------------------ 1. answer extraction and grading


def _check_extracted(text: str, answer: str | None) -> None:
    assert answer is None or isinstance(answer, str)
    if answer is not None:
        assert answer in text, "only text from the response is returned"
        assert answer.strip(), "an answer is never blank"
        assert len(answer) < len(text), "never the whole response"


@fuzz(400)
@given(texts)
def test_extract_answer_never_raises_and_returns_text_after_a_marker(text):
    answer, _ = bounded(grading.extract_answer, text)
    _check_extracted(text, answer)
    assert isinstance(bounded(grading.normalize_gold, text)[0], str)


@fuzz(200)
@given(texts, st.text(alphabet="0123456789xyz+-*/=., ", min_size=1, max_size=12).filter(str.strip))
def test_the_last_box_wins_whatever_comes_before(prefix, answer):
    # A space keeps a trailing backslash of the prefix from escaping the box's own backslash.
    assert grading.extract_answer(f"{prefix} \\boxed{{{answer}}}") == answer.strip()


@fuzz(150, shrink=False)
@given(texts, texts)
def test_verify_returns_a_bool_in_bounded_time_off_the_main_thread(response, gold):
    verdict = off_main_thread(grading.verify, response, gold)
    assert isinstance(verdict, bool)
    if grading.extract_answer(response) is None:
        assert verdict is False


def _latex_compounds(kids):
    pairs = st.tuples(kids, kids)
    return st.one_of(
        st.tuples(kids, st.sampled_from(["+", "-", "\\cdot ", "/", "=", ", "]), kids).map("".join),
        pairs.map(lambda t: f"{t[0]}^{{{t[1]}}}"),
        pairs.map(lambda t: f"\\frac{{{t[0]}}}{{{t[1]}}}"),
        pairs.map(lambda t: f"\\binom{{{t[0]}}}{{{t[1]}}}"),
        pairs.map(lambda t: f"\\sum_{{i=1}}^{{{t[0]}}} {t[1]}"),
        pairs.map(lambda t: f"\\prod_{{i=1}}^{{{t[0]}}} {t[1]}"),
        kids.map(lambda a: f"\\int_{{0}}^{{1}} {a} \\, dx"),
        kids.map(lambda a: f"\\lim_{{x \\to 0}} {a}"),
        kids.map(lambda a: f"({a})"),
        kids.map(lambda a: f"{{{a}}}"),
        kids.map(lambda a: f"\\left[{a}\\right]"),
        kids.map(lambda a: f"\\sqrt{{{a}}}"),
        kids.map(lambda a: f"\\textbf{{{a}}}"),
        kids.map(lambda a: f"{a}!"),
    )


# Well-formed LaTeX answers, from a small grammar: what reaches sympy through math_verify.
latex_answers = st.recursive(
    st.one_of(st.integers(0, 10**6).map(str), st.sampled_from(["0.5", "9" * 30, "10^{9}", "\\pi", "\\infty", "x", "i"])),
    _latex_compounds,
    max_leaves=10,
)


def _wrapped(answer: str, wrapper: tuple[str, str], times: int) -> str:
    opening, closing = wrapper
    return opening * times + answer + closing * times


# The same answers nested in up to 24 brackets of one kind.
nested_latex_answers = st.builds(
    _wrapped,
    latex_answers,
    st.sampled_from([("{", "}"), ("(", ")"), ("\\left[", "\\right]"), ("\\frac{1}{", "}"), ("x^{", "}"), ("\\sqrt{", "}")]),
    st.integers(0, 24),
)


@fuzz(60, shrink=False)
@given(latex_answers | nested_latex_answers, latex_answers)
def test_verify_of_latex_answers_is_bounded_off_the_main_thread(answer, gold):
    assert isinstance(off_main_thread(grading.verify, f"so \\boxed{{{answer}}}.", gold), bool)


@fuzz(150, shrink=False)
@given(texts, st.sampled_from(["", " ", "$", "$ ", "\n"]))
def test_verify_ignores_spaces_and_dollars_around_the_gold(response, wrap):
    answer = grading.extract_answer(response)
    if answer is not None and grading._plain(answer):
        assert off_main_thread(grading.verify, response, f"{wrap}{answer}{wrap[::-1]}") is True


@fuzz(10, shrink=False)
@given(big_texts, texts)
def test_extract_and_verify_on_1mb_responses(response, gold):
    answer, _ = bounded(grading.extract_answer, response)
    _check_extracted(response, answer)
    start = time.perf_counter()
    assert isinstance(off_main_thread(grading.verify, response, gold), bool)
    assert isinstance(off_main_thread(grading.verify, gold, response), bool)  # a 1 MB gold
    assert time.perf_counter() - start < BOUND_S
    bounded(grading.normalize_gold, response)


# ------------------------------------------------------------------ 2. rewrites, <think> and the tasks

rewrite_outputs = st.builds(
    rewrite.RewriteOutput,
    text=texts,
    truncated=st.booleans(),
    error=st.one_of(st.none(), st.none(), st.text(max_size=10)),
)


def _check_verdict(task, student, student_tokens, out, rewrite_tokens, max_ratio, gold, verdict) -> None:
    assert verdict.reason in rewrite.REASONS
    assert verdict.accepted == (verdict.reason == "accepted")
    if out.error is not None:
        assert verdict.reason == "backend_error"
    elif not out.text.strip():
        assert verdict.reason == "empty"
    if verdict.accepted:
        assert rewrite.think_tags(out.text) == rewrite.think_tags(student)
        new = task.extract_answer(rewrite.answer_section(out.text))
        assert new is not None and rewrite_tokens <= max_ratio * student_tokens
        assert task.answers_match(new, task.extract_answer(rewrite.answer_section(student)))


@fuzz(300)
@given(texts, st.integers(0, 10**6), rewrite_outputs, st.integers(0, 10**6),
       st.floats(0.01, 1.0), st.one_of(st.none(), texts))
def test_rewrite_verify_gives_a_known_reason_for_any_text(student, student_tokens, out, rewrite_tokens, max_ratio, gold):
    task = get_task("chain")
    args = (task, student, student_tokens, out, rewrite_tokens, max_ratio, gold)
    verdict, _ = bounded(rewrite.verify, *args)
    _check_verdict(*args, verdict)


@fuzz(100, shrink=False)
@given(texts, st.integers(0, 10**6), rewrite_outputs, st.integers(0, 10**6),
       st.floats(0.01, 1.0), st.one_of(st.none(), texts))
def test_rewrite_verify_with_the_math_task_off_the_main_thread(student, student_tokens, out, rewrite_tokens, max_ratio, gold):
    task = get_task("math")
    args = (task, student, student_tokens, out, rewrite_tokens, max_ratio, gold)
    _check_verdict(*args, off_main_thread(rewrite.verify, *args))


def _check_think_split(text: str) -> None:
    section, _ = bounded(rewrite.answer_section, text)
    assert text.endswith(section)
    if prompts.THINK_OPEN in text and prompts.THINK_CLOSE not in text:
        assert section == "", "an answer inside unfinished thinking is not the final answer"
    if bounded(rewrite.keeps_structure, text, "<think>\nthe student's thinking\n</think>\nA:1")[0]:
        assert section.strip() and text.lstrip().startswith(prompts.THINK_OPEN)
    parts, _ = bounded(prompts.split_response, text, [], None)
    assert text.endswith(parts.answer_text)
    assert parts.thinking_closed == (prompts.THINK_CLOSE in text)


@fuzz(300)
@given(texts)
def test_think_splitting_never_raises(text):
    _check_think_split(text)


def _check_chain_parsers(text: str) -> None:
    answer, _ = bounded(chain.extract_answer, text)
    assert answer is None or (len(answer) == 1 and f"A:{answer}" in text)
    problem, err = bounded(chain.ChainProblem.parse, text, errors=(ValueError,))
    if err is not None:
        assert str(err).startswith("not a chain problem: ")
    else:
        assert chain.ChainProblem.parse(problem.prompt) == problem and 0 <= problem.value < 10
    known = chain.ChainProblem.parse("Q:7+3-5+9-2\n")
    assert bounded(chain.route_of, text, known)[0] in (None, *chain.ROUTES)
    assert bounded(chain.rewrite_prompt, text, text)[0] == f"{text}rewrite:\n{text}\nshort:\n"


@fuzz(300)
@given(st.one_of(texts, st.from_regex(r"\s*Q:[0-9](?:[+-][0-9]){0,17}\s*", fullmatch=True)))
def test_chain_parsers_never_raise_anything_but_their_value_error(text):
    _check_chain_parsers(text)


@fuzz(200)
@given(st.text(max_size=12))
def test_unknown_task_names_are_a_value_error_listing_the_known_ones(name):
    task, err = bounded(get_task, name, errors=(ValueError,))
    if err is None:
        assert task.name == name
    else:
        assert str(err) == f"unknown task {name!r}; known: {TASKS.known()}"


@fuzz(8, shrink=False)
@given(big_texts, big_texts, st.integers(1, 10**6))
def test_rewrite_and_chain_parsing_on_1mb_texts(student, rewritten, tokens):
    _check_think_split(student)
    _check_chain_parsers(student)
    for task in (get_task("chain"), get_task("math")):
        args = (task, student, tokens, rewrite.RewriteOutput(rewritten), tokens // 2, 0.9, None)
        _check_verdict(*args, off_main_thread(rewrite.verify, *args))


# ------------------------------------------------------------------ 3. recipes

def _fields(model: type[BaseModel], prefix: str = "") -> list[tuple[str, str]]:
    """``(dotted name, kind)`` of every field of a recipe; kind is "section", "list" or "scalar"."""
    out = []
    for name, info in model.model_fields.items():
        if info.exclude:  # internal (training.trl_args): not a recipe key, refused on its own terms
            continue
        dotted = prefix + name
        types = (info.annotation, *typing.get_args(info.annotation))
        nested = [t for t in types if isinstance(t, type) and typing.get_origin(t) is None and issubclass(t, BaseModel)]
        if nested:
            out.append((dotted, "section"))
            out += _fields(nested[0], dotted + ".")
        else:
            out.append((dotted, "list" if any(typing.get_origin(t) is list for t in types) else "scalar"))
    return out


FIELDS = _fields(Recipe)
SECTIONS = sorted(dotted for dotted, kind in FIELDS if kind == "section")
FIELD_NAMES = sorted({dotted.rsplit(".", 1)[-1] for dotted, _ in FIELDS})

YAML_PIECES = [
    *[name + ":" for name in FIELD_NAMES], "api_key:", ":", ": ", " ", "  ", "\n", "\n  ", "\n    ", "- ", "[",
    "]", "{", "}", ", ", "&a ", "*a", "!!bool ", "!!int ", "!!float ", "!!timestamp ", "!!binary ", "!!set ",
    "!!str ", "!!python/object:os.system ", "? ", "|", ">", "'", '"', "#", "~", "null", "yes", "true", "0", "-1",
    "1.5", "1e999", ".nan", ".inf", "2024-13-45", "2001-12-14t21:59:43.10-05:00", "0x1F", "1_000", "9" * 5000,
    "\t", "\x00", "\ufeff", "---", "...", "%YAML 1.1\n", "<<: ", "{problem}", "{trace}", "mpd", "chat", "é", "\r",
]
yaml_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=8),
              st.sampled_from(["mpd", "chat", "openai", "embedded:student", "{problem}{trace}"])),
    lambda kids: st.one_of(st.lists(kids, max_size=3), st.dictionaries(st.sampled_from(FIELD_NAMES) | st.text(max_size=6), kids, max_size=3)),
    max_leaves=10,
)
recipe_dicts = st.dictionaries(st.sampled_from(FIELD_NAMES) | st.text(max_size=8), yaml_values, max_size=5)
yaml_texts = st.one_of(
    st.lists(st.one_of(st.sampled_from(YAML_PIECES), st.text(max_size=5)), max_size=30).map("".join),
    recipe_dicts.map(lambda d: yaml.safe_dump(d, allow_unicode=True)),
)


def _check_config_error(message: str, source: str, data=None) -> None:
    """Every line names the source; a validation error names, on each line, a key that is in ``data``."""
    assert message.startswith(f"{source}: ") or message == f"recipe not found: {source}", message[:300]
    assert len(message) < 20_000, f"a {len(message)}-character message"
    lines = message.splitlines()
    if isinstance(data, dict) and "not valid YAML" not in lines[0] and "expected a mapping" not in lines[0]:
        keys = [text[:50] for k in data for text in (str(k), repr(k))]  # a key that would not read as one is quoted
        for line in lines:
            assert line.startswith(f"{source}: ") and len(line) < 1000, line[:300]
            named = line[len(source) + 2 :]
            assert named.startswith(("(top level)", "... and ")) or any(named.startswith(k) for k in keys), line


def _load_text(path: Path, text: str | bytes):
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
    recipe, err = bounded(load_recipe, path, errors=(ConfigError,))
    if err is None:
        assert isinstance(recipe, Recipe)
    else:
        first = str(err).split("\n", 1)[0]
        readable = not first.startswith((f"{path}: not valid YAML", f"{path}: not a UTF-8"))
        _check_config_error(str(err), str(path), yaml.safe_load(path.read_text(encoding="utf-8")) if readable else None)
    return recipe, err


@fuzz(300)
@given(yaml_texts)
def test_load_recipe_gives_a_recipe_or_a_config_error_naming_the_key(scratch, text):
    _load_text(scratch / "recipe.yaml", text)


@fuzz(100)
@given(st.binary(max_size=200))
def test_load_recipe_of_arbitrary_bytes(scratch, blob):
    path = scratch / "recipe.yaml"
    _, err = _load_text(path, blob)
    try:
        blob.decode("utf-8")
    except UnicodeDecodeError:
        assert str(err) == f"{path}: not a UTF-8 text file"


@fuzz(100)
@given(st.one_of(st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=10),
                 st.lists(st.integers(), max_size=3)))
def test_a_non_mapping_recipe_is_refused(scratch, value):
    path = scratch / "recipe.yaml"
    path.write_text(yaml.safe_dump(value), encoding="utf-8")
    _, err = bounded(load_recipe, path, errors=(ConfigError,))
    assert err is not None, f"{value!r} at the top level was accepted"
    assert str(err) == f"{path}: expected a mapping at the top level, got {type(yaml.safe_load(path.read_text())).__name__}"


@fuzz(30)
@given(st.sampled_from(["[", "{a: ", "- ", "a:\n", "!!seq [", "&x [", "? "]), st.integers(1, 1500))
def test_deeply_nested_recipes_are_a_config_error(scratch, opener, depth):
    if opener.endswith("\n"):  # block mappings nest by indentation
        text = "".join(" " * i + opener for i in range(min(depth, 1000)))
    else:
        text = opener * depth
    _load_text(scratch / "recipe.yaml", text)


def _nested_list(depth: int) -> list:
    out: list = []
    for _ in range(depth):
        out = [out]
    return out


def _shared_lists(levels: int) -> list:
    """10**levels leaves in ``levels`` shared lists: what YAML anchors and aliases build (a "billion laughs")."""
    out: list = ["x"] * 10
    for _ in range(levels):
        out = [out] * 10
    return out


hostile_values = st.one_of(
    st.sampled_from([10**5000, -(10**5000), "x" * 100_000, float("nan")]),
    st.integers(1, 5000).map(_nested_list),
    st.integers(1, 9).map(_shared_lists),
)


@fuzz(300)
@given(st.dictionaries(st.sampled_from(FIELD_NAMES) | st.text(max_size=8), yaml_values | hostile_values, max_size=5))
def test_recipe_from_dict_names_the_offending_key(data):
    recipe, err = bounded(recipe_from_dict, data, errors=(ConfigError,))
    if err is None:
        assert isinstance(recipe, Recipe)
    else:
        _check_config_error(str(err), "recipe", data)


@fuzz(150)
@given(st.sampled_from([f for f in FIELDS if f[1] != "list"]),
       st.lists(st.one_of(st.integers(), st.text(max_size=5)), min_size=1, max_size=3))
def test_a_list_where_a_value_belongs_names_that_field(field, value):
    dotted, _ = field
    data: dict = {}
    node = data
    *sections, name = dotted.split(".")
    for section in sections:
        node = node.setdefault(section, {})
    node[name] = value
    _, err = bounded(recipe_from_dict, data, errors=(ConfigError,))
    assert err is not None
    assert any(line.startswith(f"recipe: {dotted}: ") for line in str(err).splitlines()), str(err)


@fuzz(150)
@given(st.sampled_from(["", *SECTIONS]), st.text(min_size=1, max_size=12))
def test_an_unknown_key_is_named_with_its_section(section, key):
    known = {dotted for dotted, _ in FIELDS}
    dotted = f"{section}.{key}" if section else key
    if dotted in known or dotted == "rewrite.api_key":  # a known field, or refused with its own message
        return
    data: dict = {}
    node = data
    for part in section.split(".") if section else ():
        node = node.setdefault(part, {})
    node[key] = 1
    _, err = bounded(recipe_from_dict, data, errors=(ConfigError,))
    assert err is not None
    shown = key if key.isprintable() and key == key.strip() else repr(key)  # a key that would not read as one is quoted
    assert f"recipe: {section + '.' if section else ''}{shown}: unknown key" in str(err), str(err)


@fuzz(100)
@given(st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=5), st.lists(st.integers(), max_size=3)))
def test_recipe_from_dict_refuses_a_non_mapping(value):
    _, err = bounded(recipe_from_dict, value, errors=(ConfigError,))
    assert str(err) == f"recipe: expected a mapping at the top level, got {type(value).__name__}"


# The body of a 1 MB recipe: a generated piece repeated, under a generated head.
big_recipe_pieces = st.one_of(
    st.sampled_from(["# comment\n", "k: v\n", "- 1\n", "1, ", "{a: 1}, ", "a" * 100, "'x' ", "*a, ", "\\u00e9"]),
    st.lists(st.sampled_from(YAML_PIECES), min_size=1, max_size=4).map("".join),
)
big_recipe_heads = st.sampled_from(["", "student: ", "seed: [", "training:\n  lora:\n    target_modules:\n",
                                    "a: &a [x, x]\nstudent: [", "data:\n  "])


@fuzz(5, shrink=False)
@given(big_recipe_heads, big_recipe_pieces)
def test_1mb_recipes_load_or_fail_in_bounded_time(scratch, head, piece):
    _load_text(scratch / "recipe.yaml", head + to_size(piece, BIG - len(head)))


# ------------------------------------------------------------------ 4. dataset rows

json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=8)),
    lambda kids: st.one_of(st.lists(kids, max_size=3), st.dictionaries(st.text(max_size=4), kids, max_size=3)),
    max_leaves=6,
)
json_objects = st.dictionaries(st.sampled_from(["problem", "answer", "id", "question"]) | st.text(max_size=4),
                               json_values, max_size=4)
# Lines of a JSONL file as bytes: objects, non-objects, torn lines, junk, blank lines, big numbers,
# deep nesting and bytes that are not UTF-8.
jsonl_lines = st.one_of(
    json_objects.map(json.dumps).map(str.encode),
    json_objects.map(lambda o: json.dumps(o, ensure_ascii=False).encode("utf-8", "surrogatepass")),
    json_values.map(json.dumps).map(str.encode),
    st.tuples(json_objects.map(json.dumps), st.integers(0, 40)).map(lambda t: t[0][: t[1]].encode()),
    texts.map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.sampled_from([b"", b"  ", b"\t", b"\r", b"\xef\xbb\xbf{}", b'{"a":\r1}', b'{"a": 1}\x00', b"NaN", b"[]",
                     b'{"problem": "q", "answer": ' + b"9" * 5000 + b"}", b"[" * 5000 + b"]" * 5000,
                     b'{"problem": "q\xff", "answer": "1"}', b"\x80", b"\xed\xa0\x80"]),
    st.binary(max_size=12),
)


def _expected_rows(lines: list[bytes]) -> tuple[list, int | None]:
    """The objects of a JSONL file, and the number of its first unusable line (None if none)."""
    rows = []
    for lineno, raw in enumerate(b"\n".join(lines).split(b"\n"), 1):
        try:
            line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            if not line.strip():
                continue
            row = json.loads(line)
        except Exception:
            return rows, lineno
        if not isinstance(row, dict):
            return rows, lineno
        rows.append(row)
    return rows, None


def _write_lines(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(b"\n".join(lines))
    return path


def _check_data_error(err: DataError, path: Path, first_bad_line: int | None, fields: tuple[str, ...]) -> None:
    """A bad JSON line is named as file:line; so is a row with a bad field (lines count from 1 for both)."""
    message = str(err)
    assert len(message) < 20_000, f"a {len(message)}-character message"
    if first_bad_line is not None:  # every line is parsed before any row is checked
        assert message.startswith(f"{path}:{first_bad_line}: "), message[:300]
        return
    assert re.match(rf"{re.escape(str(path))}:[0-9]+(: | and )", message) or \
        message.startswith(f"{path}: the dataset is empty"), message[:300]
    assert "dataset is empty" in message or any(repr(f) in message for f in fields), message[:300]


def _rows_before(err: DataError, path: Path) -> int | None:
    """How many rows come before the one a field error names (None: not a field error)."""
    found = re.match(rf"{re.escape(str(path))}:([0-9]+): (missing|answer|field)", str(err))
    if found is None:
        return None
    return sum(1 for lineno, _ in iter_jsonl(path) if lineno < int(found.group(1)))


@fuzz(300)
@given(st.lists(jsonl_lines, max_size=8))
def test_iter_jsonl_names_the_first_bad_line(scratch, lines):
    path = _write_lines(scratch / "rows.jsonl", lines)
    expected, first_bad = _expected_rows(lines)
    got, err = bounded(lambda: list(iter_jsonl(path)), errors=(DataError,))
    if first_bad is None:
        assert err is None, str(err)
        assert json.dumps([row for _, row in got]) == json.dumps(expected)
    else:
        assert err is not None and str(err).startswith(f"{path}:{first_bad}: "), str(err)[:300]


# Rows with fuzzed fields; any field may be missing, None, blank, numeric, a list, ...
field_values = st.one_of(st.none(), st.just(""), st.just("  "), st.text(max_size=8), st.integers(), st.floats(),
                         st.booleans(), st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=2), st.integers(), max_size=2),
                         st.sampled_from(["1", "#### 5", "####  ", "The answer is \\boxed{3}.\n#### 3", "7"]))
rows = st.fixed_dictionaries({}, optional={"problem": field_values, "answer": field_values, "id": field_values,
                                           "solution": field_values})
row_line = rows.map(json.dumps).map(str.encode)
row_lines = st.one_of(row_line, row_line, jsonl_lines)  # two rows for each other line


@fuzz(200)
@given(st.lists(row_lines, max_size=6), st.sampled_from(["answer", None]), st.sampled_from(["plain", "chat"]))
def test_load_problems_validates_every_row(scratch, lines, answer_field, style):
    path = _write_lines(scratch / "problems.jsonl", lines)
    _, first_bad = _expected_rows(lines)
    got, err = bounded(load_problems, str(path), answer_field=answer_field, prompt_style=style, errors=(DataError,))
    if err is not None:
        _check_data_error(err, path, first_bad, ("problem", "answer"))
        row = _rows_before(err, path)
        if row:  # the rows before the one named are fine
            assert len(load_problems(str(path), answer_field=answer_field, limit=row)) == row
        return
    assert first_bad is None and got
    for r in got:
        assert isinstance(r["problem"], str) and r["problem"].strip()
        assert r["prompt"] == (r["problem"] if style == "plain" else [{"role": "user", "content": r["problem"]}])
        assert (r["answer"] is None) == (answer_field is None)
        assert r["answer"] is None or r["answer"].strip()


@fuzz(200)
@given(st.lists(row_lines, max_size=6), st.sampled_from(["id", None]))
def test_load_custom_benchmark_validates_every_row(scratch, lines, id_field):
    path = _write_lines(scratch / "bench.jsonl", lines)
    _, first_bad = _expected_rows(lines)
    bench, err = bounded(load_custom_benchmark, str(path), id_field=id_field, errors=(DataError,))
    if err is not None:
        _check_data_error(err, path, first_bad, ("problem", "answer", "id"))
        row = _rows_before(err, path)
        if row:  # the rows before the one named are fine
            assert len(load_custom_benchmark(str(path), id_field=id_field, limit=row).items) == row
        return
    assert first_bad is None and bench.items
    assert len({it.id for it in bench.items}) == len(bench.items)
    for it in bench.items:
        assert it.problem.strip() and it.answer.strip() and isinstance(it.reference, str)


big_row_pieces = st.one_of(rows.map(lambda r: json.dumps(r) + "\n"), texts.map(lambda t: json.dumps({"problem": t, "answer": "1"}) + "\n"))


@fuzz(4, shrink=False)
@given(big_row_pieces, texts, st.sampled_from([b"", b'{"problem": "torn', b"\xff", b"[" * 3000]))
def test_1mb_jsonl_files_load_or_fail_in_bounded_time(scratch, piece, question, last):
    many_rows = to_size(piece).rsplit("\n", 1)[0].encode("utf-8", "surrogatepass")
    huge = {"problem": to_size(question, BIG // 4), "answer": to_size("12", 100_000)}
    one_huge_row = json.dumps(huge, ensure_ascii=False).encode("utf-8", "surrogatepass")
    for name, body in (("many", many_rows), ("huge", one_huge_row)):
        path = scratch / f"{name}.jsonl"
        path.write_bytes(body + b"\n" + last)
        lines = (body + b"\n" + last).split(b"\n")
        _, first_bad = _expected_rows(lines)
        for load, fields in ((load_problems, ("problem", "answer")), (load_custom_benchmark, ("problem", "answer", "id"))):
            _, err = bounded(load, str(path), errors=(DataError,))
            if err is not None:
                _check_data_error(err, path, first_bad, fields)


# ------------------------------------------------------------------ regressions: minimal inputs of the defects found


@pytest.mark.parametrize("response", ["The answer is: \x0b.", "The final answer is $\xa0$.", "the answer is:\u3000"])
def test_regression_a_blank_sentence_after_the_answer_is_no_answer(response):
    # Was returned as the answer ("\x0b"): only spaces and tabs were stripped from the sentence.
    assert grading.extract_answer(response) is None
    assert grading.extract_answer("The answer is: \xa05.") == "\xa05"


def test_regression_deeply_nested_answers_are_compared_as_strings():
    # math_verify's parser is exponential in the nesting: 14 braces took ~15 s, 20 would take hours.
    answer = _wrapped("1", ("{", "}"), 14)
    start = time.perf_counter()
    assert off_main_thread(grading.verify, f"\\boxed{{{answer}}}", "2") is False
    assert off_main_thread(grading.verify, f"\\boxed{{{answer}}}", answer) is True  # equal strings still match
    assert time.perf_counter() - start < BOUND_S / 2
    assert grading.verify("\\boxed{((((1))))}", "1")  # ordinary nesting is still compared symbolically
    assert grading.verify("\\boxed{\\frac{1}{\\frac{1}{\\frac{1}{2}}}}", "\\frac{1}{2}")


@pytest.mark.parametrize(
    "answer",
    ["\\sum_{i=1}^{999} i^{i}", "\\prod_{i=1}^{10^{9}} i", "\\sum_{i=1}^{10^{9}} \\frac{1}{i}",
     "\\lim_{x \\to 0} \\prod_{i=1}^{86894} 1329!", "\\int e^{x^{2}} \\sin(x^{3}) \\, dx"],
)
def test_regression_sums_products_integrals_and_limits_are_not_evaluated(answer):
    # Off the main thread sympy evaluated them with no bound (hours, or a stalled interpreter).
    start = time.perf_counter()
    assert off_main_thread(grading.verify, f"so \\boxed{{{answer}}}.", "7") is False
    assert off_main_thread(grading.verify, f"so \\boxed{{{answer}}}.", answer) is True
    assert time.perf_counter() - start < BOUND_S / 2


@pytest.mark.parametrize(
    "text, error",
    [
        ("!!bool ", "KeyError"),
        ("seed: !!bool maybe", "KeyError"),
        ("seed: 2024-13-45", "ValueError: month must be in 1..12"),
        ("seed: !!timestamp x", "AttributeError"),
        ("seed: !!int ''", "IndexError"),
        ("seed: !!float ''", "IndexError"),
        ("seed: " + "9" * 5000, "ValueError: Exceeds the limit (4300 digits)"),
    ],
)
def test_regression_yaml_values_pyyaml_cannot_build_are_a_config_error(tmp_path, text, error):
    path = tmp_path / "recipe.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_recipe(path)
    assert str(info.value).startswith(f"{path}: not valid YAML: a value cannot be read ({error}")


@pytest.mark.parametrize("text", ["[" * 1000, "a: " + "{a: " * 1000, "- " * 1000])
def test_regression_deeply_nested_yaml_is_a_config_error(tmp_path, text):
    path = tmp_path / "recipe.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:  # was a RecursionError
        load_recipe(path)
    assert str(info.value) == f"{path}: not valid YAML: nested too deeply"


@pytest.mark.parametrize("text, kind", [("false", "bool"), ("0", "int"), ("0.0", "float"), ("''", "str"), ("[]", "list")])
def test_regression_a_falsy_top_level_is_not_a_mapping(tmp_path, text, kind):
    # Was read as an empty recipe, so the run silently used every default.
    path = tmp_path / "recipe.yaml"
    path.write_text(text + "\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_recipe(path)
    assert str(info.value) == f"{path}: expected a mapping at the top level, got {kind}"
    path.write_text("# nothing but a comment\n", encoding="utf-8")
    assert load_recipe(path) == Recipe()


@pytest.mark.parametrize(
    "data, key",
    [
        ({"student": _shared_lists(9)}, "student"),  # a billion elements: the repr never ended
        ({"student": _nested_list(5000)}, "student"),  # was a RecursionError
        ({"training": {"learning_rate": 10**5000}}, "training.learning_rate"),  # was a ValueError
        ({"data": "x" * 100_000}, "data"),  # the whole value was quoted
    ],
)
def test_regression_a_bad_value_is_quoted_briefly(data, key):
    start = time.perf_counter()
    with pytest.raises(ConfigError) as info:
        recipe_from_dict(data)
    message = str(info.value)
    assert message.startswith(f"recipe: {key}: ") and "(got " in message
    assert len(message) < 500 and "\n" not in message
    assert time.perf_counter() - start < 2.0


def test_regression_many_errors_are_summarised():
    with pytest.raises(ConfigError) as info:
        recipe_from_dict({f"k{i}": 1 for i in range(1000)})
    lines = str(info.value).splitlines()
    assert lines[0] == "recipe: k0: unknown key" and lines[19] == "recipe: k19: unknown key"
    assert lines[20:] == ["recipe: ... and 980 more errors"]


@pytest.mark.parametrize("key, shown", [("\r", "'\\r'"), ("", "''"), (" a", "' a'"), ("a\nb", "'a\\nb'")])
def test_regression_a_key_that_would_not_read_as_one_is_quoted(tmp_path, key, shown):
    # "\r" split the one-line message in two: "recipe: " and ": unknown key".
    with pytest.raises(ConfigError) as info:
        recipe_from_dict({key: None})
    assert str(info.value) == f"recipe: {shown}: unknown key"
    with pytest.raises(ConfigError) as info:
        recipe_from_dict({"training": {key: None}})
    assert str(info.value) == f"recipe: training.{shown}: unknown key"


@pytest.mark.parametrize(
    "line, detail",
    [
        (b'{"problem": "q\xff", "answer": "1"}', "not UTF-8 text (byte 15 of the line)"),  # was a UnicodeDecodeError
        (b"[" * 5000 + b"]" * 5000, "not valid JSON (nested too deeply)"),  # was a RecursionError
        (b'{"problem": "q", "answer": ' + b"9" * 5000 + b"}",  # was a ValueError
         "not valid JSON (Exceeds the limit (4300 digits) for integer string conversion)"),
    ],
)
def test_regression_unreadable_jsonl_lines_are_a_data_error_naming_the_line(tmp_path, line, detail):
    path = tmp_path / "rows.jsonl"
    path.write_bytes(b'{"problem": "p", "answer": "1"}\n\n' + line + b"\n")
    for load in (load_problems, load_custom_benchmark):
        with pytest.raises(DataError) as info:
            load(str(path))
        assert str(info.value) == f"{path}:3: {detail}"


def test_regression_a_carriage_return_inside_a_jsonl_line_is_whitespace(tmp_path):
    # A lone "\r" ended the line, so a valid object was read as two invalid halves.
    path = tmp_path / "rows.jsonl"
    path.write_bytes(b'{"problem": "q",\r"answer": 1}\r\n\r\n{"problem": "r", "answer": 2}\r\n')
    assert [row for _, row in iter_jsonl(path)] == [{"problem": "q", "answer": 1}, {"problem": "r", "answer": 2}]
    assert [lineno for lineno, _ in iter_jsonl(path)] == [1, 3]
    path.write_bytes(b'{"problem": "q", "answer": 1}\r\n\r\n{"problem": 5}\r\n')
    with pytest.raises(DataError, match=r"rows\.jsonl:3: missing or empty field 'problem'"):
        load_problems(str(path))
    path.write_bytes(b'\xef\xbb\xbf{"problem": "q", "answer": 1}\n\xef\xbb\xbf{}\n')  # a BOM only opens the file
    with pytest.raises(DataError, match=r"rows\.jsonl:2: not valid JSON"):
        load_problems(str(path))
