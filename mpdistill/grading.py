"""Answer extraction and equivalence checking for math benchmarks (GSM8K, MATH-style).

``extract_answer`` pulls the final answer out of a model response with a linear-time scan, so a
degenerate generation (unclosed braces, 100k-character digit runs) cannot stall an evaluation.
``verify`` compares that answer with the gold one, first by plain string equality and otherwise
with ``math_verify`` (symbolic / numeric equivalence), and never raises.
"""

from __future__ import annotations

import re
import threading

from math_verify import parse as mv_parse
from math_verify import verify as mv_verify
from math_verify.errors import TimeoutException

__all__ = ["extract_answer", "normalize_gold", "verify"]

# `\boxed{` / `\fbox{`, optionally with spaces before the brace (valid LaTeX).
_BOX_OPEN = re.compile(r"\\(?:boxed|fbox)\s*\{")
_BOX_NAMES = ("boxed", "fbox")
# Every quantifier is followed by a distinct literal, so a failed match only re-reads its own
# whitespace run: the search stays linear in the length of the text.
_ANSWER_IS = re.compile(r"\bthe\s+(?:final\s+)?answer\s+is\b\s*:?", re.IGNORECASE)
# End of the "the answer is ..." sentence: a period followed by whitespace or the end of the line
# (so the period in "3.5" is kept).
_SENTENCE_END = re.compile(r"\.(?:\s|$)")
# A comma between digits that is followed by exactly three digits: "1,000,000" -> "1000000".
_THOUSANDS_COMMA = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")

# math_verify's own timeouts (seconds) for parsing and for comparing, when they can be used.
_MV_TIMEOUT_S = 5
# Answers longer than this are only compared as strings: sympy can take very long on huge
# expressions, and off the main thread there is no timeout to stop it (see `_math_equal`).
_MAX_SYMBOLIC_CHARS = 1000


def extract_answer(response: str) -> str | None:
    """Return the final answer written in ``response``, or None if there is none.

    Tried in this order, the first that yields a non-empty answer wins:

    1. the content of the last complete ``\\boxed{...}`` or ``\\fbox{...}`` (the one that starts
       last), braces matched by a linear scan; an unclosed ``\\boxed{`` is ignored;
    2. GSM8K style: the rest of the line after the last ``####``, stripped;
    3. the last "the answer is X" / "The final answer is X": X runs to the end of the line or to
       a period followed by whitespace, with ``$`` and trailing punctuation stripped.

    Only the text after one of these markers is ever returned, never the whole response.
    """
    for extract in (_last_boxed_content, _after_last_hashes, _after_last_answer_is):
        answer = extract(response)
        if answer:
            return answer
    return None


def _last_boxed_content(text: str) -> str | None:
    """Content of the complete boxed group that starts last, stripped; None if there is none.

    One pass over the characters with a stack of open braces, so the cost is linear however the
    braces nest. Escaped ``\\{``, ``\\}`` are literal characters in LaTeX, not groups, so they are
    skipped (an answer like ``\\left\\{ ... \\right.`` stays balanced).
    """
    if "\\boxed" not in text and "\\fbox" not in text:
        return None
    # For each open brace: where the box content starts if it opens a box, else -1.
    stack: list[int] = []
    best_start, best_end = -1, -1
    skip_to = 0
    for i, ch in enumerate(text):
        if i < skip_to:
            continue
        if ch == "{":
            stack.append(-1)
        elif ch == "}":
            if stack:  # a stray "}" with nothing open is ignored
                start = stack.pop()
                if start > best_start:
                    best_start, best_end = start, i
        elif ch == "\\":
            opener = _BOX_OPEN.match(text, i) if text.startswith(_BOX_NAMES, i + 1) else None
            if opener:
                stack.append(opener.end())
                skip_to = opener.end()
            else:
                # Skip the escaped character: "\{", "\}" and "\\" are not grouping braces.
                skip_to = i + 2
    if best_start < 0:
        return None
    return text[best_start:best_end].strip() or None


