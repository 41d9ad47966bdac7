"""Step 3 of the pipeline: the teacher rewrites a student trace, the rewrite is verified, and the
mixing rule decides what the student is trained on.

* :class:`RewriteSettings` — the prompt, the acceptance rule and the mixing rule (all config).
* :class:`Rewriter` — anything that turns rewrite prompts into text; :class:`TransformersRewriter`
  is the local ``transformers`` teacher (batched, length-sorted, KV cache).
* :func:`verify` — accept or reject one rewrite, with a reason.
* :func:`rewrite_batch` — rewrite a batch, verify it and apply the mixing rule.
"""

from __future__ import annotations

import functools
import math
import random
import re
from dataclasses import dataclass, field
from typing import Callable, Literal, Protocol, Sequence

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from mpdistill.rewriting.settings import RewriteConfig
from mpdistill.rollout import GenerationSettings, generate_texts, pad_generate_calls
from mpdistill.tasks import Task
from mpdistill.tasks.prompts import DEFAULT_REWRITE_PROMPT, THINK_CLOSE, THINK_OPEN, encode_message

REASONS = (
    "accepted",
    "on_policy",  # kept on-policy by the lambda fraction: no rewrite was requested
    "backend_error",
    "empty",
    "truncated",
    # the rewrite's think blocks are not the student's (missing, or the teacher's own thinking); with a
    # {thinking} prompt: tags in the teacher's text, or a student trace without one closed block to show
    "structure",
    "prompt_echo",  # the rewrite repeats a line of the rewrite prompt's own text ("Student solution:", ...)
    "unparsed",
    "two_answers",  # its answer section states two different final answers (the student's states one)
    "student_unparsed",
    "not_shorter",
    "answer_changed",
    "wrong_answer",
    "route_changed",  # rewrite.require_route_kept: it leaves the student's route (Task.route_kept)
)


@dataclass
class RewriteSettings:
    """How rewrites are produced, accepted and mixed: built from a run's checked settings
    (``MPDConfig.rewrite_settings()``, or a recipe's ``rewrite:`` section), which hold the rules.

    ``max_ratio``: a rewrite is accepted only if its token count is at most this fraction of the
    student trace's. ``on_reject``: train on the student's own trace (``"student"``, plain
    on-policy distillation for that sample) or skip the sample (``"drop"``).
    ``on_policy_fraction`` (lambda): fraction of samples kept on-policy without a rewrite.
    ``teacher_thinks``: the teacher thinks before it answers (``rewrite.teacher_enable_thinking:
    true``); its leading think block is its own reasoning about the task and is removed from the
    rewrite before verification, so what remains must carry the student's structure by itself.
    ``require_route_kept``: an otherwise acceptable rewrite that leaves the student's route (the
    task's ``route_kept``) is rejected as ``route_changed``.
    """

    prompt_template: str = DEFAULT_REWRITE_PROMPT
    max_ratio: float = 0.9
    require_gold: bool = False
    require_route_kept: bool = False
    on_reject: Literal["student", "drop"] = "student"
    on_policy_fraction: float = 0.0
    use_chat_template: bool = True
    generation: GenerationSettings = field(default_factory=lambda: GenerationSettings(max_new_tokens=512))
    teacher_thinks: bool = False

    @functools.cached_property
    def echo_lines(self) -> list[str]:
        """Lines of the prompt's own text (not the fields) that a rewrite should never contain: a
        teacher that writes "Student solution:" or the instruction back has not written a rewrite.
        Lines under 8 characters or without a letter are too common to tell."""
        text = _FIELD_RE.sub("\n", self.prompt_template.replace("{{", "{").replace("}}", "}"))
        lines = (line.strip() for line in text.splitlines())
        return [line for line in dict.fromkeys(lines) if len(line) >= 8 and any(c.isalpha() for c in line)]

    @property
    def rewrites_thinking(self) -> bool:
        """The prompt shows the teacher the student's thinking alone (``{thinking}``): the teacher's
        text replaces that thinking, and the student's answer section is kept as it was."""
        return "{thinking}" in self.prompt_template

    def render(self, problem: str, trace: str) -> str:
        parts = split_thinking(trace) if self.rewrites_thinking else None
        # Not str.format: a trace full of braces (LaTeX, code) must pass through untouched.
        fields = {"{problem}": problem, "{trace}": trace, "{thinking}": parts.thinking if parts else trace,
                  "{{": "{", "}}": "}"}
        return _FIELD_RE.sub(lambda m: fields[m.group(0)], self.prompt_template)


