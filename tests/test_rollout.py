"""Batched generation: per-row token budgets, and batching that does not change greedy outputs."""

import pytest
import torch

from mpdistill.run.pipeline import load_model
from mpdistill.rollout import GenerationSettings, generate_texts
from mpdistill.tasks.problems import chain_problems


@pytest.fixture(scope="module")
def student():
    return load_model("embedded:student")


def _prompts(n):
    return [p["prompt"] for p in chain_problems(n, seed=5, split="eval")]


def test_each_row_stops_at_its_own_budget_without_changing_the_others(student):
    model, tok = student
    prompts = _prompts(6)
    settings = GenerationSettings(max_new_tokens=60, temperature=1.0, batch_size=6)
    free = generate_texts(model, tok, prompts, settings, seed=1)
    budgets = [3, 60, 0, 60, 10, 60]
    capped = generate_texts(model, tok, prompts, settings, seed=1, max_new_tokens=budgets)
    for f, c, b in zip(free, capped, budgets):
        assert len(c.token_ids) <= b
        if b == 60:
            assert c.token_ids == f.token_ids and c.truncated == f.truncated  # same draws as without caps
        else:
            assert c.token_ids == f.token_ids[:b]
            assert c.truncated == (len(f.token_ids) >= b)


def test_no_row_generates_past_the_models_positions(student):
    """The embedded student reads 512 positions: a 499-token prompt gets at most 13 new tokens, a
    603-token one is not run at all, and the other rows sample as they would alone."""
    model, tok = student
    short, near, over = _prompts(1)[0], "Q:" + "1+" * 248 + "1", "Q:" + "1+" * 300 + "1"
    assert [len(tok(p, add_special_tokens=False)["input_ids"]) for p in (near, over)] == [499, 603]
    greedy = GenerationSettings(max_new_tokens=100, temperature=0.0, batch_size=3)
    out = generate_texts(model, tok, [short, near, over], greedy)
    assert out[0].token_ids == generate_texts(model, tok, [short], greedy)[0].token_ids
    assert len(out[1].token_ids) <= 13
    assert (out[2].token_ids, out[2].truncated) == ([], True)


def test_budgets_must_match_the_prompts(student):
    model, tok = student
    with pytest.raises(ValueError, match="2 token budgets for 3 prompts"):
        generate_texts(model, tok, _prompts(3), GenerationSettings(), max_new_tokens=[1, 2])


def test_batched_greedy_equals_one_prompt_at_a_time(student):
    model, tok = student
    prompts = _prompts(12)
    greedy = GenerationSettings(max_new_tokens=120, temperature=0.0, batch_size=12)
    batched = generate_texts(model, tok, prompts, greedy)
    alone = [generate_texts(model, tok, [p], greedy)[0] for p in prompts]
    assert [g.token_ids for g in batched] == [g.token_ids for g in alone]


def test_a_seeded_generation_leaves_the_processs_random_stream_as_it_was(tiny_pair):
    """The local teacher samples rewrites from its own seeded stream; the student's sampling that
    follows in the same process draws what it would have drawn without it."""
    from mpdistill.run.pipeline import load_model
    from mpdistill.rollout import GenerationSettings, generate_texts

    model, tok = load_model(str(tiny_pair / "teacher"))
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    generate_texts(model, tok, ["Q:1+2\n"], GenerationSettings(max_new_tokens=4, temperature=1.0), seed=9)
    assert torch.equal(torch.rand(3), expected)


def test_local_rewriter_pads_its_generate_calls_to_the_most_any_process_makes(tiny_pair):
    from mpdistill.run.pipeline import load_model
    from mpdistill.rewriting.rewrite import TransformersRewriter
    from mpdistill.rollout import GenerationSettings

    model, tok = load_model(str(tiny_pair / "teacher"))
    settings = GenerationSettings(max_new_tokens=4, temperature=1.0, batch_size=2)
    alone = TransformersRewriter(model, tok, settings, use_chat_template=False, seed=1)
    padded = TransformersRewriter(model, tok, settings, use_chat_template=False, seed=1)
    padded.sync_batches = lambda mine: mine + 2  # another process makes two more calls this step
    prompts = ["Q:1+2\nrewrite:\nx\nshort:\n"] * 3
    assert [o.text for o in padded.rewrite(prompts)] == [o.text for o in alone.rewrite(prompts)]
    assert (alone.generate_calls, padded.generate_calls) == (2, 4)
    assert padded.rewrite([]) == [] and padded.generate_calls == 6  # nothing to rewrite: still in step
