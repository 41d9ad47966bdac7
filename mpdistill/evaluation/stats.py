"""Statistics and reports for comparing methods on one evaluation set.

Every method is scored on the same problems, so accuracy differences are reported *paired*
against a base method, together with the token reduction and the Accuracy-Efficiency Score (AES)
of O1-Pruner. All intervals are 95% by default: Wilson for an accuracy, normal approximation of
the per-problem differences for an accuracy delta. Sampling and grading are in :mod:`mpdistill.evaluation.runner`.
"""

from __future__ import annotations

import json
import math
import os
import statistics
from pathlib import Path
from typing import Any, Sequence

from mpdistill.utils.durable import atomic_write, write_text

__all__ = [
    "AES_COEFFICIENTS",
    "aes",
    "build_results",
    "format_benchmark_table",
    "format_table",
    "nan_to_none",
    "paired_delta_ci",
    "pass_at_k",
    "plot_tradeoff",
    "summarize",
    "summarize_benchmark",
    "wilson_interval",
    "wilson_interval_mean",
    "write_report",
]

# Coefficients of O1-Pruner's AES (Luo et al. 2025, arXiv 2501.12570).
AES_COEFFICIENTS = {"alpha": 1, "beta": 3, "gamma": 5}
AES_NOTE = (
    "AES = α·ΔL + β·ΔA if ΔA ≥ 0 else α·ΔL − γ·|ΔA|, with ΔL = (L_base − L)/L_base and "
    "ΔA = (A − A_base)/A_base (α=1, β=3, γ=5, O1-Pruner). CIs are 95%: Wilson for accuracy, "
    "paired normal approximation for the accuracy delta."
)


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion ``successes / n``.

    Unlike the normal (Wald) interval it stays inside [0, 1] and keeps its coverage near 0 and 1,
    which matters for small evaluation sets and near-perfect accuracies.
    """
    if n <= 0:
        raise ValueError(f"wilson_interval needs n > 0 trials, got n={n}")
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be in [0, n={n}], got {successes}")
    p = successes / n
    z2 = z * z
    denom = 1.0 + z2 / n
    center = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    return max(0.0, center - half), min(1.0, center + half)


def wilson_interval_mean(scores: Sequence[float], z: float = 1.96) -> tuple[float, float]:
    """Wilson interval for the mean of per-problem scores in [0, 1], with n = number of problems.

    The score sum takes the place of the success count, so it may be fractional when problems
    have several samples. A per-problem mean has variance at most p(1−p) (equality with one
    sample per problem), so treating each problem as one Bernoulli trial gives an interval that is
    at least as wide as needed: conservative, never overconfident.
    """
    n = len(scores)
    successes = min(float(n), max(0.0, math.fsum(scores)))  # guard against rounding past n
    return wilson_interval(successes, n, z)  # type: ignore[arg-type]  # the formula accepts fractions


def paired_delta_ci(a: Sequence[float], b: Sequence[float], z: float = 1.96,
                    bounds: tuple[float, float] | None = (-1.0, 1.0)) -> tuple[float, float, float]:
    """Mean of ``b_i - a_i`` over the same problems, with a normal-approximation CI.

    ``a_i``, ``b_i`` are per-problem scores: a correctness (bool) or, with several samples per
    problem, the fraction of them that are correct. Returns ``(delta, lo, hi)``: the accuracy of b
    minus that of a. Pairing removes the
    between-problem variance that two independent intervals would count twice. The standard
    error uses the sample standard deviation of the differences (n - 1); with a single problem it
    is undefined and the bounds are NaN. When all differences are equal the interval collapses
    to a point, a known weakness of the normal approximation on small sets. ``bounds``: where the
    interval is clipped (a difference of accuracies lies in [-1, 1]); None for unbounded scores
    such as token counts.
    """
    if len(a) != len(b):
        raise ValueError(f"paired_delta_ci needs equal lengths, got len(a)={len(a)} and len(b)={len(b)}")
    if not a:
        raise ValueError("paired_delta_ci needs at least one pair")
    diffs = [float(y) - float(x) for x, y in zip(a, b)]
    delta = statistics.fmean(diffs)
    if len(diffs) < 2:
        return delta, math.nan, math.nan
    half = z * statistics.stdev(diffs) / math.sqrt(len(diffs))
    if bounds is None:
        return delta, delta - half, delta + half
    return delta, max(bounds[0], delta - half), min(bounds[1], delta + half)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one problem from ``n`` samples of which ``c`` are correct (Chen et al. 2021).

    ``1 - C(n-c, k) / C(n, k)``: the chance that at least one of k samples drawn without
    replacement from the n is correct. Computed as a running product, so it stays exact for large n.
    """
    if not 0 < k <= n:
        raise ValueError(f"pass_at_k needs 0 < k <= n, got k={k}, n={n}")
    if not 0 <= c <= n:
        raise ValueError(f"pass_at_k needs 0 <= c <= n, got c={c}, n={n}")
    if n - c < k:
        return 1.0
    miss = 1.0
    for i in range(n - c + 1, n + 1):
        miss *= 1.0 - k / i
    return 1.0 - miss


