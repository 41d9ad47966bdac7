"""Step 1 of the pipeline, problems: a task is a family of problems and how its answers are read,
compared and prompted for.

A :class:`Task` is the whole extension point for a kind of problem. It bundles what the pipeline
needs to know: the user message a problem becomes (the same for training, the rewrite prompt's
problem and evaluation), how to read the final answer out of a response, whether two answers are
the same, whether an accepted rewrite keeps the student's route, the rewrite prompt a teacher is
given by default and, where the task can make its own problems, how to draw them.

The embedded chain task reads ``A:<digit>``; the math task asks for and reads ``\\boxed{}`` (and
documented fallbacks) and compares with ``math-verify``. A new task is one :func:`register_task`
call; recipes (``task:``), ``MPDConfig(task=...)``, ``mpdistill eval --task`` and
``mpdistill rewrite --task`` all find it by name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from mpdistill.registry import Registry


@dataclass(frozen=True)
class Task:
    name: str
    extract_answer: Callable[[str], str | None]
    answers_match: Callable[[str, str], bool]
    # The user message for a problem, with ``{problem}``; see :func:`mpdistill.tasks.prompts.user_message`.
    prompt_template: str = "{problem}"
    # Whether an accepted rewrite keeps the student's route: (student trace, rewrite) -> bool.
    route_kept: Callable[[str, str], bool] | None = None
    # Every final answer a text states (math: each boxed one), for rejecting a rewrite that gives
    # two; None: the task cannot tell.
    stated_answers: Callable[[str], list[str]] | None = None
    # The rewrite instruction a teacher gets when a run names none ({problem} and {trace}), and
    # whether it is sent through the teacher's chat template.
    rewrite_prompt: str | None = None
    rewrite_chat: bool = True
    # What a prompt gains to ask for a concise answer: the self-distillation teacher's prompt is the
    # problem, then this (see mpdistill.trainers.teacher_prompts.teacher_prompt).
    concise_instruction: str | None = None
    # (n, seed, split) -> problem rows {"prompt", "problem", "answer"}, for a task that makes its own.
    make_problems: Callable[[int, int, str], list[dict]] | None = None

    def is_correct(self, response: str, gold: str) -> bool:
        found = self.extract_answer(response)
        return found is not None and self.answers_match(found, gold)

    def problems(self, n: int, seed: int = 0, split: str = "train") -> list[dict]:
        """``n`` problem rows of ``split`` drawn with ``seed`` (tasks that make their own problems)."""
        if self.make_problems is None:
            raise ValueError(f"task {self.name!r} has no problems of its own: load them from a dataset "
                             "(mpdistill.tasks.problems.load_problems)")
        return self.make_problems(n, seed, split)


def chain_task() -> Task:
    from mpdistill.tasks import chain
    from mpdistill.tasks.problems import chain_problems

    return Task(name="chain", extract_answer=chain.extract_answer, answers_match=lambda a, b: a.strip() == b.strip(),
                route_kept=chain.route_kept, rewrite_prompt=chain.REWRITE_PROMPT, rewrite_chat=False,
                concise_instruction=chain.CONCISE_INSTRUCTION,
                make_problems=lambda n, seed, split: chain_problems(n, seed, split))


def math_task() -> Task:
    from mpdistill.tasks.prompts import CONCISE_INSTRUCTION, DEFAULT_REWRITE_PROMPT, MATH_PROMPT
    from mpdistill.tasks.math import answers_match, boxed_answers, extract_answer, numbers_kept

    return Task(name="math", extract_answer=extract_answer, answers_match=answers_match,
                prompt_template=MATH_PROMPT, route_kept=numbers_kept, stated_answers=boxed_answers,
                rewrite_prompt=DEFAULT_REWRITE_PROMPT,
                concise_instruction=CONCISE_INSTRUCTION)


# Name -> a function that builds the task (tasks import their graders only when asked for).
TASKS: Registry[Callable[[], Task]] = Registry("task")
TASKS.register("chain", chain_task)
TASKS.register("math", math_task)


def register_task(name: str, factory: Callable[[], Task], *, replace: bool = False) -> None:
    """Make ``name`` a task every command and config accepts; ``factory`` builds its :class:`Task`."""
    TASKS.register(name, factory, replace=replace)


def get_task(name: str) -> Task:
    return TASKS.lookup(name)()
