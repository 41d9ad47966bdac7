"""Training time until rollouts are a given share shorter than the base model's, from a finished
demo folder's training logs (``mpdistill bench --demo-dir``)."""

from __future__ import annotations

import json
from pathlib import Path


def time_to_reduction(demo_dir: str | Path, targets: tuple[float, ...] = (0.25, 0.5)) -> dict:
    """Training seconds until each method's rollouts are ``target`` shorter than the base model's.

    Read from ``DEMO/runs/<method>/train_log.jsonl`` (mean rollout length and mean step time per
    logging window) and ``results.json`` (the base model's mean tokens on the evaluation set, and
    MPD's final reduction, added as a target). A window counts when its mean rollout length is at
    or below the target length; its steps are counted in full.
    """
    demo = Path(demo_dir)
    results = json.loads((demo / "results.json").read_text())
    base_tokens = results["methods"]["base"]["mean_tokens"]
    mpd_final = results["methods"]["mpd"]["token_reduction_vs_base"]
    all_targets = sorted({*targets, round(mpd_final, 3)})
    out = {"base_mean_tokens": base_tokens, "targets": all_targets, "methods": {}}
    # Off-policy KD is left out: its logged completions are the teacher's samples, not the student's.
    for method in ("mpd", "opd", "rewrite_sft"):
        log_path = demo / "runs" / method / "train_log.jsonl"
        if not log_path.exists():
            continue
        entries = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
        windows = [e for e in entries if "completions/mean_length" in e and "step_time" in e]
        reached = {}
        elapsed, last_step = 0.0, 0
        for e in windows:
            elapsed += e["step_time"] * (e["step"] - last_step)
            last_step = e["step"]
            for t in all_targets:
                if str(t) not in reached and e["completions/mean_length"] <= (1 - t) * base_tokens:
                    reached[str(t)] = {"step": e["step"], "seconds": elapsed}
        out["methods"][method] = {"reached": reached, "steps": last_step, "seconds": elapsed,
                                  "final_rollout_tokens": windows[-1]["completions/mean_length"] if windows else None}
    return out


def format_time_to_reduction(result: dict) -> str:
    targets = result["targets"]
    lines = [
        f"Rollout length against the base model's {result['base_mean_tokens']:.1f} evaluation tokens; "
        "seconds of training (sum of logged step times) until a logging window's mean rollout length reaches the target.",
        "",
        "| method | " + " | ".join(f"−{100 * t:.1f}% tokens" for t in targets) + " | after all steps |",
        "|---|" + "---:|" * (len(targets) + 1),
    ]
    for method, m in result["methods"].items():
        cells = []
        for t in targets:
            hit = m["reached"].get(str(t))
            cells.append(f"{hit['seconds']:.0f} s (step {hit['step']})" if hit else "not reached")
        final = m["final_rollout_tokens"]
        cells.append(f"{m['steps']} steps, {m['seconds']:.0f} s, {final:.1f} tokens" if final else "n/a")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
