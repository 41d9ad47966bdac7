"""``mpdistill rewrite``: a file of traces rewritten offline, as training rewrites them."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from mpdistill.cli.app import ALLOW_PICKLE, TRUST_REMOTE_CODE, app, fail, interrupted, one_line_errors, storage_failed
from mpdistill.utils.console import stdout as console


@app.command("rewrite")
@one_line_errors
def rewrite_cmd(
    input: Path = typer.Option(..., "--input", help='JSONL of {"problem", "trace"[, "answer"]} lines.'),
    out: Path = typer.Option(..., "--out", help="Output JSONL, one record per input row; re-running with it resumes."),
    backend: Optional[str] = typer.Option(None, "--backend", help="transformers (local --teacher; the default), vllm (--teacher on an in-process vLLM engine) or openai (served)."),
    teacher: Optional[str] = typer.Option(None, "--teacher", help="Rewriting model (transformers backend), or whose "
                                          "tokenizer counts tokens (openai backend without --tokenizer)."),
    tokenizer: Optional[str] = typer.Option(None, "--tokenizer", help="Tokenizer that counts tokens (openai backend)."),
    base_url: Optional[str] = typer.Option(None, "--base-url", help="OpenAI-compatible API root, e.g. http://host:8000/v1."),
    model: Optional[str] = typer.Option(None, "--model", help="Model name on the server (openai backend)."),
    api_key_env: Optional[str] = typer.Option(None, "--api-key-env", help="Name of the environment variable holding the API key."),
    task: str = typer.Option("math", "--task", help="How answers are read and compared: math or chain."),
    prompt_template: Optional[str] = typer.Option(None, "--prompt-template",
                                                  help="Rewrite prompt with {problem} and {trace} or {thinking}; default: the task's, as in training."),
    chat_template: Optional[bool] = typer.Option(None, "--chat-template/--no-chat-template",
                                                 help="Send the prompt as a chat message (chat template / chat "
                                                 "completions); default: the task's (math: yes, chain: no)."),
    max_ratio: Optional[float] = typer.Option(None, "--max-ratio", show_default="a recipe's rewrite.max_ratio", help="Accept a rewrite of at most this fraction of the trace's tokens."),
    max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens", show_default="a recipe's rewrite.max_new_tokens", help="Cap on each rewrite's length."),
    temperature: Optional[float] = typer.Option(None, "--temperature", show_default="a recipe's rewrite.temperature"),
    top_p: Optional[float] = typer.Option(None, "--top-p", show_default="a recipe's rewrite.top_p"),
    top_k: Optional[int] = typer.Option(None, "--top-k", show_default="a recipe's rewrite.top_k", help="0 turns top-k off."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", show_default="a recipe's rewrite.batch_size", help="Rows per chunk; each finished chunk is written to --out."),
    seed: int = typer.Option(0, "--seed"),
    require_gold: bool = typer.Option(False, "--require-gold", help="Also reject rewrites whose answer is not the row's answer."),
    require_route_kept: bool = typer.Option(False, "--require-route-kept",
                                            help="Also reject rewrites that leave the student's route (route_changed)."),
    max_concurrency: Optional[int] = typer.Option(None, "--max-concurrency", show_default="a recipe's rewrite.max_concurrency", help="Requests in flight at once (openai backend)."),
    max_retries: Optional[int] = typer.Option(None, "--max-retries", show_default="a recipe's rewrite.max_retries", help="Retries of a failed request (openai backend)."),
    timeout: Optional[float] = typer.Option(None, "--timeout", show_default="a recipe's rewrite.timeout_s", help="Seconds per request (openai backend)."),
    tensor_parallel_size: Optional[int] = typer.Option(None, "--tensor-parallel-size", show_default="a recipe's rewrite.tensor_parallel_size", help="GPUs for the teacher (vllm backend)."),
    teacher_thinking: Optional[bool] = typer.Option(
        None, "--teacher-thinking/--no-teacher-thinking", help="Whether the teacher thinks before it writes (chat "
        "template's enable_thinking). Default: it writes directly wherever that can be switched, as in training."),
    send_chat_template_kwargs: Optional[bool] = typer.Option(
        None, "--send-chat-template-kwargs/--no-send-chat-template-kwargs", show_default="a recipe's rewrite.send_chat_template_kwargs",
        help="openai backend: send the thinking switch as chat_template_kwargs (vLLM, SGLang); off for a server "
        "that refuses unknown fields."),
    allow_pickle_checkpoints: bool = ALLOW_PICKLE,
    trust_remote_code: bool = TRUST_REMOTE_CODE,
) -> None:
    """Rewrite a file of traces with the training prompt, length budget and verification.

    A setting not given is the recipe's default (a recipe's rewrite: section, docs/RECIPES.md): the file is
    rewritten as training would rewrite it."""
    import json

    from mpdistill.rewriting.offline import RewriteFileSpec, rewrite_file
    from mpdistill.rewriting.summary import format_summary

    spec = RewriteFileSpec(
        backend=backend, teacher=teacher, tokenizer=tokenizer, base_url=base_url, model=model, api_key_env=api_key_env,
        task=task, prompt_template=prompt_template, chat_template=chat_template,
        max_ratio=max_ratio, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, top_k=top_k,
        batch_size=batch_size, seed=seed, require_gold=require_gold, require_route_kept=require_route_kept,
        max_concurrency=max_concurrency,
        max_retries=max_retries, timeout_s=timeout, tensor_parallel_size=tensor_parallel_size,
        teacher_thinking=teacher_thinking, send_chat_template_kwargs=send_chat_template_kwargs,
        allow_pickle_checkpoints=allow_pickle_checkpoints,
        trust_remote_code=trust_remote_code,
    )
    try:
        summary = rewrite_file(input, out, spec, console=console)
    except KeyboardInterrupt:
        interrupted(f"finished chunks are saved in {out}; run the same command again to continue")
    except Exception as err:  # noqa: BLE001 - only a refused write is said here
        storage_failed(err, lambda: f"Finished chunks are kept in {out}; once it can be written again, run the same "
                                    "command again to go on")
    console.print(format_summary(summary), markup=False, highlight=False)
    console.print(f"summary: {json.dumps(summary)}", markup=False, highlight=False, soft_wrap=True)
    console.print(f"wrote {out}", markup=False)
    if summary["failed"]:
        from mpdistill.utils.console import warn

        kinds = ", ".join(f"{k} {v}" for k, v in sorted(summary.get("backend_failures", {}).items()))
        said = (f"{summary['failed']} of {summary['n']} rows got no rewrite from the backend"
                f"{f' ({kinds})' if kinds else ''}; they are kept as backend_error and asked again by the same command")
        if summary["failed"] == summary["sent"]:
            fail(said)  # nothing usable came back: a script must not take this run for a result
        warn(said)
