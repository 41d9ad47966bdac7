"""What ``mpdistill eval`` runs: the spec, filled in from the model's record and checked; the
benchmarks it names; and the sampling settings, samples per problem and response budget resolved
for the model."""

from __future__ import annotations

from dataclasses import dataclass, replace

from pydantic import Field

from mpdistill.evaluation.folder import EvalError
from mpdistill.utils.settings import StrictSettings

GOLD = "gold"  # the model name that grades each benchmark's reference solutions (grader check)
BACKENDS = ("transformers", "vllm")
DEFAULT_BATCH = {"transformers": 16, "vllm": 1024}
# A set this small gives a wide interval from one sample per problem (AIME: 30 problems, AMC23: 40):
# by default each of its problems is sampled SMALL_SET_SAMPLES times (accuracy is then avg@k).
SMALL_SET, SMALL_SET_SAMPLES = 100, 8
DEFAULT_BENCHMARKS = {"math": ["gsm8k", "math500", "aime24", "aime25", "amc23"], "chain": ["chain"]}
CHAIN = "chain"  # the demo's held-out chain problems, drawn from the run's seed (see mpdistill.experiments.demo)
CHAIN_SIZE = 1000


class EvalConfig(StrictSettings):
    """A recipe's ``eval:`` section, and ``mpdistill eval``'s sampling options checked by the same rules."""

    n: int = Field(default=1000, gt=0)
    max_new_tokens: int = Field(default=256, gt=0)
    temperature: float = Field(default=1.0, ge=0)
    top_p: float = Field(default=1.0, gt=0, le=1)
    top_k: int = Field(default=0, ge=0)
    batch_size: int = Field(default=250, gt=0)