_FIELD_RE = re.compile(r"\{problem\}|\{trace\}|\{thinking\}|\{\{|\}\}")


def rewrite_settings_from(r: RewriteConfig) -> RewriteSettings:
    """A run's checked ``rewrite:`` section (:class:`mpdistill.rewriting.settings.RewriteConfig`)
    as the settings :func:`rewrite_batch` reads."""
    return RewriteSettings(
        prompt_template=r.prompt_template,  # a built-in name is already its text
        max_ratio=r.max_ratio,
        require_gold=r.require_gold,
        require_route_kept=r.require_route_kept,
        on_reject=r.on_reject,
        on_policy_fraction=r.on_policy_fraction,
        use_chat_template=r.use_chat_template,
        teacher_thinks=r.teacher_enable_thinking is True,
        generation=GenerationSettings(max_new_tokens=r.max_new_tokens, temperature=r.temperature, top_p=r.top_p,
                                      top_k=r.top_k, batch_size=r.batch_size),
    )


@dataclass
class RewriteOutput:
    text: str
    truncated: bool = False
    error: str | None = None


class Rewriter(Protocol):
    """Turns fully rendered rewrite prompts into rewrites, one per prompt, in order.

    ``max_new_tokens``, when given, caps each rewrite's length (one budget per prompt); a rewrite
    that reaches its cap comes back with ``truncated`` set.
    """

    def rewrite(self, prompts: Sequence[str], max_new_tokens: Sequence[int] | None = None) -> list[RewriteOutput]: ...


class _LocalRewriter:
    """A rewriter whose model runs in this process: prompts are encoded here (chat template,
    thinking switch) and sampling seeds come from ``rng``, which checkpoints save."""

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        settings: GenerationSettings,
        *,
        use_chat_template: bool = True,
        chat_template_kwargs: dict | None = None,
        seed: int | None = None,
    ) -> None:
        self.tokenizer, self.settings = tokenizer, settings
        self.use_chat_template = use_chat_template and getattr(tokenizer, "chat_template", None) is not None
        self.chat_template_kwargs = chat_template_kwargs or {}
        self.rng = random.Random(seed)

    def _encode(self, prompt: str) -> list[int]:
        return encode_message(self.tokenizer, prompt, chat=self.use_chat_template, template_kwargs=self.chat_template_kwargs)


class TransformersRewriter(_LocalRewriter):
    """The local ``transformers`` teacher as rewriter.

    ``sync_batches``, set when several processes train together, maps this process's number of
    ``generate`` calls to the most any process makes; this process then makes up the difference
    with one-token calls. With the teacher's weights sharded (ZeRO-3, FSDP) every ``generate`` is
    a collective call, and a process that made fewer would leave the others waiting for ever.
    """

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, settings: GenerationSettings,
                 **options) -> None:
        super().__init__(tokenizer, settings, **options)
        self.model = model
        self.sync_batches: Callable[[int], int] | None = None
        self.generate_calls = 0  # this process's model.generate calls, padding included

    def _count_call(self) -> None:
        self.generate_calls += 1

    def rewrite(self, prompts: Sequence[str], max_new_tokens: Sequence[int] | None = None) -> list[RewriteOutput]:
        ids = [self._encode(p) for p in prompts]
        seed = self.rng.randrange(2**31)
        before = self.generate_calls
        gens = generate_texts(
            self.model, self.tokenizer, ids, self.settings, seed=seed,
            max_new_tokens=list(max_new_tokens) if max_new_tokens is not None else None,
            on_generate=self._count_call,
        )
        if self.sync_batches is not None:
            calls = self.generate_calls - before  # the calls made (a prompt too long for the teacher makes none)
            pad_generate_calls(self.model, self.tokenizer, self.sync_batches(calls) - calls, on_generate=self._count_call)
        return [RewriteOutput(text=g.text.strip(), truncated=g.truncated) for g in gens]


class VLLMRewriter(_LocalRewriter):
    """The rewriting model on an in-process vLLM engine (``rewrite.backend: vllm``, GPU); each
    rewrite gets its own seed and its own token budget."""

    def __init__(self, generator, tokenizer: PreTrainedTokenizerBase, settings: GenerationSettings, **options) -> None:
        super().__init__(tokenizer, settings, **options)
        self.generator = generator  # mpdistill.rollout.vllm.VLLMGenerator

    def rewrite(self, prompts: Sequence[str], max_new_tokens: Sequence[int] | None = None) -> list[RewriteOutput]:
        if not prompts:  # each process has its own engine: nothing to keep in step with
            return []
        ids = [self._encode(p) for p in prompts]
        seeds = [self.rng.randrange(2**31) for _ in ids]
        gens = self.generator.generate(ids, self.settings, seeds,
                                       max_new_tokens=list(max_new_tokens) if max_new_tokens is not None else None)
        return [RewriteOutput(text=g.text.strip(), truncated=g.truncated) for g in gens]


