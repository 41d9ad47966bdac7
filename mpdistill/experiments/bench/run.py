"""The whole of ``mpdistill bench``: what a request asks to measure, checked before anything runs (a
bad list or an output that cannot be written fails in a second, not after an hour of steps), then
each measurement in turn, printed as it finishes and gathered into one JSON result."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from mpdistill.errors import ConfigError
from mpdistill.experiments.bench.trainers import BenchSettings, QUICK


def bench_settings(*, quick: bool, student: str, teacher: str, tokenizer: str | None, seed: int, rewrite_budgets: bool,
                   **given: int | None) -> BenchSettings:
    """The shapes to step at: what was given, else ``--quick``'s, else the defaults (2 warm-up steps,
    10 measured). A count of 0 (or -1) is refused, not read as "the default"."""
    for name, value in given.items():
        least = 0 if name == "warmup" else 1
        if value is not None and value < least:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least {least}, got {value}")
    defaults = {"warmup": 2, "repeats": 10, **(QUICK if quick else {})}
    chosen = {k: v if v is not None else defaults.get(k) for k, v in given.items()}
    return BenchSettings(student=student, teacher=teacher, tokenizer=tokenizer, seed=seed,
                         rewrite_budgets=rewrite_budgets, **chosen)


def parse_fractions(option: str, text: str) -> list[float]:
    """A comma-separated list of positive numbers, or an error naming the option."""
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        values = []
    if not values or not all(math.isfinite(v) and v > 0 for v in values):  # nan and inf are no fraction
        raise ConfigError(f"{option} takes comma-separated positive numbers (fractions of the OPD step), got {text!r}")
    return values


def parse_counts(option: str, text: str) -> list[int]:
    """A comma-separated list of positive integers, or an error naming the option."""
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise ConfigError(f"{option} takes comma-separated positive integers, got {text!r}")
    return values


@dataclass
class BenchRequest:
    """Which measurements to make (see ``mpdistill bench --help`` for each)."""

    settings: BenchSettings
    steps: bool = True
    served_latency: list[float] | None = None
    accumulation: int = 4
    memory_lengths: list[int] | None = None
    loss_memory: list[int] | None = None
    eval_throughput: bool = False
    rollout_throughput: bool = False
    throughput_model: str = "embedded:teacher"
    demo_dir: Path | None = None
    quick: bool = False
    json_out: Path | None = None

    def check(self) -> None:
        """What can fail before any step runs: the output file, the demo folder, a vLLM engine."""
        if self.json_out is not None:
            from mpdistill.utils.paths import check_output_file

            check_output_file(self.json_out, "--json")
        if self.demo_dir is not None and not (self.demo_dir / "results.json").exists():
            raise ConfigError(f"--demo-dir {self.demo_dir}: no results.json there (run mpdistill demo first)")
        if self.rollout_throughput:
            from mpdistill.models.loading import resolve_model
            from mpdistill.rollout.vllm import check_engine

            check_engine("--rollout-throughput", 1, tp_key="tensor parallel size",
                         models={f"--throughput-model {self.throughput_model!r}": resolve_model(self.throughput_model)})


def run_bench_request(request: BenchRequest, say: Callable[[str], None]) -> dict:
    """Every measurement the request asks for, each table passed to ``say`` as it is ready; the result
    (also written to ``request.json_out``)."""
    from mpdistill.experiments.bench.generation import bench_eval, bench_rollouts, format_eval, format_rollouts
    from mpdistill.experiments.bench.memory import bench_loss_memory, bench_memory, format_loss_memory, format_memory
    from mpdistill.experiments.bench.reduction import format_time_to_reduction, time_to_reduction
    from mpdistill.experiments.bench.steps import format_bench, run_bench

    request.check()
    r, settings, result = request, request.settings, {}
    if r.steps:
        result["steps"] = run_bench(settings, progress=say)
        say(format_bench(result["steps"]))
    if r.served_latency:
        from mpdistill.experiments.bench.served_steps import format_served, run_served_bench

        result["served"] = run_served_bench(settings, r.served_latency, accumulation=r.accumulation, progress=say)
        say(format_served(result["served"]))
    if r.memory_lengths:
        result["memory"] = bench_memory(settings, r.memory_lengths)
        say(format_memory(result["memory"]))
    if r.loss_memory:
        result["loss_memory"] = bench_loss_memory(r.loss_memory)
        say(format_loss_memory(result["loss_memory"]))
    if r.eval_throughput:
        result["eval"] = bench_eval(n=40 if r.quick else 200, max_new_tokens=256)
        say(format_eval(result["eval"]))
    if r.rollout_throughput:
        result["rollouts"] = bench_rollouts(r.throughput_model, n=64 if r.quick else 256, repeats=2 if r.quick else 3)
        say(format_rollouts(result["rollouts"]))
    if r.demo_dir is not None:
        result["time_to_reduction"] = time_to_reduction(r.demo_dir)
        say(format_time_to_reduction(result["time_to_reduction"]))
    if r.json_out is not None:
        r.json_out.parent.mkdir(parents=True, exist_ok=True)
        r.json_out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        say(f"wrote {r.json_out}")
    return result
