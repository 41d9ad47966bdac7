"""Measure what docs/EMBEDDED.md says of each embedded world's models, on validation problems.

    .venv/bin/python scripts/world_properties.py [--n 400] [--json FILE]

For each world: the student's and the teacher's accuracy and mean tokens at greedy, 0.6 and 1.0,
plain and asked to be concise (``short:``); how exactly the teacher rewrites a verbose trace along
its route; and how the teacher continues a trace: the probability it gives a verbose habit (a
re-check, a restated total) right after the k-th step of a concise trace and of a verbose one. That
last number is what MPD's teacher targets look like inside a concise rewrite, scored after the
plain problem.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics

import torch

from mpdistill.models.worlds import WORLDS, verbose_world_style
from mpdistill.models.loading import load_model
from mpdistill.rollout import GenerationSettings, generate_texts
from mpdistill.tasks import chain
from mpdistill.tasks.problems import chain_problems

TEMPERATURES = (0.0, 0.6, 1.0)
HABITS = ("check", "so")  # the first token of a re-check line and of a restated total ("so now we have")


def answers(model, tok, problems, suffix: str, temperature: float) -> dict:
    ids = [tok(p["prompt"] + suffix, add_special_tokens=False)["input_ids"] for p in problems]
    gens = generate_texts(model, tok, ids, GenerationSettings(max_new_tokens=256, temperature=temperature,
                                                              batch_size=200), seed=0)
    return {"accuracy": statistics.fmean(chain.is_correct(g.text, p["answer"]) for g, p in zip(gens, problems)),
            "mean_tokens": statistics.fmean(len(g.token_ids) for g in gens)}


def rewrite_exact(model, tok, n: int, world: str) -> float:
    """The share of student-style traces (that world's styles) the teacher rewrites, greedily, into exactly
    the concise trace along the same route."""
    rng = random.Random(2)
    problems = [chain.sample_problem(rng, "validation") for _ in range(n)]
    routes = [rng.choice(chain.ROUTES) for _ in problems]
    style = verbose_world_style if world == "verbose-teacher" else (lambda _rng: chain.VERBOSE)
    traces = [chain.verbose_trace(p, r, rng, style(rng)) for p, r in zip(problems, routes)]
    gens = generate_texts(model, tok, [chain.rewrite_prompt(p.prompt, t) for p, t in zip(problems, traces)],
                          GenerationSettings(max_new_tokens=128, temperature=0.0, batch_size=200), seed=0)
    return statistics.fmean(g.text == chain.concise_trace(p, r) for g, p, r in zip(gens, problems, routes))


@torch.no_grad()
def habit_after_steps(model, tok, n: int, verbose: bool) -> list[float]:
    """Mean probability of a habit's first token right after step k (k = 1..4) of a trace (the plain
    problem as prompt): in a concise trace (none before), and in a verbose one (each step re-checked and
    its total restated before)."""
    rng = random.Random(3)
    habit_ids = [tok.convert_tokens_to_ids(h) for h in HABITS]
    by_k: dict[int, list[float]] = {k: [] for k in range(1, 5)}
    for _ in range(n):
        problem = chain.sample_problem(rng, "validation", min_terms=6, max_terms=7)
        route = rng.choice(chain.ROUTES)
        style = chain.Style(restate_problem=1.0, backtrack=0.0, check=1.0, restate_total=1.0, wrap_up=1.0) \
            if verbose else chain.CONCISE
        lines = chain.verbose_trace(problem, route, rng, style).split("\n")
        step_lines = [i for i, line in enumerate(lines) if "=" in line and not line.startswith("check")]
        for k in range(1, 5):
            # Right after step k's line: where a writer in that style re-checks or restates, or goes on.
            prefix = problem.prompt + "\n".join(lines[:step_lines[k - 1] + 1]) + "\n"
            ids = torch.tensor([tok(prefix, add_special_tokens=False)["input_ids"]])
            probs = model(input_ids=ids).logits[0, -1].softmax(-1)
            by_k[k].append(float(probs[habit_ids].sum()))
    return [statistics.fmean(v) for v in by_k.values()]


def measure(world: str, n: int) -> dict:
    w = WORLDS[world]
    problems = chain_problems(n, 0, split="validation")
    out: dict = {"world": world, "n": n}
    for role in ("student", "teacher"):
        model, tok = load_model(w.model_name(role))
        out[role] = {f"{how} t={t:g}": answers(model, tok, problems, suffix, t)
                     for how, suffix in (("plain", ""), ("asked", chain.CONCISE_INSTRUCTION)) for t in TEMPERATURES}
        if role == "teacher":
            out[role]["rewrite_exact_greedy"] = rewrite_exact(model, tok, n, world)
            out[role]["habit_after_step_k_concise_prefix"] = habit_after_steps(model, tok, 200, verbose=False)
            out[role]["habit_after_step_k_verbose_prefix"] = habit_after_steps(model, tok, 200, verbose=True)
    s, t = out["student"]["plain t=0"], out["teacher"]["plain t=0"]
    out["teacher_over_student_tokens_greedy"] = t["mean_tokens"] / s["mean_tokens"]
    out["teacher_minus_student_accuracy_greedy"] = t["accuracy"] - s["accuracy"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=400)
    parser.add_argument("--world", choices=list(WORLDS), action="append")
    parser.add_argument("--json")
    args = parser.parse_args()
    results = [measure(world, args.n) for world in args.world or WORLDS]
    text = json.dumps(results, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
