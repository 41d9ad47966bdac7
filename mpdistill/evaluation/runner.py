"""Run a model over problem sets and grade every sample, resumably: ``mpdistill eval`` and the demo.

The work is a fixed plan: every (benchmark, problem, sample index) is one unit; units are sorted
by prompt length and cut into batches, and batch ``i`` is sampled with a seed derived from the run
seed and ``i``. Each finished batch is appended to the samples file and flushed to disk, so an
interrupted run loses at most the batch in flight, and a re-run with the same plan skips every
unit already on disk and draws the rest exactly as an uninterrupted run would have. The folder
``mpdistill eval`` writes is :mod:`mpdistill.evaluation.folder`'s; its settings are resolved in
:mod:`mpdistill.evaluation.settings`, its summaries in :mod:`mpdistill.evaluation.report`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol, Sequence

from mpdistill.evaluation.folder import (EvalError, SUMMARY_FILE, SUMMARY_MARKDOWN_FILE, check_or_write_config,
                                         read_samples, samples_file, write_summary)
from mpdistill.evaluation.report import (format_summary_markdown, format_summary_table, summarize_benchmarks,
                                         truncation_warnings, unread_warnings)
from mpdistill.evaluation.settings import (DEFAULT_BATCH, EvalSpec, NO_SAMPLING, check_references, load_benchmarks,
                                           resolve_budget, resolve_sampling, samples_per_problem)
from mpdistill.rollout.hf import Generation, GenerationSettings, derive_seed, generate_texts
from mpdistill.tasks import Task
from mpdistill.tasks.prompts import PromptEncoder, split_response
from mpdistill.utils.durable import append_jsonl, cut_torn_tail
from mpdistill.utils.paths import check_output_dir


@dataclass(frozen=True)
class Unit:
    """One sample to draw: the ``sample``-th response to problem ``id`` of ``benchmark``."""

    benchmark: str
    id: str
    sample: int
    prompt_ids: tuple[int, ...]
    gold: str
    reference: str | None = None  # graded instead of a generation by the "gold" backend
    problem: str | None = None  # the question, written with the sample (what `mpdistill rewrite` reads)

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


def batch_units(units: Sequence[Unit], batch_size: int) -> list[list[Unit]]:
    """Units sorted by prompt length (stable, so a problem's samples stay together), in batches."""
    if batch_size < 1:
        raise EvalError(f"batch size must be at least 1, got {batch_size}")
    ordered = sorted(units, key=lambda u: len(u.prompt_ids))
    return [ordered[i : i + batch_size] for i in range(0, len(ordered), batch_size)]


def grade(unit: Unit, gen: Generation | None, task: Task, tokenizer) -> dict:
    """The sample record of one unit (a line of the samples file). ``gen`` None means: grade the unit's reference text."""
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
        "problem": unit.problem,
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
    for index, batch in enumerate(batch_units(units, batch_size)):
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


# ---------------------------------------------------------------------------------------------
# ``mpdistill eval``: benchmarks × model -> an evaluation folder (see mpdistill.evaluation.folder).


def run_eval(spec: EvalSpec, out: str | Path, *, console=None) -> dict:
    """Evaluate ``spec.model`` on ``spec.benchmarks`` into ``out``; resumes what ``out`` already holds."""
    from mpdistill.utils.console import stdout, warn
    from mpdistill.utils.run_lock import holding
    from mpdistill.tasks import get_task

    console = console or stdout
    spec = spec.resolved()  # the plan; the request is left as given
    out = Path(out)
    check_output_dir(out)
    benchmarks = load_benchmarks(spec)
    task = get_task(spec.task)
    gold = spec.gold
    batch_size = spec.batch_size or DEFAULT_BATCH[spec.backend]

    tokenizer, model_config, generation_config, encoder = None, None, None, None
    sampling, sampling_source = {}, NO_SAMPLING
    if gold:
        check_references(benchmarks)
    else:
        tokenizer, model_config = _load_tokenizer_and_config(spec.model, spec.trust_remote_code)
        encoder = PromptEncoder(tokenizer, template=spec.prompt_template, use_chat_template=spec.chat_template,
                                thinking=spec.thinking)
        generation_config = _generation_config(spec.model)
        sampling, sampling_source = resolve_sampling(spec, model_config, generation_config)
    n_samples = samples_per_problem(spec, benchmarks, sampling)
    prompts = {(b.name, item.id): () if gold else tuple(encoder.encode(item.problem)) for b in benchmarks
               for item in b.items}
    max_new_tokens, budget_source = None, None
    if not gold:
        max_new_tokens, budget_source = resolve_budget(spec, benchmarks, prompts, model_config, generation_config)
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
    with holding(out):  # one writer per evaluation folder (mpdistill/utils/run_lock.py)
        check_or_write_config(out, config)

        units = [Unit(b.name, item.id, k, prompts[b.name, item.id], item.answer, item.reference, item.problem)
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
            records = run_units(units, backend, task, tokenizer, samples_file(out), seed=spec.seed,
                                batch_size=batch_size, progress=lambda k: bar.advance(job, k))

        per_benchmark = summarize_benchmarks(benchmarks, records, gold=gold, seed=spec.seed)
        summary = {"model": spec.model, "settings": config, "benchmarks": per_benchmark}
        table = format_summary_table(per_benchmark, gold=gold)
        write_summary(out, summary, format_summary_markdown(summary, table))
        console.print(table, markup=False, highlight=False, soft_wrap=True)
        for line in truncation_warnings(per_benchmark, max_new_tokens) + unread_warnings(per_benchmark, spec):
            warn(line)
        console.print(f"wrote {samples_file(out)}, {SUMMARY_FILE}, {SUMMARY_MARKDOWN_FILE}", markup=False, highlight=False)
        return summary


def _load_tokenizer_and_config(name: str, trust_remote_code: bool = False):
    from transformers import AutoConfig

    from mpdistill.errors import ConfigError
    from mpdistill.models.loading import load_tokenizer, model_path

    tokenizer = load_tokenizer(name, trust_remote_code=trust_remote_code)
    try:
        return tokenizer, AutoConfig.from_pretrained(model_path(name), trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise ConfigError(f"cannot load model {name!r}: {err}") from None


def _generation_config(name: str):
    from transformers import GenerationConfig

    from mpdistill.models.loading import resolve_model

    try:
        return GenerationConfig.from_pretrained(resolve_model(name))
    except OSError:  # no generation_config.json: no model-specific sampling
        return None


def _load_backend(spec: EvalSpec, settings: GenerationSettings, tokenizer) -> Backend:
    if spec.backend == "vllm":
        from mpdistill.models.loading import resolve_model
        from mpdistill.rollout.vllm import VLLMGenerator

        generator = VLLMGenerator(resolve_model(spec.model), seed=spec.seed, tensor_parallel_size=spec.tensor_parallel_size,
                                  gpu_memory_utilization=spec.gpu_memory_utilization)
        return VLLMBackend(generator, settings)
    import torch

    from mpdistill.models.loading import load_model

    cuda = torch.cuda.is_available()
    model, _ = load_model(spec.model, dtype=torch.bfloat16 if cuda else torch.float32,
                          allow_pickle=spec.allow_pickle_checkpoints, trust_remote_code=spec.trust_remote_code)
    if cuda:
        model = model.to("cuda")
    return TransformersBackend(model, tokenizer, settings)
