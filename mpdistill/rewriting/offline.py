"""Rewrite a file of traces offline: ``mpdistill rewrite``.

Each input line is ``{"problem", "trace"[, "answer"]}``. Every trace goes through the same steps
as during MPD training (:func:`mpdistill.rewriting.rewrite.rewrite_batch` with no on-policy fraction): the
prompt of :meth:`RewriteSettings.render`, the per-rewrite :func:`length_budget`, and
:func:`verify` with its reasons. One output line per input row::

    {"index", "problem", "trace", "answer", "rewrite", "accepted", "reason", "trace_tokens", "rewrite_tokens",
     "route_kept"}

``index`` is the row's 0-based position among the input's records (blank lines do not count).
Token counts are those the trainer uses: the text's tokens plus the end-of-sequence token, with
the teacher's tokenizer (or ``tokenizer`` for a served rewriter). ``rewrite`` and
``rewrite_tokens`` are ``None`` when no rewrite was requested (a trace with no final answer, or,
with ``require_gold``, a trace whose answer is wrong).

Rows are processed in chunks of ``batch_size``; chunk ``i`` is rewritten with a seed derived from
``seed`` and ``i``, and each finished chunk is appended to the output and flushed to disk. A
re-run with the same output skips the rows already there (a torn last line is cut off and
redone) and draws the rest exactly as an uninterrupted run would have. A row whose rewrite never
came back from the backend (``reason: backend_error``: the server failed, timed out or answered
beyond ``max_tokens``) is written, so the file accounts for every row, but it is not a result: a
re-run asks for it again and replaces its record. The settings that decide
the records (teacher, prompt, sampling, ``max_ratio``, the input's rows...) are kept beside the
output in ``<out>.settings.json``; a re-run that changes any of them is refused.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from mpdistill.errors import ConfigError, MPDistillError
from mpdistill.rewriting.rewrite import (RewriteSettings, Rewriter, Sample, encode_completion, rewrite_batch,
                                         rewrite_settings_from)
from mpdistill.rewriting.settings import RewriteConfig, with_task_defaults
from mpdistill.rewriting.summary import summarize_rewrites
from mpdistill.rollout import derive_seed
from mpdistill.tasks.problems import DataError, iter_jsonl
from mpdistill.utils.durable import (LogError, append_jsonl, changed_settings, cut_torn_tail, read_jsonl_log,
                                     write_jsonl, write_text)
from mpdistill.utils.paths import check_output_file
from mpdistill.utils.run_lock import holding
from mpdistill.utils.settings import from_options

log = logging.getLogger(__name__)

# The settings that decide what is written, by the option that sets them: a resumed run must use the
# same ones. Batch size, concurrency, retries, timeouts, the API key and the GPU count may change.
OUTPUT_SETTINGS = {
    "input": "--input", "backend": "--backend", "teacher": "--teacher", "tokenizer": "--tokenizer",
    "model": "--model", "task": "--task", "prompt_template": "--prompt-template", "chat_template": "--chat-template",
    "max_ratio": "--max-ratio", "max_new_tokens": "--max-new-tokens", "temperature": "--temperature",
    "top_p": "--top-p", "top_k": "--top-k", "seed": "--seed", "require_gold": "--require-gold",
    "require_route_kept": "--require-route-kept",
    "teacher_thinking": "--teacher-thinking", "send_chat_template_kwargs": "--send-chat-template-kwargs",
}


class RewriteFileError(MPDistillError, ValueError):
    """An input, output or option that cannot be used; the message names the file, line or option."""


@dataclass
class RewriteFileSpec:
    """What ``mpdistill rewrite`` was asked to do (see :func:`rewrite_file`)."""

    # The rewrite settings: None takes the recipe's default (RewriteConfig), so a file is rewritten as
    # training rewrites unless an option says otherwise.
    backend: str | None = None
    teacher: str | None = None
    tokenizer: str | None = None  # counts tokens for the openai backend (default: the teacher's tokenizer)
    base_url: str | None = None
    model: str | None = None
    api_key_env: str | None = None
    task: str = "math"
    prompt_template: str | None = None  # None: the task's (and whether it goes through the chat template)
    chat_template: bool | None = None
    max_ratio: float | None = None
    max_new_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    batch_size: int | None = None
    seed: int = 0
    require_gold: bool | None = None
    require_route_kept: bool | None = None
    max_concurrency: int | None = None
    timeout_s: float | None = None
    max_retries: int | None = None
    tensor_parallel_size: int | None = None  # vllm backend
    # Whether the teacher thinks before writing (None: off wherever it can be switched, as in training).
    teacher_thinking: bool | None = None
    send_chat_template_kwargs: bool | None = None  # openai + chat: send the switch (vLLM, SGLang read it)
    allow_pickle_checkpoints: bool = False  # see models.loading.load_model: safetensors only unless set
    trust_remote_code: bool = False

    @property
    def backend_name(self) -> str:
        """``--backend``, or the recipe's default backend when it is not given."""
        return self.backend or RewriteConfig.model_fields["backend"].default

    def check(self) -> RewriteConfig:
        """These options as a checked ``rewrite:`` section, or a :class:`RewriteFileError` naming the option."""
        from mpdistill.rewriting.backends import BACKENDS

        backend = self.backend_name
        if backend not in BACKENDS:
            raise RewriteFileError(f"--backend must be one of {BACKENDS.known()}; got {backend!r}")
        if BACKENDS[backend].local_template and not self.teacher:
            raise RewriteFileError(f"--teacher is required with --backend {backend}")
        if not BACKENDS[backend].local_template and not self.tokenizer and not self.teacher:
            raise RewriteFileError(
                f"--backend {backend} needs a tokenizer to count trace and rewrite tokens: "
                "give --tokenizer DIR (or --teacher MODEL, whose tokenizer is then used)"
            )
        from mpdistill.tasks import TASKS

        if self.task not in TASKS:
            raise RewriteFileError(f"--task must be one of {TASKS.known()}; got {self.task!r}")
        if self.teacher_thinking is not None and self.chat_template is False:
            raise RewriteFileError("--teacher-thinking/--no-teacher-thinking needs --chat-template")
        return self.rewrite_config()

    def rewrite_config(self) -> RewriteConfig:
        """These options as a recipe's ``rewrite:`` section, validated by it (errors name the option)."""
        values = dict(
            backend=self.backend, base_url=self.base_url, api_key_env=self.api_key_env,
            model=self.model if served(self.backend_name) else None,  # a local backend writes with --teacher
            prompt_template=self.prompt_template, use_chat_template=self.chat_template, max_ratio=self.max_ratio,
            max_new_tokens=self.max_new_tokens, temperature=self.temperature, top_p=self.top_p, top_k=self.top_k,
            batch_size=self.batch_size, require_gold=self.require_gold, require_route_kept=self.require_route_kept,
            max_concurrency=self.max_concurrency,
            timeout_s=self.timeout_s, max_retries=self.max_retries, tensor_parallel_size=self.tensor_parallel_size,
            teacher_enable_thinking=self.teacher_thinking, send_chat_template_kwargs=self.send_chat_template_kwargs,
        )
        given = {key: value for key, value in values.items() if value is not None}
        given["gpu_memory_utilization"] = None  # the engine's default share: a rewrite job has the machine to itself
        config = from_options(RewriteConfig, with_task_defaults(given, self.task), RewriteFileError, OPTIONS)
        from mpdistill.rewriting.backends import settings_problems

        if problems := settings_problems(config):  # in recipe keys: named here by their options
            raise RewriteFileError(re.sub(r"\brewrite\.(\w+)", lambda m: _option(m.group(1)), problems[0]))
        return config


