"""Run a model over problem sets and grade every sample, resumably: ``mpdistill eval`` and the demo.

The work is a fixed plan: every (benchmark, problem, sample index) is one unit; units are sorted
by prompt length and cut into batches, and batch ``i`` is sampled with a seed derived from the run
seed and ``i``. Each finished batch is appended to ``samples.jsonl`` and flushed to disk, so an
interrupted run loses at most the batch in flight, and a re-run with the same plan skips every
unit already on disk and draws the rest exactly as an uninterrupted run would have.
"""

from __future__ import annotations

import json
import logging
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol, Sequence

from .durable import LogError, append_jsonl, cut_torn_tail, read_jsonl_log
from .durable import write_text as write_text_atomic
from .output_paths import check_output_dir
from .prompts import split_response
from .rollout.hf import Generation, GenerationSettings, generate_texts
from .tasks import Task

log = logging.getLogger(__name__)


class EvalError(ValueError):
    """An evaluation that cannot run or resume; the message names the file, line or setting."""


@dataclass(frozen=True)
class Unit:
    """One sample to draw: the ``sample``-th response to problem ``id`` of ``benchmark``."""

    benchmark: str
    id: str
    sample: int
    prompt_ids: tuple[int, ...]
    gold: str
    reference: str | None = None  # graded instead of a generation by the "gold" backend

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.benchmark, self.id, self.sample)


class Backend(Protocol):
    """Draws one response per prompt; ``seeds`` has one seed per prompt (a backend may use only the first)."""

    def generate(self, prompts: list[list[int]], seeds: list[int]) -> list[Generation]: ...


class TransformersBackend:
    """Batched ``transformers.generate`` (length-sorted, left-padded, KV cache); one seed per batch."""

    def __init__(self, model, tokenizer, settings: GenerationSettings) -> None:
        self.model, self.tokenizer, self.settings = model, tokenizer, settings

    def generate(self, prompts: list[list[int]], seeds: list[int]) -> list[Generation]:
        return generate_texts(self.model, self.tokenizer, prompts, self.settings, seed=seeds[0])


class VLLMBackend:
    def __init__(self, generator, settings: GenerationSettings) -> None:
        self.generator, self.settings = generator, settings

    def generate(self, prompts: list[list[int]], seeds: list[int]) -> list[Generation]:
        return self.generator.generate(prompts, self.settings, seeds)


def derive_seed(seed: int, *parts: object) -> int:
    """A 31-bit seed from the run seed and a label; the same in every process and Python version."""
    return zlib.crc32("/".join(map(str, (seed, *parts))).encode()) & 0x7FFFFFFF


def plan_batches(units: Sequence[Unit], batch_size: int) -> list[list[Unit]]:
    """Units sorted by prompt length (stable, so a problem's samples stay together), in batches."""
    if batch_size < 1:
        raise EvalError(f"batch size must be at least 1, got {batch_size}")
    ordered = sorted(units, key=lambda u: len(u.prompt_ids))
    return [ordered[i : i + batch_size] for i in range(0, len(ordered), batch_size)]


def grade(unit: Unit, gen: Generation | None, task: Task, tokenizer) -> dict:
    """The samples.jsonl record of one unit. ``gen`` None means: grade the unit's reference text."""
    if gen is None:
        response, token_ids, truncated = unit.reference or "", None, False
    else:
        response, token_ids, truncated = gen.text, gen.token_ids, gen.truncated
    parts = split_response(response, token_ids or [], tokenizer if token_ids is not None else None)
    extracted = task.extract_answer(parts.answer_text) if parts.answer_text else None
    return {
        "benchmark": unit.benchmark,
        "id": unit.id,
        "sample": unit.sample,
        "response": response,
        "tokens": None if token_ids is None else len(token_ids),
        "thinking_tokens": parts.thinking_tokens,
        "answer_tokens": parts.answer_tokens,
        "truncated": truncated,
        "extracted": extracted,
        "gold": unit.gold,
        "correct": extracted is not None and task.answers_match(extracted, unit.gold),
    }


