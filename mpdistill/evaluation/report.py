"""What ``mpdistill eval`` reports once every sample is graded: per-benchmark summaries, their
table and Markdown page, and warnings about answers cut at the budget or never read."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mpdistill.evaluation.stats import format_benchmark_table, summarize_benchmark

if TYPE_CHECKING:
    from mpdistill.evaluation.settings import EvalSpec

# More than this share of a benchmark's samples cut at the budget is warned about: their answers are lost.
TRUNCATION_WARNING = 0.05


def summarize_benchmarks(benchmarks, records: list[dict], *, gold: bool, seed: int) -> dict[str, dict]:
    """:func:`mpdistill.evaluation.stats.summarize_benchmark` per benchmark; for the grader check (``gold``)
    also how often a reference is graded correct against another problem's gold."""
    per_benchmark = {}
    for b in benchmarks:
        mine = [r for r in records if r["benchmark"] == b.name]  # in item order: one sample each for gold
        per_benchmark[b.name] = summarize_benchmark(mine)
        if gold:
            from mpdistill.tasks.benchmarks import shuffled_gold_check

            extracted = [r["extracted"] for r in mine]
            per_benchmark[b.name]["shuffled_gold"] = shuffled_gold_check(b, extracted, shuffle_seed=seed)
    return per_benchmark


def format_summary_table(per_benchmark: dict, *, gold: bool) -> str:
    """The table printed, and written under the header of the summary's Markdown page."""
    table = format_benchmark_table(per_benchmark)
    if gold:
        table += "\n" + _shuffled_lines(per_benchmark)
    return table


def format_summary_markdown(summary: dict, table: str) -> str:
    """The summary's Markdown page: the model and its settings in one paragraph, then the table."""
    s = summary["settings"]
    counts = sorted(set(s["n_samples"].values())) if isinstance(s["n_samples"], dict) else [s["n_samples"]]
    per_problem = str(counts[0]) if len(counts) == 1 else ", ".join(f"{k} {v}" for k, v in s["n_samples"].items())
    header = (
        f"# Evaluation of `{summary['model']}`\n\n"
        f"Backend {s['backend']}, {per_problem} sample(s) per problem, max {s['max_new_tokens']} new tokens, "
        f"temperature {s['temperature']}, top-p {s['top_p']}, top-k {s['top_k']} ({s['sampling_source']}), "
        f"thinking {s['thinking']}, seed {s['seed']}.\n\n"
    )
    return header + table


def truncation_warnings(per_benchmark: dict, max_new_tokens: int | None) -> list[str]:
    """One line per benchmark whose samples were cut at the budget more often than TRUNCATION_WARNING."""
    lines = []
    for name, s in per_benchmark.items():
        rate = s.get("truncation_rate") or 0.0
        if max_new_tokens is not None and rate > TRUNCATION_WARNING:
            lines.append(f"{name}: {100 * rate:.1f}% of {s['n_samples']} samples were cut at {max_new_tokens} new "
                         "tokens, so their answers are missing and accuracy is understated; raise --max-new-tokens")
    return lines


def unread_warnings(per_benchmark: dict, spec: EvalSpec) -> list[str]:
    """A benchmark where no sample had an answer the task could read: most likely the wrong task or prompt."""
    return [f"{name}: no answer could be read from any of its {s['n_samples']} samples with the {spec.task} task; "
            "check --task and --prompt-template (the model may answer in another format)"
            for name, s in per_benchmark.items() if s.get("n_samples") and s.get("no_answer_rate") == 1]


def _shuffled_lines(per_benchmark: dict) -> str:
    """The grader check's false-positive rate: references graded against another problem's gold."""
    lines = []
    for name, s in per_benchmark.items():
        sh = s["shuffled_gold"]
        lines.append(f"{name}: golds shuffled between problems graded correct {sh['correct']}/{sh['n']} "
                     f"({100 * sh['rate']:.2f}%; {sh['same_gold_pairs']} pairs share the same gold)")
    return "\n".join(lines) + "\n"