def aes(
    accuracy: float,
    mean_tokens: float,
    base_accuracy: float,
    base_mean_tokens: float,
    alpha: float = 1.0,
    beta: float = 3.0,
    gamma: float = 5.0,
) -> float:
    """Accuracy-Efficiency Score of O1-Pruner (Luo et al. 2025, arXiv 2501.12570).

    With ``ΔL = (L_base - L) / L_base`` (relative length saving) and
    ``ΔA = (A - A_base) / A_base`` (relative accuracy change)::

        AES = α·ΔL + β·|ΔA|   if ΔA >= 0
        AES = α·ΔL - γ·|ΔA|   otherwise

    The defaults α=1, β=3, γ=5 are O1-Pruner's: a relative accuracy loss is penalised more
    heavily (γ) than a gain is rewarded (β). Accuracies may be fractions or percentages, only
    their ratio is used. Returns NaN when ``base_accuracy`` or ``base_mean_tokens`` is 0, where
    the relative changes are undefined.
    """
    if base_accuracy == 0 or base_mean_tokens == 0:
        return math.nan
    d_length = (base_mean_tokens - mean_tokens) / base_mean_tokens
    d_accuracy = (accuracy - base_accuracy) / base_accuracy
    weight = beta if d_accuracy >= 0 else -gamma
    return alpha * d_length + weight * abs(d_accuracy)


def summarize(records: Sequence[dict]) -> dict:
    """Accuracy (with Wilson CI), token statistics and truncation rate of one method.

    Each record needs ``correct`` (bool) and ``tokens`` (int); ``truncated`` is optional and
    counts as False when absent.
    """
    if not records:
        raise ValueError("summarize needs at least one record")
    n = len(records)
    n_correct = sum(bool(r["correct"]) for r in records)
    tokens = [r["tokens"] for r in records]
    lo, hi = wilson_interval(n_correct, n)
    return {
        "n": n,
        "accuracy": n_correct / n,
        "accuracy_ci95": [lo, hi],
        "mean_tokens": statistics.fmean(tokens),
        "median_tokens": float(statistics.median(tokens)),
        "truncation_rate": sum(bool(r.get("truncated", False)) for r in records) / n,
    }


def build_results(seed: int, records_by_method: dict[str, list[dict]], base: str = "base") -> dict:
    """Per-method summaries plus paired comparisons against ``base``, as a JSON-ready dict.

    All methods must have been run on the same problems in the same order: records are paired
    by position, and when two paired records both carry an ``id`` (or ``prompt``) they must be equal.
    """
    if base not in records_by_method:
        raise ValueError(f"base method {base!r} not among the methods: {sorted(records_by_method)}")
    sizes = {name: len(recs) for name, recs in records_by_method.items()}
    if len(set(sizes.values())) != 1:
        raise ValueError(f"all methods must be evaluated on the same number of problems, got {sizes}")

    base_records = records_by_method[base]
    base_summary = summarize(base_records)
    methods = {}
    for name, records in records_by_method.items():
        if name == base:
            summary, comparison = base_summary, _base_comparison()
        else:
            _check_prompts_aligned(base_records, records, base, name)
            summary = summarize(records)
            comparison = _compare_to_base(summary, records, base_summary, base_records)
        methods[name] = {
            "accuracy": summary["accuracy"],
            "accuracy_ci95": summary["accuracy_ci95"],
            "mean_tokens": summary["mean_tokens"],
            "n": summary["n"],
            **comparison,
            "median_tokens": summary["median_tokens"],
            "truncation_rate": summary["truncation_rate"],
        }
    return {
        "seed": seed,
        "n_eval": base_summary["n"],
        "base_method": base,
        "aes_coefficients": dict(AES_COEFFICIENTS),
        "methods": methods,
    }


def _base_comparison() -> dict:
    """The comparison fields of the base method against itself."""
    return {
        "token_reduction_vs_base": 0.0,
        "accuracy_delta_vs_base": 0.0,
        "accuracy_delta_ci95_vs_base": [0.0, 0.0],
        "aes": 0.0,
    }


