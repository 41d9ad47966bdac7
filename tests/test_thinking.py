"""Qwen3 thinking mode in training: recipe keys, chat-template switches and the structure check."""

import random
from types import SimpleNamespace

import pytest
from test_qwen3_path import qwen3_pair  # noqa: F401  (fixture)

from mpdistill.config import ConfigError, recipe_from_dict
from mpdistill.pipeline import build_trainer, check_thinking, load_model, training_problems
from mpdistill.prompts import THINKING_REWRITE_PROMPT
from mpdistill.rewrite import (
    REASONS,
    RewriteOutput,
    RewriteSettings,
    Sample,
    rewrite_batch,
    verify,
)
from mpdistill.tasks import get_task

MATH = get_task("math")
CHAIN = get_task("chain")
STUDENT = (
    "<think>\nWe need 7+3. Let me restate: seven plus three. 7+3 = 10. Check: 10-3 = 7, ok. "
    "Maybe \\boxed{11}? No, recheck: 7+3 = 10.\n</think>\n\nThe sum is 10, so the answer is \\boxed{10}."
)
SHORT = "<think>\n7+3 = 10.\n</think>\n\nThe answer is \\boxed{10}."


def _verify(text, student=STUDENT, task=MATH, tokens=8):
    return verify(task, student, 60, RewriteOutput(text), tokens, max_ratio=0.9)


def test_structure_reason_is_logged_after_the_output_checks():
    assert REASONS.index("truncated") < REASONS.index("structure") < REASONS.index("unparsed")


def test_shortened_rewrite_that_keeps_the_block_and_answer_is_accepted():
    assert _verify(SHORT).reason == "accepted"
    assert _verify("\n  " + SHORT).reason == "accepted"  # leading whitespace is allowed


@pytest.mark.parametrize(
    "text",
    [
        "7+3 = 10, so the answer is \\boxed{10}.",  # the block is dropped
        "<think>7+3</think><think>= 10</think>\n\\boxed{10}",  # two blocks
        "<think>\n7+3 = 10, so \\boxed{10}",  # never closed
        "<think>\n7+3 = 10 so \\boxed{10}\n</think>\n\n  ",  # empty answer section
        "So: <think>7+3 = 10</think> \\boxed{10}",  # the block is not at the start
        "<think>7+3 = 10</think> \\boxed{10} </think>",  # a stray second close
    ],
)
def test_rewrite_that_breaks_the_structure_is_rejected(text):
    verdict = _verify(text)
    assert not verdict.accepted and verdict.reason == "structure"


def test_answers_are_read_after_the_think_block():
    # A different \boxed{} inside the rewrite's thinking is not its answer.
    assert _verify("<think>\nnot \\boxed{11}; 7+3 = 10\n</think>\n\n\\boxed{10}").reason == "accepted"
    # The answer section's answer is what counts, even if the thinking reached the student's.
    assert _verify("<think>\n\\boxed{10}\n</think>\n\n\\boxed{11}").reason == "answer_changed"
    # An answer only inside the thinking: nothing to read in the answer section.
    assert _verify("<think>\n\\boxed{10}\n</think>\n\nDone.").reason == "unparsed"


def test_student_whose_thinking_never_closes_has_no_answer():
    student = "<think>\nmaybe \\boxed{10}, keep going"
    assert _verify(SHORT, student=student).reason == "structure"  # the rewrite closes what the student did not
    rw = _Rewriter([SHORT])
    samples = [Sample("Q", student, list(range(60)))]
    rewrite_batch(samples, rw, RewriteSettings(prompt_template=THINKING_REWRITE_PROMPT), MATH, _encode, random.Random(0))
    assert rw.calls == [[]] and samples[0].verdict.reason == "student_unparsed"  # asked for nothing


