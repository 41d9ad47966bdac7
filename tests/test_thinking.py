"""Qwen3 thinking mode in training: recipe keys, chat-template switches and the structure check."""

import random
import re
from types import SimpleNamespace

import pytest
from test_qwen3_path import qwen3_pair  # noqa: F401  (fixture)

from mpdistill.errors import ConfigError
from mpdistill.run.recipe import recipe_from_dict
from mpdistill.run.checks import check_thinking
from mpdistill.run.pipeline import build_trainer, load_model, training_problems
from mpdistill.tasks.prompts import THINKING_REWRITE_PROMPT
from mpdistill.rewriting.rewrite import (
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
    rw = _Rewriter(["7+3 = 10."])
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
    the task: what follows it is the rewrite, and tags left after it are rejected."""
    thought = "<think>\nThe student's reasoning restates the problem; I should drop that.\n</think>\n\n"
    rw = _Rewriter([thought + "7+3 = 10.", thought + SHORT])
    samples = [Sample("What is 7+3?", STUDENT, list(range(60))) for _ in range(2)]
    settings = RewriteSettings(prompt_template=THINKING_REWRITE_PROMPT, teacher_thinks=True)
    rewrite_batch(samples, rw, settings, MATH, _encode, random.Random(0))
    assert [s.verdict.reason for s in samples] == ["accepted", "structure"]
    assert samples[0].rewrite_text == "<think>\n7+3 = 10.\n</think>\n\nThe sum is 10, so the answer is \\boxed{10}."
    assert "restates" not in samples[1].rewrite_text
    # Its thinking is not cut by the rewrite's length budget: the whole max_new_tokens is its to use.
    assert rw.budgets == [[settings.generation.max_new_tokens] * 2]
    rw = _Rewriter(["7+3 = 10.", "7+3 = 10."])
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


def test_whole_trace_prompt_trains_on_a_rewrite_that_keeps_the_structure():
    """A {trace} prompt shows the whole trace, tags included, and the teacher writes them back."""
    whole = "Problem:\n{problem}\n\nStudent solution:\n{trace}\n\nShort solution:"
    rw = _Rewriter([SHORT, "The answer is \\boxed{10}."])
    samples = [Sample("What is 7+3?", STUDENT, list(range(60))) for _ in range(2)]
    rewrite_batch(samples, rw, RewriteSettings(prompt_template=whole), MATH, _encode, random.Random(0))
    assert [s.verdict.reason for s in samples] == ["accepted", "structure"]
    assert [s.trained_on for s in samples] == ["rewrite", "student"]
    assert "<think>" in rw.calls[0][0] and "What is 7+3?" in rw.calls[0][0]


def test_thinking_prompt_shows_the_thinking_alone_and_keeps_the_answer_section():
    """The built-in thinking prompt: the teacher reads the student's thinking without its tags or
    answer section and writes plain text; the rewrite is that text inside the student's tags, then
    the student's own answer section."""
    rw = _Rewriter(["  7+3 = 10, so the answer is \\boxed{10}.  "])
    samples = [Sample("What is 7+3?", STUDENT, list(range(60)))]
    rewrite_batch(samples, rw, RewriteSettings(prompt_template=THINKING_REWRITE_PROMPT), MATH, _encode, random.Random(0))
    shown = rw.calls[0][0]
    assert "We need 7+3. Let me restate" in shown and "<think>" not in shown and "</think>" not in shown
    assert "The sum is 10" not in shown  # the answer section is not the teacher's to rewrite
    assert samples[0].verdict.reason == "accepted" and samples[0].trained_on == "rewrite"
    assert samples[0].rewrite_text == ("<think>\n7+3 = 10, so the answer is \\boxed{10}.\n</think>\n\n"
                                       "The sum is 10, so the answer is \\boxed{10}.")


@pytest.mark.parametrize("teacher, reason", [
    ("<think>\n7+3 = 10.\n</think>\n\nThe answer is \\boxed{10}.", "structure"),  # tags of its own
    ("7+3 = 10. </think> ok", "structure"),
    ("   ", "empty"),
    ("7+3 = 11, so the answer is \\boxed{11}.", "answer_changed"),  # the thinking's result moved
    ("7+3, then check it by subtracting 3 and also by counting on from 7 one by one: eight, nine, ten, "
     "which makes ten, and that settles that the sum of seven and three is ten.", "not_shorter"),
])
def test_thinking_rewrites_are_verified_as_strictly_as_whole_ones(teacher, reason):
    rw = _Rewriter([teacher])
    samples = [Sample("What is 7+3?", STUDENT, list(range(22)))]
    rewrite_batch(samples, rw, RewriteSettings(prompt_template=THINKING_REWRITE_PROMPT), MATH, _encode,
                  random.Random(0))
    assert samples[0].verdict.reason == reason and samples[0].trained_on == "student"


def test_thinking_that_states_no_result_needs_none_in_its_rewrite():
    student = "<think>\nSeven and three make ten. Recount: ten.\n</think>\n\nSo \\boxed{10}."
    rw = _Rewriter(["Seven and three make ten."])
    samples = [Sample("What is 7+3?", student, list(range(60)))]
    rewrite_batch(samples, rw, RewriteSettings(prompt_template=THINKING_REWRITE_PROMPT), MATH, _encode, random.Random(0))
    assert samples[0].verdict.reason == "accepted"
    assert samples[0].rewrite_text == "<think>\nSeven and three make ten.\n</think>\n\nSo \\boxed{10}."


@pytest.mark.parametrize("student", [
    "No thinking here, \\boxed{10}.",
    "<think>a</think><think>b</think> \\boxed{10}",
    "<think>\n\n</think>\n\n\\boxed{10}",  # empty thinking (Qwen3 with thinking off)
])
def test_a_thinking_prompt_sends_no_trace_without_one_thinking_block(student):
    rw = _Rewriter([])
    samples = [Sample("Q", student, list(range(60)))]
    rewrite_batch(samples, rw, RewriteSettings(prompt_template=THINKING_REWRITE_PROMPT), MATH, _encode, random.Random(0))
    assert rw.calls == [[]] and samples[0].verdict.reason == "structure"


def test_thinking_prompt_is_selectable_by_name():
    recipe = recipe_from_dict({"rewrite": {"prompt_template": "thinking"}})
    assert recipe.rewrite.prompt_template == THINKING_REWRITE_PROMPT
    assert "{thinking}" in THINKING_REWRITE_PROMPT and "{trace}" not in THINKING_REWRITE_PROMPT
    assert "<think>" not in THINKING_REWRITE_PROMPT  # the teacher is never asked to write tags
    for bad, says in (("{problem} {trace} {thinking}", "one of {trace}"), ("{problem}", "one of {trace}"),
                      ("{thinking}", "must contain {problem}")):
        with pytest.raises(ConfigError, match=re.escape(says)):
            recipe_from_dict({"rewrite": {"prompt_template": bad}})


@pytest.mark.parametrize(
    "data, message",
    [
        ({"training": {"student_enable_thinking": True}}, "training.student_enable_thinking needs chat prompts"),
        ({"rewrite": {"teacher_enable_thinking": False, "use_chat_template": False}},
         "rewrite.teacher_enable_thinking needs rewrite.use_chat_template: true"),
        ({"rewrite": {"backend": "openai", "base_url": "http://x", "model": "m", "extra_body": {"max_tokens": 9}}},
         "'max_tokens' is set from the recipe's own keys; extra_body may only add other fields"),
        ({"training": {"student_enable_thinking": "maybe"}}, "training.student_enable_thinking"),
        ({"data": {"prompt_style": "chat"}, "training": {"student_enable_thinking": False},
          "rewrite": {"prompt_template": "thinking"}}, "but training.student_enable_thinking is false"),
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
            check_thinking(recipe, tok, tok)
    switch = SimpleNamespace(chat_template="{% if enable_thinking %}{% endif %}")
    check_thinking(recipe, switch, switch)


def _qwen3_recipe(qwen3_pair, *, student_thinks, rewrite):
    """An MPD recipe on the tiny Qwen3 pair with the real template and chat prompts, one step of 2."""
    return recipe_from_dict({
        "method": "mpd", "task": "math",
        "student": str(qwen3_pair / "student"), "teacher": str(qwen3_pair / "teacher"),
        "data": {"train": str(qwen3_pair / "problems.jsonl"), "question_field": "question", "answer_field": "final",
                 "prompt_style": "chat", "n_train": 4},
        "training": {"steps": 1, "batch_size": 2, "max_completion_length": 4, "student_enable_thinking": student_thinks},
        "rewrite": rewrite,
    })


def test_switches_reach_the_student_and_teacher_prompts(qwen3_pair, tmp_path):  # noqa: F811
    recipe = _qwen3_recipe(qwen3_pair, student_thinks=False,
                           rewrite={"max_new_tokens": 4, "batch_size": 2, "teacher_enable_thinking": False})
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


@pytest.mark.parametrize("teacher_thinks", [False, True])
def test_thinking_rewrite_through_the_real_qwen3_template(qwen3_pair, teacher_thinks, tmp_path):  # noqa: F811
    """The shipped recipe's rewrite settings with Qwen3's real template, the teacher's thinking off
    and on: the teacher reads the question and the student's thinking without tags; its answer, with
    no tags at all, is accepted and trained as <think>rewrite</think> and the student's answer section."""
    from mpdistill.run.recipe import load_recipe
    from mpdistill.tasks.prompts import encode_message
    from mpdistill.recipes import recipe_file
    from mpdistill.rewriting.rewrite import encode_completion

    shipped = load_recipe(recipe_file("qwen3-1.7b_from_qwen3-8b")).rewrite
    assert shipped.prompt_template == THINKING_REWRITE_PROMPT and shipped.teacher_enable_thinking is False
    recipe = _qwen3_recipe(qwen3_pair, student_thinks=True, rewrite={
        "prompt_template": shipped.prompt_template, "use_chat_template": shipped.use_chat_template,
        "max_ratio": shipped.max_ratio, "teacher_enable_thinking": teacher_thinks, "max_new_tokens": 64})
    rows = training_problems(recipe)
    student, tok = load_model(recipe.student)
    teacher, _ = load_model(recipe.teacher)
    trainer = build_trainer(recipe, student, teacher, tok, rows, tmp_path)
    row = rows[1]
    trace = ("<think>\nOkay, the question asks for 1+1. Let me restate it: one plus one. One plus one is two. "
             "Let me double-check: 2 - 1 = 1, yes. So it is 2.\n</think>\n\n1+1 = 2, so the answer is \\boxed{2}.")
    ids = encode_completion(tok, trace, tok.convert_tokens_to_ids("<|im_end|>"))
    sample = trainer._sample(row, ids, trace)
    assert sample.problem == "What is 1+1?"  # the question, not the message with its solving instruction
    settings = trainer.rewrite_settings
    prompt = tok.decode(encode_message(tok, settings.render(sample.problem, trace), chat=True,
                                       template_kwargs={"enable_thinking": teacher_thinks}))
    assert "What is 1+1?" in prompt and "Please reason" not in prompt
    assert "Okay, the question asks" in prompt and "so the answer is" not in prompt  # thinking only, no tags
    assert prompt.count("<think>") == (0 if teacher_thinks else 1)  # only the template's own empty block
    assert prompt.endswith("<|im_start|>assistant\n" if teacher_thinks else "<|im_start|>assistant\n<think>\n\n</think>\n\n")
    answer = ("<think>\nThe student restates and re-checks; drop both.\n</think>\n\n" if teacher_thinks else "")
    rw = _Rewriter([answer + "One plus one is two."])
    rewrite_batch([sample], rw, settings, MATH, trainer._encode, random.Random(0))
    assert sample.verdict.reason == "accepted" and sample.trained_on == "rewrite"
    assert sample.rewrite_text == "<think>\nOne plus one is two.\n</think>\n\n1+1 = 2, so the answer is \\boxed{2}."
    assert tok.decode(sample.rewrite_ids) == sample.rewrite_text + "<|im_end|>"  # what the loss runs on
