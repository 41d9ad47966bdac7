"""The trainers a bench steps: MPD and OPD built from one recipe that differs only in ``method``.

Same student weights (a copy each), teacher, prompts (same data seed), batch size and completion
length. A model may be a config ``.json``: randomly initialised weights, with synthetic prompts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch


@dataclass
class BenchSettings:
    student: str = "embedded:student"  # a model (embedded:*, folder, Hub name) or a config .json (random weights)
    teacher: str = "embedded:teacher"
    tokenizer: str | None = None  # needed with config .json models
    recipe: str | None = None  # default: the demo's (the shipped embedded recipe)
    batch_size: int | None = None  # default: the recipe's
    completion_length: int | None = None  # default: the recipe's max_completion_length
    rewrite_tokens: int | None = None  # default: the recipe's rewrite.max_new_tokens
    prompt_length: int = 128  # random-weight models only: tokens per synthetic prompt
    warmup: int = 1
    repeats: int = 5
    seed: int = 0
    dtype: str = "auto"  # auto: bf16 on GPU, fp32 on CPU
    rewrite_budgets: bool = True  # False: rewrites run to max_new_tokens (to measure what the budgets save)
    overrides: dict = field(default_factory=dict)


# A small run for tests: long enough for the embedded student to finish traces, so rewrites happen.
QUICK = {"batch_size": 4, "completion_length": 128, "warmup": 1, "repeats": 2}


def _load(name: str, tokenizer_path: str | None, dtype: torch.dtype, seed: int):
    """A model by name, or a randomly initialised one from a config ``.json`` (with ``tokenizer_path``)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from mpdistill.errors import ConfigError
    from mpdistill.models.loading import load_model

    if name.endswith(".json"):
        if tokenizer_path is None:
            raise ConfigError(f"{name}: a config file gives random weights but no tokenizer; pass --tokenizer DIR")
        config = AutoConfig.from_pretrained(name)
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
        return model, AutoTokenizer.from_pretrained(tokenizer_path, padding_side="left")
    return load_model(name, dtype=dtype)


def _accept_all_task():
    """With random weights nothing parses: every text 'has' the same answer, so every rewrite runs."""
    from mpdistill.tasks import Task

    return Task(name="bench", extract_answer=lambda text: "x", answers_match=lambda a, b: True)


def _synthetic_rows(tokenizer, n: int, length: int, seed: int) -> list[dict]:
    """Prompts of about ``length`` tokens decoded from random ids of the ordinary vocabulary."""
    g = torch.Generator().manual_seed(seed)
    top = min(tokenizer.vocab_size, 30_000)
    rows = []
    for _ in range(n):
        ids = torch.randint(1_000, top, (length,), generator=g).tolist()
        text = tokenizer.decode(ids, skip_special_tokens=True)
        rows.append({"prompt": text, "problem": text, "answer": None})
    return rows


def build_pair(settings: BenchSettings, run_dir: Path, methods: tuple[str, ...] = ("mpd", "opd"),
               variants: dict[str, dict] | None = None):
    """The MPD and OPD trainers (or those in ``methods``) over the same student weights, teacher, prompts and budget.

    ``variants``: trainers by name, each from the recipe with these overrides (``method`` among them)
    instead of one per method; the returned recipe is the first variant's.
    """
    from mpdistill.run.recipe import _merge, load_recipe
    from mpdistill.experiments.demo import RECIPE
    from mpdistill.models.loading import check_compatible
    from mpdistill.run.pipeline import build_trainer, training_problems

    overrides: dict = {"training": {}, "rewrite": {}, **settings.overrides}
    if settings.batch_size:
        overrides["training"]["batch_size"] = settings.batch_size
    if settings.completion_length:
        overrides["training"]["max_completion_length"] = settings.completion_length
    if settings.rewrite_tokens:
        overrides["rewrite"]["max_new_tokens"] = settings.rewrite_tokens
    steps = settings.warmup + settings.repeats
    overrides["training"].update({"steps": steps, "logging_steps": steps})
    overrides["seed"] = settings.seed
    source = Path(settings.recipe) if settings.recipe else RECIPE
    variants = variants or {method: {"method": method} for method in methods}
    recipes = {name: load_recipe(source, _merge(overrides, extra)) for name, extra in variants.items()}
    recipe = next(iter(recipes.values()))
    methods = tuple(recipes)

    cuda = torch.cuda.is_available()
    dtype = {"auto": torch.bfloat16 if cuda else torch.float32, "bf16": torch.bfloat16, "fp32": torch.float32}[
        settings.dtype
    ]
    random_weights = settings.student.endswith(".json")
    teacher, t_tok = _load(settings.teacher, settings.tokenizer, dtype, settings.seed + 1)
    students = {}
    for method in methods:  # a copy of the same initial weights for each
        students[method], tokenizer = _load(settings.student, settings.tokenizer, dtype, settings.seed)
    check_compatible(settings.student, tokenizer, students[methods[0]], settings.teacher, t_tok, teacher)
    if cuda:
        teacher = teacher.to("cuda")
        students = {k: m.to("cuda") for k, m in students.items()}

    n_rows = recipe.training.batch_size * recipe.training.gradient_accumulation_steps * steps
    if random_weights:
        rows = _synthetic_rows(tokenizer, n_rows, settings.prompt_length, settings.seed)
    else:
        rows = training_problems(recipe.model_copy(update={"data": recipe.data.model_copy(update={"n_train": n_rows})}))
    trainers = {}
    for method in methods:
        trainers[method] = build_trainer(recipes[method], students[method], teacher, tokenizer, rows, run_dir / method)
    if random_weights:
        for trainer in trainers.values():
            if hasattr(trainer, "rewriter"):
                trainer.task = _accept_all_task()
    return recipe, trainers
