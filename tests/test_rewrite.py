import random

import pytest

from mpdistill.tasks.prompts import DEFAULT_REWRITE_PROMPT, THINKING_REWRITE_PROMPT
from mpdistill.rewriting.rewrite import RewriteOutput, RewriteSettings, Sample, length_budget, rewrite_batch, verify
from mpdistill.tasks import get_task

TASK = get_task("chain")
VERBOSE = "so we need 7+3\n7+3=0\ncheck 0-3=7 ok\nso the answer is 0\nA:0"


@pytest.mark.parametrize(
    "out, tokens, reason",
    [
        (RewriteOutput("7+3=0\nA:0"), 8, "accepted"),
        (RewriteOutput("", error=None), 0, "empty"),
        (RewriteOutput("7+3=0\nA:0", error="HTTP 500"), 8, "backend_error"),
        (RewriteOutput("7+3=0\nA:0", truncated=True), 8, "truncated"),
        (RewriteOutput("7+3=0"), 6, "unparsed"),
        (RewriteOutput("7+3=0\nA:0"), 40, "not_shorter"),
        (RewriteOutput("7+3=1\nA:1"), 8, "answer_changed"),
    ],
)
def test_verify_reasons(out, tokens, reason):
    verdict = verify(TASK, VERBOSE, 40, out, tokens, max_ratio=0.9)
    assert verdict.reason == reason and verdict.accepted == (reason == "accepted")


def test_verify_gold_check_and_student_without_answer():
    assert verify(TASK, "A:1", 40, RewriteOutput("A:1"), 3, 0.9, gold="0").reason == "wrong_answer"
    assert verify(TASK, "no answer", 40, RewriteOutput("A:1"), 3, 0.9).reason == "student_unparsed"


class ListRewriter:
    """Returns fixed texts and records what it was asked."""

    def __init__(self, texts, truncated=False):
        self.texts, self.calls, self.budgets, self.truncated = list(texts), [], [], truncated

    def rewrite(self, prompts, max_new_tokens=None):
        self.calls.append(list(prompts))
        self.budgets.append(max_new_tokens)
        return [RewriteOutput(self.texts.pop(0), truncated=self.truncated) for _ in prompts]


def _samples(n):
    return [Sample(problem="Q:7+3\n", student_text=VERBOSE, student_ids=list(range(40)), gold="0") for _ in range(n)]