def encode_completion(tokenizer: PreTrainedTokenizerBase, text: str, end_id: int | None = None) -> list[int]:
    """A completion as the trainer sees it: the text's tokens, then the token that ends it.

    ``end_id`` is the end token the model itself stopped on (a chat model ends its turn with an
    end-of-turn token, which may not be the tokenizer's ``eos_token``); without one, the tokenizer's
    end-of-sequence token.
    """
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    end = end_id if end_id is not None else tokenizer.eos_token_id
    return ids + [end] if end is not None else ids


def has_thinking(text: str) -> bool:
    """Whether a trace thinks in a ``<think>`` block (Qwen3 thinking mode)."""
    return THINK_OPEN in text


def answer_section(text: str) -> str:
    """Where a trace's final answer is read: after ``</think>`` when it thinks, else all of it.

    A trace whose thinking never closes has an empty answer section, so a tentative answer inside
    unfinished thinking is not taken as its final answer.
    """
    if not has_thinking(text):
        return text
    close = text.rfind(THINK_CLOSE)
    return text[close + len(THINK_CLOSE) :] if close >= 0 else ""


def drop_own_thinking(text: str) -> str:
    """A thinking teacher's answer without its leading ``<think>`` ... ``</think>`` block."""
    body = text.lstrip()
    if body.startswith(THINK_OPEN) and THINK_CLOSE in body:
        return body[body.index(THINK_CLOSE) + len(THINK_CLOSE):].lstrip()
    return text


def think_tags(text: str) -> tuple[int, int]:
    """How many ``<think>`` and ``</think>`` tags a text has."""
    return text.count(THINK_OPEN), text.count(THINK_CLOSE)


def keeps_structure(rewrite: str, student: str) -> bool:
    """Whether a rewrite has the student's thinking structure: exactly as many ``<think>`` and
    ``</think>`` tags as the student's trace (none when it has none), and, when it thinks, a rewrite
    that starts with ``<think>`` and has a non-empty answer section after the last ``</think>``.

    A teacher that thinks about the rewrite task before writing the rewrite adds a block of its
    own; that block is about "the student's solution", never something the student should learn,
    so such a rewrite fails here (reason ``structure``).
    """
    if think_tags(rewrite) != think_tags(student):
        return False
    if not has_thinking(student):
        return True
    return rewrite.lstrip().startswith(THINK_OPEN) and bool(answer_section(rewrite).strip())


@dataclass
class ThinkingParts:
    """A trace that thinks once, at its start, split around the text of its thinking:
    ``head + thinking + tail`` is the trace. ``head`` runs to the whitespace after ``<think>``,
    ``tail`` from the whitespace before ``</think>`` to the end (the answer section)."""

    head: str
    thinking: str
    tail: str

    def with_thinking(self, text: str) -> str:
        """The same trace with other thinking: the tags, their spacing and the answer section kept."""
        return self.head + text.strip() + self.tail


def split_thinking(trace: str) -> ThinkingParts | None:
    """The parts of a trace with exactly one ``<think>`` block, at its start and closed, with
    non-empty thinking and an answer section after it; None for any other trace."""
    if think_tags(trace) != (1, 1) or not trace.lstrip().startswith(THINK_OPEN):
        return None
    start = trace.index(THINK_OPEN) + len(THINK_OPEN)
    close = trace.index(THINK_CLOSE)
    inner = trace[start:close]
    thinking = inner.strip()
    if not thinking or not answer_section(trace).strip():
        return None
    lead = len(inner) - len(inner.lstrip())
    return ThinkingParts(trace[:start + lead], thinking, trace[start + lead + len(thinking):])


@dataclass
class Verdict:
    accepted: bool
    reason: str


