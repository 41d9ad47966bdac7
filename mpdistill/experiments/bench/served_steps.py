"""Step time of MPD with a served rewriter, serial and overlapped, against OPD, in one process.

A loopback server (:mod:`mpdistill.experiments.bench.served`, its own process) answers each rewrite request
after a delay set as a fraction of the OPD step (the median of OPD's last three steps, first measured after the warm-up). Three trainers from one
recipe, with the same student weights, teacher, prompts and micro-batches (``gradient_accumulation_steps``
of them per step): OPD, MPD serial (``rewrite.overlap: false``) and MPD overlapped (``true``). Each
round steps every trainer once per latency, the latencies in turn and the trainers in ABC / CBA
order, so a drift of the machine or of training (MPD's students get shorter) hits all alike.
"""

from __future__ import annotations

import statistics
import tempfile
from dataclasses import asdict, replace
from pathlib import Path
from typing import Callable

import torch

from mpdistill.experiments.bench.device import describe_device
from mpdistill.experiments.bench.phases import PHASES, PhaseClock, prepare_to_step, run_step
from mpdistill.experiments.bench.served import ServedRewriter
from mpdistill.experiments.bench.trainers import BenchSettings, build_pair

ARMS = ("opd", "serial", "overlap")
CALIBRATION_STEPS = 3


def run_served_bench(settings: BenchSettings, fractions: list[float], *, accumulation: int = 4,
                     progress: Callable[[str], None] | None = None) -> dict:
    say = progress or (lambda _msg: None)
    rounds = settings.repeats
    total = settings.warmup + rounds * len(fractions) + CALIBRATION_STEPS  # OPD steps the most
    with ServedRewriter() as server, tempfile.TemporaryDirectory(prefix="mpdistill-bench-") as tmp:
        served = {"backend": "openai", "base_url": server.url, "model": "rewriter", "max_concurrency": 64}
        variants = {"opd": {"method": "opd"},
                    "serial": {"method": "mpd", "rewrite": {**served, "overlap": False}},
                    "overlap": {"method": "mpd", "rewrite": {**served, "overlap": True}}}
        s = replace(settings, repeats=total - settings.warmup, batch_size=settings.batch_size or _micro_batch(settings, accumulation),
                    overrides={**settings.overrides, "training": {"gradient_accumulation_steps": accumulation}})
        recipe, trainers = build_pair(s, Path(tmp), variants=variants)
        clock = PhaseClock()
        batches = {a: prepare_to_step(t, clock, steps=total, budgets=settings.rewrite_budgets) for a, t in trainers.items()}
        streams = {a: _RandomStream() for a in ARMS}

        def run(arm: str) -> dict:  # each trainer samples from its own stream, as it would alone
            with streams[arm]:
                return run_step(trainers[arm], batches[arm], clock)

        steps: dict[str, list[dict]] = {a: [] for a in ARMS}
        server.set_delay(0.0)
        for r in range(settings.warmup):
            for arm in ARMS:
                step = run(arm)
                steps[arm].append({**step, "warmup": True, "fraction": None, "delay_s": 0.0})
                say(f"warm-up {r + 1} {arm}: {step['seconds']:.2f}s")
        # The latencies' scale: OPD's step once warm (the first steps of a process are slower).
        for _ in range(CALIBRATION_STEPS):
            steps["opd"].append({**run("opd"), "warmup": True, "calibration": True,
                                 "fraction": None, "delay_s": 0.0})
        recent = [x["seconds"] for x in steps["opd"][-CALIBRATION_STEPS:]]
        opd_step = opd_scale = statistics.median(recent)
        say(f"OPD step {opd_step:.2f}s (median of {CALIBRATION_STEPS}): the latencies' scale")
        for r in range(rounds):
            for j in range(len(fractions)):
                fraction = fractions[(r + j) % len(fractions)]
                # OPD's step drifts (a warming machine, a student that changes): the scale follows its last steps.
                delay = fraction * opd_scale
                server.set_delay(delay)
                for arm in ARMS if (r + j) % 2 == 0 else tuple(reversed(ARMS)):
                    step = run(arm)
                    steps[arm].append({**step, "warmup": False, "fraction": fraction, "delay_s": delay})
                    say(f"round {r + 1}, latency {fraction:g}x {arm}: {step['seconds']:.2f}s")
                    if arm == "opd":
                        recent = (recent + [step["seconds"]])[-CALIBRATION_STEPS:]
                        opd_scale = statistics.median(recent)
    return summarize_served(s, recipe, steps, fractions, opd_step, accumulation)


