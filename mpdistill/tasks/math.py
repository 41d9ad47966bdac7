"""Answer extraction and equivalence checking for math benchmarks (GSM8K, MATH-style).

``extract_answer`` pulls the final answer out of a model response with a linear-time scan, so a
degenerate generation (unclosed braces, 100k-character digit runs) cannot stall an evaluation.
``verify`` compares that answer with the gold one, first by plain string equality and otherwise
with ``math_verify`` (symbolic / numeric equivalence), and never raises. Answers that are very long,
nested very deeply, that stand for numbers too large to compute (``9^{9^{9}}``) or that hold a sum,
product, integral or limit are only compared as strings.
"""

from __future__ import annotations

import math
import re
import threading

from math_verify import parse as mv_parse, verify as mv_verify
from math_verify.errors import TimeoutException
from sympy import Basic, Float, Integer, Integral, Limit, Pow, Product, Rational, Sum, binomial, factorial, gamma

__all__ = ["extract_answer", "normalize_gold", "verify"]

# `\boxed{` / `\fbox{` / `\framebox{`, optionally with spaces before the brace (valid LaTeX).
_BOX_OPEN = re.compile(r"\\(?:boxed|fbox|framebox)\s*\{")
_BOX_NAMES = ("boxed", "fbox", "framebox")
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
# A short answer can still stand for a huge number ("9^{9^{9}}" has 369 million digits), which
# sympy would compute in full. Answers whose value may have more digits than this are only
# compared as strings.
_MAX_DIGITS = 10_000
# latex2sympy evaluates these while parsing (before math_verify's comparison timeout applies), so
# a big argument is refused from the text alone: integer functions with a power, a factorial or a
# 5-digit number in the answer, matrix constructors with a 3-digit number.
_EAGER_INTEGER_FUNCTIONS = re.compile(r"binom|choose|gcd|lcm|gamma|Gamma")
_EAGER_MATRIX_FUNCTIONS = re.compile(r"zeros|ones|eye|diag|stack")
_BIG_INTEGER_ARGUMENT = re.compile(r"\d{5}|\^|!")
_BIG_MATRIX_ARGUMENT = re.compile(r"\d{3}|\^|!")
# latex2sympy's parser takes time exponential in how deeply brackets nest (12 nested braces take
# seconds, 20 would take hours): answers nested deeper than this are only compared as strings.
_MAX_NESTING = 8
# Bold is only emphasis: `\textbf{(073)}` is the answer 073 (AoPS solutions write answers so).
_BOLD_OPEN = re.compile(r"\\(?:textbf|mathbf|boldsymbol|bm)\s*\{")