def _compare_to_base(summary: dict, records: list[dict], base_summary: dict, base_records: list[dict]) -> dict:
    """Token reduction, paired accuracy delta and AES of one method against the base."""
    base_tokens = base_summary["mean_tokens"]
    delta, lo, hi = paired_delta_ci([r["correct"] for r in base_records], [r["correct"] for r in records])
    return {
        "token_reduction_vs_base": 1.0 - summary["mean_tokens"] / base_tokens if base_tokens else math.nan,
        "accuracy_delta_vs_base": delta,
        "accuracy_delta_ci95_vs_base": [lo, hi],
        "aes": aes(
            summary["accuracy"], summary["mean_tokens"], base_summary["accuracy"], base_tokens, **AES_COEFFICIENTS
        ),
    }


def _check_prompts_aligned(base_records: list[dict], records: list[dict], base: str, name: str) -> None:
    """Raise if a paired record names another problem (``id``, else ``prompt``) than its base counterpart."""
    for i, (b, r) in enumerate(zip(base_records, records)):
        for key in ("id", "prompt"):
            if key in b and key in r and b[key] != r[key]:
                raise ValueError(f"records of {name!r} and base {base!r} are not aligned: {key}s differ at index {i}")


def format_table(results: dict) -> str:
    """Markdown table, one row per method in insertion order, followed by a one-line note."""
    base = results.get("base_method")
    header = (
        "| method | n | accuracy % [95% CI] | mean tokens | token reduction vs base "
        "| Δ accuracy vs base, points [95% CI] | AES |"
    )
    lines = [header, "|---|---:|---:|---:|---:|---:|---:|"]
    for name, m in results["methods"].items():
        lo, hi = m["accuracy_ci95"]
        accuracy = f"{_pct(m['accuracy'])} [{_pct(lo)}, {_pct(hi)}]"
        if name == base:
            reduction = delta = score = "(base)"
        else:
            d_lo, d_hi = m["accuracy_delta_ci95_vs_base"]
            reduction = f"{_pct(m['token_reduction_vs_base'], signed=True)}%"
            delta = (
                f"{_pct(m['accuracy_delta_vs_base'], signed=True)} "
                f"[{_pct(d_lo, signed=True)}, {_pct(d_hi, signed=True)}]"
            )
            score = _num(m["aes"], "{:.3f}")
        row = [name, str(m["n"]), accuracy, _num(m["mean_tokens"], "{:.1f}"), reduction, delta, score]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n\n" + AES_NOTE + "\n"


def _pct(fraction: float, signed: bool = False) -> str:
    """A fraction as percent (or percentage points) with one decimal; 'n/a' for NaN."""
    return _num(100.0 * fraction, "{:+.1f}" if signed else "{:.1f}")


def _num(value: float, fmt: str) -> str:
    return "n/a" if math.isnan(value) else fmt.format(value)


def plot_tradeoff(results: dict, path: str | os.PathLike) -> None:
    """Accuracy (%) against mean tokens, one labelled point per method with its 95% CI.

    Uses the object-oriented Figure API, so no pyplot state or global backend is touched.
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.8), layout="constrained")
    ax = fig.add_subplot()
    for name, m in results["methods"].items():
        acc = 100.0 * m["accuracy"]
        lo, hi = (100.0 * v for v in m["accuracy_ci95"])
        ax.errorbar(m["mean_tokens"], acc, yerr=[[acc - lo], [hi - acc]], fmt="o", capsize=4)
        ax.annotate(name, (m["mean_tokens"], acc), textcoords="offset points", xytext=(6, 6))
    ax.set_xlabel("mean generated tokens per problem")
    ax.set_ylabel("accuracy (%), 95% Wilson CI")
    ax.set_title(f"Accuracy vs. length (n = {results['n_eval']} problems, seed {results['seed']})")
    ax.margins(x=0.15, y=0.1)  # room for the labels of the outermost points
    ax.grid(alpha=0.3)
    fig.savefig(path, dpi=120)


def write_report(out_dir: str | os.PathLike, results: dict) -> dict[str, Path]:
    """Write ``results.json``, ``results.md`` and ``tradeoff.png`` into ``out_dir``.

    Each file is written under a temporary name in the same folder and then renamed over the
    target, so an interrupted run leaves either the old file or the new one, never half of one.
    NaN values (e.g. AES with a zero base accuracy) are written as JSON ``null``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "results.json", "markdown": out / "results.md", "plot": out / "tradeoff.png"}
    json_text = json.dumps(nan_to_none(results), indent=2, allow_nan=False) + "\n"
    write_text(paths["json"], json_text)
    write_text(paths["markdown"], _markdown(results))
    atomic_write(paths["plot"], lambda tmp: plot_tradeoff(results, tmp))
    return paths


