"""Training curves of several runs on one figure: how long the student's samples are, what the
loss trains on, and how many of the teacher's rewrites (or samples) are kept, per step.

Read from each run's ``train_log.jsonl``; the demo draws its methods' (``curves.png``).
"""

from __future__ import annotations

import os
from pathlib import Path

from mpdistill.utils.paths import TRAIN_LOG
from mpdistill.view.load import read_train_log

# Per-step series: (metric key, what it is). The first present in a run's log is drawn.
STUDENT_LENGTH = ("mpd/student_tokens", "completions/mean_length")
KEPT = (("mpd/acceptance_rate", "rewrites accepted"), ("kd/kept_rate", "teacher samples kept"))


def read_log(run_dir: str | os.PathLike) -> list[dict]:
    """The per-step entries of a run's ``train_log.jsonl`` (not the end-of-training summary), as the
    viewer reads them."""
    entries, _ = read_train_log(Path(run_dir) / TRAIN_LOG, warnings=[])
    return entries


def series(log: list[dict], key: str) -> tuple[list[int], list[float]]:
    points = [(r["step"], float(r[key])) for r in log if isinstance(r.get(key), (int, float))]
    return [s for s, _ in points], [v for _, v in points]


def plot_training_curves(runs: dict[str, str | os.PathLike], path: str | os.PathLike, *, title: str = "") -> None:
    """Two panels, one line per run: tokens per step (solid: the student's samples; dashed, for the
    methods that train on rewrites: what the loss ran on) and the share of rewrites accepted or
    teacher samples kept. Off-policy KD's lengths are the teacher's samples: its student samples nothing."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(11, 4.2), layout="constrained")
    tokens, kept = fig.subplots(1, 2)
    for i, (name, run_dir) in enumerate(runs.items()):
        log, color = read_log(run_dir), f"C{i}"
        teacher_samples = any("kd/kept_rate" in r for r in log)
        key = next((k for k in STUDENT_LENGTH if any(k in r for r in log)), None)
        if key is not None:
            label = f"{name} (teacher samples)" if teacher_samples else name
            tokens.plot(*series(log, key), color=color, label=label)
        steps, trained = series(log, "mpd/trained_tokens")
        if steps:
            tokens.plot(steps, trained, color=color, linestyle="--", label=f"{name}: trained on")
        for metric, what in KEPT:
            steps, values = series(log, metric)
            if steps:
                kept.plot(steps, [100 * v for v in values], color=color, label=f"{name}: {what}")
    tokens.set(xlabel="optimizer step", ylabel="mean tokens per sample", title="Length per step")
    kept.set(xlabel="optimizer step", ylabel="% of the step's samples", title="Rewrites accepted / samples kept",
             ylim=(0, 105))
    for ax in (tokens, kept):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.savefig(path, dpi=110)
