"""Problems and how their answers are read and compared.

A :class:`Task` bundles the decisions the pipeline needs about a family of problems: the user
message a problem becomes (the same for training, the rewrite prompt's problem and evaluation),
how to read the final answer out of a response, whether two answers are the same, and whether a
response is correct against the gold answer. The embedded chain task reads ``A:<digit>``; math
benchmarks ask for and read ``\\boxed{}`` (and documented fallbacks) and compare with ``math-verify``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Task:
    name: str
    extract_answer: Callable[[str], str | None]
    answers_match: Callable[[str, str], bool]
    # The user message for a problem, with ``{problem}``; see :func:`mpdistill.prompts.user_message`.
    prompt_template: str = "{problem}"
    # Whether an accepted rewrite keeps the student's route: (student trace, rewrite) -> bool.
    route_kept: Callable[[str, str], bool] | None = None

    def is_correct(self, response: str, gold: str) -> bool:
        found = self.extract_answer(response)
        return found is not None and self.answers_match(found, gold)


def chain_task() -> Task:
    from . import chain

    return Task(name="chain", extract_answer=chain.extract_answer, answers_match=lambda a, b: a.strip() == b.strip(),
                route_kept=chain.route_kept)


def math_task() -> Task:
    from .. import grading
    from ..prompts import MATH_PROMPT

    return Task(name="math", extract_answer=grading.extract_answer, answers_match=grading.answers_match,
                prompt_template=MATH_PROMPT, route_kept=grading.numbers_kept)


TASKS: dict[str, Callable[[], Task]] = {"chain": chain_task, "math": math_task}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(sorted(TASKS))}")
    return TASKS[name]()
