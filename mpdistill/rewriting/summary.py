"""What ``mpdistill rewrite`` reports about a file of rewrites: the share accepted with its 95% Wilson
interval, token means and compression, the share that keeps the student's route, and each rejection
reason's count."""

from __future__ import annotations

from collections import Counter

from mpdistill.evaluation.stats import wilson_interval


def summarize_rewrites(records: list[dict]) -> dict:
    """Acceptance (with a 95% Wilson interval), token means, compression and rejection reasons."""
    n = len(records)
    accepted = [r for r in records if r["accepted"]]
    lo, hi = wilson_interval(len(accepted), n) if n else (0.0, 0.0)
    kept_trace = sum(r["trace_tokens"] for r in accepted)
    kept_rewrite = sum(r["rewrite_tokens"] for r in accepted)
    return {
        "n": n,
        "accepted": len(accepted),
        "accept_rate": len(accepted) / n if n else 0.0,
        "accept_ci95": [lo, hi],
        "mean_trace_tokens": sum(r["trace_tokens"] for r in records) / n if n else None,
        "mean_rewrite_tokens_accepted": kept_rewrite / len(accepted) if accepted else None,
        # Tokens of the accepted rewrites over the tokens of the traces they replace.
        "compression": kept_rewrite / kept_trace if accepted else None,
        "rejected": dict(sorted(Counter(r["reason"] for r in records if not r["accepted"]).items())),
        # Of the accepted rewrites, the share that walks the student's route (Task.route_kept).
        "route_kept": _share([r["route_kept"] for r in accepted if r.get("route_kept") is not None]),
    }


def _share(flags: list[bool]) -> float | None:
    """The share of true values (None for none: rows written before route_kept was recorded have none)."""
    return sum(flags) / len(flags) if flags else None


def format_summary(summary: dict) -> str:
    lines = [
        f"rows: {summary['n']} ({summary.get('generated', 0)} rewritten now, {summary.get('resumed', 0)} found in --out)",
        f"accepted: {summary['accepted']}/{summary['n']} = {summary['accept_rate']:.1%} "
        f"(95% CI {summary['accept_ci95'][0]:.1%}-{summary['accept_ci95'][1]:.1%})",
        f"mean trace tokens: {_num(summary['mean_trace_tokens'])}",
        f"mean rewrite tokens (accepted): {_num(summary['mean_rewrite_tokens_accepted'])}",
        f"compression (accepted rewrite / trace tokens): {_num(summary['compression'], 3)}",
    ]
    if summary.get("route_kept") is not None:
        lines.append(f"accepted rewrites that keep the student's route: {summary['route_kept']:.1%}")
    if summary["rejected"]:
        lines.append("rejected: " + ", ".join(f"{k} {v}" for k, v in summary["rejected"].items()))
    failures = summary.get("backend_failures")
    if failures:
        lines.append("backend failures: " + ", ".join(f"{k} {v}" for k, v in sorted(failures.items())))
    return "\n".join(lines)


def _num(value, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"
