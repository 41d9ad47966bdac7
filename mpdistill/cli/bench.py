"""``mpdistill bench``: what an MPD step costs next to OPD's (the work is :mod:`mpdistill.experiments.bench`)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from mpdistill.cli.app import app, one_line_errors
from mpdistill.utils.console import stdout as console


@app.command("bench")
@one_line_errors
def bench_cmd(
    quick: bool = typer.Option(False, "--quick", help="A small run that checks every field (for tests)."),
    steps: bool = typer.Option(True, "--steps/--no-steps", help="Time MPD and OPD steps (default), or only the extras."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the full result as JSON."),
    student: str = typer.Option("embedded:student", "--student", help="Model, or a config .json for random weights."),
    teacher: str = typer.Option("embedded:teacher", "--teacher", help="Model, or a config .json for random weights."),
    tokenizer: Optional[str] = typer.Option(None, "--tokenizer", help="Tokenizer folder (with config .json models)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Default: the recipe's (--quick: 4)."),
    completion_length: Optional[int] = typer.Option(None, "--completion-length",
                                                    help="Default: the recipe's (--quick: 128)."),
    rewrite_tokens: Optional[int] = typer.Option(None, "--rewrite-tokens", help="Default: the recipe's."),
    prompt_length: int = typer.Option(128, "--prompt-length", help="Synthetic prompt tokens (random-weight models)."),
    warmup: Optional[int] = typer.Option(None, "--warmup", help="Steps per method before measuring (default 2; --quick: 1)."),
    repeats: Optional[int] = typer.Option(None, "--repeats", help="Measured steps per method (default 10; --quick: 2)."),
    seed: int = typer.Option(0, "--seed"),
    memory_lengths: Optional[str] = typer.Option(None, "--memory-lengths",
                                                 help="Comma-separated completion lengths: peak memory of MPD and OPD at each."),
    loss_memory: Optional[str] = typer.Option(None, "--loss-memory",
                                              help="Comma-separated token counts: peak memory of the distillation loss alone."),
    eval_throughput: bool = typer.Option(False, "--eval-throughput",
                                         help="Also time batched evaluation against a one-prompt-at-a-time loop."),
    rollout_throughput: bool = typer.Option(False, "--rollout-throughput",
                                            help="Also time rollouts on vLLM against transformers, same model and prompts "
                                            "(needs vLLM; its CPU build works here)."),
    throughput_model: str = typer.Option("embedded:teacher", "--throughput-model",
                                         help="Model for --rollout-throughput (the embedded student's head size has no "
                                         "kernel in vLLM's CPU build)."),
    demo_dir: Optional[Path] = typer.Option(None, "--demo-dir", help="A finished demo folder: training time to each token reduction."),
    rewrite_budgets: bool = typer.Option(True, "--rewrite-budgets/--no-rewrite-budgets",
                                         help="Stop each rewrite once it is too long to be accepted (default), or not."),
    served_latency: Optional[str] = typer.Option(
        None, "--served-latency", help="Comma-separated fractions of the OPD step (e.g. 0.25,0.5,1): MPD with a served "
        "rewriter answering after that delay, serial and overlapped, against OPD."),
    accumulation: int = typer.Option(4, "--accumulation", min=1,
                                     help="With --served-latency: micro-batches per optimizer step (the recipe's batch "
                                     "is split into them unless --batch-size sets each one's size)."),
) -> None:
    """MPD's training step against TRL's on-policy distillation step, phase by phase, in one process."""
    from mpdistill.experiments.bench.run import BenchRequest, bench_settings, parse_counts, parse_fractions, run_bench_request

    settings = bench_settings(quick=quick, student=student, teacher=teacher, tokenizer=tokenizer, seed=seed,
                              rewrite_budgets=rewrite_budgets, batch_size=batch_size,
                              completion_length=completion_length, rewrite_tokens=rewrite_tokens,
                              prompt_length=prompt_length, warmup=warmup, repeats=repeats)
    request = BenchRequest(
        settings, steps=steps, accumulation=accumulation, eval_throughput=eval_throughput,
        rollout_throughput=rollout_throughput, throughput_model=throughput_model, demo_dir=demo_dir, quick=quick,
        json_out=json_out,
        served_latency=parse_fractions("--served-latency", served_latency) if served_latency is not None else None,
        memory_lengths=parse_counts("--memory-lengths", memory_lengths) if memory_lengths else None,
        loss_memory=parse_counts("--loss-memory", loss_memory) if loss_memory else None)
    run_bench_request(request, say=lambda text: console.print(text, markup=False, highlight=False, soft_wrap=True))
