"""Step time of MPD against OPD, phase by phase, in one process.

After warm-up steps the two trainers (:func:`mpdistill.experiments.bench.trainers.build_pair`) are stepped
alternately (ABBA order, so a slow drift of the machine hits both alike), each step through the
trainers' own ``training_step`` and an optimizer step, timed by :mod:`mpdistill.experiments.bench.phases`.
"""

from __future__ import annotations

import statistics
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Callable

from mpdistill.experiments.bench.device import describe_device
from mpdistill.experiments.bench.phases import PHASES, PhaseClock, prepare_to_step, run_step
from mpdistill.experiments.bench.trainers import BenchSettings, build_pair


def run_bench(settings: BenchSettings, *, progress: Callable[[str], None] | None = None) -> dict:
    """Warm up, then alternate MPD and OPD steps; per-step phases and the MPD/OPD ratio."""
    say = progress or (lambda _msg: None)
    with tempfile.TemporaryDirectory(prefix="mpdistill-bench-") as tmp:
        recipe, trainers = build_pair(settings, Path(tmp))
        vocab_size = trainers["opd"].model.config.get_text_config().vocab_size
        clock = PhaseClock()
        batches = {
            method: prepare_to_step(trainer, clock, steps=settings.warmup + settings.repeats,
                                    budgets=settings.rewrite_budgets)
            for method, trainer in trainers.items()
        }
        steps: dict[str, list[dict]] = {"mpd": [], "opd": []}
        for r in range(settings.warmup + settings.repeats):
            order = ("mpd", "opd") if r % 2 == 0 else ("opd", "mpd")  # ABBA
            for method in order:
                step = run_step(trainers[method], batches[method], clock)
                step["warmup"] = r < settings.warmup
                steps[method].append(step)
                say(f"{'warm-up' if step['warmup'] else 'step'} {r + 1} {method}: {step['seconds']:.2f}s")
    return summarize_bench(settings, recipe, steps, vocab_size)


def summarize_bench(settings: BenchSettings, recipe, steps: dict[str, list[dict]], vocab_size: int) -> dict:
    measured = {m: [s for s in v if not s["warmup"]] for m, v in steps.items()}
    ratios = [a["seconds"] / b["seconds"] for a, b in zip(measured["mpd"], measured["opd"])]
    methods = {}
    for method, rows in measured.items():
        methods[method] = {
            "median_step_seconds": statistics.median(s["seconds"] for s in rows),
            "phases_median_seconds": {p: statistics.median(s[p] for s in rows) for p in PHASES},
            "peak_memory_bytes_max": None if rows[0]["peak_memory_bytes"] is None else max(s["peak_memory_bytes"] for s in rows),
            "student_tokens_per_sample": statistics.fmean(s["student_tokens_per_sample"] for s in rows),
            "trained_tokens_per_sample": statistics.fmean(s["trained_tokens_per_sample"] for s in rows),
            "rollout_tokens_per_second": _rate(rows, recipe.training.batch_size),
            "steps": rows,
        }
    t = recipe.training
    return {
        "settings": {**asdict(settings), "batch_size": t.batch_size, "completion_length": t.max_completion_length,
                     "rewrite_tokens": recipe.rewrite.max_new_tokens, "method_recipe": recipe.model_dump()},
        "device": describe_device(),
        "vocab_size": vocab_size,
        "n_steps_per_method": len(ratios),
        "ratio_mpd_over_opd": {
            "per_step": ratios,
            "min": min(ratios),
            "median": statistics.median(ratios),
            "max": max(ratios),
        },
        "methods": methods,
    }


def _rate(rows: list[dict], batch_size: int) -> float | None:
    seconds = sum(s["student_rollout"] for s in rows)
    tokens = sum(s["student_tokens_per_sample"] * batch_size for s in rows)
    return tokens / seconds if seconds else None


def format_bench(result: dict) -> str:
    """Markdown: per-phase median seconds for each method, and the ratio with its spread."""
    s = result["settings"]
    m = result["methods"]
    r = result["ratio_mpd_over_opd"]
    lines = [
        f"Device: {result['device']}. Student {s['student']}, teacher {s['teacher']}; batch {s['batch_size']}, "
        f"completion ≤ {s['completion_length']} tokens, rewrite ≤ {s['rewrite_tokens']} tokens "
        f"({'stopped once too long to accept' if s['rewrite_budgets'] else 'no per-rewrite budgets'}); "
        f"{s['warmup']} warm-up + {result['n_steps_per_method']} measured steps per method, alternating.",
        "",
        "| phase (median s) | MPD | OPD |",
        "|---|---:|---:|",
    ]
    for p in PHASES:
        lines.append(f"| {p} | {m['mpd']['phases_median_seconds'][p]:.3f} | {m['opd']['phases_median_seconds'][p]:.3f} |")
    lines.append(f"| **step** | **{m['mpd']['median_step_seconds']:.3f}** | **{m['opd']['median_step_seconds']:.3f}** |")
    for key, label, fmt in (
        ("student_tokens_per_sample", "student tokens / sample (mean)", "{:.1f}"),
        ("trained_tokens_per_sample", "tokens the loss ran on / sample (mean)", "{:.1f}"),
        ("rollout_tokens_per_second", "rollout tokens / s", "{:.0f}"),
    ):
        a, b = m["mpd"][key], m["opd"][key]
        lines.append(f"| {label} | {fmt.format(a) if a is not None else 'n/a'} | {fmt.format(b) if b is not None else 'n/a'} |")
    mem = [m[k]["peak_memory_bytes_max"] for k in ("mpd", "opd")]
    if mem[0] is not None:
        lines.append("| peak GPU memory allocated (MiB) | " + " | ".join(f"{v / 2**20:.0f}" for v in mem) + " |")
    lines += [
        "",
        f"MPD/OPD step time, n = {result['n_steps_per_method']} pairs: median {r['median']:.2f}× "
        f"(min {r['min']:.2f}×, max {r['max']:.2f}×).",
    ]
    return "\n".join(lines) + "\n"
