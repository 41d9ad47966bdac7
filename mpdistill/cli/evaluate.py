"""``mpdistill eval | compare``: a model on benchmarks, and two evaluations side by side."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from mpdistill.cli.app import ALLOW_PICKLE, TRUST_REMOTE_CODE, app, interrupted, one_line_errors, storage_failed
from mpdistill.utils.console import stdout as console


@app.command("eval")
@one_line_errors
def eval_cmd(
    model: str = typer.Option(..., "--model", help="Checkpoint folder, Hub name, embedded:student|teacher, or 'gold' "
                              "(grade each benchmark's reference solutions: a check of the grader)."),
    benchmarks: Optional[str] = typer.Option(
        None, "--benchmarks", help="Comma-separated shipped names (gsm8k, math500, aime24, aime25, amc23; chain: the "
        "demo's held-out problems), .jsonl/.parquet files or Hugging Face dataset names. Default: the task's "
        "(math: the five math sets; chain: chain)."),
    task: Optional[str] = typer.Option(
        None, "--task", help="How answers are read and compared, and the prompt a question becomes: math (\\boxed{}) "
        "or chain (A:<digit>). Default: the model's, as its training recorded it (embedded models: chain), else math."),
    out: Path = typer.Option(..., "--out", help="Output folder; re-running with it resumes."),
    n_samples: Optional[int] = typer.Option(None, "--n-samples", help="Samples per problem (avg@k accuracy, pass@k); "
                                            "default 8 for a set of fewer than 100 problems (AIME, AMC), else 1."),
    max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens", help="Response budget, thinking included; "
                                                 "default by model family (Qwen3: 32768, 38912 with AIME/AMC), else 4096."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Only the first N problems of each benchmark."),
    thinking: Optional[bool] = typer.Option(None, "--thinking/--no-thinking",
                                            help="Qwen3 thinking mode (chat template's enable_thinking); default: the template's."),
    temperature: Optional[float] = typer.Option(
        None, "--temperature", help="Default: the model's generation_config when it samples, else the model family's, "
        "else 0 (greedy)."),
    top_p: Optional[float] = typer.Option(None, "--top-p"),
    top_k: Optional[int] = typer.Option(None, "--top-k", help="0 turns top-k off."),
    backend: str = typer.Option("transformers", "--backend", help="transformers or vllm (needs vLLM: its GPU build, or its CPU build)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Prompts per generate call (default 16; vllm 1024)."),
    seed: int = typer.Option(0, "--seed"),
    chat_template: Optional[bool] = typer.Option(
        None, "--chat-template/--no-chat-template", help="Prompt through the tokenizer's chat template when it has one. "
        "Default: as the model was trained (its mpdistill.json), else on."),
    prompt_template: Optional[str] = typer.Option(None, "--prompt-template", help="User message with {problem}; "
                                                  "default: the task's (math asks for step-by-step reasoning and a "
                                                  "\\boxed{} answer)."),
    question_field: str = typer.Option("problem", "--question-field", help="Question column of file/HF benchmarks."),
    answer_field: str = typer.Option("answer", "--answer-field", help="Answer column of file/HF benchmarks."),
    id_field: Optional[str] = typer.Option(None, "--id-field", help="Id column of file/HF benchmarks (default: row index)."),
    split: str = typer.Option("test", "--split", help="Split of a Hugging Face dataset."),
    tensor_parallel_size: int = typer.Option(1, "--tensor-parallel-size", help="vllm backend only."),
    gpu_memory_utilization: Optional[float] = typer.Option(
        None, "--gpu-memory-utilization", help="vllm backend: the engine's share of GPU memory (vLLM's CPU build: of RAM); "
        "default 0.9 on a GPU, 0.3 on the CPU build."),
    allow_pickle_checkpoints: bool = ALLOW_PICKLE,
    trust_remote_code: bool = TRUST_REMOTE_CODE,
) -> None:
    """Accuracy and response tokens of a model on benchmarks: samples.jsonl, summary.json, summary.md."""
    from mpdistill.evaluation.runner import run_eval
    from mpdistill.evaluation.settings import EvalSpec

    spec = EvalSpec(
        model=model, benchmarks=None if benchmarks is None else [b.strip() for b in benchmarks.split(",") if b.strip()],
        task=task, backend=backend,
        n_samples=n_samples, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, top_k=top_k,
        thinking=thinking, chat_template=chat_template, prompt_template=prompt_template or "", batch_size=batch_size,
        seed=seed, limit=limit, question_field=question_field, answer_field=answer_field, id_field=id_field,
        split=split, tensor_parallel_size=tensor_parallel_size, gpu_memory_utilization=gpu_memory_utilization,
        allow_pickle_checkpoints=allow_pickle_checkpoints, trust_remote_code=trust_remote_code,
    )
    try:
        run_eval(spec, out, console=console)
    except KeyboardInterrupt:
        import shlex

        from mpdistill.evaluation.folder import samples_file

        samples = samples_file(out)
        done = sum(1 for _ in samples.open(encoding="utf-8", errors="replace")) if samples.exists() else 0
        command = shlex.join(["mpdistill", *sys.argv[1:]]) if sys.argv[1:2] == ["eval"] else "the same command"
        interrupted(f"{done} graded samples are saved in {samples}; run {command} again to continue "
                     "(finished batches are kept, the rest is drawn as an uninterrupted run would)"
                     if done else f"No sample was finished yet; run {command} again to start")
    except Exception as err:  # noqa: BLE001 - only a refused write is said here
        storage_failed(err, lambda: f"The graded samples written so far are kept in {out}; once it can be written "
                                    "again, run the same command again to go on")


@app.command("compare")
@one_line_errors
def compare_cmd(
    base: Path = typer.Argument(..., help="Evaluation folder of the starting model (from mpdistill eval)."),
    new: Path = typer.Argument(..., help="Evaluation folder of the trained model."),
    out: Optional[Path] = typer.Option(None, "--out", help="Write compare.json, compare.md, compare.png here."),
) -> None:
    """Per benchmark: accuracy change with a paired CI, token reduction and AES, base -> new."""
    from mpdistill.evaluation.compare import compare_runs, format_comparison, write_comparison
    from mpdistill.utils.console import warn
    from mpdistill.utils.paths import check_output_dir

    if out is not None:
        check_output_dir(out)
    result = compare_runs(base, new)
    console.print(format_comparison(result))
    for warning in result.get("warnings", []):
        warn(warning)
    if out is not None:
        paths = write_comparison(out, result)
        console.print(f"wrote {', '.join(str(p) for p in paths.values())}")