def _after_last_hashes(text: str) -> str | None:
    """GSM8K convention: the answer follows the last ``####`` on the same line."""
    start = text.rfind("####")
    if start < 0:
        return None
    end = text.find("\n", start)
    line = text[start + 4 :] if end < 0 else text[start + 4 : end]
    return line.strip() or None


def _after_last_answer_is(text: str) -> str | None:
    """The rest of the sentence after the last "the (final) answer is"."""
    last = None
    for last in _ANSWER_IS.finditer(text):  # keep only the last match
        pass
    if last is None:
        return None
    end = text.find("\n", last.end())
    sentence = text[last.end() :] if end < 0 else text[last.end() : end]
    stop = _SENTENCE_END.search(sentence)
    if stop:
        sentence = sentence[: stop.start()]
    return sentence.strip(" \t$").rstrip(".,;:!? \t$") or None


def normalize_gold(raw: str) -> str:
    """GSM8K-style gold to a bare answer: ``"... #### 1,000"`` -> ``"1000"``.

    Keeps only what follows the last ``####`` (if any) and drops thousands separators. Meant for
    GSM8K; a MATH answer such as ``"10,100"`` (a list) would also lose its comma.
    """
    answer = raw.rsplit("####", 1)[-1].strip()
    return _THOUSANDS_COMMA.sub("", answer)


def verify(response: str, gold: str) -> bool:
    """True if the final answer in ``response`` is equivalent to ``gold``; never raises.

    An exact match (ignoring whitespace and ``$``) is accepted without symbolic work; otherwise
    both sides are parsed and compared by ``math_verify``. A missing answer, a parse failure, an
    exception or a timeout all count as wrong.
    """
    predicted = extract_answer(response)
    return predicted is not None and answers_match(predicted, gold)


def answers_match(predicted: str, gold: str) -> bool:
    """True if two extracted answers are equivalent (exact, else math-verify); never raises."""
    try:
        if _plain(predicted) and _plain(predicted) == _plain(gold):
            return True
        if len(predicted) > _MAX_SYMBOLIC_CHARS or len(gold) > _MAX_SYMBOLIC_CHARS:
            return False
        return _math_equal(gold, predicted)
    # math_verify's TimeoutException derives from BaseException, so name it explicitly.
    except (Exception, TimeoutException):
        return False


def _plain(answer: str) -> str:
    """The answer without whitespace or ``$``, for the exact-match fast path."""
    return "".join(answer.split()).replace("$", "")


def _math_equal(gold: str, predicted: str) -> bool:
    """Symbolic / numeric equivalence with math_verify (gold first: its verify is asymmetric)."""
    # math_verify times out with signal.alarm, which only works on the main thread: elsewhere its
    # parse() raises ValueError, which would silently grade every answer as wrong. Off the main
    # thread we therefore pass None, its documented switch for "no signal-based timeout"; the
    # length cap in `verify` bounds the work instead. On the main thread the alarm replaces any
    # SIGALRM handler the caller had set, for the duration of the call.
    timeout = _MV_TIMEOUT_S if threading.current_thread() is threading.main_thread() else None
    # Wrapping in $...$ makes math_verify read the answer as LaTeX; it parses more forms than a
    # \boxed{} wrapper does (e.g. "3." parses inside $...$ but not inside \boxed{}).
    gold_parsed = mv_parse(f"${_strip_dollars(gold)}$", parsing_timeout=timeout)
    pred_parsed = mv_parse(f"${_strip_dollars(predicted)}$", parsing_timeout=timeout)
    if not gold_parsed or not pred_parsed:
        return False
    return bool(mv_verify(gold_parsed, pred_parsed, timeout_seconds=timeout))


def _strip_dollars(answer: str) -> str:
    """Remove math-mode ``$`` delimiters around an answer, keeping an escaped ``\\$`` (currency)."""
    answer = answer.strip().lstrip("$")
    while answer.endswith("$") and not answer.endswith("\\$"):
        answer = answer[:-1]
    return answer.strip()