# The option that sets each rewrite setting (where its name is not the setting's).
OPTIONS = {"use_chat_template": "--chat-template", "timeout_s": "--timeout", "teacher_enable_thinking": "--teacher-thinking"}


def _option(key: str) -> str:
    """The ``mpdistill rewrite`` option that sets the rewrite setting ``key``."""
    return OPTIONS.get(key) or "--" + key.replace("_", "-")


def served(backend: str) -> bool:
    """Whether ``backend`` writes on a server of its own."""
    from mpdistill.rewriting.backends import BACKENDS

    return backend in BACKENDS and BACKENDS[backend].served


# -- input and output files ------------------------------------------------------------------


def read_rows(path: str | Path, *, require_gold: bool = False) -> list[dict]:
    """The input rows ``{"problem", "trace", "answer"}`` (answer ``None`` when absent), checked.

    An evaluation's samples are read as they are (``mpdistill eval`` folder or its samples.jsonl):
    ``response`` is the trace and ``gold`` the answer where a record has no ``trace`` or ``answer``."""
    path = Path(path)
    if path.is_dir() and (path / "samples.jsonl").is_file():
        path = path / "samples.jsonl"
    if not path.is_file():
        raise RewriteFileError(f"--input {path}: no such file")
    rows = []
    try:
        records = list(iter_jsonl(path))
    except DataError as err:
        raise RewriteFileError(str(err)) from None
    for lineno, record in records:
        if isinstance(record, dict) and "trace" not in record and "response" in record:  # an evaluation's sample
            record = {"answer": record.get("gold"), **record, "trace": record["response"]}
            if record.get("problem") is None:
                raise RewriteFileError(f"{path}:{lineno}: field 'problem' is missing: this evaluation's samples do "
                                       "not carry their question (written by an older mpdistill); evaluate again")
        for key in ("problem", "trace"):
            value = record.get(key)
            if not isinstance(value, str) or not value.strip():
                what = "missing" if value is None else "not a non-empty string"
                raise RewriteFileError(f"{path}:{lineno}: field {key!r} is {what}")
        answer = record.get("answer")
        if isinstance(answer, bool) or not isinstance(answer, (str, int, float, type(None))):
            raise RewriteFileError(f"{path}:{lineno}: field 'answer' must be a string or a number")
        if answer is not None:
            answer = str(answer)
        if require_gold and (answer is None or not answer.strip()):
            raise RewriteFileError(f"{path}:{lineno}: field 'answer' is missing, and --require-gold needs it")
        rows.append({"problem": record["problem"], "trace": record["trace"], "answer": answer})
    if not rows:
        raise RewriteFileError(f"--input {path}: no rows")
    return rows


