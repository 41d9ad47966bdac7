"""What a model is given and how its answer is read back: chat templates, thinking mode, sampling.

A benchmark question becomes token ids through the model's own chat template (with Qwen3's
``enable_thinking`` switch when asked) or, for a tokenizer without one, as plain text with a
warning. A response is split at its ``</think>`` into the thinking and the final answer section,
so both can be counted, and only the answer section is graded.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from transformers import PreTrainedTokenizerBase

log = logging.getLogger(__name__)

# The instruction Qwen's math evaluations append to every question (Qwen2.5-Math, Qwen3 model card).
MATH_PROMPT = "{problem}\nPlease reason step by step, and put your final answer within \\boxed{{}}."

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"

# Self-distillation's "be concise" request for math, after the problem (mpdistill.trainers.teacher_prompts.teacher_prompt).
CONCISE_INSTRUCTION = ("Solve this concisely: reason only as much as the answer needs, without restating the problem, "
                       "re-checking settled steps or exploring abandoned alternatives.")

# Sampling recommended by each family's model card, keyed by (config.model_type, thinking).
# Qwen3: thinking T=0.6, top-p 0.95, top-k 20; non-thinking T=0.7, top-p 0.8, top-k 20
# (Qwen3 model card, "Best Practices"; greedy decoding is discouraged there for thinking mode).
FAMILY_SAMPLING: dict[tuple[str, bool], dict] = {
    (family, thinking): values
    for family in ("qwen3", "qwen3_moe")
    for thinking, values in ((True, {"temperature": 0.6, "top_p": 0.95, "top_k": 20}),
                             (False, {"temperature": 0.7, "top_p": 0.8, "top_k": 20}))
}


# Response budgets (thinking included) by model family, keyed by (config.model_type, thinking). Qwen3's
# model card: 32,768 new tokens for most queries, 38,912 for competition math and programming; it
# gives no other figure for non-thinking mode, so the same budget applies there.
FAMILY_MAX_NEW_TOKENS: dict[tuple[str, bool], int] = {
    (family, thinking): 32_768 for family in ("qwen3", "qwen3_moe") for thinking in (True, False)}
COMPETITION_MAX_NEW_TOKENS = {"qwen3": 38_912, "qwen3_moe": 38_912}
COMPETITION_SETS = ("aime24", "aime25", "amc23")
OTHER_MAX_NEW_TOKENS = 4096


def max_new_tokens_default(model_type: str | None, thinking: bool, benchmarks: list[str],
                           generation_config=None) -> tuple[int, str]:
    """The response budget for a model on these benchmarks, and where it came from: its family's
    (model card), else the model's own ``generation_config`` when it sets one, else OTHER_MAX_NEW_TOKENS.
    The family's comes first: a checkpoint's generation_config often carries a short budget meant
    for chat (2,048), which would cut competition-math answers."""
    family = model_type or ""
    if (family, thinking) in FAMILY_MAX_NEW_TOKENS:
        if family in COMPETITION_MAX_NEW_TOKENS and set(benchmarks) & set(COMPETITION_SETS):
            return COMPETITION_MAX_NEW_TOKENS[family], f"{family} model card, competition math"
        return FAMILY_MAX_NEW_TOKENS[family, thinking], f"{family} model card"
    own = getattr(generation_config, "max_new_tokens", None)
    if own:
        return int(own), "the model's generation_config"
    return OTHER_MAX_NEW_TOKENS, "no family default"


def sampling_defaults(model_type: str | None, thinking: bool, generation_config=None, *,
                      thinking_given: bool = False) -> tuple[dict, str]:
    """Default ``temperature``/``top_p``/``top_k`` for a model, and where they came from.

    The model's own ``generation_config`` first when it samples (a model trained from a family's
    checkpoint keeps that config; a model of its own, such as the embedded ones, says how it is
    meant to be sampled); then the family's documented values; otherwise greedy decoding. A
    thinking mode switched off on purpose takes the family's values for that mode: a generation
    config describes the default mode only.
    """
    family = FAMILY_SAMPLING.get((model_type or "", thinking))
    label = f"{model_type} {'thinking' if thinking else 'non-thinking'} defaults"
    if family is not None and thinking_given and not thinking:
        return dict(family), label
    gc = generation_config
    if gc is not None and getattr(gc, "do_sample", False):
        return {
            "temperature": float(gc.temperature if gc.temperature is not None else 1.0),
            "top_p": float(gc.top_p if gc.top_p is not None else 1.0),
            "top_k": int(gc.top_k or 0),
        }, "the model's generation_config"
    if family is not None:
        return dict(family), label
    return {"temperature": 0.0, "top_p": 1.0, "top_k": 0}, "greedy (no family defaults, generation_config does not sample)"


def user_message(template: str, problem: str) -> str:
    """The user message a problem becomes: the one builder behind training prompts, the problem a
    rewrite prompt shows the teacher, and evaluation prompts, so all three see the same text."""
    return template.format(problem=problem)


def has_thinking_switch(tokenizer) -> bool:
    """Whether the tokenizer's chat template reads Qwen3's ``enable_thinking`` switch."""
    return "enable_thinking" in str(getattr(tokenizer, "chat_template", None) or "")


def teacher_template_kwargs(*, chat: bool, thinking: bool | None, tokenizer, send_to_server: bool = True) -> dict | None:
    """``chat_template_kwargs`` for the teacher's rewrite prompts.

    ``thinking`` when given; otherwise thinking off wherever it can be switched, so the teacher
    writes the rewrite instead of first thinking about the rewrite task: a local ``tokenizer``
    whose template has the switch, or (``tokenizer`` None) a served chat model, whose template is
    the server's (vLLM and SGLang read the field; ``send_to_server`` False sends none, for a server
    that refuses fields it does not know).
    """
    if not chat:
        return None
    if tokenizer is None and not send_to_server:
        return None
    if thinking is not None:
        return {"enable_thinking": thinking}
    if tokenizer is None or has_thinking_switch(tokenizer):
        return {"enable_thinking": False}
    return None


class PromptEncoder:
    """Question text to prompt token ids, through the chat template when the tokenizer has one.

    ``thinking`` is passed to the template as ``enable_thinking`` (Qwen3's switch); ``None`` leaves
    the template's default. A tokenizer without a chat template falls back to the plain prompt, and
    says so once.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        *,
        template: str = MATH_PROMPT,
        use_chat_template: bool = True,
        thinking: bool | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.template = template
        has_template = getattr(tokenizer, "chat_template", None) is not None
        if use_chat_template and not has_template:
            log.warning("the tokenizer has no chat template: prompting with the plain question text")
        self.chat = use_chat_template and has_template
        self.thinking = thinking
        if self.chat and thinking is not None and "enable_thinking" not in str(tokenizer.chat_template):
            log.warning("the chat template has no enable_thinking switch: --thinking/--no-thinking has no effect")

    def text(self, problem: str) -> str:
        """The user message (or, without a chat template, the whole prompt)."""
        return user_message(self.template, problem)

    def render(self, problem: str) -> str:
        """The exact prompt string the model sees."""
        return self.tokenizer.decode(self.encode(problem))

    def encode(self, problem: str) -> list[int]:
        kwargs = {} if self.thinking is None else {"enable_thinking": self.thinking}
        return encode_message(self.tokenizer, self.text(problem), chat=self.chat, template_kwargs=kwargs)


def encode_message(tokenizer: PreTrainedTokenizerBase, message: str, *, chat: bool,
                   template_kwargs: dict | None = None) -> list[int]:
    """One user message as prompt ids: through the chat template (with the assistant turn opened), or as plain text."""
    if not chat:
        return tokenizer(message, add_special_tokens=False)["input_ids"]
    return list(
        tokenizer.apply_chat_template(
            [{"role": "user", "content": message}],
            add_generation_prompt=True,
            tokenize=True,
            return_dict=False,
            **(template_kwargs or {}),
        )
    )


@dataclass(frozen=True)
class ResponseParts:
    """A response split at its thinking block. Token counts are None when there is no ``<think>``."""

    answer_text: str  # what is graded: after the last </think>, or the whole text without one
    thinking_tokens: int | None
    answer_tokens: int | None
    thinking_closed: bool


def split_response(text: str, token_ids: list[int], tokenizer: PreTrainedTokenizerBase | None) -> ResponseParts:
    """Split a response into thinking and final answer, counting the tokens of each.

    A ``<think>`` that never closes (the budget ran out while thinking) leaves an empty answer
    section: a tentative ``\\boxed{}`` inside unfinished thinking is not graded as the answer.
    Counting uses the token ids when ``</think>`` is one token of the vocabulary (Qwen3), else
    re-tokenizes the two parts.
    """
    close = text.rfind(THINK_CLOSE)
    if close >= 0:
        answer_text = text[close + len(THINK_CLOSE) :]
    elif THINK_OPEN in text:
        answer_text = ""
    else:
        return ResponseParts(text, None, None, thinking_closed=False)
    closed = close >= 0
    if tokenizer is None:
        return ResponseParts(answer_text, None, None, thinking_closed=closed)
    close_id = _single_token_id(tokenizer, THINK_CLOSE)
    if close_id is not None and (close_id in token_ids or not closed):
        if closed:
            last = len(token_ids) - 1 - token_ids[::-1].index(close_id)
            thinking = last + 1
        else:
            thinking = len(token_ids)
        return ResponseParts(answer_text, thinking, len(token_ids) - thinking, thinking_closed=closed)
    answer = len(tokenizer(answer_text, add_special_tokens=False)["input_ids"]) if answer_text else 0
    return ResponseParts(answer_text, max(len(token_ids) - answer, 0), answer, thinking_closed=closed)


def _single_token_id(tokenizer: PreTrainedTokenizerBase, token: str) -> int | None:
    ids = tokenizer(token, add_special_tokens=False)["input_ids"]
    return ids[0] if len(ids) == 1 else None


# A general-purpose rewrite instruction for chat models (the embedded teacher has its own
# layout, see ``tasks.chain.REWRITE_TEMPLATE``). It asks to keep the route and the answer,
# which is what verification then checks.
DEFAULT_REWRITE_PROMPT = (
    "Below is a problem and a solution written by a student. Rewrite the solution so it is as "
    "short as possible while keeping the same approach, the same order of steps and the same "
    "final answer. Remove repetition, restatements of the problem, needless re-checking and "
    "abandoned attempts. Keep every step that the answer depends on. End with the final answer "
    "in \\boxed{{}} exactly as the student gave it.\n\n"
    "Problem:\n{problem}\n\nStudent solution:\n{trace}\n\nShort solution:"
)

# For students that think first (Qwen3 thinking mode): the teacher reads the student's thinking as
# plain text, without its tags or the answer section after it, and writes a shorter version of that
# text alone; the rewrite is then <think> + that text + </think> + the student's own answer section
# (mpdistill.rewriting.rewrite.ThinkingParts). A teacher with thinking off is never asked to write think tags,
# which its chat template has just closed for it.
THINKING_REWRITE_PROMPT = (
    "Below is a problem and the reasoning a student wrote while solving it. Rewrite the reasoning so "
    "it is as short as possible while keeping the same approach, the same order of steps and the same "
    "conclusion. Remove repetition, restatements of the problem, needless re-checking and abandoned "
    "attempts, but keep every step that the conclusion depends on, and end with the result the "
    "student reached. Write only the shortened reasoning as plain text, with nothing before or after "
    "it.\n\n"
    "Problem:\n{problem}\n\nStudent's reasoning:\n{thinking}\n\nShortened reasoning:"
)

# Named prompts a recipe can select by name in ``rewrite.prompt_template``.
PROMPT_TEMPLATES = {"default": DEFAULT_REWRITE_PROMPT, "thinking": THINKING_REWRITE_PROMPT}


def check_template(template: str) -> str:
    """A rewrite prompt shows the teacher the problem and either the student's whole trace
    (``{trace}``) or its thinking alone (``{thinking}``), never both."""
    if "{problem}" not in template:
        raise ValueError("must contain {problem}")
    if ("{trace}" in template) == ("{thinking}" in template):
        raise ValueError("must contain one of {trace} (the student's whole trace) and {thinking} (its thinking "
                         "alone, which the rewrite replaces)")
    return template


def problem_text(prompt: Any) -> str:
    """The problem as the rewriter should see it: the text, or the last user turn of a chat."""
    if isinstance(prompt, str):
        return prompt
    users = [m["content"] for m in prompt if m.get("role") == "user"]
    if not users or not isinstance(users[-1], str):
        raise ValueError(f"conversational prompt has no text user turn: {prompt!r}")
    return users[-1]