def verify(
    task: Task,
    student_text: str,
    student_tokens: int,
    rewrite: RewriteOutput,
    rewrite_tokens: int,
    max_ratio: float,
    gold: str | None = None,
    *,
    echo_lines: Sequence[str] = (),
    require_route_kept: bool = False,
) -> Verdict:
    """Accept a rewrite only if it is complete, keeps the student's thinking structure, repeats no
    line of the rewrite prompt (``echo_lines``, where the student did not write it), states one final
    answer, is shorter, reaches the student's answer and, with ``require_route_kept``, walks the
    student's route.

    The rewrite must have the student's think blocks and no others (see :func:`keeps_structure`);
    both answers are read from the section after the last ``</think>`` (the whole text without one).
    """
    if rewrite.error is not None:
        return Verdict(False, "backend_error")
    if not rewrite.text.strip():
        return Verdict(False, "empty")
    if rewrite.truncated:
        return Verdict(False, "truncated")
    if not keeps_structure(rewrite.text, student_text):
        return Verdict(False, "structure")
    if any(line in rewrite.text and line not in student_text for line in echo_lines):
        return Verdict(False, "prompt_echo")
    new_answer = task.extract_answer(answer_section(rewrite.text))
    if new_answer is None:
        return Verdict(False, "unparsed")
    if _distinct_answers(task, answer_section(rewrite.text)) > max(1, _distinct_answers(task, answer_section(student_text))):
        return Verdict(False, "two_answers")
    if rewrite_tokens > max_ratio * student_tokens:
        return Verdict(False, "not_shorter")
    old_answer = task.extract_answer(answer_section(student_text))
    if old_answer is None:
        return Verdict(False, "student_unparsed")
    if not task.answers_match(new_answer, old_answer):
        return Verdict(False, "answer_changed")
    if gold is not None and not task.answers_match(new_answer, gold):
        return Verdict(False, "wrong_answer")
    if require_route_kept and task.route_kept is not None and not task.route_kept(student_text, rewrite.text):
        return Verdict(False, "route_changed")
    return Verdict(True, "accepted")


def _distinct_answers(task: Task, text: str) -> int:
    """How many different final answers ``text`` states (0 where the task cannot tell)."""
    if task.stated_answers is None:
        return 0
    distinct: list[str] = []
    for answer in task.stated_answers(text):
        if not any(task.answers_match(answer, seen) for seen in distinct):
            distinct.append(answer)
    return len(distinct)


@dataclass
class Sample:
    """One student rollout and what the mixing rule made of it."""

    problem: str
    student_text: str
    student_ids: list[int]
    gold: str | None = None
    end_id: int | None = None  # the end token the student's trace stopped on: a rewrite ends the same way
    rewrite_text: str | None = None
    rewrite_ids: list[int] | None = None
    verdict: Verdict | None = None
    trained_on: str = "student"  # "rewrite" | "student" | "dropped"
    route_kept: bool | None = None  # for an accepted rewrite: does it walk the student's route (Task.route_kept)
    student_answer: str | None = None  # read from the trace's answer section by rewrite_batch (None: none found)


def length_budget(student_tokens: int, settings: RewriteSettings) -> int:
    """New tokens a rewrite may generate and still be accepted, capped by ``max_new_tokens``.

    A rewrite is encoded with an end-of-sequence token and must have at most ``max_ratio`` times
    the student's tokens (end-of-sequence included), so its text may have at most
    ``floor(max_ratio * student_tokens - 1)`` tokens; one more generated token without an end
    proves it too long.
    """
    fits = math.floor(settings.max_ratio * student_tokens - 1)
    return max(0, min(fits + 1, settings.generation.max_new_tokens))


def on_policy_picks(n: int, settings: RewriteSettings, rng: random.Random) -> list[bool]:
    """Which of ``n`` samples (in batch order) the on-policy fraction keeps without a rewrite: one
    draw from ``rng`` per sample when the fraction is set, none otherwise."""
    if settings.on_policy_fraction <= 0:
        return [False] * n
    return [rng.random() < settings.on_policy_fraction for _ in range(n)]


def plan_rewrite(s: Sample, on_policy: bool, settings: RewriteSettings, task: Task) -> int | None:
    """Read the student's answer and decide whether its trace is sent to the rewriter: the new
    tokens the rewrite may generate (see :func:`length_budget`), or None when no rewrite could be
    used (on-policy pick, no final answer, or a wrong answer under ``require_gold``; the verdict
    is set). A teacher that thinks first spends tokens on its own thinking before the rewrite: the
    length a rewrite may have is checked after that block is removed, not while it is generated.
    """
    answer = s.student_answer = task.extract_answer(answer_section(s.student_text))
    if on_policy:
        s.verdict = Verdict(False, "on_policy")
    elif answer is None:
        s.verdict = Verdict(False, "student_unparsed")
    elif settings.rewrites_thinking and split_thinking(s.student_text) is None:
        s.verdict = Verdict(False, "structure")  # no single closed thinking block to show the teacher
    elif settings.require_gold and s.gold is not None and not task.answers_match(answer, s.gold):
        s.verdict = Verdict(False, "wrong_answer")  # the rewrite must keep this answer: it cannot pass
    else:
        return settings.generation.max_new_tokens if settings.teacher_thinks else length_budget(len(s.student_ids), settings)
    return None


