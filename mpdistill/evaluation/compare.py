"""Compare two evaluation folders written by ``mpdistill eval``: a base run and a new run.

Both runs are read from their folders (:mod:`mpdistill.evaluation.folder`). Per benchmark, problems are
paired by ``id`` over the ids both runs answered, so the two sides are always scored on the same
problems even when one run was interrupted or used a different problem limit. Each problem gets
one score, the fraction of its samples that are correct, and one length, the mean token count of
its samples; a benchmark's accuracy and mean tokens are the means of these over the paired
problems, so every problem weighs the same whatever its number of samples.

Reported per benchmark: each side's accuracy with a 95% Wilson interval, the paired accuracy delta
with its 95% normal-approximation interval, each side's mean tokens, the token reduction and the
AES of O1-Pruner (see :func:`mpdistill.evaluation.stats.aes`). Benchmarks differ in difficulty and length
scale, so nothing is averaged across benchmarks.
"""

from __future__ import annotations

import json
import math
import os
import statistics
from pathlib import Path
from typing import Any, Iterable

from mpdistill.errors import MPDistillError
from mpdistill.evaluation.folder import EvalError, read_eval_folder
from mpdistill.evaluation.stats import AES_COEFFICIENTS, aes, nan_to_none, paired_delta_ci, wilson_interval_mean
from mpdistill.utils.durable import atomic_write, write_text

__all__ = [
    "CompareError",
    "SETTINGS_IGNORED",
    "compare_runs",
    "format_comparison",
    "load_eval_dir",
    "plot_comparison",
    "write_comparison",
]

# Top-level ``settings`` keys that may differ between two runs without making the comparison
# unfair: what was evaluated (problems are paired by id, so benchmark lists and limits may
# differ), how many samples were drawn (shown as k), how they were computed (backend, batching)
# and the seed (two different models draw unrelated samples whatever the seed). Everything else,
# e.g. temperature, top_p, max_new_tokens, thinking or the prompt, changes what an answer can
# look like and is warned about when it differs.
SETTINGS_IGNORED = frozenset(
    {"model", "benchmarks", "limit", "n_samples", "backend", "batch_size", "seed", "sampling_source",
     "max_new_tokens_source", "tensor_parallel_size", "device", "dtype"}
)
GOLD_MODEL = "gold"  # the grader check of ``mpdistill eval``: reference solutions, nothing sampled

COMPARE_NOTE = (
    "Per problem: score = fraction of its samples that are correct, tokens = mean tokens of its "
    "samples; a benchmark's accuracy and mean tokens are means over the n problems answered by both "
    "runs (paired by id). CIs are 95%: Wilson with n = problems for an accuracy (conservative for "
    "per-problem means, whose variance is at most p(1−p)), paired normal approximation of the "
    "per-problem differences for the accuracy delta (undefined for n = 1). Token reduction = "
    "1 − tokens_new / tokens_base. AES = α·ΔL + β·ΔA if ΔA ≥ 0 else α·ΔL − γ·|ΔA|, with "
    "ΔL = (L_base − L_new)/L_base and ΔA = (A_new − A_base)/A_base (α=1, β=3, γ=5, O1-Pruner). "
    "No average across benchmarks: they differ in scale."
)


class CompareError(MPDistillError, ValueError):
    """An evaluation folder that cannot be compared; the message names the folder, file or benchmark."""


# ---------------------------------------------------------------------------------------------
# Reading an evaluation folder.


def load_eval_dir(path: str | os.PathLike) -> dict:
    """One evaluation folder as :func:`mpdistill.evaluation.folder.read_eval_folder` reads it:
    ``{"model", "settings", "samples", "warnings"}``; what cannot be read is a :class:`CompareError`."""
    try:
        return read_eval_folder(path)
    except EvalError as err:
        raise CompareError(str(err)) from None


# ---------------------------------------------------------------------------------------------
# Statistics.


def _group(samples: list[dict]) -> dict[str, dict[str, list[dict]]]:
    """``{benchmark: {id: [samples]}}`` in order of first appearance."""
    grouped: dict[str, dict[str, list[dict]]] = {}
    for s in samples:
        grouped.setdefault(s["benchmark"], {}).setdefault(s["id"], []).append(s)
    return grouped