def test_a_rewrite_has_exactly_the_students_think_blocks():
    verbose = "so we need 7+3\n7+3=0\ncheck 0-3=7 ok\nso the answer is 0\nA:0"
    assert verify(CHAIN, verbose, 40, RewriteOutput("7+3=0\nA:0"), 8, 0.9).reason == "accepted"
    # A student that did not think gets no think block back: a block there is the teacher's own
    # thinking about the rewrite task (Qwen3 with thinking on), never a target for the student.
    teacher_thought = "<think>\nThe student's solution restates the problem; I should drop that.\n</think>\n\n"
    for text in (teacher_thought + "7+3=0\nA:0", "<think>x</think>A:0 <think>", "7+3=0 </think>\nA:0"):
        assert verify(CHAIN, verbose, 40, RewriteOutput(text), 8, 0.9).reason == "structure", text
    # A student that thinks once: the teacher's own block before the student's is one block too many.
    assert _verify(teacher_thought + SHORT).reason == "structure"



def test_a_thinking_teachers_own_block_is_removed_before_verification():
    """With rewrite.teacher_enable_thinking: true, the teacher's leading block is its reasoning about
    the task: without it, the rewrite must still carry the student's block, or it is rejected."""
    thought = "<think>\nThe student's solution restates the problem; I should drop that.\n</think>\n\n"
    rw = _Rewriter([thought + SHORT, thought + "The answer is \\boxed{10}."])
    samples = [Sample("What is 7+3?", STUDENT, list(range(60))) for _ in range(2)]
    settings = RewriteSettings(prompt_template=THINKING_REWRITE_PROMPT, teacher_thinks=True)
    rewrite_batch(samples, rw, settings, MATH, _encode, random.Random(0))
    assert [s.verdict.reason for s in samples] == ["accepted", "structure"]
    assert samples[0].rewrite_text == SHORT and "restates" not in samples[1].rewrite_text
    # Its thinking is not cut by the rewrite's length budget: the whole max_new_tokens is its to use.
    assert rw.budgets == [[settings.generation.max_new_tokens] * 2]
    rw = _Rewriter([SHORT, SHORT])
    rewrite_batch([Sample("What is 7+3?", STUDENT, list(range(60))) for _ in range(2)], rw,
               RewriteSettings(prompt_template=THINKING_REWRITE_PROMPT), MATH, _encode, random.Random(0))
    assert rw.budgets == [[54, 54]]  # not thinking: stopped once too long to be accepted (0.9 x 60)


class _Rewriter:
    def __init__(self, texts):
        self.texts, self.calls, self.budgets = list(texts), [], []

    def rewrite(self, prompts, max_new_tokens=None):
        self.calls.append(list(prompts))
        self.budgets.append(list(max_new_tokens or []))
        return [RewriteOutput(self.texts.pop(0)) for _ in prompts]