def settle_rewrite(
    s: Sample,
    out: RewriteOutput,
    budget: int,
    settings: RewriteSettings,
    task: Task,
    encode: Callable[[str, int | None], list[int]],
) -> None:
    """Verify one sample's rewrite (planned by :func:`plan_rewrite`, which read the student's answer)
    and set its verdict.

    With a ``{thinking}`` prompt the teacher's text is the new thinking: it may carry no think tags
    of its own (``structure``), it is put between the student's tags before the student's own answer
    section, and where the new thinking states a result (a boxed answer, "the answer is ..."), it
    must be the answer that section gives (``answer_changed``): a trace that concludes one thing and
    answers another is no target. (The student's own thinking is not the reference: the last result
    it states may be an attempt it abandoned, which the rewrite is meant to drop.)"""
    if settings.teacher_thinks:
        out = RewriteOutput(drop_own_thinking(out.text), out.truncated, out.error)
    parts = split_thinking(s.student_text) if settings.rewrites_thinking else None
    thinking = out.text.strip() if parts is not None else None  # the teacher's text: the new thinking
    own_tags = parts is not None and think_tags(out.text) != (0, 0)
    if thinking and not own_tags:
        out = RewriteOutput(parts.with_thinking(thinking), out.truncated, out.error)
    s.rewrite_text = out.text
    s.rewrite_ids = encode(out.text, s.end_id) if out.text else []
    if out.truncated and out.error is None and budget < settings.generation.max_new_tokens:
        s.verdict = Verdict(False, "not_shorter")  # stopped at the length it had to stay under
        return
    if own_tags and out.error is None and not out.truncated:
        s.verdict = Verdict(False, "structure")
        return
    s.verdict = verify(task, s.student_text, len(s.student_ids), out, len(s.rewrite_ids), settings.max_ratio,
                       s.gold if settings.require_gold else None, echo_lines=settings.echo_lines,
                       require_route_kept=settings.require_route_kept)
    if s.verdict.accepted and parts is not None:  # accepted: the answer section, the student's, kept its answer
        stated = task.extract_answer(thinking)
        if stated is not None and not task.answers_match(stated, s.student_answer):
            s.verdict = Verdict(False, "answer_changed")


def mix(s: Sample, settings: RewriteSettings, task: Task) -> None:
    """What the student trains on for one sample whose verdict is set: the accepted rewrite, its own
    trace (on-policy pick, or a rejection with ``on_reject: student``), or nothing (``drop``)."""
    if s.verdict is not None and s.verdict.accepted:
        s.trained_on = "rewrite"
        if task.route_kept is not None:
            s.route_kept = task.route_kept(s.student_text, s.rewrite_text)
    elif s.verdict is not None and s.verdict.reason == "on_policy":
        s.trained_on = "student"
    else:
        s.trained_on = "dropped" if settings.on_reject == "drop" else "student"


def rewrite_batch(
    samples: list[Sample],
    rewriter: Rewriter,
    settings: RewriteSettings,
    task: Task,
    encode: Callable[[str, int | None], list[int]],
    rng: random.Random,
) -> list[Sample]:
    """Rewrite, verify and mix one batch in place; returns the same list.

    Only rewrites the mixing rule could use are generated (see :func:`plan_rewrite`). Each rewrite
    stops once it can no longer be short enough to be accepted (see :func:`length_budget`), unless
    the teacher thinks first (``teacher_thinks``): its thinking does not count.
    """
    picks = on_policy_picks(len(samples), settings, rng)
    planned = [(s, plan_rewrite(s, pick, settings, task)) for s, pick in zip(samples, picks)]
    todo = [(s, budget) for s, budget in planned if budget is not None]
    # The rewriter is called even with nothing to rewrite: with several training processes the local
    # teacher's generate calls are collective (sharded weights), so every process makes as many.
    outputs = rewriter.rewrite([settings.render(s.problem, s.student_text) for s, _ in todo],
                               max_new_tokens=[b for _, b in todo])
    if len(outputs) != len(todo):
        raise RuntimeError(f"rewriter returned {len(outputs)} rewrites for {len(todo)} prompts")
    for (s, budget), out in zip(todo, outputs):
        settle_rewrite(s, out, budget, settings, task, encode)
    for s in samples:
        mix(s, settings, task)
    return samples