def _encode(text, end_id=None):
    return list(range(len(text) // 2))


def test_rewrite_batch_mixing_rule_and_fallbacks():
    rw = ListRewriter(["7+3=0\nA:0", "7+3=1\nA:1"])
    samples = rewrite_batch(_samples(2), rw, RewriteSettings(prompt_template="{problem}|{trace}"), TASK, _encode, random.Random(0))
    assert [s.trained_on for s in samples] == ["rewrite", "student"]
    assert rw.calls[0][0] == "Q:7+3\n|" + VERBOSE
    drop = RewriteSettings(prompt_template="{problem}{trace}", on_reject="drop")
    samples = rewrite_batch(_samples(1), ListRewriter(["A:5"]), drop, TASK, _encode, random.Random(0))
    assert samples[0].trained_on == "dropped" and samples[0].verdict.reason == "answer_changed"


def test_on_policy_fraction_skips_the_rewriter():
    rw = ListRewriter([])
    settings = RewriteSettings(prompt_template="{problem}{trace}", on_policy_fraction=1.0)
    samples = rewrite_batch(_samples(3), rw, settings, TASK, _encode, random.Random(0))
    # Asked for nothing (an empty call keeps several processes' generate calls in step).
    assert rw.calls == [[]] and all(s.trained_on == "student" and s.verdict.reason == "on_policy" for s in samples)


def test_render_keeps_braces_in_traces():
    s = RewriteSettings(prompt_template="P={problem} T={trace} {{literal}}")
    assert s.render("x{1}", "\\boxed{2} {trace}") == "P=x{1} T=\\boxed{2} {trace} {literal}"


@pytest.mark.parametrize("kwargs", [{"prompt_template": "no fields"}, {"max_ratio": 0}, {"on_reject": "maybe"}])
def test_settings_validation(kwargs, tmp_path):
    from mpdistill import MPDConfig

    with pytest.raises(ValueError, match=f"rewrite_{next(iter(kwargs))}"):
        MPDConfig(str(tmp_path), **{f"rewrite_{k}": v for k, v in kwargs.items()})


def test_each_rewrite_gets_the_longest_budget_that_could_still_be_accepted():
    settings = RewriteSettings(prompt_template="{problem}{trace}", max_ratio=0.5)
    # 40 student tokens, ratio 0.5: the rewrite (+ end token) may have 20 tokens, so 19 of text;
    # the 20th generated token without an end proves it too long.
    assert length_budget(40, settings) == 20
    assert length_budget(41, settings) == 20  # 0.5 * 41 - 1 = 19.5 -> 19 tokens of text
    assert length_budget(1, settings) == 0
    assert length_budget(10_000, settings) == settings.generation.max_new_tokens
    rw = ListRewriter(["7+3=", "A:0"], truncated=True)
    samples = rewrite_batch(_samples(2), rw, settings, TASK, _encode, random.Random(0))
    assert rw.budgets == [[20, 20]]
    # Cut off at the ratio's budget: too long, whatever its text says.
    assert [s.verdict.reason for s in samples] == ["not_shorter", "not_shorter"]


def test_rewrites_are_not_generated_when_the_mixing_rule_cannot_use_them():
    rw = ListRewriter(["A:0"])
    samples = _samples(3)
    samples[1].student_text = "no final answer"
    samples[2].student_text = samples[2].student_text.replace("A:0", "A:4")  # wrong, with gold checked
    rewrite_batch(samples, rw, RewriteSettings(prompt_template="{problem}{trace}", require_gold=True), TASK, _encode,
               random.Random(0))
    assert len(rw.calls[0]) == 1
    assert [s.verdict.reason for s in samples] == ["accepted", "student_unparsed", "wrong_answer"]


@pytest.mark.parametrize("ratio, student_tokens, accepted_up_to", [(0.75, 40, 30), (0.5, 41, 20), (1.0, 7, 7)])
def test_a_rewrite_of_exactly_max_ratio_of_the_trace_is_accepted_and_one_token_more_is_not(
        ratio, student_tokens, accepted_up_to):
    out = RewriteOutput("7+3=0\nA:0")
    assert verify(TASK, VERBOSE, student_tokens, out, accepted_up_to, ratio).reason == "accepted"
    assert verify(TASK, VERBOSE, student_tokens, out, accepted_up_to + 1, ratio).reason == "not_shorter"
    # The generation budget is that same boundary: a rewrite may generate up to it before it is stopped.
    settings = RewriteSettings(prompt_template="{problem}{trace}", max_ratio=ratio)
    assert length_budget(student_tokens, settings) == accepted_up_to  # text tokens + the end token


def test_a_rewrite_ends_with_the_token_the_students_trace_stopped_on():
    """A chat model ends its turn with an end-of-turn token that may not be the tokenizer's eos."""
    from mpdistill.models.worlds import build_tokenizer
    from mpdistill.rewriting.rewrite import encode_completion

    tok = build_tokenizer()
    end_of_turn = tok.pad_token_id  # any id other than eos stands in for it
    samples = _samples(2)
    samples[0].end_id = end_of_turn
    encode = lambda text, end_id=None: encode_completion(tok, text, end_id)  # noqa: E731
    rewrite_batch(samples, ListRewriter(["7+3=0\nA:0", "7+3=0\nA:0"]),
               RewriteSettings(prompt_template="{problem}{trace}"), TASK, encode, random.Random(0))
    assert [s.rewrite_ids[-1] for s in samples] == [end_of_turn, tok.eos_token_id]
    assert samples[0].rewrite_ids[:-1] == tok("7+3=0\nA:0", add_special_tokens=False)["input_ids"]


# -- gates for what the other checks let through ------------------------------------------------------------


def _gate(text, student="We add: 7+3 = 10. Check: 10 - 3 = 7. So \\boxed{10}.", **kw):
    settings = RewriteSettings(prompt_template=DEFAULT_REWRITE_PROMPT, **kw)
    return verify(get_task("math"), student, 40, RewriteOutput(text), 10, 0.9, echo_lines=settings.echo_lines,
                  require_route_kept=settings.require_route_kept).reason


def test_a_rewrite_that_repeats_the_prompts_own_lines_is_an_echo():
    assert RewriteSettings(prompt_template=DEFAULT_REWRITE_PROMPT).echo_lines[1:] == [
        "Problem:", "Student solution:", "Short solution:"]
    assert "Student's reasoning:" in RewriteSettings(prompt_template=THINKING_REWRITE_PROMPT).echo_lines
    assert _gate("7+3 = 10. So \\boxed{10}.") == "accepted"
    # Seen from the 135M plumbing model: a rewrite that trails the prompt's own headers.
    assert _gate("7+3 = 10. So \\boxed{10}.\n\nStudent solution:") == "prompt_echo"
    assert _gate("Short solution:\n7+3 = 10. So \\boxed{10}.") == "prompt_echo"
    # A line the student wrote itself is the student's, not an echo.
    assert _gate("Problem: 7+3. \\boxed{10}", student="Problem: 7+3. Add: 7+3 = 10, check 10-3 = 7. \\boxed{10}") == "accepted"


def test_a_rewrite_that_states_two_answers_is_refused():
    assert _gate("7+3 = 10, or \\boxed{11}? So \\boxed{10}.") == "two_answers"
    assert _gate("\\boxed{10} and again \\boxed{10.0}") == "accepted"  # the same answer twice
    # A student that stated two already: the rewrite may keep them.
    assert _gate("\\boxed{11}? \\boxed{10}", student="Maybe \\boxed{11}? No: 7+3 = 10, check 10-3 = 7, \\boxed{10}") \
        == "accepted"


def test_the_route_gate_rejects_a_rewrite_off_the_students_route_only_when_asked():
    other_route = "3+7 = 10, so \\boxed{10}."  # numbers the student never wrote in that order
    assert _gate(other_route) == "accepted"
    assert _gate(other_route, require_route_kept=True) == "route_changed"
    assert _gate("7+3 = 10. \\boxed{10}", require_route_kept=True) == "accepted"


def test_the_route_gate_needs_a_task_that_can_tell(tiny_pair, tmp_path, monkeypatch):
    import dataclasses

    from datasets import Dataset

    from mpdistill import MPDConfig, MPDTrainer
    from mpdistill.errors import ConfigError
    from mpdistill.tasks import TASKS

    monkeypatch.setitem(TASKS, "routeless", lambda: dataclasses.replace(get_task("chain"), name="routeless",
                                                                        route_kept=None))
    args = MPDConfig(str(tmp_path), task="routeless", rewrite_require_route_kept=True, max_steps=1, report_to="none")
    with pytest.raises(ConfigError, match="rewrite.require_route_kept: the task 'routeless' cannot tell"):
        MPDTrainer(str(tiny_pair / "student"), str(tiny_pair / "teacher"), args,
                   train_dataset=Dataset.from_list(get_task("chain").problems(4, 0)))