def read_done(out: Path, rows: list[dict]) -> tuple[dict[int, dict], int | None]:
    """Records already in ``out`` by index, and where a torn last line starts; checked against ``rows``."""
    try:
        found, torn_at = read_jsonl_log(out)
    except LogError as err:
        raise RewriteFileError(f"{err}; or use a new --out") from None
    done: dict[int, dict] = {}
    for lineno, record in found:
        index = record.get("index")
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(rows):
            raise RewriteFileError(
                f"{out}:{lineno}: index {index!r} is not a row of this input ({len(rows)} rows); "
                "that file was written for another input: use a new --out"
            )
        row = rows[index]
        for key in ("problem", "trace"):
            if record.get(key) != row[key]:
                raise RewriteFileError(
                    f"{out}:{lineno}: the {key} of row {index} differs from this input's; "
                    "that file was written for another input: use a new --out"
                )
        done[index] = record  # a row redone after a backend failure: its newer record is its result
    return done, torn_at


def failed_rows(done: dict[int, dict]) -> list[int]:
    """Rows whose rewrite never came back (``backend_error``): not a result, redone by a re-run."""
    return sorted(i for i, r in done.items() if r.get("reason") == "backend_error")


def settings_path(out: Path) -> Path:
    """Where the settings that wrote ``out`` are kept: ``<out>.settings.json``."""
    return out.with_name(out.name + ".settings.json")


def output_settings(spec: RewriteFileSpec, config: RewriteConfig, input_path: str | Path, rows: list[dict]) -> dict:
    """The settings that decide the records of ``out`` (see OUTPUT_SETTINGS), as ``config`` resolved them
    (the task's prompt filled in, the recipe's defaults where no option was given); those a backend
    ignores are None."""
    is_served = served(config.backend)
    digest = hashlib.sha256(json.dumps(rows, sort_keys=True, ensure_ascii=False).encode()).hexdigest()
    return {
        # The rows, not the bytes: a moved file or a reformatted line is the same input.
        "input": {"path": str(input_path), "rows": len(rows), "sha256": digest},
        "backend": config.backend,
        "teacher": _model_name(spec.teacher),
        "tokenizer": _model_name(spec.tokenizer) if is_served else None,
        "model": spec.model if is_served else None,
        "task": spec.task,
        "prompt_template": config.prompt_template,
        "chat_template": config.use_chat_template,
        "max_ratio": config.max_ratio,
        "max_new_tokens": config.max_new_tokens,
        "temperature": config.temperature,
        "top_p": config.top_p,
        "top_k": config.top_k,
        "seed": spec.seed,
        "require_gold": config.require_gold,
        "require_route_kept": config.require_route_kept,
        "teacher_thinking": config.teacher_enable_thinking,
        "send_chat_template_kwargs": config.send_chat_template_kwargs if is_served else None,
    }


