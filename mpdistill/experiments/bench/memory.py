"""Peak memory of MPD and OPD steps by completion length, and of the distillation loss alone.

Peak memory per step is ``torch.cuda.max_memory_allocated`` on a GPU. On CPU a process's
resident set cannot be attributed to one step, so every measurement here runs in a fresh process.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import torch

from mpdistill.experiments.bench.device import describe_device
from mpdistill.experiments.bench.phases import PhaseClock, prepare_to_step, run_step
from mpdistill.experiments.bench.trainers import BenchSettings, build_pair


def _in_fresh_process(fn: Callable, *args):
    """``fn(*args)`` in a newly started process, so its peak memory is its own."""
    import concurrent.futures
    import multiprocessing

    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def bench_memory(settings: BenchSettings, lengths: list[int]) -> dict:
    """Peak memory of an MPD and an OPD step at each completion length, each in a fresh process.

    Each measurement builds one trainer in a new process, runs a warm-up step and a measured step
    at the given completion length, and reports the peak: GPU memory allocated during the measured
    step, or on CPU the process's peak resident set (``ru_maxrss``) and how much of it the loaded
    models already took. Meant for randomly initialised models (config ``.json``), which never stop
    early, so every completion has exactly the given length; the rewrite budget is half of it.
    """
    rows = []
    for length in lengths:
        s = asdict(BenchSettings(**{**asdict(settings), "completion_length": length,
                                    "rewrite_tokens": max(1, length // 2), "warmup": 1, "repeats": 1}))
        row = {"completion_length": length}
        for method in ("mpd", "opd"):
            point = _in_fresh_process(_memory_point, s, method)
            row.update({f"{method}_{k}": v for k, v in point.items()})
        rows.append(row)
    return {"device": describe_device(), "batch_size": point["batch_size"], "student": settings.student,
            "teacher": settings.teacher, "vocab_size": point["vocab_size"], "rows": rows}


def _memory_point(settings: dict, method: str) -> dict:
    """In a fresh process: one warm-up and one measured step of ``method``; its peak memory."""
    import resource

    s = BenchSettings(**settings)
    with tempfile.TemporaryDirectory(prefix="mpdistill-bench-") as tmp:
        recipe, trainers = build_pair(s, Path(tmp), methods=(method,))
        trainer = trainers[method]
        loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        clock = PhaseClock()
        batches = prepare_to_step(trainer, clock, steps=2, budgets=s.rewrite_budgets)
        run_step(trainer, batches, clock)
        step = run_step(trainer, batches, clock)
    gpu = step["peak_memory_bytes"]
    return {
        "peak_bytes": gpu if gpu is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "models_loaded_bytes": None if gpu is not None else loaded,
        "student_tokens": step["student_tokens_per_sample"],
        "batch_size": recipe.training.batch_size,
        "vocab_size": trainer.model.config.get_text_config().vocab_size,
    }


def format_memory(result: dict) -> str:
    gpu = torch.cuda.is_available()
    kind = "GPU allocated in the step" if gpu else "process peak RSS"
    lines = [
        f"Device: {result['device']}. Student {result['student']}, teacher {result['teacher']}, "
        f"batch {result['batch_size']}; each cell a fresh process: one warm-up and one measured step.",
        "",
        f"| completion tokens | MPD peak ({kind}, MiB) | OPD peak (MiB) | MPD / OPD |"
        + ("" if gpu else " OPD above its loaded models (MiB) |")
        + " one fp32 batch × length × vocab tensor (MiB) |",
        "|---:|---:|---:|---:|" + ("" if gpu else "---:|") + "---:|",
    ]
    for r in result["rows"]:
        a, b = r["mpd_peak_bytes"], r["opd_peak_bytes"]
        logits = result["batch_size"] * r["completion_length"] * result["vocab_size"] * 4 / 2**20
        above = "" if gpu else f" {(b - r['opd_models_loaded_bytes']) / 2**20:.0f} |"
        lines.append(f"| {r['completion_length']} | {a / 2**20:.0f} | {b / 2**20:.0f} | {a / b:.2f} |{above} {logits:.0f} |")
    return "\n".join(lines) + "\n"


def bench_loss_memory(token_counts: list[int], vocab_size: int = 151_936, hidden_size: int = 64) -> dict:
    """Peak memory of TRL's chunked divergence loss alone (forward + backward), by tokens in the batch.

    Each count runs in a fresh process on random hidden states and ``lm_head`` weights of the given
    shape (the Qwen3 vocabulary by default), and reports how far the loss raised the peak over what
    its inputs took: on a GPU ``max_memory_allocated``, on CPU ``ru_maxrss``. This is the loss MPD
    and OPD share; it never holds a tokens × vocabulary tensor, only tiles of it.
    """
    rows = [_in_fresh_process(_loss_memory_point, n, vocab_size, hidden_size) for n in token_counts]
    return {"device": describe_device(), "vocab_size": vocab_size, "hidden_size": hidden_size, "rows": rows}


def _loss_memory_point(tokens: int, vocab_size: int, hidden_size: int) -> dict:
    import resource

    from trl.trainer.distillation_trainer import _chunked_divergence_loss

    device = "cuda" if torch.cuda.is_available() else "cpu"
    g = torch.Generator(device=device).manual_seed(0)

    def rand(*shape, grad=False):
        return torch.randn(*shape, generator=g, device=device).requires_grad_(grad)

    ws, wt = rand(vocab_size, hidden_size, grad=True), rand(vocab_size, hidden_size)
    hs, ht = rand(1, tokens, hidden_size, grad=True), rand(1, tokens, hidden_size)
    mask = torch.ones(1, tokens, device=device)

    def peak() -> int:
        if device == "cuda":
            return int(torch.cuda.max_memory_allocated())
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    before = peak()
    start = time.perf_counter()
    loss, _, _ = _chunked_divergence_loss(hs, ht, ws, wt, mask, 0.5)
    loss.backward()
    return {"tokens": tokens, "loss_peak_bytes": peak() - before, "seconds": time.perf_counter() - start,
            "full_logits_bytes": tokens * vocab_size * 4}


def format_loss_memory(result: dict) -> str:
    lines = [
        f"Device: {result['device']}. TRL's chunked generalized JSD (beta 0.5), forward + backward, random "
        f"hidden size {result['hidden_size']}, vocabulary {result['vocab_size']:,}; each row a fresh process.",
        "",
        "| tokens in the batch | peak added by the loss (MiB) | one fp32 tokens × vocab tensor (MiB) | seconds |",
        "|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        lines.append(f"| {r['tokens']} | {r['loss_peak_bytes'] / 2**20:.0f} | {r['full_logits_bytes'] / 2**20:.0f} "
                     f"| {r['seconds']:.1f} |")
    return "\n".join(lines) + "\n"

