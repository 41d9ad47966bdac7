"""The page's data: each run, evaluation and comparison as one JSON-ready section.

Per-sample metadata goes in as columns (one list per field, integers coded as in
:mod:`mpdistill.view.load`), for every sample, so the page's curves, counts and filters are exact
over the whole run; texts go in for the samples :func:`mpdistill.view.sampling.choose_texts` picks.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Collection

from mpdistill.evaluation.stats import wilson_interval_mean
from mpdistill.view.flips import FLIP_KINDS, RIGHT_TO_WRONG, WRONG_TO_RIGHT
from mpdistill.view.load import Evaluation, MISSING, Run, as_text, read_rollout_texts, short_answer
from mpdistill.view.sampling import choose_texts


def run_section(run: Run, label: str, max_texts: int) -> dict:
    return {
        "kind": "run",
        "label": label,
        "path": str(run.path),
        "recipe": run.recipe,
        "status": run_status(run),
        # The run's own warnings and why it stopped (the mix monitor, the NaN guard), then the viewer's.
        "warnings": [f"step {e['step']}: {e[key]}" for e in run.log for key in RUN_MESSAGES if isinstance(e.get(key), str)]
        + run.warnings,
        "log": _log_columns(run.log) if run.log else None,
        "rollouts": _rollouts(run, max_texts) if run.rollouts is not None and len(run.rollouts) else None,
    }


# Messages a run writes into train_log.jsonl: a warning (mpd/warning) and why it stopped early (mpd/halt).
RUN_MESSAGES = ("mpd/warning", "mpd/halt")


def run_status(run: Run) -> str:
    planned = run.recipe.get("training.steps")
    last = run.log[-1]["step"] if run.log else None
    halt = next((e for e in reversed(run.log) if isinstance(e.get("mpd/halt"), str)), None)
    if run.finished:
        return "finished: the student is saved in model/"
    if halt is not None:
        return f"stopped at step {halt['step']}: {halt['mpd/halt']}"
    if run.log_summary is not None:
        return "training finished (no model/ in this folder)"
    if last is None:
        return "no training step logged yet"
    return f"running, or stopped: last logged step {last}" + (f" of {planned}" if planned else "")


def _log_columns(entries: list[dict]) -> dict:
    """train_log.jsonl as ``{"steps": [...], "metrics": {name: [value or None per step]}}``:
    every numeric metric (a non-finite value, which JSON cannot hold, as None)."""
    names = sorted({k for e in entries for k, v in e.items() if _is_number(v)} - {"step"})
    return {
        "steps": [e["step"] for e in entries],
        "metrics": {name: [_finite(e.get(name)) for e in entries] for name in names},
    }


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _finite(value) -> float | None:
    return value if _is_number(value) and math.isfinite(value) else None


def _rollouts(run: Run, max_texts: int) -> dict:
    r = run.rollouts
    last_step = max(r.step)
    chosen = choose_texts(r.reason, max_texts, first=[i for i, s in enumerate(r.step) if s == last_step])
    texts = read_rollout_texts(r, chosen)
    prompts: dict[str, int] = {}  # a problem's k samples share one prompt: stored once
    for t in texts:
        t["prompt"] = prompts.setdefault(t["prompt"], len(prompts))
    text_of = [MISSING] * len(r)
    for position, i in enumerate(chosen):
        text_of[i] = position
    return {
        "n": len(r),
        "reasons": r.reasons,
        "trained_on_names": r.trained_on_names,
        "columns": {
            "line": r.line, "step": r.step, "reason": r.reason, "accepted": r.accepted,
            "student_tokens": r.student_tokens, "rewrite_tokens": r.rewrite_tokens,
            "teacher_tokens": r.teacher_tokens, "trained_on": r.trained_on, "correct": r.correct, "text": text_of,
        },
        "texts": texts,
        "prompts": list(prompts),
        "accuracy": step_accuracy(r.step, r.correct),
    }


def step_accuracy(steps: list[int], correct: list[int]) -> dict:
    """Per step with graded samples: how many were graded and how many of those were correct."""
    graded: dict[int, list[int]] = {}
    for step, c in zip(steps, correct):
        if c != MISSING:
            counts = graded.setdefault(step, [0, 0])
            counts[0] += 1
            counts[1] += c
    order = sorted(graded)
    return {"steps": order, "graded": [graded[s][0] for s in order], "correct": [graded[s][1] for s in order]}


def eval_section(evaluation: Evaluation, label: str, max_texts: int, first: Collection[int] = ()) -> dict:
    samples = evaluation.samples
    names: dict[str, int] = {}
    benchmark = [names.setdefault(s["benchmark"], len(names)) for s in samples]
    chosen = choose_texts([(b, s["correct"]) for b, s in zip(benchmark, samples)], max_texts, first=first)
    text_of = [MISSING] * len(samples)
    for position, i in enumerate(chosen):
        text_of[i] = position
    return {
        "kind": "eval",
        "label": label,
        "path": str(evaluation.path),
        "model": evaluation.model,
        "warnings": evaluation.warnings,
        "benchmarks": [benchmark_stats(name, [s for s in samples if s["benchmark"] == name]) for name in names],
        "n": len(samples),
        "benchmark_names": list(names),
        "columns": {
            "benchmark": benchmark,
            "id": [s["id"] for s in samples],
            "sample": [s.get("sample") if isinstance(s.get("sample"), int) else MISSING for s in samples],
            "tokens": [MISSING if s.get("tokens") is None else s["tokens"] for s in samples],
            "truncated": [int(bool(s.get("truncated"))) for s in samples],
            "correct": [int(s["correct"]) for s in samples],
            "extracted": [short_answer(s.get("extracted")) for s in samples],
            "gold": [short_answer(s.get("gold")) for s in samples],
            "text": text_of,
        },
        "texts": [as_text(samples[i].get("response")) for i in chosen],
    }


def benchmark_stats(name: str, samples: list[dict]) -> dict:
    """Accuracy as ``mpdistill compare`` counts it (the mean over problems of the share of their
    samples that are correct; 95% Wilson interval with n = problems) and token statistics over samples."""
    by_problem: dict[str, list[bool]] = {}
    for s in samples:
        by_problem.setdefault(s["id"], []).append(s["correct"])
    scores = [sum(c) / len(c) for c in by_problem.values()]
    lo, hi = wilson_interval_mean(scores)
    tokens = [s["tokens"] for s in samples if s.get("tokens") is not None]
    return {
        "name": name,
        "problems": len(scores),
        "samples": len(samples),
        "accuracy": statistics.fmean(scores),
        "ci95": [lo, hi],
        "mean_tokens": statistics.fmean(tokens) if tokens else None,
        "median_tokens": statistics.median(tokens) if tokens else None,
        "truncated": sum(bool(s.get("truncated")) for s in samples) / len(samples),
    }


def comparison_section(label: str, base: int, new: int, result: dict) -> dict:
    """``result`` of :func:`mpdistill.view.flips.compare_problems`; ``base`` and ``new`` are the
    positions of the two evaluations' sections on the page."""
    return {
        "kind": "comparison",
        "label": label,
        "base": base,
        "new": new,
        "kinds": list(FLIP_KINDS),
        "counts": result["counts"],
        "only_in_base": result["only_in_base"],
        "only_in_new": result["only_in_new"],
        "problems": result["problems"],
    }


def flipped_samples(result: dict, side: str) -> set[int]:
    """The samples of ``side`` ("base" or "new") of every problem whose answer flipped."""
    return {i for p in result["problems"] if p["kind"] in (RIGHT_TO_WRONG, WRONG_TO_RIGHT)
            for i in p[f"{side}_samples"]}