def _model_name(name: str | None) -> str | None:
    """A local folder as an absolute path (the same folder named from another directory is the same model)."""
    if name is None:
        return None
    folder = Path(name).expanduser()
    return str(folder.resolve()) if folder.is_dir() else name


def check_settings(out: Path, wanted: dict, has_records: bool) -> bool:
    """Refuse to resume ``out`` with settings that would write other records; True when the settings file
    must be (re)written before the first record is appended."""
    path = settings_path(out)
    if not has_records:
        return True
    if not path.exists():
        log.warning("%s was written without %s, so the settings of its records could not be compared with "
                    "these; resuming it as they are", out, path.name)
        return False
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(old, dict):
            raise ValueError
    except (OSError, ValueError):
        raise RewriteFileError(f"{path}: not a settings file of mpdistill rewrite; use a new --out "
                               f"(or delete {out} and {path} to start over)") from None
    # A setting added after that file was written cannot be compared; the input by its rows' digest.
    changed = changed_settings(old, wanted, [k for k in OUTPUT_SETTINGS if k in old], name=OUTPUT_SETTINGS.get,
                               shown=_shown, same=lambda key, before, now: before == now if key != "input" else
                               isinstance(before, dict) and before.get("sha256") == now["sha256"])
    if changed:
        raise RewriteFileError(
            f"{out} was written with other settings ({'; '.join(changed)}), and resuming would mix its records "
            f"with those of these settings: use a new --out (or delete {out} and {path} to start over)"
        )
    return False


def _shown(key: str, value) -> str:
    if key == "input":
        if not isinstance(value, dict):
            return repr(value)
        return f"{value.get('path')} ({value.get('rows')} rows, sha256 {str(value.get('sha256'))[:12]})"
    if value is None:
        return "not set"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, str):
        return repr(value if len(value) <= 60 else value[:57] + "...")
    return str(value)


# -- rewriting -------------------------------------------------------------------------------


def rewrite_chunk(
    rows: list[dict],
    indexes: list[int],
    rewriter: Rewriter,
    settings: RewriteSettings,
    task,
    encode: Callable[[str], list[int]],
) -> list[dict]:
    """Rewrite and verify the rows ``indexes``; one output record each, in order."""
    samples = [
        Sample(problem=rows[i]["problem"], student_text=rows[i]["trace"], student_ids=encode(rows[i]["trace"]),
               gold=rows[i]["answer"])
        for i in indexes
    ]
    rewrite_batch(samples, rewriter, settings, task, encode, random.Random(0))  # no on-policy draw: rng unused
    records = []
    for i, s in zip(indexes, samples, strict=True):
        assert s.verdict is not None
        records.append({
            "index": i,
            "problem": s.problem,
            "trace": s.student_text,
            "answer": s.gold,
            "rewrite": s.rewrite_text,
            "accepted": s.verdict.accepted,
            "reason": s.verdict.reason,
            "trace_tokens": len(s.student_ids),
            "rewrite_tokens": None if s.rewrite_ids is None else len(s.rewrite_ids),
            "route_kept": s.route_kept,
        })
    return records


