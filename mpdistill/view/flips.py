"""Two evaluations side by side, problem by problem: which answers flipped from base to new.

Problems are paired by (benchmark, id), as ``mpdistill compare`` pairs them. A problem's score is
the fraction of its samples that are correct; a side gets the problem *right* when more than half
of its samples are (with one sample: when that sample is), so a flip is a change of the majority.
"""

from __future__ import annotations

import statistics

RIGHT_TO_WRONG = "right→wrong"
WRONG_TO_RIGHT = "wrong→right"
BOTH_RIGHT = "both right"
BOTH_WRONG = "both wrong"
# In the order problems are listed: the flips first, regressions before gains.
FLIP_KINDS = (RIGHT_TO_WRONG, WRONG_TO_RIGHT, BOTH_RIGHT, BOTH_WRONG)


def is_right(score: float) -> bool:
    return score > 0.5


def flip_kind(base_score: float, new_score: float) -> str:
    base, new = is_right(base_score), is_right(new_score)
    if base != new:
        return RIGHT_TO_WRONG if base else WRONG_TO_RIGHT
    return BOTH_RIGHT if base else BOTH_WRONG


def group_problems(samples: list[dict]) -> dict[tuple[str, str], list[int]]:
    """``{(benchmark, id): [sample indices]}`` in order of first appearance."""
    problems: dict[tuple[str, str], list[int]] = {}
    for i, s in enumerate(samples):
        problems.setdefault((s["benchmark"], s["id"]), []).append(i)
    return problems


def compare_problems(base: list[dict], new: list[dict]) -> dict:
    """Per paired problem: its flip kind, each side's score, mean tokens and samples (indices into
    ``base`` / ``new``), flips first (the largest change of score first within a kind), and how
    many problems only one side answered."""
    base_problems, new_problems = group_problems(base), group_problems(new)
    rows = []
    for position, (key, base_idx) in enumerate(base_problems.items()):
        new_idx = new_problems.get(key)
        if new_idx is None:
            continue
        base_score, new_score = _score(base, base_idx), _score(new, new_idx)
        rows.append({
            "benchmark": key[0], "id": key[1], "kind": flip_kind(base_score, new_score),
            "base_score": base_score, "new_score": new_score,
            "base_tokens": _mean_tokens(base, base_idx), "new_tokens": _mean_tokens(new, new_idx),
            "base_samples": base_idx, "new_samples": new_idx, "position": position,
        })
    rows.sort(key=lambda r: (FLIP_KINDS.index(r["kind"]), -abs(r["new_score"] - r["base_score"]), r["position"]))
    for r in rows:
        del r["position"]
    return {
        "problems": rows,
        "counts": {kind: sum(r["kind"] == kind for r in rows) for kind in FLIP_KINDS},
        "only_in_base": sum(key not in new_problems for key in base_problems),
        "only_in_new": sum(key not in base_problems for key in new_problems),
    }


def _score(samples: list[dict], indices: list[int]) -> float:
    return sum(samples[i]["correct"] for i in indices) / len(indices)


def _mean_tokens(samples: list[dict], indices: list[int]) -> float | None:
    tokens = [samples[i]["tokens"] for i in indices if samples[i].get("tokens") is not None]
    return statistics.fmean(tokens) if tokens else None