class _RandomStream:
    """torch's random state for one trainer, swapped in around each of its steps: the trainers share
    one process, and without this each would sample from where the others left the generator, so
    MPD serial and overlapped would sample different traces from their second step on."""

    def __init__(self) -> None:
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None

    def __enter__(self) -> None:
        self._outside = (torch.get_rng_state(), torch.cuda.get_rng_state_all() if self.cuda is not None else None)
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state_all(self.cuda)

    def __exit__(self, *exc) -> None:
        self.cpu = torch.get_rng_state()
        torch.set_rng_state(self._outside[0])
        if self.cuda is not None:
            self.cuda = torch.cuda.get_rng_state_all()
            torch.cuda.set_rng_state_all(self._outside[1])


def _floor(opd: dict, serial: dict, overlap: dict, accumulation: int) -> float:
    """An estimate of the least an overlapped step can take, over OPD's step: the rollout (the serial
    step's, free of the requests' own work), the latency, and one micro-batch's share of the loss (the
    last to run; it holds the longest traces, so its share is if anything larger)."""
    loss = overlap["teacher_scoring"] + overlap["student_forward_backward"]
    return (serial["student_rollout"] + overlap["delay_s"] + loss / accumulation) / opd["seconds"]


def _by_stage(rows: dict[str, list[dict]], accumulation: int) -> list[dict]:
    """The triples of one latency in two halves, earlier and later in training."""
    n = len(rows["opd"])
    halves = [(0, n // 2), (n // 2, n)] if n >= 2 else [(0, n)]
    out = []
    for start, stop in halves:
        o, s, v = (rows[a][start:stop] for a in ARMS)
        out.append({
            "triples": [start + 1, stop],
            "tokens_per_sample": {a: statistics.fmean(x["student_tokens_per_sample"] for x in rows[a][start:stop])
                                  for a in ARMS},
            "serial": statistics.median(b["seconds"] / a["seconds"] for a, b in zip(o, s)),
            "overlap": statistics.median(c["seconds"] / a["seconds"] for a, c in zip(o, v)),
            "floor_estimate": statistics.median(_floor(a, b, c, accumulation) for a, b, c in zip(o, s, v)),
        })
    return out


def _micro_batch(settings: BenchSettings, accumulation: int) -> int:
    """The recipe's batch split into ``accumulation`` micro-batches: the same samples per optimizer step."""
    from mpdistill.run.recipe import load_recipe
    from mpdistill.experiments.demo import RECIPE

    batch = load_recipe(Path(settings.recipe) if settings.recipe else RECIPE).training.batch_size
    return max(1, batch // accumulation)


def summarize_served(settings: BenchSettings, recipe, steps: dict[str, list[dict]], fractions: list[float],
                     opd_step: float, accumulation: int) -> dict:
    levels = []
    for fraction in fractions:
        rows = {a: [x for x in steps[a] if x["fraction"] == fraction] for a in ARMS}
        ratios = {a: [x["seconds"] / o["seconds"] for x, o in zip(rows[a], rows["opd"])] for a in ("serial", "overlap")}
        median = {a: {p: statistics.median(x[p] for x in rows[a]) for p in ("seconds", *PHASES)} for a in ARMS}
        serial_wait, overlap_wait = median["serial"]["teacher_rewrite"], median["overlap"]["teacher_rewrite"]
        levels.append({
            "fraction": fraction,
            "by_stage": _by_stage(rows, accumulation),
            "delay_s": statistics.median(x["delay_s"] for x in rows["serial"]),
            # the delays against the OPD steps measured beside them (the scale follows OPD's last steps)
            "delay_over_opd_step": statistics.median(x["delay_s"] / o["seconds"] for x, o in zip(rows["serial"], rows["opd"])),
            "n_step_triples": len(rows["opd"]),
            "ratio_over_opd": {a: {"median": statistics.median(v), "min": min(v), "max": max(v), "per_step": v}
                               for a, v in ratios.items()},
            "phases_median_seconds": median,
            "rewrite_hidden_share": 1 - overlap_wait / serial_wait if serial_wait else None,
            "trained_tokens_per_sample": {a: statistics.fmean(x["trained_tokens_per_sample"] for x in rows[a]) for a in ARMS},
            "student_tokens_per_sample": {a: statistics.fmean(x["student_tokens_per_sample"] for x in rows[a]) for a in ARMS},
        })
    t = recipe.training
    return {
        "settings": {**asdict(settings), "micro_batch": t.batch_size, "gradient_accumulation_steps": accumulation,
                     "samples_per_step": t.batch_size * accumulation, "completion_length": t.max_completion_length},
        "device": describe_device(),
        "opd_step_seconds_warmup": opd_step,
        "levels": levels,
        "steps": steps,
    }


def format_served(result: dict) -> str:
    s = result["settings"]
    lines = [
        f"Device: {result['device']}. Student {s['student']}, teacher {s['teacher']}; {s['samples_per_step']} samples "
        f"per optimizer step in {s['gradient_accumulation_steps']} micro-batches of {s['micro_batch']}, completions "
        f"≤ {s['completion_length']} tokens. Rewrites from a loopback server answering after a set delay (a fraction "
        f"of OPD's step: the median of its last {CALIBRATION_STEPS} steps, {result['opd_step_seconds_warmup']:.2f} s after the warm-up); OPD, MPD serial and MPD "
        "overlapped stepped in turn (ABC/CBA), each latency in turn.",
        "",
        "| rewrite latency | n | MPD serial / OPD: median (min–max) | MPD overlapped / OPD: median (min–max) | "
        "rewrite wait serial → overlapped (median s) | rewrite time hidden |",
        "|---|---:|---|---|---|---:|",
    ]
    for lv in result["levels"]:
        r = lv["ratio_over_opd"]
        m = lv["phases_median_seconds"]
        hidden = lv["rewrite_hidden_share"]
        lines.append(
            f"| {lv['fraction']:g}× OPD step ({lv['delay_s']:.2f} s; {lv['delay_over_opd_step']:.2f}× the OPD steps beside it) | "
            f"{lv['n_step_triples']} | "
            f"{r['serial']['median']:.2f}× ({r['serial']['min']:.2f}–{r['serial']['max']:.2f}) | "
            f"**{r['overlap']['median']:.2f}×** ({r['overlap']['min']:.2f}–{r['overlap']['max']:.2f}) | "
            f"{m['serial']['teacher_rewrite']:.3f} → {m['overlap']['teacher_rewrite']:.3f} | "
            f"{'n/a' if hidden is None else f'{hidden:.0%}'} |")
    lines += ["", "Phases (median s) at each latency: OPD / MPD serial / MPD overlapped", "",
              "| phase | " + " | ".join(f"{lv['fraction']:g}×" for lv in result["levels"]) + " |",
              "|---|" + "---|" * len(result["levels"])]
    for p in ("seconds", *PHASES):
        cells = [" / ".join(f"{lv['phases_median_seconds'][a][p]:.3f}" for a in ARMS) for lv in result["levels"]]
        lines.append(f"| {'**step**' if p == 'seconds' else p} | " + " | ".join(cells) + " |")
    lines += ["", "By stage of training (median of each half's per-triple ratios; the floor estimate is the serial "
              "rollout + the latency + one micro-batch's share of the overlapped loss, over OPD's step):", "",
              "| latency | triples | MPD / OPD tokens per sample | serial | overlapped | floor estimate |",
              "|---|---|---|---:|---:|---:|"]
    for lv in result["levels"]:
        for st in lv["by_stage"]:
            t = st["tokens_per_sample"]
            lines.append(f"| {lv['fraction']:g}× | {st['triples'][0]}–{st['triples'][1]} | {t['overlap']:.0f} / "
                         f"{t['opd']:.0f} | {st['serial']:.2f}× | {st['overlap']:.2f}× | {st['floor_estimate']:.2f}× |")
    return "\n".join(lines) + "\n"