def _side(problems: list[list[dict]]) -> tuple[dict, list[float], list[str]]:
    """One run's statistics over the paired problems of one benchmark, its per-problem scores, notes."""
    scores = [sum(s["correct"] for s in samples) / len(samples) for samples in problems]
    all_samples = [s for samples in problems for s in samples]
    n_null = sum(s.get("tokens") is None for s in all_samples)
    notes = []
    if n_null == 0:
        mean_tokens: float | None = statistics.fmean(statistics.fmean(s["tokens"] for s in p) for p in problems)
    else:
        mean_tokens = None
        if n_null < len(all_samples):
            notes.append(f"{n_null} of {len(all_samples)} samples have no token count; token fields left empty")
    counts = [len(p) for p in problems]
    k_min, k_max = min(counts), max(counts)
    if k_min != k_max:
        notes.append(f"samples per problem vary from {k_min} to {k_max}")
    lo, hi = wilson_interval_mean(scores)
    stats = {
        "accuracy": statistics.fmean(scores),
        "accuracy_ci95": [lo, hi],
        "mean_tokens": mean_tokens,
        "n_samples": len(all_samples),
        "samples_per_problem": k_min if k_min == k_max else None,
        "samples_per_problem_range": [k_min, k_max],
        "truncation_rate": sum(bool(s.get("truncated", False)) for s in all_samples) / len(all_samples),
    }
    return stats, scores, notes


def _compare_benchmark(name: str, base: dict[str, list[dict]], new: dict[str, list[dict]]) -> tuple[dict, list[str]]:
    ids = [i for i in base if i in new]  # base order
    base_stats, base_scores, base_notes = _side([base[i] for i in ids])
    new_stats, new_scores, new_notes = _side([new[i] for i in ids])
    delta, d_lo, d_hi = paired_delta_ci(base_scores, new_scores)
    tok_base, tok_new = base_stats["mean_tokens"], new_stats["mean_tokens"]
    if tok_base is None or tok_new is None:
        reduction = score = None
    else:
        reduction = 1.0 - tok_new / tok_base if tok_base else math.nan
        score = aes(new_stats["accuracy"], tok_new, base_stats["accuracy"], tok_base, **AES_COEFFICIENTS)
    row = {
        "n_problems": len(ids),
        "only_in_base": sum(i not in new for i in base),
        "only_in_new": sum(i not in base for i in new),
        "base": base_stats,
        "new": new_stats,
        "accuracy_delta": delta,
        "accuracy_delta_ci95": [d_lo, d_hi],
        "token_reduction": reduction,
        "aes": score,
    }
    warnings = [f"{name}, base: {note}" for note in base_notes] + [f"{name}, new: {note}" for note in new_notes]
    if row["only_in_base"] or row["only_in_new"]:
        warnings.append(
            f"{name}: compared on the {len(ids)} problems in both runs; "
            f"{row['only_in_base']} only in base, {row['only_in_new']} only in new were left out"
        )
    return row, warnings


def _flatten(settings: dict, prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in settings.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def _settings_warnings(base: dict, new: dict, ignored: Iterable[str]) -> list[str]:
    """One warning listing the settings that differ, or none when the runs are like for like."""
    skip = set(ignored)
    a = _flatten({k: v for k, v in base.items() if k not in skip})
    b = _flatten({k: v for k, v in new.items() if k not in skip})
    missing = object()

    def show(value: Any) -> str:
        if value is missing:
            return "(unset)"
        text = json.dumps(value, ensure_ascii=False)
        return text if len(text) <= 60 else text[:57] + "..."  # e.g. a prompt template

    diffs = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key, missing), b.get(key, missing)
        if va != vb:
            diffs.append(f"{key}: {show(va)} (base) vs {show(vb)} (new)")
    if not diffs:
        return []
    return ["settings differ, so the comparison is not like for like: " + "; ".join(diffs)]