def extract_answer(response: str) -> str | None:
    """Return the final answer written in ``response``, or None if there is none.

    Tried in this order, the first that yields a non-empty answer wins:

    1. the content of the last complete ``\\boxed{...}``, ``\\fbox{...}`` or ``\\framebox{...}``
       (the one that starts last), braces matched by a linear scan; an unclosed ``\\boxed{`` is ignored;
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
    """Content of the complete boxed group that starts last, stripped; None if there is none."""
    boxes = _boxed_groups(text)
    return (boxes[-1] or None) if boxes else None


def boxed_answers(text: str) -> list[str]:
    """The non-empty contents of every complete boxed group, in the order they start."""
    return [box for box in _boxed_groups(text) if box]


def _boxed_groups(text: str) -> list[str]:
    """The contents of every complete boxed group (``\\boxed{}``, ``\\fbox{}``, ``\\framebox{}``), stripped,
    in the order they start.

    One pass over the characters with a stack of open braces, so the cost is linear however the
    braces nest. Escaped ``\\{``, ``\\}`` are literal characters in LaTeX, not groups, so they are
    skipped (an answer like ``\\left\\{ ... \\right.`` stays balanced).
    """
    if not any(f"\\{name}" in text for name in _BOX_NAMES):
        return []
    # For each open brace: where the box content starts if it opens a box, else -1.
    stack: list[int] = []
    groups: list[tuple[int, int]] = []
    skip_to = 0
    for i, ch in enumerate(text):
        if i < skip_to:
            continue
        if ch == "{":
            stack.append(-1)
        elif ch == "}":
            if stack:  # a stray "}" with nothing open is ignored
                start = stack.pop()
                if start >= 0:
                    groups.append((start, i))
        elif ch == "\\":
            opener = _BOX_OPEN.match(text, i) if text.startswith(_BOX_NAMES, i + 1) else None
            if opener:
                stack.append(opener.end())
                skip_to = opener.end()
            else:
                # Skip the escaped character: "\{", "\}" and "\\" are not grouping braces.
                skip_to = i + 2
    return [text[start:end].strip() for start, end in sorted(groups)]


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
    answer = sentence.strip(" \t$").rstrip(".,;:!? \t$")
    return answer if answer.strip() else None  # "is: \xa0." has no answer


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
    # length cap in `answers_match` and the huge-number guards below bound the work instead. On
    # the main thread the alarm replaces any SIGALRM handler the caller had set, for the call.
    timeout = _MV_TIMEOUT_S if threading.current_thread() is threading.main_thread() else None
    gold, predicted = _unbold(_strip_dollars(gold)), _unbold(_strip_dollars(predicted))
    if any(_evaluated_while_parsing_is_big(a) or _nesting(a) > _MAX_NESTING for a in (gold, predicted)):
        return False
    # Wrapping in $...$ makes math_verify read the answer as LaTeX; it parses more forms than a
    # \boxed{} wrapper does (e.g. "3." parses inside $...$ but not inside \boxed{}).
    gold_parsed = mv_parse(f"${gold}$", parsing_timeout=timeout)
    pred_parsed = mv_parse(f"${predicted}$", parsing_timeout=timeout)
    if not gold_parsed or not pred_parsed:
        return False
    if any(_may_be_huge(expr) or _evaluation_is_unbounded(expr) for expr in (*gold_parsed, *pred_parsed)):
        return False
    return bool(mv_verify(gold_parsed, pred_parsed, timeout_seconds=timeout))


def _unbold(answer: str) -> str:
    """``\\textbf{X}`` (or ``\\mathbf``, ``\\boldsymbol``, ``\\bm``) around the whole answer -> ``X``.

    math_verify reads ``\\textbf{(073)}`` as the text "(073)", which then differs from 73.
    """
    while (opener := _BOLD_OPEN.match(answer)) and answer.endswith("}"):
        depth = 0
        for i in range(opener.end() - 1, len(answer)):
            if answer[i] == "{" and answer[i - 1] != "\\":
                depth += 1
            elif answer[i] == "}" and answer[i - 1] != "\\":
                depth -= 1
                if depth == 0:
                    break
        if i != len(answer) - 1:  # the bold group closes before the end: "\textbf{a} + b"
            break
        answer = answer[opener.end() : -1].strip()
    return answer


def _evaluated_while_parsing_is_big(answer: str) -> bool:
    """True if parsing could already build a huge number or matrix (``\\binom{10^9}{5}``)."""
    return bool(
        (_EAGER_INTEGER_FUNCTIONS.search(answer) and _BIG_INTEGER_ARGUMENT.search(answer))
        or (_EAGER_MATRIX_FUNCTIONS.search(answer) and _BIG_MATRIX_ARGUMENT.search(answer))
    )


def _nesting(answer: str) -> int:
    """How deeply brackets (``{}``, ``()``, ``[]``, escaped or not) nest in ``answer``."""
    depth = deepest = 0
    for ch in answer:
        if ch in "{([":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "})]" and depth:
            depth -= 1
    return deepest


def _evaluation_is_unbounded(expr) -> bool:
    """True if comparing would make sympy evaluate a sum, product, integral or limit.

    sympy works those out term by term or by a search with no bound on its work
    (``\\sum_{i=1}^{999} i^{i}`` runs for hours), and off the main thread nothing would stop it.
    """
    return isinstance(expr, Basic) and expr.has(Sum, Product, Integral, Limit)


def _may_be_huge(expr) -> bool:
    """True if evaluating a parsed answer could produce a number with more than ``_MAX_DIGITS`` digits."""
    if not isinstance(expr, Basic):
        return False
    try:
        return _digits_bound(expr) > _MAX_DIGITS
    except RecursionError:
        return True


def _digits_bound(expr: Basic) -> float:
    """A rough upper bound on the decimal digits of the value of ``expr`` (a symbol counts as 1 digit).

    Exact integer arithmetic is what makes sympy slow, so only powers, factorials and their
    relatives grow the bound; other operations keep the largest bound of their arguments.
    """
    if isinstance(expr, Integer):
        return max(1.0, abs(int(expr)).bit_length() * math.log10(2))
    if isinstance(expr, Rational):
        return max(_digits_bound(Integer(expr.p)), _digits_bound(Integer(expr.q)))
    if isinstance(expr, Float):
        _sign, _man, exp, bits = expr._mpf_
        return max(1.0, abs(exp + bits) * math.log10(2))
    args = [_digits_bound(a) for a in expr.args if isinstance(a, Basic)]
    if isinstance(expr, Pow):
        base, exponent = args
        return max(1.0, base * _value_bound(expr.exp, exponent))
    if isinstance(expr, (factorial, gamma, binomial)):
        n = _value_bound(expr.args[0], args[0])
        return n * math.log10(n) if n > 1 else 1.0
    if not args:
        return 1.0
    # A sum or product of k terms has at most k digits more than, or the sum of, its terms'.
    return sum(args) if expr.is_Mul else max(args) + len(args)


def _value_bound(expr: Basic, digits: float) -> float:
    """A bound on ``|expr|`` given its digit bound; a symbolic expression counts as small."""
    if digits > 15:
        return math.inf
    try:
        return abs(float(expr.evalf(15)))
    except (TypeError, ValueError, AttributeError):
        return 10.0**digits


def _strip_dollars(answer: str) -> str:
    """Remove math-mode ``$`` delimiters around an answer, keeping an escaped ``\\$`` (currency)."""
    answer = answer.strip().lstrip("$")
    while answer.endswith("$") and not answer.endswith("\\$"):
        answer = answer[:-1]
    return answer.strip()


_NUMBER_RE = re.compile(r"\d+(?:\.\d+)?")


def numbers_kept(student: str, rewrite: str) -> bool:
    """The math task's proxy for "the rewrite keeps the student's route": every number the rewrite
    writes appears in the student's trace, in the same order (the student may write more). A
    rewrite that solves the problem another way brings intermediate numbers the student never had.
    Thousands separators are dropped first (1,234 is 1234)."""
    def numbers(text: str) -> list[str]:
        return _NUMBER_RE.findall(re.sub(r"(?<=\d),(?=\d{3}\b)", "", text))

    theirs = iter(numbers(student))
    return all(n in theirs for n in numbers(rewrite))