def run_units(
    units: Sequence[Unit],
    backend: Backend | None,
    task: Task,
    tokenizer,
    samples_path: str | Path,
    *,
    seed: int,
    batch_size: int,
    progress: Callable[[int], None] | None = None,
) -> list[dict]:
    """Draw and grade every unit not yet in ``samples_path``; return all records in plan order.

    ``backend`` None grades each unit's ``reference`` instead of generating (the grader check).
    ``progress`` is called with the number of units finished, first for those found on disk.
    """
    path = Path(samples_path)
    by_key = {u.key: u for u in units}
    if len(by_key) != len(units):
        raise EvalError("the plan has repeated (benchmark, id, sample) units: problem ids must be unique")
    done = {}
    found, torn_at = read_samples(path)
    for lineno, record in found:
        key = (record.get("benchmark"), record.get("id"), record.get("sample"))
        if key not in by_key:
            raise EvalError(
                f"{path}:{lineno}: sample {key} is not part of this evaluation; "
                "it was written with other settings: use a new output folder"
            )
        done.setdefault(key, record)
    cut_torn_tail(path, torn_at)
    if progress is not None and done:
        progress(len(done))
    for index, batch in enumerate(plan_batches(units, batch_size)):
        todo = [u for u in batch if u.key not in done]
        if not todo:
            continue
        if backend is None:
            gens: list[Generation | None] = [None] * len(batch)
        else:
            # The whole batch is generated again so its seed gives the same samples as before.
            seeds = [derive_seed(seed, "batch", index)] + [derive_seed(seed, *u.key) for u in batch[1:]]
            gens = list(backend.generate([list(u.prompt_ids) for u in batch], seeds))
        records = []
        for unit, gen in zip(batch, gens, strict=True):
            if unit.key in done:
                continue
            done[unit.key] = record = grade(unit, gen, task, tokenizer)
            records.append(record)
        append_jsonl(path, records)
        if progress is not None:
            progress(len(todo))
    return [done[u.key] for u in units]


def read_samples(path: Path) -> tuple[list[tuple[int, dict]], int | None]:
    """``(line number, record)`` of a samples file, and where a torn last line starts, if any
    (see :func:`mpdistill.durable.read_jsonl_log`)."""
    try:
        return read_jsonl_log(path)
    except LogError as err:
        raise EvalError(str(err)) from None


# ---------------------------------------------------------------------------------------------
# ``mpdistill eval``: benchmarks × model -> samples.jsonl, summary.json, summary.md.

GOLD = "gold"  # the model name that grades each benchmark's reference solutions (grader check)
BACKENDS = ("transformers", "vllm")
DEFAULT_BATCH = {"transformers": 16, "vllm": 1024}
# A set this small gives a wide interval from one sample per problem (AIME: 30 problems, AMC23: 40):
# by default each of its problems is sampled SMALL_SET_SAMPLES times (accuracy is then avg@k).
SMALL_SET, SMALL_SET_SAMPLES = 100, 8
# More than this share of a benchmark's samples cut at the budget is warned about: their answers are lost.
TRUNCATION_WARNING = 0.05
# Settings that decide what is sampled: a resumed run must use the same ones.
PLAN_KEYS = ("model", "benchmarks", "task", "backend", "n_samples", "max_new_tokens", "temperature", "top_p", "top_k",
             "thinking", "chat_template", "prompt_template", "batch_size", "seed", "limit")
DEFAULT_BENCHMARKS = {"math": ["gsm8k", "math500", "aime24", "aime25", "amc23"], "chain": ["chain"]}
CHAIN = "chain"  # the demo's held-out chain problems, drawn from the run's seed (see mpdistill.demo)
CHAIN_SIZE = 1000