def compare_runs(
    base_dir: str | os.PathLike, new_dir: str | os.PathLike, ignore_settings: Iterable[str] = SETTINGS_IGNORED
) -> dict:
    """Paired comparison of two evaluation folders, per benchmark, as a JSON-ready dict.

    Benchmarks in only one run, or with no problem id in common, are listed under ``skipped``
    with the reason. ``warnings`` collects everything that makes the comparison less than like
    for like: differing settings (keys in ``ignore_settings`` excepted; not checked against the
    gold grader check, which samples nothing), problems left out by the pairing, varying samples
    per problem, a torn last line, an unfinished run (no summary). Where a side has no token counts
    (the ``--model gold`` grader check) the token fields and AES are None. NaN (e.g. AES with a
    base accuracy of 0, or the delta CI of a single problem) is kept as NaN here and written as
    JSON null by :func:`write_comparison`.
    """
    runs = {"base": load_eval_dir(base_dir), "new": load_eval_dir(new_dir)}
    warnings: list[str] = []
    for side, run in runs.items():
        warnings += [f"{side}: {w}" for w in run["warnings"]]
    if GOLD_MODEL not in (runs["base"]["model"], runs["new"]["model"]):
        warnings += _settings_warnings(runs["base"]["settings"], runs["new"]["settings"], ignore_settings)

    base_groups, new_groups = _group(runs["base"]["samples"]), _group(runs["new"]["samples"])
    benchmarks: dict[str, dict] = {}
    skipped: dict[str, str] = {}
    for name in list(base_groups) + [b for b in new_groups if b not in base_groups]:
        if name not in new_groups:
            skipped[name] = f"only in base ({base_dir})"
        elif name not in base_groups:
            skipped[name] = f"only in new ({new_dir})"
        elif not set(base_groups[name]) & set(new_groups[name]):
            skipped[name] = (
                f"no problem id in common ({len(base_groups[name])} in base, {len(new_groups[name])} in new)"
            )
        else:
            benchmarks[name], notes = _compare_benchmark(name, base_groups[name], new_groups[name])
            warnings += notes
    if not benchmarks:  # an empty table would read as "no difference"
        reasons = "; ".join(f"{name}: {why}" for name, why in skipped.items())
        raise CompareError(f"{base_dir} and {new_dir} have no benchmark with problems in common"
                           + (f" ({reasons})" if reasons else ""))
    return {
        "base": {"dir": str(base_dir), "model": runs["base"]["model"]},
        "new": {"dir": str(new_dir), "model": runs["new"]["model"]},
        "benchmarks": benchmarks,
        "skipped": skipped,
        "warnings": warnings,
        "aes_coefficients": dict(AES_COEFFICIENTS),
    }


# ---------------------------------------------------------------------------------------------
# Reports.


def _pct(fraction: float | None, signed: bool = False) -> str:
    """A fraction as percent (or percentage points) with one decimal; 'n/a' for None or NaN."""
    if fraction is None or math.isnan(fraction):
        return "n/a"
    return ("{:+.1f}" if signed else "{:.1f}").format(100.0 * fraction)


def _num(value: float | None, fmt: str) -> str:
    return "n/a" if value is None or math.isnan(value) else fmt.format(value)


def _reduction(value: float | None) -> str:
    text = _pct(value, signed=True)
    return text if text == "n/a" else text + "%"


def _k(stats: dict) -> str:
    lo, hi = stats["samples_per_problem_range"]
    return str(lo) if lo == hi else f"{lo}–{hi}"