def _encode(text, end_id=None):
    return list(range(len(text) // 8))


def test_rewrite_batch_trains_on_a_rewrite_that_keeps_the_structure():
    rw = _Rewriter([SHORT, "The answer is \\boxed{10}."])
    samples = [Sample("What is 7+3?", STUDENT, list(range(60))) for _ in range(2)]
    rewrite_batch(samples, rw, RewriteSettings(prompt_template=THINKING_REWRITE_PROMPT), MATH, _encode, random.Random(0))
    assert [s.verdict.reason for s in samples] == ["accepted", "structure"]
    assert [s.trained_on for s in samples] == ["rewrite", "student"]
    assert "<think>" in rw.calls[0][0] and "What is 7+3?" in rw.calls[0][0]


def test_thinking_prompt_is_selectable_by_name():
    recipe = recipe_from_dict({"rewrite": {"prompt_template": "thinking"}})
    assert recipe.rewrite.prompt_template == THINKING_REWRITE_PROMPT
    assert "</think>" in THINKING_REWRITE_PROMPT


@pytest.mark.parametrize(
    "data, message",
    [
        ({"training": {"student_enable_thinking": True}}, "training.student_enable_thinking needs chat prompts"),
        ({"rewrite": {"teacher_enable_thinking": False, "use_chat_template": False}},
         "rewrite.teacher_enable_thinking needs rewrite.use_chat_template: true"),
        ({"rewrite": {"backend": "openai", "base_url": "http://x", "model": "m", "extra_body": {"max_tokens": 9}}},
         "'max_tokens' is set from the recipe's own keys; extra_body may only add other fields"),
        ({"training": {"student_enable_thinking": "maybe"}}, "training.student_enable_thinking"),
    ],
)
def test_recipe_validation(data, message):
    with pytest.raises(ConfigError) as info:
        recipe_from_dict(data)
    assert message in str(info.value)


@pytest.mark.parametrize("key", ["student", "teacher"])
def test_switch_without_template_support_is_refused_before_training(key):
    data = {"data": {"prompt_style": "chat"}}
    data.update({"training": {"student_enable_thinking": True}} if key == "student"
                else {"rewrite": {"teacher_enable_thinking": False, "use_chat_template": True}})
    recipe = recipe_from_dict(data)
    for tok in (SimpleNamespace(chat_template=None), SimpleNamespace(chat_template="{{ messages }}")):
        with pytest.raises(ConfigError, match=f"{key}_enable_thinking is set but the tokenizer's chat template"):
            check_thinking(recipe, tok)
    check_thinking(recipe, SimpleNamespace(chat_template="{% if enable_thinking %}{% endif %}"))


def test_switches_reach_the_student_and_teacher_prompts(qwen3_pair, tmp_path):  # noqa: F811
    recipe = recipe_from_dict({
        "method": "mpd", "task": "math",
        "student": str(qwen3_pair / "student"), "teacher": str(qwen3_pair / "teacher"),
        "data": {"train": str(qwen3_pair / "problems.jsonl"), "question_field": "question", "answer_field": "final",
                 "prompt_style": "chat", "n_train": 4},
        "training": {"steps": 1, "batch_size": 2, "max_completion_length": 4, "student_enable_thinking": False},
        "rewrite": {"max_new_tokens": 4, "batch_size": 2, "teacher_enable_thinking": False},
    })
    student, tok = load_model(recipe.student)
    teacher, _ = load_model(recipe.teacher)
    trainer = build_trainer(recipe, student, teacher, tok, training_problems(recipe), tmp_path)
    no_think = "<|im_start|>assistant\n<think>\n\n</think>\n\n"
    prompt_ids, _, _ = trainer._tokenize_prompts([[{"role": "user", "content": "What is 1+1?"}]])
    assert tok.decode(list(prompt_ids[0])).endswith(no_think)
    assert tok.decode(trainer.rewriter._encode("Rewrite this.")).endswith(no_think)
    # Left unset: the student's prompt keeps the template's default (thinking on for Qwen3), while
    # the teacher writes its rewrite directly (thinking off wherever the template can switch it).
    default = recipe.model_copy(update={
        "training": recipe.training.model_copy(update={"student_enable_thinking": None}),
        "rewrite": recipe.rewrite.model_copy(update={"teacher_enable_thinking": None}),
    })
    trainer = build_trainer(default, student, teacher, tok, training_problems(default), tmp_path / "default")
    prompt_ids, _, _ = trainer._tokenize_prompts([[{"role": "user", "content": "What is 1+1?"}]])
    assert tok.decode(list(prompt_ids[0])).endswith("<|im_start|>assistant\n")
    assert tok.decode(trainer.rewriter._encode("Rewrite this.")).endswith(no_think)
    # Asked to think, the teacher's prompt is left open for its thinking.
    thinking = recipe.model_copy(update={"rewrite": recipe.rewrite.model_copy(update={"teacher_enable_thinking": True})})
    trainer = build_trainer(thinking, student, teacher, tok, training_problems(thinking), tmp_path / "thinking")
    assert tok.decode(trainer.rewriter._encode("Rewrite this.")).endswith("<|im_start|>assistant\n")
    assert trainer.rewrite_settings.teacher_thinks