def _markdown(results: dict) -> str:
    return (
        "# Evaluation results\n\n"
        + (f"World: {results['world']}.\n\n" if results.get("world") else "")
        + f"Seed: {results['seed']}. Problems per method: n = {results['n_eval']}.\n\n"
        f"{format_table(results)}"
    )


def nan_to_none(value: Any) -> Any:
    """Replace NaN floats by None, recursively, since strict JSON has no NaN."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: nan_to_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [nan_to_none(v) for v in value]
    return value


# ---------------------------------------------------------------------------------------------
# Benchmark summaries: several samples per problem, pass@k.


def summarize_benchmark(records: Sequence[dict]) -> dict:
    """Accuracy, pass@k and token statistics of one benchmark's sample records.

    Accuracy is avg@k: the mean over problems of the fraction of their samples that are correct.
    Its 95% CI is Wilson's with n = number of problems, which is conservative for a mean of
    per-problem fractions (each has variance at most p(1 - p)). pass@k is the unbiased estimator
    for k = 1, 2, 4, ... up to the samples per problem. Token statistics are over samples and are
    None when the records carry no token counts (the grader check).
    """
    if not records:
        raise ValueError("summarize_benchmark needs at least one record")
    by_problem: dict[str, list[dict]] = {}
    for r in records:
        by_problem.setdefault(str(r["id"]), []).append(r)
    sizes = {len(v) for v in by_problem.values()}
    if len(sizes) != 1:
        raise ValueError(f"every problem needs the same number of samples, got sizes {sorted(sizes)}")
    k_max = sizes.pop()
    n_problems = len(by_problem)
    scores = [sum(bool(r["correct"]) for r in rs) / k_max for rs in by_problem.values()]
    accuracy = statistics.fmean(scores)
    lo, hi = wilson_interval_mean(scores)
    ks = sorted({2**i for i in range(k_max.bit_length()) if 2**i <= k_max} | {k_max})
    pass_k = {
        str(k): statistics.fmean(pass_at_k(k_max, sum(bool(r["correct"]) for r in rs), k) for rs in by_problem.values())
        for k in ks
    }
    tokens = [r["tokens"] for r in records if r.get("tokens") is not None]
    thinking = [r["thinking_tokens"] for r in records if r.get("thinking_tokens") is not None]
    answer = [r["answer_tokens"] for r in records if r.get("answer_tokens") is not None]
    n = len(records)
    return {
        "n_problems": n_problems,
        "samples_per_problem": k_max,
        "n_samples": n,
        "accuracy": accuracy,
        "accuracy_ci95": [lo, hi],
        "pass_at_k": pass_k,
        "mean_tokens": statistics.fmean(tokens) if tokens else None,
        "median_tokens": float(statistics.median(tokens)) if tokens else None,
        "mean_thinking_tokens": statistics.fmean(thinking) if thinking else None,
        "mean_answer_tokens": statistics.fmean(answer) if answer else None,
        "samples_with_thinking": len(thinking),
        "truncation_rate": sum(bool(r.get("truncated")) for r in records) / n,
        "no_answer_rate": sum(r.get("extracted") is None for r in records) / n,
    }


def format_benchmark_table(benchmarks: dict[str, dict]) -> str:
    """Markdown table of :func:`summarize_benchmark` results, one row per benchmark."""
    lines = [
        "| benchmark | problems × samples | accuracy % [95% CI] | pass@k % | mean tokens | median tokens "
        "| thinking / answer tokens | truncated % | no answer % |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for name, s in benchmarks.items():
        lo, hi = s["accuracy_ci95"]
        passes = ", ".join(f"@{k} {_pct(v)}" for k, v in s["pass_at_k"].items())
        split = (
            f"{_opt(s['mean_thinking_tokens'])} / {_opt(s['mean_answer_tokens'])} (n={s['samples_with_thinking']})"
            if s["samples_with_thinking"]
            else "—"
        )
        lines.append(
            f"| {name} | {s['n_problems']} × {s['samples_per_problem']} | {_pct(s['accuracy'])} [{_pct(lo)}, {_pct(hi)}] "
            f"| {passes} | {_opt(s['mean_tokens'])} | {_opt(s['median_tokens'])} | {split} "
            f"| {_pct(s['truncation_rate'])} | {_pct(s['no_answer_rate'])} |"
        )
    note = (
        "Accuracy is avg@k over each problem's samples, 95% Wilson CI with n = problems; pass@k is the "
        "unbiased estimator; tokens are the model's own tokenizer's, thinking included, per sample."
    )
    return "\n".join(lines) + "\n\n" + note + "\n"


def _opt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"
