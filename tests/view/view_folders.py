"""Small training run and evaluation folders in the formats ``mpdistill train`` and ``mpdistill
eval`` write, for the tests of ``mpdistill view``."""

from __future__ import annotations

import json
import random
from pathlib import Path

STEPS = 8
PER_STEP = 16
# Reasons drawn for the samples: several per step, some rarer than others.
REASONS = ["accepted"] * 4 + ["not_shorter"] * 2 + ["answer_changed", "on_policy", "truncated", "student_unparsed"]
# A sample whose trace is too long for a word diff (the page falls back to lines).
LONG_MARKER = "zebracorn"
LONG_WORDS = 12000


def _trace(rng: random.Random, answer: int) -> str:
    lines = []
    total = 0
    for k in range(rng.randint(3, 6)):
        a = rng.randint(1, 9)
        lines.append(f"Step {k + 1}: we add {a} to {total} and get {total + a}.")
        total += a
        if rng.random() < 0.6:
            lines.append(rng.choice(["Wait, let me check that again.", "Hmm, so far so good.",
                                     "Let me verify this step carefully once more."]))
    lines.append(f"So the answer is {answer}.")
    return "\n".join(lines)


def _rewrite(rng: random.Random, trace: str, reason: str, answer: int) -> str | None:
    if reason == "on_policy":
        return None
    kept = [line for line in trace.split("\n") if line.startswith(("Step", "So"))]
    words = " ".join(kept).replace("we add", "add").split()
    if reason == "answer_changed":
        words[-1] = f"{answer + 1}."
    if reason == "not_shorter":
        words += ["Therefore", "this", "is", "the", "final", "result."]
    return " ".join(words)


def rollout_records(seed: int = 0) -> list[dict]:
    """One record per student sample, as MPD's trainer writes them (with the answer fields of newer runs)."""
    rng = random.Random(seed)
    records = []
    for step in range(STEPS):
        for index in range(PER_STEP):
            reason = rng.choice(REASONS)
            gold = rng.randint(10, 40)
            student_answer = gold if rng.random() < 0.7 else gold + 1
            student = _trace(rng, student_answer)
            rewrite = _rewrite(rng, student, reason, student_answer)
            if step == 2 and index == 0:
                reason = "accepted"
                lines = [f"line {k} {LONG_MARKER}" + " word" * 10 for k in range(LONG_WORDS // 12)]
                student, rewrite = "\n".join(lines), "\n".join(lines[::2])
            accepted = reason == "accepted"
            records.append({
                "step": step, "index": index, "prompt": f"Q: problem {step}-{index // 2}\n",
                "student": student, "rewrite": rewrite, "accepted": accepted, "reason": reason,
                "student_tokens": len(student.split()), "rewrite_tokens": None if rewrite is None else len(rewrite.split()),
                "trained_on": "rewrite" if accepted else "student", "route_kept": True if accepted else None,
                "process": 0, "gold": str(gold), "student_answer": str(student_answer),
                "student_correct": student_answer == gold,
            })
    return records


def train_log_entries(records: list[dict]) -> list[dict]:
    """One logged entry per step (logging_steps 1), its metrics computed from that step's samples, then
    the end-of-training summary."""
    entries = []
    steps = sorted({r["step"] for r in records})
    for step in steps:
        mine = [r for r in records if r["step"] == step]
        accepted = [r for r in mine if r["accepted"]]
        reasons = {r["reason"] for r in records} - {"accepted"}
        entries.append({
            "loss": 0.5 / (step + 1), "learning_rate": 1e-4, "mpd/acceptance_rate": len(accepted) / len(mine),
            **({"mpd/compression_ratio": sum(r["rewrite_tokens"] for r in accepted)
                / sum(r["student_tokens"] for r in accepted)} if accepted else {}),
            "mpd/student_tokens": sum(r["student_tokens"] for r in mine) / len(mine),
            **{f"mpd/reject/{reason}": sum(r["reason"] == reason for r in mine) / len(mine) for reason in sorted(reasons)},
            "step_time": 1.5, "epoch": (step + 1) / STEPS, "step": step + 1,
        })
    entries.append({"train_runtime": 9.0, "train_loss": 0.2, "epoch": 1.0, "step": steps[-1] + 1})
    return entries


def jsonl(records: list[dict]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")


def write_run(folder: Path, records: list[dict] | None = None, *, finished: bool = True) -> Path:
    """A run folder as ``mpdistill train`` leaves it (``finished``: with its saved model's record)."""
    records = rollout_records() if records is None else records
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "recipe.yaml").write_text(
        f"method: mpd\ntask: math\nstudent: s\nteacher: t\ntraining:\n  steps: {STEPS}\n  batch_size: {PER_STEP}\n")
    (folder / "rollouts.jsonl").write_bytes(jsonl(records))
    (folder / "train_log.jsonl").write_bytes(jsonl(train_log_entries(records)))
    if finished:
        (folder / "model").mkdir(exist_ok=True)
        (folder / "model" / "mpdistill.json").write_text("{}")
    return folder


# Two evaluations of the same problems: {(benchmark, id): ([base correct per sample], [new correct per sample])}.
# gsm8k has one sample per problem, math500 two (a tie, 1 of 2 right, counts as wrong).
PAIRED = {
    ("gsm8k", "0"): ([True], [True]),
    ("gsm8k", "1"): ([True], [False]),  # right→wrong
    ("gsm8k", "2"): ([False], [True]),  # wrong→right
    ("gsm8k", "3"): ([False], [False]),
    ("gsm8k", "4"): ([False], [True]),  # wrong→right
    ("math500", "a"): ([True, True], [True, False]),  # right→wrong (2/2 → 1/2)
    ("math500", "b"): ([True, False], [True, True]),  # wrong→right (1/2 → 2/2)
    ("math500", "c"): ([True, True], [True, True]),
}
FLIP_COUNTS = {"right→wrong": 2, "wrong→right": 3, "both right": 2, "both wrong": 1}


def eval_samples(side: int, *, only: str | None = None) -> list[dict]:
    """The samples of one side (0: base, 1: new) of PAIRED, as ``mpdistill eval`` writes them."""
    samples = []
    for (benchmark, pid), sides in PAIRED.items():
        for k, correct in enumerate(sides[side]):
            gold = f"{benchmark}-{pid}"
            samples.append({
                "benchmark": benchmark, "id": pid, "sample": k,
                "response": f"Working on {benchmark} {pid} as model {side}. The answer is {gold if correct else 'x'}.",
                "tokens": 100 - 40 * side + 10 * k, "thinking_tokens": None, "answer_tokens": None, "truncated": False,
                "extracted": gold if correct else "x", "gold": gold, "correct": correct,
            })
    return samples


def write_eval(folder: Path, samples: list[dict], *, model: str = "m") -> Path:
    """An evaluation folder as a finished ``mpdistill eval`` leaves it."""
    folder.mkdir(parents=True, exist_ok=True)
    settings = {"model": model, "n_samples": 1, "seed": 0}
    (folder / "eval_config.json").write_text(json.dumps(settings))
    (folder / "summary.json").write_text(json.dumps({"model": model, "settings": settings, "benchmarks": {}}))
    (folder / "samples.jsonl").write_bytes(jsonl(samples))
    return folder