@dataclass
class EvalSpec:
    """Everything ``mpdistill eval`` needs. Left as None: the task, prompt, prompt style, thinking and
    budget the model folder's mpdistill.json records; then sampling from the model's generation_config
    or its family's card (prompts.sampling_defaults), the budget from its family's card or
    generation_config (prompts.max_new_tokens_default)."""

    model: str
    benchmarks: list[str] | None = None  # None: the task's (DEFAULT_BENCHMARKS)
    task: str | None = None  # None: the model's recorded task (model_record), else math
    backend: str = "transformers"
    n_samples: int | None = None  # None: SMALL_SET_SAMPLES for a set of fewer than SMALL_SET problems, else 1
    max_new_tokens: int | None = None  # None: see above
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    thinking: bool | None = None
    chat_template: bool | None = None  # None: the model's recorded prompt style, else the chat template
    prompt_template: str = ""
    batch_size: int | None = None
    seed: int = 0
    limit: int | None = None
    # Column mapping for benchmark files and Hugging Face datasets given by path or name.
    question_field: str = "problem"
    answer_field: str = "answer"
    id_field: str | None = None
    split: str = "test"
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float | None = None  # vllm: the engine's share of GPU memory (CPU build: of RAM)
    budget_source: str = "given"  # where max_new_tokens came from, when set before run_eval
    allow_pickle_checkpoints: bool = False  # see pipeline.load_model: safetensors only unless set
    trust_remote_code: bool = False

    def check(self) -> None:
        """Fill in what the model's own record decides and refuse impossible settings, before anything loads."""
        from .model_record import read_record
        from .tasks import TASKS, get_task

        record = {} if self.model == GOLD else read_record(self.model)
        given_task = self.task is not None
        if self.task is None:
            recorded = record.get("task")
            self.task = recorded if isinstance(recorded, str) and recorded in TASKS else "math"
        elif self.task not in TASKS:
            raise EvalError(f"--task must be one of {', '.join(sorted(TASKS))}, got {self.task!r}")
        if self.benchmarks is None:
            self.benchmarks = list(DEFAULT_BENCHMARKS[self.task])
        for name in self.benchmarks:
            other = next((t for t, sets in DEFAULT_BENCHMARKS.items() if name in sets and t != self.task), None)
            if other is not None:
                why = ("as given" if given_task else "as its training recorded" if record.get("task") == self.task
                       else "the default for a model without an mpdistill.json")
                raise EvalError(f"{name} is a {other} benchmark, but the task is {self.task} ({why}): its answers "
                                f"would be read the wrong way; use --benchmarks {','.join(DEFAULT_BENCHMARKS[self.task])}"
                                f", or --task {other} to grade the model as a {other} model")
        if not self.prompt_template:  # as the model was trained: training, rewrite and evaluation see one text
            recorded = record.get("prompt_template") if record.get("task") == self.task else None
            self.prompt_template = recorded if isinstance(recorded, str) else get_task(self.task).prompt_template
        trained_as = record if record.get("task") == self.task else {}  # how the model was trained to read it
        if self.chat_template is None:
            self.chat_template = trained_as.get("prompt_style") != "plain"
        if self.thinking is None and isinstance(trained_as.get("thinking"), bool):
            self.thinking = trained_as["thinking"]
        if self.max_new_tokens is None and isinstance(trained_as.get("max_new_tokens"), int):
            self.max_new_tokens, self.budget_source = trained_as["max_new_tokens"], "the model's mpdistill.json"
        if "{problem}" not in self.prompt_template:
            raise EvalError("the prompt template must contain {problem}")
        if not self.benchmarks:
            raise EvalError("no benchmarks given")
        if self.backend not in BACKENDS:
            raise EvalError(f"unknown backend {self.backend!r}; use one of {', '.join(BACKENDS)}")
        for name, value, low in (("--n-samples", self.n_samples, 1), ("--max-new-tokens", self.max_new_tokens, 1),
                                 ("--limit", self.limit, 1), ("--batch-size", self.batch_size, 1)):
            if value is not None and value < low:
                raise EvalError(f"{name} must be at least {low}, got {value}")
        if self.temperature is not None and self.temperature < 0:
            raise EvalError(f"--temperature must be >= 0, got {self.temperature}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise EvalError(f"--top-p must be in (0, 1], got {self.top_p}")
        if self.top_k is not None and self.top_k < 0:
            raise EvalError(f"--top-k must be >= 0 (0: off), got {self.top_k}")
        if self.gpu_memory_utilization is not None and not 0 < self.gpu_memory_utilization <= 1:
            raise EvalError(f"--gpu-memory-utilization must be in (0, 1], got {self.gpu_memory_utilization}")
        if self.model != GOLD and self.backend == "vllm":
            from .pipeline import resolve_model
            from .rollout.vllm import check_engine

            check_engine("--backend vllm", self.tensor_parallel_size, tp_key="--tensor-parallel-size",
                         models={f"--model {self.model!r}": resolve_model(self.model)})


def load_benchmarks(spec: EvalSpec):
    """Each ``--benchmarks`` entry: a shipped name, else a local file or Hugging Face dataset."""
    from .benchmarks import known_benchmarks, load_benchmark, load_custom_benchmark
    from .config import looks_local

    loaded = []
    for entry in spec.benchmarks:
        if entry == CHAIN:
            loaded.append(chain_benchmark(spec.seed, spec.limit))
        elif entry in known_benchmarks() or not (looks_local(entry, data_file=True) or "/" in entry):
            loaded.append(load_benchmark(entry, limit=spec.limit))  # an unknown bare name lists the known ones
        else:
            loaded.append(load_custom_benchmark(
                entry, question_field=spec.question_field, answer_field=spec.answer_field, id_field=spec.id_field,
                split=spec.split, limit=spec.limit,
            ))
    names = [b.name for b in loaded]
    if len(set(names)) != len(names):
        raise EvalError(f"two benchmarks share a name: {names}")
    return loaded


def chain_benchmark(seed: int, limit: int | None):
    """The demo's held-out chain problems for ``seed`` (ids are the prompts, as the demo writes them)."""
    from .benchmarks import Benchmark, BenchmarkItem
    from .tasks.problems import chain_problems

    problems = chain_problems(CHAIN_SIZE, seed, split="eval")
    items = tuple(BenchmarkItem(CHAIN, p["prompt"], p["prompt"], p["answer"], None) for p in problems[:limit])
    return Benchmark(CHAIN, f"embedded chain task, held-out split, seed {seed}", items, size=CHAIN_SIZE)


def run_eval(spec: EvalSpec, out: str | Path, *, console=None) -> dict:
    """Evaluate ``spec.model`` on ``spec.benchmarks`` into ``out``; resumes what ``out`` already holds."""
    from .console import stdout, warn
    from .evaluate import format_benchmark_table, summarize_benchmark
    from .tasks import get_task

    console = console or stdout
    spec.check()
    out = Path(out)
    check_output_dir(out)
    benchmarks = load_benchmarks(spec)
    task = get_task(spec.task)
    gold = spec.model == GOLD
    batch_size = spec.batch_size or DEFAULT_BATCH[spec.backend]

    tokenizer, model_config, encoder, sampling, sampling_source = None, None, None, {}, "none (reference solutions)"
    if gold:
        missing = [(b.name, it.id) for b in benchmarks for it in b.items if not it.reference]
        if missing:
            raise EvalError(f"--model gold needs reference solutions; none for {missing[0][0]} problem {missing[0][1]}")
    else:
        tokenizer, model_config = _load_tokenizer_and_config(spec.model, spec.trust_remote_code)
        from .prompts import PromptEncoder, sampling_defaults

        encoder = PromptEncoder(tokenizer, template=spec.prompt_template, use_chat_template=spec.chat_template,
                                thinking=spec.thinking)
        thinking_on = spec.thinking if spec.thinking is not None else True  # Qwen3's template default
        generation_config = _generation_config(spec.model)
        sampling, sampling_source = sampling_defaults(getattr(model_config, "model_type", None), thinking_on,
                                                      generation_config, thinking_given=spec.thinking is not None)
        given = [key for key in ("temperature", "top_p", "top_k") if getattr(spec, key) is not None]
        for key in given:
            sampling[key] = getattr(spec, key)
        if given:
            sampling_source = f"{', '.join(given)} given; otherwise {sampling_source}"
    # Several samples of a small set only where they can differ: greedy decoding draws the same one each time.
    sampled = not gold and sampling.get("temperature", 0) > 0
    n_samples = {b.name: 1 if gold else spec.n_samples or (SMALL_SET_SAMPLES if sampled and b.size < SMALL_SET else 1)
                 for b in benchmarks}
    prompts = {(b.name, item.id): () if gold else tuple(encoder.encode(item.problem)) for b in benchmarks
               for item in b.items}
    max_new_tokens, budget_source = None, None
    if not gold:
        from .prompts import max_new_tokens_default

        max_new_tokens, budget_source = spec.max_new_tokens, spec.budget_source
        if max_new_tokens is None:
            max_new_tokens, budget_source = max_new_tokens_default(
                getattr(model_config, "model_type", None), thinking_on, [b.name for b in benchmarks], generation_config)
        where = {(b.name, item.id): item.at or f"{b.name} problem {item.id}" for b in benchmarks for item in b.items}
        max_new_tokens, budget_source = fit_positions(prompts, max_new_tokens, budget_source, model_config, spec.model,
                                                      where)
    config = {
        "model": spec.model,
        "benchmarks": [{"name": b.name, "source": b.source, "n_problems": len(b.items)} for b in benchmarks],
        "task": spec.task,
        "backend": "references" if gold else spec.backend,
        "n_samples": n_samples,
        "max_new_tokens": max_new_tokens,
        "max_new_tokens_source": budget_source,
        **{k: sampling.get(k) for k in ("temperature", "top_p", "top_k")},
        "sampling_source": sampling_source,
        "thinking": spec.thinking,
        "chat_template": None if gold else encoder.chat,
        "prompt_template": None if gold else spec.prompt_template,
        "batch_size": batch_size,
        "seed": spec.seed,
        "limit": spec.limit,
    }
    _check_or_write_config(out, config)

    units = [Unit(b.name, item.id, k, prompts[b.name, item.id], item.answer, item.reference)
             for b in benchmarks for item in b.items for k in range(n_samples[b.name])]

    backend = None
    if not gold:
        settings = GenerationSettings(max_new_tokens=max_new_tokens, temperature=sampling["temperature"],
                                      top_p=sampling["top_p"], top_k=sampling["top_k"], batch_size=batch_size)
        backend = _load_backend(spec, settings, tokenizer)

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    with Progress(TextColumn("eval {task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TimeRemainingColumn(), console=console) as bar:
        job = bar.add_task(spec.model, total=len(units))
        records = run_units(units, backend, task, tokenizer, out / "samples.jsonl", seed=spec.seed,
                            batch_size=batch_size, progress=lambda k: bar.advance(job, k))

    per_benchmark = {}
    for b in benchmarks:
        mine = [r for r in records if r["benchmark"] == b.name]  # in item order: one sample each for gold
        per_benchmark[b.name] = summarize_benchmark(mine)
        if gold:
            from .benchmarks import shuffled_gold_check

            extracted = [r["extracted"] for r in mine]
            per_benchmark[b.name]["shuffled_gold"] = shuffled_gold_check(b, extracted, shuffle_seed=spec.seed)
    summary = {"model": spec.model, "settings": config, "benchmarks": per_benchmark}
    table = format_benchmark_table(per_benchmark)
    if gold:
        table += "\n" + _shuffled_lines(per_benchmark)
    _write_summary(out, summary, table)
    console.print(table, markup=False, highlight=False, soft_wrap=True)
    for line in truncation_warnings(per_benchmark, max_new_tokens) + unread_warnings(per_benchmark, spec):
        warn(line)
    console.print(f"wrote {out / 'samples.jsonl'}, summary.json, summary.md", markup=False, highlight=False)
    return summary


def fit_positions(prompts: dict, max_new_tokens: int, source: str, model_config, model: str,
                  where: dict) -> tuple[int, str]:
    """The response budget checked against the positions the model can read (``where``: each
    problem's place in its file, for the message).

    A prompt that alone fills them is an error naming it; a budget the user gave that the longest
    prompt would push past them is an error; a default budget is cut to fit, and says so.
    """
    from .rollout.hf import max_positions

    positions = max_positions(model_config)
    if not positions or not prompts:
        return max_new_tokens, source
    key, longest = max(prompts.items(), key=lambda kv: len(kv[1]))
    n = len(longest)
    if n >= positions:
        raise EvalError(f"{where[key]}: its prompt is {n:,} tokens, but {model} reads at most {positions:,} positions "
                        "(max_position_embeddings); leave the problem out or shorten it")
    if n + max_new_tokens <= positions:
        return max_new_tokens, source
    if source == "given":
        raise EvalError(f"--max-new-tokens {max_new_tokens:,} after the longest prompt ({where[key]}, {n:,} tokens) "
                        f"passes the {positions:,} positions {model} reads; use at most {positions - n:,}")
    return positions - n, f"{source}, cut to fit the model's {positions:,} positions after the longest prompt"


def truncation_warnings(per_benchmark: dict, max_new_tokens: int | None) -> list[str]:
    """One line per benchmark whose samples were cut at the budget more often than TRUNCATION_WARNING."""
    lines = []
    for name, s in per_benchmark.items():
        rate = s.get("truncation_rate") or 0.0
        if max_new_tokens is not None and rate > TRUNCATION_WARNING:
            lines.append(f"{name}: {100 * rate:.1f}% of {s['n_samples']} samples were cut at {max_new_tokens} new "
                         "tokens, so their answers are missing and accuracy is understated; raise --max-new-tokens")
    return lines


def unread_warnings(per_benchmark: dict, spec: EvalSpec) -> list[str]:
    """A benchmark where no sample had an answer the task could read: most likely the wrong task or prompt."""
    return [f"{name}: no answer could be read from any of its {s['n_samples']} samples with the {spec.task} task; "
            "check --task and --prompt-template (the model may answer in another format)"
            for name, s in per_benchmark.items() if s.get("n_samples") and s.get("no_answer_rate") == 1]


def _shuffled_lines(per_benchmark: dict) -> str:
    """The grader check's false-positive rate: references graded against another problem's gold."""
    lines = []
    for name, s in per_benchmark.items():
        sh = s["shuffled_gold"]
        lines.append(f"{name}: golds shuffled between problems graded correct {sh['correct']}/{sh['n']} "
                     f"({100 * sh['rate']:.2f}%; {sh['same_gold_pairs']} pairs share the same gold)")
    return "\n".join(lines) + "\n"


def _load_tokenizer_and_config(name: str, trust_remote_code: bool = False):
    from transformers import AutoConfig

    from .config import ConfigError
    from .pipeline import load_tokenizer, model_path

    tokenizer = load_tokenizer(name, trust_remote_code=trust_remote_code)
    try:
        return tokenizer, AutoConfig.from_pretrained(model_path(name), trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise ConfigError(f"cannot load model {name!r}: {err}") from None


def _generation_config(name: str):
    from transformers import GenerationConfig

    from .pipeline import resolve_model

    try:
        return GenerationConfig.from_pretrained(resolve_model(name))
    except OSError:  # no generation_config.json: no model-specific sampling
        return None


def _load_backend(spec: EvalSpec, settings: GenerationSettings, tokenizer) -> Backend:
    if spec.backend == "vllm":
        from .pipeline import resolve_model
        from .rollout.vllm import VLLMGenerator

        generator = VLLMGenerator(resolve_model(spec.model), seed=spec.seed, tensor_parallel_size=spec.tensor_parallel_size,
                                  gpu_memory_utilization=spec.gpu_memory_utilization)
        return VLLMBackend(generator, settings)
    import torch

    from .pipeline import load_model

    cuda = torch.cuda.is_available()
    model, _ = load_model(spec.model, dtype=torch.bfloat16 if cuda else torch.float32,
                          allow_pickle=spec.allow_pickle_checkpoints, trust_remote_code=spec.trust_remote_code)
    if cuda:
        model = model.to("cuda")
    return TransformersBackend(model, tokenizer, settings)


def _check_or_write_config(out: Path, config: dict) -> None:
    """Write ``eval_config.json``, or check that a resumed run asks for the same plan."""

    path = out / "eval_config.json"
    if path.exists():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            raise EvalError(f"{path}: not valid JSON; remove it (and samples.jsonl) or use a new --out") from None
        old.setdefault("task", "math")  # evaluations from before --task graded every answer as math
        changed = [k for k in PLAN_KEYS if old.get(k) != config.get(k)]
        if changed:
            diffs = "; ".join(f"{k}: {old.get(k)!r} -> {config.get(k)!r}" for k in changed)
            raise EvalError(f"{out} holds an evaluation with other settings ({diffs}); use a new --out to keep both")
        return
    out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(config, indent=2) + "\n"
    write_text_atomic(path, text)


def _write_summary(out: Path, summary: dict, table: str) -> None:
    from .evaluate import _nan_to_none

    text = json.dumps(_nan_to_none(summary), indent=2, allow_nan=False) + "\n"
    write_text_atomic(out / "summary.json", text)
    s = summary["settings"]
    counts = sorted(set(s["n_samples"].values())) if isinstance(s["n_samples"], dict) else [s["n_samples"]]
    per_problem = str(counts[0]) if len(counts) == 1 else ", ".join(f"{k} {v}" for k, v in s["n_samples"].items())
    header = (
        f"# Evaluation of `{summary['model']}`\n\n"
        f"Backend {s['backend']}, {per_problem} sample(s) per problem, max {s['max_new_tokens']} new tokens, "
        f"temperature {s['temperature']}, top-p {s['top_p']}, top-k {s['top_k']} ({s['sampling_source']}), "
        f"thinking {s['thinking']}, seed {s['seed']}.\n\n"
    )
    write_text_atomic(out / "summary.md", header + table)