def format_comparison(result: dict) -> str:
    """Markdown table, one row per compared benchmark, followed by one-line notes.

    ``n`` is the number of paired problems behind every number of its row; ``k`` the samples
    per problem of base/new, ``unpaired`` the problems only in base/new (left out).
    """
    header = (
        "| benchmark | n | k base/new | unpaired base/new | base accuracy % [95% CI] | new accuracy % [95% CI] "
        "| Δ accuracy, points [95% CI] | base mean tokens | new mean tokens | token reduction | AES |"
    )
    lines = [header, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in result["benchmarks"].items():
        b, n = r["base"], r["new"]
        d_lo, d_hi = r["accuracy_delta_ci95"]
        row = [
            name,
            str(r["n_problems"]),
            f"{_k(b)}/{_k(n)}",
            f"{r['only_in_base']}/{r['only_in_new']}",
            f"{_pct(b['accuracy'])} [{_pct(b['accuracy_ci95'][0])}, {_pct(b['accuracy_ci95'][1])}]",
            f"{_pct(n['accuracy'])} [{_pct(n['accuracy_ci95'][0])}, {_pct(n['accuracy_ci95'][1])}]",
            f"{_pct(r['accuracy_delta'], signed=True)} [{_pct(d_lo, signed=True)}, {_pct(d_hi, signed=True)}]",
            _num(b["mean_tokens"], "{:.1f}"),
            _num(n["mean_tokens"], "{:.1f}"),
            _reduction(r["token_reduction"]),
            _num(r["aes"], "{:.3f}"),
        ]
        lines.append("| " + " | ".join(row) + " |")
    if not result["benchmarks"]:
        lines.append("| (no benchmark in common) |  |  |  |  |  |  |  |  |  |  |")
    notes = []
    for name, reason in result["skipped"].items():
        notes.append(f"Skipped {name}: {reason}.")
    for warning in result.get("warnings", []):
        notes.append(f"Warning: {warning}")
    notes.append(COMPARE_NOTE)
    return "\n".join(lines) + "\n\n" + "\n\n".join(notes) + "\n"


def plot_comparison(result: dict, path: str | os.PathLike) -> None:
    """Accuracy (%) against mean tokens: one arrow per benchmark from the base run to the new one.

    Benchmarks without token counts cannot be placed and are named under the axes instead. Uses
    the object-oriented Figure API, so no pyplot state or global backend is touched.
    """
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    fig = Figure(figsize=(6.4, 4.8), layout="constrained")
    ax = fig.add_subplot()
    unplotted = []
    for i, (name, r) in enumerate(result["benchmarks"].items()):
        b, n = r["base"], r["new"]
        if b["mean_tokens"] is None or n["mean_tokens"] is None:
            unplotted.append(name)
            continue
        color = f"C{i % 10}"  # the default colour cycle
        start = (b["mean_tokens"], 100.0 * b["accuracy"])
        end = (n["mean_tokens"], 100.0 * n["accuracy"])
        ax.plot(*start, "o", mfc="white", mec=color, ms=7)  # plotted points drive the autoscaling
        ax.plot(*end, "o", color=color, ms=7)
        arrow = {"arrowstyle": "->", "color": color, "lw": 1.5, "shrinkA": 5, "shrinkB": 6}  # clear of the markers
        ax.annotate("", xy=end, xytext=start, arrowprops=arrow)
        ax.annotate(f"{name} (n={r['n_problems']})", end, textcoords="offset points", xytext=(6, 6), color=color)
    ax.legend(
        handles=[
            Line2D([], [], ls="", marker="o", mfc="white", mec="0.3", label="base"),
            Line2D([], [], ls="", marker="o", color="0.3", label="new"),
        ],
        loc="best",
    )
    if len(unplotted) == len(result["benchmarks"]):
        ax.text(0.5, 0.5, "no benchmark with token counts in both runs", transform=ax.transAxes, ha="center")
    xlabel = "mean generated tokens per problem"
    if unplotted:
        xlabel += "\n(no token counts, not plotted: " + ", ".join(unplotted) + ")"
    ax.set_xlabel(xlabel)
    ax.set_ylabel("accuracy (%)")
    title = f"{result['base'].get('model') or 'base'} → {result['new'].get('model') or 'new'}"
    ax.set_title(title, fontsize="medium")
    ax.margins(x=0.2, y=0.15)  # room for the labels of the outermost points
    ax.grid(alpha=0.3)
    fig.savefig(path, dpi=120)


def _markdown(result: dict) -> str:
    base, new = result["base"], result["new"]
    return (
        "# Evaluation comparison\n\n"
        f"Base: {base.get('model')} ({base['dir']}). New: {new.get('model')} ({new['dir']}).\n\n"
        f"{format_comparison(result)}"
    )


def write_comparison(out_dir: str | os.PathLike, result: dict) -> dict[str, Path]:
    """Write ``compare.json``, ``compare.md`` and ``compare.png`` into ``out_dir``, each atomically.

    NaN values are written as JSON ``null``, like the None of missing token counts.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "compare.json", "markdown": out / "compare.md", "plot": out / "compare.png"}
    json_text = json.dumps(nan_to_none(result), indent=2, allow_nan=False, ensure_ascii=False) + "\n"
    write_text(paths["json"], json_text)
    write_text(paths["markdown"], _markdown(result))
    atomic_write(paths["plot"], lambda tmp: plot_comparison(result, tmp))
    return paths
