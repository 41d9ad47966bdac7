"""Batched generation: per-row token budgets, and batching that does not change greedy outputs."""

import pytest

from mpdistill.pipeline import load_model
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
