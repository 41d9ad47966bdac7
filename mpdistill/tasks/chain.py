"""The embedded reasoning task: signed digit chains modulo 10.

A problem is a chain such as ``7+3-5+9-2``; the answer is its value modulo 10 (here ``2``).
No model can read the answer off the prompt: each intermediate total depends on the previous
one, so a solution has to walk the chain step by step.

There are two valid *routes* through a problem, which is what lets a rewrite "keep the
student's own route" mean something:

* ``L`` (left to right): ``7+3=0``, ``0-5=5``, ``5+9=4``, ``4-2=2``;
* ``P`` (additions first): ``7+3=0``, ``0+9=9``, ``9-5=4``, ``4-2=2``.

Two writing styles produce the training corpora of the embedded models:

* **concise**: one line per step, then ``A:<digit>`` (the teacher's style);
* **verbose**: the same steps with the habits of small reasoning models — restating the
  problem and the running total, re-checking a step by its inverse, and backtracking from a
  wrong intermediate value (the student's style).

The task also defines how an answer is read from a response (the last ``A:<digit>``) and the
rewrite prompt that the embedded teacher was trained to follow.
"""

from __future__ import annotations

import random
import re
import zlib
from dataclasses import dataclass

ROUTES = ("L", "P")
MIN_TERMS, MAX_TERMS = 4, 7

# How often each verbose habit fires; tuned so the student writes roughly 2-3x the teacher's
# tokens, like small reasoning models against large ones.
P_RESTATE_PROBLEM = 0.8
P_CHECK = 0.5
P_BACKTRACK = 0.15
P_RESTATE_TOTAL = 0.35
P_WRAP_UP = 0.8

PROMPT_PREFIX = "Q:"
ANSWER_PREFIX = "A:"
# The embedded teacher was trained on rewrites presented in exactly this layout.
REWRITE_TEMPLATE = "{prompt}rewrite:\n{trace}\nshort:\n"
# The same layout as a run's rewrite prompt (fields {problem} and {trace}; the problem is the prompt).
REWRITE_PROMPT = REWRITE_TEMPLATE.replace("{prompt}", "{problem}")
# The embedded default's "be concise" instruction, written after the problem: the embedded student
# read a few problems asked this way, answered concisely (self-distillation's teacher prompt).
CONCISE_INSTRUCTION = "short:\n"

_ANSWER_RE = re.compile(r"A:(\d)")
_EQUATION_RE = re.compile(r"\d[+-]\d=\d")
_PROBLEM_RE = re.compile(r"^Q:(\d(?:[+-]\d){1,15})\n?$")


@dataclass(frozen=True)
class ChainProblem:
    """One chain: the first term is positive, ``signs[i]`` applies to ``digits[i + 1]``."""

    digits: tuple[int, ...]
    signs: tuple[str, ...]

    @property
    def text(self) -> str:
        out = str(self.digits[0])
        for s, d in zip(self.signs, self.digits[1:]):
            out += f"{s}{d}"
        return out

    @property
    def prompt(self) -> str:
        return f"{PROMPT_PREFIX}{self.text}\n"

    @property
    def answer(self) -> str:
        return str(self.value)

    @property
    def value(self) -> int:
        total = self.digits[0]
        for s, d in zip(self.signs, self.digits[1:]):
            total = total + d if s == "+" else total - d
        return total % 10

    def steps(self, route: str) -> list[tuple[int, str, int, int]]:
        """The (total, sign, digit, new total) steps of ``route``."""
        terms = list(zip(self.signs, self.digits[1:]))
        if route == "P":
            terms = [t for t in terms if t[0] == "+"] + [t for t in terms if t[0] == "-"]
        elif route != "L":
            raise ValueError(f"unknown route {route!r}; expected one of {ROUTES}")
        total, out = self.digits[0], []
        for s, d in terms:
            new = (total + d) % 10 if s == "+" else (total - d) % 10
            out.append((total, s, d, new))
            total = new
        return out

    @classmethod
    def parse(cls, prompt: str) -> "ChainProblem":
        m = _PROBLEM_RE.match(prompt.strip() + "\n")
        if not m:
            raise ValueError(f"not a chain problem: {prompt!r}")
        text = m.group(1)
        return cls(digits=tuple(int(c) for c in text[0::2]), signs=tuple(text[1::2]))