def rewrite_file(input_path: str | Path, out: str | Path, spec: RewriteFileSpec, *, console=None) -> dict:
    """Rewrite every row of ``input_path`` not yet in ``out``; returns the summary of the whole file.

    Every option, the input and the existing output are checked before a model is loaded or the
    rewrite server is contacted.
    """
    from mpdistill.utils.console import stdout
    from mpdistill.tasks import get_task

    console = console or stdout
    config = spec.check()
    settings = rewrite_settings_from(config)
    out = Path(out)
    check_output_file(out, "--out")  # before the input is read or any model loads
    rows = read_rows(input_path, require_gold=config.require_gold)
    with holding(out, is_file=True):  # one writer per output file (mpdistill/utils/run_lock.py)
        done, torn_at = read_done(out, rows)
        wanted = output_settings(spec, config, input_path, rows)
        write_settings = check_settings(out, wanted, has_records=bool(done))
        # A row the server never answered is not a result: it is asked again (its old record is replaced).
        retried = failed_rows(done)
        for i in retried:
            del done[i]
        resumed = len(done)
        task = get_task(spec.task)
        chunks = [list(range(i, min(i + config.batch_size, len(rows)))) for i in range(0, len(rows), config.batch_size)]
        todo = [(k, chunk) for k, chunk in enumerate(chunks) if any(i not in done for i in chunk)]

        stats = None
        if todo:
            make, encode, stats = _backend(spec, config)
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            if write_settings:  # beside the records, before the first of them
                write_text(settings_path(out), json.dumps(wanted, indent=2, ensure_ascii=False) + "\n")
            if retried:  # one record per row: the failed ones leave, their redone records are appended
                write_jsonl(out, sorted(done.values(), key=lambda r: r["index"]))
            else:
                cut_torn_tail(out, torn_at)
            with Progress(TextColumn("rewrite"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                          TimeRemainingColumn(), console=console) as bar:
                job = bar.add_task("rows", total=len(rows), completed=resumed)
                for k, chunk in todo:
                    # The whole chunk is rewritten again so its seed gives the same rewrites as before.
                    records = rewrite_chunk(rows, chunk, make(derive_seed(spec.seed, "chunk", k)), settings, task, encode)
                    new = [r for r in records if r["index"] not in done]
                    for r in new:
                        done[r["index"]] = r
                    append_jsonl(out, new)
                    bar.advance(job, len(new))
        summary = summarize_rewrites([done[i] for i in range(len(rows))])
        summary["generated"] = len(rows) - resumed
        summary["resumed"] = resumed
        summary["retried"] = len(retried)
        summary["failed"] = len(failed_rows(done))
        summary["sent"] = sum(r["rewrite"] is not None for r in done.values())  # rows the backend was asked to rewrite
        if stats is not None and stats.get("failures"):
            summary["backend_failures"] = dict(stats["failures"])
        return summary


def _backend(spec: RewriteFileSpec, config: RewriteConfig):
    """``(rewriter for a chunk seed, token encoder, backend statistics or None)``; loads what is needed."""
    from mpdistill.models.loading import load_model, load_tokenizer
    from mpdistill.rewriting.backends import Teacher, get_backend
    from mpdistill.rollout.vllm import BackendUnavailable

    backend = get_backend(config.backend)
    try:
        if backend.check is not None:
            backend.check(config, spec.teacher, True)
    except (ConfigError, BackendUnavailable) as err:  # the messages name recipe keys; here they are options
        message = str(err)
        for key, option in (("rewrite.base_url", "--base-url"), ("rewrite.api_key_env", "--api-key-env"),
                            ("rewrite.model", "--model"), ("rewrite.backend vllm", "--backend vllm"),
                            ("rewrite.tensor_parallel_size", "--tensor-parallel-size"),
                            ("rewrite.send_chat_template_kwargs: false", "--no-send-chat-template-kwargs"),
                            ("rewrite.top_k: 0", "--top-k 0"),
                            ("set rewrite.backend: transformers", "use --backend transformers")):
            message = message.replace(key, option)
        raise RewriteFileError(message) from None
    teacher = Teacher(name=spec.teacher, trust_remote_code=spec.trust_remote_code)
    if backend.uses_teacher_weights:
        teacher.model, teacher.tokenizer = load_model(spec.teacher, allow_pickle=spec.allow_pickle_checkpoints,
                                                      trust_remote_code=spec.trust_remote_code)
    else:  # renders a local engine's prompts, or counts a served model's tokens
        counter = spec.teacher if backend.local_template else (spec.tokenizer or spec.teacher)
        teacher.tokenizer = load_tokenizer(counter, trust_remote_code=spec.trust_remote_code)
    make = backend.make(config, teacher, spec.seed)
    stats = getattr(make(spec.seed), "stats", None)  # a served client's request counts
    return make, functools.partial(encode_completion, teacher.tokenizer), stats