@dataclass
class EvalSpec:
    """Everything ``mpdistill eval`` is asked to do (the command's options, or a script's request);
    :meth:`resolved` turns it into the plan that runs. Left as None: the task, prompt, prompt style, thinking and
    budget the model folder's mpdistill.json records; then sampling from the model's generation_config
    or its family's card (prompts.sampling_defaults), the budget from its family's card or
    generation_config (prompts.max_new_tokens_default)."""

    model: str
    benchmarks: list[str] | None = None  # None: the task's (DEFAULT_BENCHMARKS)
    task: str | None = None  # None: the model's recorded task (models.record), else math
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
    allow_pickle_checkpoints: bool = False  # see models.loading.load_model: safetensors only unless set
    trust_remote_code: bool = False

    def resolved(self) -> EvalSpec:
        """The plan ``mpdistill eval`` runs: a copy of this request with what the model's own record
        decides filled in (task, benchmarks, prompt, prompt style, thinking, budget), impossible
        settings refused before anything loads. The request itself is left as given."""
        return replace(self)._resolve()

    def _resolve(self) -> EvalSpec:
        from mpdistill.models.record import read_record
        from mpdistill.tasks import TASKS, get_task

        from mpdistill.models.loading import resolve_model

        record = {} if self.model == GOLD else read_record(resolve_model(self.model))
        given_task = self.task is not None
        if self.task is None:
            recorded = record.get("task")
            self.task = recorded if isinstance(recorded, str) and recorded in TASKS else "math"
        elif self.task not in TASKS:
            raise EvalError(f"--task must be one of {TASKS.known()}, got {self.task!r}")
        if self.benchmarks is None:
            if self.task not in DEFAULT_BENCHMARKS:
                raise EvalError(f"the {self.task} task has no default benchmarks: name them with --benchmarks "
                                "(files or Hugging Face datasets)")
            self.benchmarks = list(DEFAULT_BENCHMARKS[self.task])
        for name in self.benchmarks:
            other = next((t for t, sets in DEFAULT_BENCHMARKS.items() if name in sets and t != self.task), None)
            if other is not None:
                why = ("as given" if given_task else "as its training recorded" if record.get("task") == self.task
                       else "the default for a model without an mpdistill.json")
                raise EvalError(f"{name} is a {other} benchmark, but the task is {self.task} ({why}): its answers "
                                f"would be read the wrong way; use "
                                f"--benchmarks {','.join(DEFAULT_BENCHMARKS.get(self.task, ['FILES']))}"
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
        for name, value in (("--n-samples", self.n_samples), ("--limit", self.limit)):
            if value is not None and value < 1:
                raise EvalError(f"{name} must be at least 1, got {value}")
        # Sampling and budget: the rules of a recipe's eval: section (absent: resolved for the model later).
        from mpdistill.utils.settings import from_options

        from_options(EvalConfig, {key: value for key in ("max_new_tokens", "temperature", "top_p", "top_k", "batch_size")
                                  if (value := getattr(self, key)) is not None}, EvalError)
        if self.gpu_memory_utilization is not None and not 0 < self.gpu_memory_utilization <= 1:
            raise EvalError(f"--gpu-memory-utilization must be in (0, 1], got {self.gpu_memory_utilization}")
        if self.model != GOLD and self.backend == "vllm":
            from mpdistill.models.loading import resolve_model
            from mpdistill.rollout.vllm import check_engine

            check_engine("--backend vllm", self.tensor_parallel_size, tp_key="--tensor-parallel-size",
                         models={f"--model {self.model!r}": resolve_model(self.model)})
        return self

    @property
    def gold(self) -> bool:
        """Grade the reference solutions instead of sampling a model (the grader check)."""
        return self.model == GOLD

    @property
    def thinking_on(self) -> bool:
        return self.thinking if self.thinking is not None else True  # Qwen3's template default


# ---------------------------------------------------------------------------------------------
# The benchmarks.


def load_benchmarks(spec: EvalSpec):
    """Each ``--benchmarks`` entry: a shipped name, else a local file or Hugging Face dataset."""
    from mpdistill.tasks.benchmarks import known_benchmarks, load_benchmark, load_custom_benchmark
    from mpdistill.utils.paths import looks_local

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
    from mpdistill.tasks.benchmarks import Benchmark, BenchmarkItem
    from mpdistill.tasks.problems import chain_problems

    problems = chain_problems(CHAIN_SIZE, seed, split="eval")
    items = tuple(BenchmarkItem(CHAIN, p["prompt"], p["prompt"], p["answer"], None) for p in problems[:limit])
    return Benchmark(CHAIN, f"embedded chain task, held-out split, seed {seed}", items, size=CHAIN_SIZE)


def check_references(benchmarks) -> None:
    """``--model gold`` grades reference solutions: every problem needs one."""
    missing = [(b.name, it.id) for b in benchmarks for it in b.items if not it.reference]
    if missing:
        raise EvalError(f"--model gold needs reference solutions; none for {problem_label(*missing[0])}")


# ---------------------------------------------------------------------------------------------
# Sampling, samples per problem and the budget.

NO_SAMPLING = "none (reference solutions)"  # the sampling source of the grader check


def resolve_sampling(spec: EvalSpec, model_config, generation_config) -> tuple[dict, str]:
    """Temperature, top-p and top-k: those given, else the model's generation_config or its family's
    card (:func:`mpdistill.tasks.prompts.sampling_defaults`); and where they came from."""
    from mpdistill.tasks.prompts import sampling_defaults

    sampling, source = sampling_defaults(getattr(model_config, "model_type", None), spec.thinking_on,
                                         generation_config, thinking_given=spec.thinking is not None)
    given = [key for key in ("temperature", "top_p", "top_k") if getattr(spec, key) is not None]
    for key in given:
        sampling[key] = getattr(spec, key)
    if given:
        source = f"{', '.join(given)} given; otherwise {source}"
    return sampling, source


def samples_per_problem(spec: EvalSpec, benchmarks, sampling: dict) -> dict[str, int]:
    """Per benchmark: as given, else SMALL_SET_SAMPLES for a small set, else 1."""
    # Several samples of a small set only where they can differ: greedy decoding draws the same one each time.
    sampled = not spec.gold and sampling.get("temperature", 0) > 0
    return {b.name: 1 if spec.gold else spec.n_samples or (SMALL_SET_SAMPLES if sampled and b.size < SMALL_SET else 1)
            for b in benchmarks}


def resolve_budget(spec: EvalSpec, benchmarks, prompts: dict, model_config, generation_config) -> tuple[int, str]:
    """The response budget (given, else the family's card or generation_config), fit to the model's
    positions after the longest prompt; and where it came from."""
    from mpdistill.tasks.prompts import max_new_tokens_default

    max_new_tokens, source = spec.max_new_tokens, spec.budget_source
    if max_new_tokens is None:
        max_new_tokens, source = max_new_tokens_default(
            getattr(model_config, "model_type", None), spec.thinking_on, [b.name for b in benchmarks], generation_config)
    where = {(b.name, item.id): item.at or problem_label(b.name, item.id) for b in benchmarks for item in b.items}
    return fit_positions(prompts, max_new_tokens, source, model_config, spec.model, where)


def problem_label(benchmark: str, problem_id) -> str:
    """``BENCHMARK problem ID`` for a message; an id that is a problem's own text (the chain task's, a
    dataset's) is quoted and cut, so a line break in it cannot split the message's line."""
    text = str(problem_id)
    shown = text if text.isprintable() and len(text) <= 40 else repr(text if len(text) <= 40 else text[:40] + "...")
    return f"{benchmark} problem {shown}"


def fit_positions(prompts: dict, max_new_tokens: int, source: str, model_config, model: str,
                  where: dict) -> tuple[int, str]:
    """The response budget checked against the positions the model can read (``where``: each
    problem's place in its file, for the message).

    A prompt that alone fills them is an error naming it; a budget the user gave that the longest
    prompt would push past them is an error; a default budget is cut to fit, and says so.
    """
    from mpdistill.rollout.hf import max_positions

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