# Every problem belongs to exactly one split, decided by a hash of its text, so held-out
# evaluation problems can never appear in pretraining (bootstrap) or distillation prompts.
SPLITS = ("train", "validation", "eval")


def split_of(problem: ChainProblem) -> str:
    bucket = zlib.crc32(problem.text.encode()) % 10
    return "eval" if bucket == 0 else "validation" if bucket == 1 else "train"


def sample_problem(
    rng: random.Random, split: str = "train", min_terms: int = MIN_TERMS, max_terms: int = MAX_TERMS
) -> ChainProblem:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    while True:
        k = rng.randint(min_terms, max_terms)
        digits = tuple(rng.randrange(10) for _ in range(k))
        signs = tuple(rng.choice("+-") for _ in range(k - 1))
        problem = ChainProblem(digits, signs)
        if split_of(problem) == split:
            return problem


def _inverse(total: int, sign: str, digit: int, new: int) -> str:
    # Undo the step: new -/+ digit gives back the previous total.
    inv = "-" if sign == "+" else "+"
    return f"check {new}{inv}{digit}={total} ok"


def concise_trace(problem: ChainProblem, route: str) -> str:
    lines = [f"{t}{s}{d}={n}" for t, s, d, n in problem.steps(route)]
    lines.append(f"{ANSWER_PREFIX}{problem.answer}")
    return "\n".join(lines)


@dataclass(frozen=True)
class Style:
    """How often each verbose habit fires in a trace: restating the problem (once, at the start),
    backtracking from a wrong value and re-checking by the inverse and restating the total (each
    step), and a closing restatement of the answer."""

    restate_problem: float = P_RESTATE_PROBLEM
    backtrack: float = P_BACKTRACK
    check: float = P_CHECK
    restate_total: float = P_RESTATE_TOTAL
    wrap_up: float = P_WRAP_UP


VERBOSE = Style()
CONCISE = Style(0.0, 0.0, 0.0, 0.0, 0.0)  # no habit fires: the concise trace


def verbose_trace(problem: ChainProblem, route: str, rng: random.Random, style: Style = VERBOSE) -> str:
    """A solution along ``route`` with the verbose habits of ``style`` (with :data:`CONCISE`, the
    concise trace)."""
    lines = []
    if rng.random() < style.restate_problem:
        lines.append(f"so we need {problem.text}")
    for t, s, d, n in problem.steps(route):
        if rng.random() < style.backtrack:
            wrong = (n + rng.choice((1, 2, 8, 9))) % 10
            lines.append(f"{t}{s}{d}={wrong} wait no")
        lines.append(f"{t}{s}{d}={n}")
        if rng.random() < style.check:
            lines.append(_inverse(t, s, d, n))
        if rng.random() < style.restate_total:
            lines.append(f"so now we have {n}")
    if rng.random() < style.wrap_up:
        lines.append(f"so the answer is {problem.answer}")
    lines.append(f"{ANSWER_PREFIX}{problem.answer}")
    return "\n".join(lines)


def route_kept(student: str, rewrite: str) -> bool:
    """Whether a rewrite walks the student's route: its steps (``a+b=c`` / ``a-b=c``) appear in the
    student's trace in the same order. The student may have more (re-checks, abandoned steps); a
    step of the other route (``L`` vs ``P``) is not among them, since its running totals differ."""
    theirs = iter(_EQUATION_RE.findall(student))
    return all(step in theirs for step in _EQUATION_RE.findall(rewrite))


def extract_answer(response: str) -> str | None:
    """The last ``A:<digit>`` in a response, or ``None``."""
    found = _ANSWER_RE.findall(response)
    return found[-1] if found else None


def is_correct(response: str, gold: str) -> bool:
    return extract_answer(response) == gold


def route_of(trace: str, problem: ChainProblem) -> str | None:
    """Which route a trace follows, read from its first step that tells them apart."""
    step_re = re.compile(r"^(\d)([+-])(\d)=(\d)$")
    seen = [m.groups() for line in trace.split("\n") if (m := step_re.match(line.strip()))]
    for route in ROUTES:
        want = [(str(t), s, str(d), str(n)) for t, s, d, n in problem.steps(route)]
        # Backtracked lines end in "wait no" and re-checks start with "check": neither matches.
        if seen == want:
            return route
    return None


def rewrite_prompt(prompt: str, trace: str) -> str:
    return REWRITE_TEMPLATE.format(prompt=prompt, trace=trace)
