"""SmolLM2-135M-Instruct, a real pretrained instruct model with its real chat template, through the
path a user takes: eval -> rewrite (from the eval folder as it is) -> a 2-step MPD run -> eval ->
compare, each as a command in a fresh process, and its rewrites of GSM8K's reference solutions. Student and teacher are the same model (no sibling
shares its tokenizer): the run is plumbing, and says so with a warning."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

pytestmark = pytest.mark.real_lm

SHIPPED_GSM8K = Path(__file__).resolve().parents[2] / "mpdistill" / "assets" / "benchmarks" / "gsm8k" / "test.jsonl"


def run(*args, cwd: Path) -> str:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "COLUMNS": "200"}
    proc = subprocess.run([sys.executable, "-m", "mpdistill.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=1200)
    assert proc.returncode == 0, f"mpdistill {' '.join(map(str, args))}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


def reasons(rows: list[dict]) -> str:
    return ", ".join(f"{k} {v}" for k, v in Counter(r["reason"] for r in rows).most_common())


def test_a_real_instruct_model_through_eval_rewrite_train_eval_compare(smollm2, tmp_path, report):
    budget = ["--max-new-tokens", "96", "--temperature", "0", "--limit", "8"]
    run("eval", "--model", smollm2, "--benchmarks", "gsm8k", *budget, "--out", "base-eval", cwd=tmp_path)
    samples = [json.loads(line) for line in (tmp_path / "base-eval" / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 8 and all(s["problem"] and s["response"] for s in samples)

    # The evaluation's folder is the rewrite's input as it is.
    run("rewrite", "--input", "base-eval", "--out", "rewrites.jsonl", "--teacher", smollm2, "--task", "math",
        "--max-new-tokens", "96", cwd=tmp_path)
    rewrites = [json.loads(line) for line in (tmp_path / "rewrites.jsonl").read_text().splitlines()]
    assert [r["trace"] for r in rewrites] == [s["response"] for s in samples]
    assert all(r["reason"] not in (None, "backend_error") for r in rewrites)

    # Its own answers rarely carry one to keep at this budget; GSM8K's reference solutions (graded as
    # `--model gold`) are worked solutions with an answer, which show what its rewrites look like.
    run("eval", "--model", "gold", "--benchmarks", "gsm8k", "--limit", "16", "--out", "references", cwd=tmp_path)
    run("rewrite", "--input", "references", "--out", "reference-rewrites.jsonl", "--teacher", smollm2, "--task", "math",
        "--max-new-tokens", "128", cwd=tmp_path)
    of_references = [json.loads(line) for line in (tmp_path / "reference-rewrites.jsonl").read_text().splitlines()]
    assert len(of_references) == 16 and all(r["reason"] not in (None, "backend_error") for r in of_references)
    accepted = [r for r in of_references if r["accepted"]]

    # Training problems from the shipped GSM8K file, disjoint from the 8 evaluated.
    lines = SHIPPED_GSM8K.read_text().splitlines()[100:108]
    (tmp_path / "train.jsonl").write_text("\n".join(lines) + "\n")
    (tmp_path / "recipe.yaml").write_text(json.dumps({
        "method": "mpd", "task": "math", "student": str(smollm2), "teacher": str(smollm2),
        "data": {"train": "train.jsonl", "question_field": "question", "answer_field": "answer",
                 "prompt_style": "chat", "n_train": 8},
        "training": {"steps": 2, "batch_size": 4, "max_completion_length": 96, "learning_rate": 1e-5,
                     "logging_steps": 1},
        # The floors would stop a run whose traces carry no answer (most of this model's); here the
        # point is the path, so they are off.
        "rewrite": {"max_new_tokens": 96, "batch_size": 4, "min_parsed_fraction": 0.0, "min_acceptance_rate": 0.0},
    }))
    out = run("train", "recipe.yaml", "--out", "run", cwd=tmp_path)
    assert "student and teacher are the same model" in out
    rollouts = [json.loads(line) for line in (tmp_path / "run" / "rollouts.jsonl").read_text().splitlines()]
    assert sorted((r["step"], r["index"]) for r in rollouts) == [(s, i) for s in range(2) for i in range(4)]
    model = tmp_path / "run" / "model"
    assert json.loads((model / "config.json").read_text())["use_cache"] is True
    assert not (model / "training_args.bin").exists()

    run("eval", "--model", model, "--benchmarks", "gsm8k", *budget, "--out", "new-eval", cwd=tmp_path)
    compared = run("compare", "base-eval", "new-eval", "--out", "compare", cwd=tmp_path)
    assert "gsm8k" in compared and (tmp_path / "compare" / "compare.json").is_file()

    base = json.loads((tmp_path / "base-eval" / "summary.json").read_text())["benchmarks"]["gsm8k"]
    route = [r["route_kept"] for r in accepted if r.get("route_kept") is not None]
    report(f"SmolLM2-135M-Instruct, 8 GSM8K problems, greedy, 96 tokens: {base['accuracy']:.0%} correct, "
           f"{base['mean_tokens']:.0f} mean tokens, {base['no_answer_rate']:.0%} without a readable answer")
    report(f"rewrite of those 8 answers by the same model: {reasons(rewrites)}")
    report(f"rewrite of 16 GSM8K reference solutions by it: {len(accepted)} accepted ({reasons(of_references)}); "
           f"route kept in {sum(route)} of {len(route)} accepted")
    report(f"MPD, 2 steps x 4 rollouts: {reasons(rollouts)}")
