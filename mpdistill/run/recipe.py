"""Recipes: one YAML file describes one training run (a method, its models, data and budget).

Every field is typed and unknown keys are errors, so a typo fails before any model is loaded,
with the offending key named (``training.stpes: unknown key``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_serializer, model_validator

from mpdistill.errors import ConfigError
from mpdistill.evaluation.settings import EvalConfig
from mpdistill.rewriting.settings import RewriteConfig, with_task_defaults
from mpdistill.utils.paths import looks_local
from mpdistill.utils.settings import StrictSettings, describe_validation_error


class DataConfig(StrictSettings):
    # "embedded:chain" draws problems from the embedded task; otherwise a JSONL/Parquet path or
    # a Hugging Face dataset name with ``question_field`` / ``answer_field``.
    train: str = "embedded:chain"
    split: str = "train"
    config: str | None = None  # a Hub dataset's configuration, where it has several (openai/gsm8k: main)
    question_field: str = "problem"
    answer_field: str | None = "answer"
    # How the gold answer is read from answer_field: the field as it is, or the last \boxed{} in it
    # (a worked solution, as MATH's `solution` field carries its answer).
    answer_from: Literal["field", "boxed"] = "field"
    n_train: int = Field(default=2048, gt=0)
    prompt_style: Literal["plain", "chat"] = "plain"
    # The user message a question becomes, with {problem}. Absent: the task's, which evaluation
    # uses too (math: the question, then "Please reason step by step, and put your final answer
    # within \boxed{}."), so training, the rewrite prompt's problem and evaluation see one text.
    prompt_template: str | None = None

    @field_validator("prompt_template")
    @classmethod
    def _renders(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if "{problem}" not in v:
            raise ValueError("must contain {problem}")
        try:
            v.format(problem="")
        except (KeyError, IndexError, ValueError) as err:
            raise ValueError(f"cannot be filled in with str.format ({type(err).__name__}: {err}); write literal "
                             "braces as {{ and }}") from None
        return v


class LoraConfig(StrictSettings):
    """Train low-rank adapters (``peft`` LoRA) instead of every student weight."""

    r: int = Field(default=16, gt=0)
    alpha: int = Field(default=32, gt=0)
    dropout: float = Field(default=0.05, ge=0, lt=1)
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        min_length=1,
    )

    @field_validator("target_modules")
    @classmethod
    def _not_the_head(cls, v: list[str]) -> list[str]:
        # The distillation loss reads the output head's weight directly, so an adapter there would never train.
        bad = [m for m in v if m in ("lm_head", "embed_tokens")]
        if bad:
            raise ValueError(f"{bad[0]} cannot carry an adapter (the loss reads it directly); adapt the layers instead")
        return v


class VLLMRolloutConfig(StrictSettings):
    """Student rollouts on vLLM through TRL's own ``use_vllm`` (GPU; needs the vllm package).

    ``colocate`` runs a vLLM engine inside each training process, sharing its GPU(s);
    ``server`` sends prompts to ``trl vllm-serve --model STUDENT`` on other GPUs (``server_base_url``),
    and TRL pushes the student's new weights to it after every step.
    """

    mode: Literal["colocate", "server"] = "colocate"
    server_base_url: str | None = None  # server mode, e.g. http://10.0.0.5:8000
    server_timeout_s: float = Field(default=240.0, gt=0)
    gpu_memory_utilization: float = Field(default=0.3, gt=0, le=1)  # colocate: the engine's share of each GPU
    tensor_parallel_size: int = Field(default=1, gt=0)  # colocate
    max_model_length: int | None = Field(default=None, gt=0)
    enable_sleep_mode: bool = False  # colocate: free the engine's memory while the student trains

    @model_validator(mode="after")
    def _server_needs_url(self):
        if self.mode == "server" and not self.server_base_url:
            raise ValueError("training.vllm.server_base_url is required when training.vllm.mode is 'server'")
        return self


class TrainingConfig(StrictSettings):
    steps: int = Field(default=40, gt=0)
    batch_size: int = Field(default=32, gt=0)
    gradient_accumulation_steps: int = Field(default=1, gt=0)
    learning_rate: float = Field(default=5e-4, gt=0)
    warmup_steps: int = Field(default=0, ge=0)
    lr_scheduler_type: str = "constant"  # transformers' SchedulerType names
    beta: float = Field(default=0.5, ge=0, le=1)
    temperature: float = Field(default=1.0, gt=0)
    top_p: float = Field(default=1.0, gt=0, le=1)
    top_k: int = Field(default=0, ge=0)
    max_completion_length: int = Field(default=256, gt=0)
    logging_steps: int = Field(default=5, gt=0)
    gradient_checkpointing: bool = False
    bf16: bool = False
    max_grad_norm: float = Field(default=1.0, gt=0)
    # Checkpoint every save_steps steps (needed for --resume); only the newest save_total_limit are kept.
    save_steps: int | None = Field(default=None, gt=0)
    save_total_limit: int | None = Field(default=2, gt=0)
    # A step whose loss or gradients are NaN/inf is skipped; more than this many in a row stops the run.
    max_nonfinite_steps: int = Field(default=3, ge=0)
    # Qwen3 thinking mode for the student's prompts (the chat template's enable_thinking); None
    # leaves the template's default. Needs chat prompts (data.prompt_style: chat).
    student_enable_thinking: bool | None = None
    # self_distill: what the teacher (the frozen initial student) reads after the problem; None: the
    # task's "be concise" instruction (chain: "short:\n"; math: prompts.CONCISE_INSTRUCTION). Also what
    # MPD's teacher reads before an accepted rewrite with rewrite.teacher_context: concise.
    teacher_instruction: str | None = None
    # self_distill: the teacher is refreshed from the student every teacher_sync_steps optimizer steps
    # (OPSDC's main setting; None: the frozen initial student throughout), as
    # teacher <- (1 - teacher_update_rate) * teacher + teacher_update_rate * student (1: a copy).
    # The names are trl.experimental.sdft's.
    teacher_sync_steps: int | None = Field(default=None, gt=0)
    teacher_update_rate: float = Field(default=1.0, gt=0, le=1)
    # opd_mixed: the share of samples trained on the teacher's own sample for the problem instead of the
    # student's (per sample; GKD's lambda is 1 - teacher_share, drawn there per batch).
    teacher_share: float = Field(default=0.25, ge=0, le=1)
    # grpo_length: GRPO with a length penalty over the reference length, the initial student's mean
    # (measured before the first step unless set); num_generations solutions per problem
    # (batch_size x gradient_accumulation_steps must be a multiple of it). length_penalty_on: correct
    # (reward = correct * max(0, 1 - length_penalty * tokens / reference): a wrong answer gets nothing
    # whatever its length, as in Kimi 1.5 and Arora & Zanette 2025) or all (reward = correct -
    # length_penalty * tokens / reference: a short wrong answer outscores a long one).
    num_generations: int = Field(default=8, ge=2)
    length_penalty: float = Field(default=0.1, ge=0)
    length_reference: float | None = Field(default=None, gt=0)
    length_penalty_on: Literal["correct", "all"] = "correct"
    # Absent: full fine-tuning. Set: only LoRA adapters train; the run saves them to adapter/ and
    # the merged student to model/.
    lora: LoraConfig | None = None
    # Absent: the student samples with transformers' generate. Set: on vLLM through TRL (see VLLMRolloutConfig).
    vllm: VLLMRolloutConfig | None = None
    # Every other field of transformers' TrainingArguments / TRL's DistillationConfig written under
    # training: (report_to, optim, weight_decay, push_to_hub, ...), passed on as written. Filled from
    # those keys; a recipe never names it.
    trl_args: dict[str, Any] = Field(default_factory=dict, exclude=True)

    @model_validator(mode="before")
    @classmethod
    def _trl_fields(cls, data):
        """Move TrainingArguments / DistillationConfig fields into ``trl_args``; any other unknown key
        stays, for the strict model to name (``training.stpes: unknown key``)."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        held = data.pop("trl_args", None) or {}  # a model revalidated on assignment hands its own back
        if not isinstance(held, dict):
            raise ValueError("trl_args is not a recipe key: write TrainingArguments fields directly under training:")
        data = {**held, **data}  # checked below as if written under training: directly
        fields = trl_fields()
        passed = {}
        for key in [k for k in data if isinstance(k, str) and k not in cls.model_fields and k in fields]:
            if key in SET_ELSEWHERE:
                raise ValueError(f"{key} is set by {SET_ELSEWHERE[key]}")
            passed[key] = data.pop(key)
        if passed:
            data["trl_args"] = passed
        return data

    @model_serializer(mode="wrap")
    def _flat(self, handler):
        # A saved recipe writes those fields back where they were written: directly under training:.
        return {**handler(self), **self.trl_args}

    @field_validator("lr_scheduler_type")
    @classmethod
    def _known_scheduler(cls, v: str) -> str:
        from transformers.trainer_utils import SchedulerType

        # These need lr_scheduler_kwargs or evaluation during training, which a recipe does not set up.
        unusable = ("cosine_with_min_lr", "cosine_warmup_with_min_lr", "warmup_stable_decay", "reduce_lr_on_plateau")
        usable = [s.value for s in SchedulerType if s.value not in unusable]
        if v not in usable:
            why = "needs settings a recipe does not give; " if v in unusable else ""
            raise ValueError(f"{why}use one of transformers' schedulers: {', '.join(usable)}")
        return v


# TrainingArguments / DistillationConfig fields a recipe sets in other words (training: may not name them).
# The training: keys MPDConfig (TRL's DistillationConfig, MPD's fields) knows by another name; every
# other key is the field of its own name, but those in NOT_ONE_FIELD, which pipeline.training_arguments
# turns into something else (a release-dependent name, a dict, a save strategy, their own sections).
TRL_NAMES = {"steps": "max_steps", "batch_size": "per_device_train_batch_size"}
NOT_ONE_FIELD = {"gradient_checkpointing", "student_enable_thinking", "save_steps", "lora", "vllm", "trl_args"}

SET_ELSEWHERE = {
    "output_dir": "mpdistill train --out (the trainer writes into OUT/trainer)",
    "max_steps": "training.steps", "per_device_train_batch_size": "training.batch_size",
    "seed": "the recipe's seed", "data_seed": "the recipe's seed",
    "chat_template_kwargs": "training.student_enable_thinking",
    "activation_checkpointing": "training.gradient_checkpointing",
    "trust_remote_code": "security.trust_remote_code",
    # mpdistill loads both models itself (models/loading.py: its safetensors-only policy, the embedded names).
    **{key: "student and teacher (mpdistill loads both models itself)" for key in (
        "model_init_kwargs", "teacher_model_init_kwargs", "teacher_model_name_or_path", "teacher_model_revision")},
    "use_vllm": "training.vllm", **{f"vllm_{k}": "training.vllm" for k in (
        "mode", "server_base_url", "server_timeout", "gpu_memory_utilization", "tensor_parallel_size",
        "max_model_length", "enable_sleep_mode")},
}


def trl_fields() -> set[str]:
    """The field names of TRL's DistillationConfig (TrainingArguments' included)."""
    from dataclasses import fields

    from trl import DistillationConfig

    return {f.name for f in fields(DistillationConfig)}


class SecurityConfig(StrictSettings):
    """What loading a model may do beyond reading tensors. Both run code from the checkpoint: off by default."""

    allow_pickle_checkpoints: bool = False  # .bin/.pt weights; otherwise safetensors only
    trust_remote_code: bool = False  # Python files shipped with a model (transformers' trust_remote_code)


class Recipe(StrictSettings):
    method: str = "mpd"  # a registered method (mpdistill/trainers/methods.py): mpd, opd, offpolicy_kd, rewrite_sft
    seed: int = 0
    # How answers are read and compared, and the prompt a question becomes. Absent: chosen from the
    # data where that is unambiguous (embedded:chain -> chain; a dataset for real models -> math).
    task: str | None = None  # a registered task (mpdistill/tasks)
    # "embedded:student" / "embedded:teacher" are the bundled tiny models; anything else is a
    # local path or a Hugging Face model name.
    student: str = "embedded:student"
    teacher: str = "embedded:teacher"
    data: DataConfig = DataConfig()
    training: TrainingConfig = TrainingConfig()
    rewrite: RewriteConfig = RewriteConfig()
    eval: EvalConfig = EvalConfig()
    security: SecurityConfig = SecurityConfig()

    @field_validator("method")
    @classmethod
    def _known_method(cls, v: str) -> str:
        from mpdistill.trainers.methods import METHODS

        return METHODS.check(v)

    @field_validator("task")
    @classmethod
    def _known_task(cls, v: str | None) -> str | None:
        from mpdistill.tasks import TASKS

        return v if v is None else TASKS.check(v)

    @model_validator(mode="after")
    def _rewrite_backend_takes_these_settings(self):
        from mpdistill.rewriting.backends import settings_problems

        if problems := settings_problems(self.rewrite):
            raise ValueError("; ".join(problems))
        return self

    @model_validator(mode="after")
    def _two_engines_leave_room_to_train(self):
        v, r = self.training.vllm, self.rewrite
        if v is not None and v.mode == "colocate" and r.backend == "vllm":
            share = v.gpu_memory_utilization + (r.gpu_memory_utilization or 0.9)
            if share > 0.8:
                raise ValueError(
                    f"training.vllm.gpu_memory_utilization + rewrite.gpu_memory_utilization is {share:g}: two vLLM "
                    "engines on the training GPUs must leave room for training (at most 0.8 together)"
                )
        return self

    @model_validator(mode="before")
    @classmethod
    def _task_and_its_rewrite_defaults(cls, data):
        data = cls._choose_task(data)
        if not isinstance(data, dict) or not isinstance(data.get("task"), str):
            return data  # the fields' own checks name what is wrong
        from mpdistill.tasks import TASKS

        section = data.get("rewrite", {})
        if isinstance(section, BaseModel):  # Recipe(rewrite=RewriteConfig(...)) from Python
            section = section.model_dump()
        if data["task"] in TASKS and isinstance(section, dict):
            data = {**data, "rewrite": with_task_defaults(section, data["task"])}
        return data

    @staticmethod
    def _choose_task(data):
        """Fill in ``task`` from the data, or refuse where the choice is not clear: a run whose
        answers are read the wrong way trains on no rewrite at all (MPD silently becomes OPD)."""
        if not isinstance(data, dict):
            return data
        section = data.get("data")
        if isinstance(section, BaseModel):  # Recipe(data=DataConfig(...)) from Python
            section = section.model_dump(exclude_unset=True)
        section = section if isinstance(section, dict) else {}
        train = section.get("train", "embedded:chain")
        task = data.get("task")
        chain_data = isinstance(train, str) and train == "embedded:chain"
        # Only strings are looked at: anything else is left for the field's own validation to name.
        embedded = [k for k in ("student", "teacher")
                    if isinstance(data.get(k, f"embedded:{k}"), str) and data.get(k, f"embedded:{k}").startswith("embedded:")]
        if task is not None and not isinstance(task, str):
            return data  # the field's own validation names it
        if chain_data and section.get("prompt_template") is not None:
            raise ValueError("data.prompt_template: the embedded chain task has its own prompt format ('Q:...'), "
                             "which the embedded models were trained on; leave data.prompt_template out")
        if task == "math" and chain_data:
            raise ValueError("task: math with data.train embedded:chain: the embedded chain task's answers are "
                             "'A:<digit>', which the math task never reads; use task: chain (or leave task out)")
        if task is None and isinstance(train, str):
            if chain_data:
                task = "chain"
            elif embedded:
                shown = repr(train if len(train) <= 100 else train[:100] + "...")
                raise ValueError(f"task: cannot be chosen for data.train {shown} with the embedded "
                                 f"{' and '.join(embedded)}: set task: chain (answers 'A:<digit>') or task: math "
                                 "(\\boxed{} answers compared with math-verify)")
            else:
                task = "math"
            data = {**data, "task": task}
        return data

    @model_validator(mode="after")
    def _student_thinking_needs_chat_prompts(self):
        if self.training.student_enable_thinking is not None and self.data.prompt_style != "chat":
            raise ValueError("training.student_enable_thinking needs chat prompts (data.prompt_style: chat)")
        # A {thinking} prompt shows the teacher the student's thinking: a student told not to think has
        # none, and every sample would fall back to on-policy distillation.
        if self.training.student_enable_thinking is False and "{thinking}" in (self.rewrite.prompt_template or ""):
            raise ValueError("rewrite.prompt_template shows the teacher the student's {thinking}, but "
                             "training.student_enable_thinking is false, so the student writes none; use a prompt "
                             "with {trace} (the built-in 'default')")
        return self


def recipe_from_dict(data: dict, source: str = "recipe") -> Recipe:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        return Recipe.model_validate(data)
    except ValidationError as err:
        raise ConfigError(describe_validation_error(err, source)) from None


def yaml_problem(err: yaml.YAMLError) -> str:
    """PyYAML's error (several lines: what it was parsing, where, what it found) as one clause."""
    mark = getattr(err, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    context = getattr(err, "context", None)
    return " ".join(f"{where}{problem}{f' ({context})' if context else ''}".split())


def load_recipe(path: str | Path, overrides: dict | None = None, *, paths_from: Path | None = None) -> Recipe:
    """The recipe at ``path``; its relative paths are read from its folder (``paths_from``: from there).

    A run folder's own ``recipe.yaml`` holds absolute paths; one written before recipes resolved
    their paths holds them relative to where that run was started, and is read with
    ``paths_from=Path.cwd()``.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"recipe not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a UTF-8 text file") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {yaml_problem(err)}") from None
    except RecursionError:
        raise ConfigError(f"{path}: not valid YAML: nested too deeply") from None
    except (ValueError, TypeError, KeyError, AttributeError, IndexError) as err:
        # PyYAML lets plain errors out of some values: a bad explicit tag (`!!bool maybe`,
        # `!!timestamp x`, an empty `!!int ''`), an impossible date (`2024-13-45`), an integer of
        # over 4300 digits.
        raise ConfigError(f"{path}: not valid YAML: a value cannot be read ({type(err).__name__}: {err})") from None
    if data is None:  # an empty file (or only comments): all defaults
        data = {}
    if isinstance(data, dict):
        data = resolve_paths(data, path if paths_from is None else Path(paths_from) / path.name)
    if overrides and isinstance(data, dict):
        # Paths given on the command line are read from where it runs.
        data = _merge(data, resolve_paths(overrides, Path.cwd() / "--set"))
    return recipe_from_dict(data, str(path))


# Keys whose value may be a local path; a relative one is read from the recipe's folder, as a
# path in any file is read from that file, not from wherever the command was started.
PATH_KEYS = (("student",), ("teacher",), ("data", "train"), ("rewrite", "model"))
def resolve_paths(data: dict, recipe_path: Path) -> dict:
    """The recipe with each relative local path in PATH_KEYS made absolute from the recipe's folder.

    A value is a local path when it exists there, starts with ``.``, ``/`` or ``~``, has more
    slashes than an ``org/name`` Hub id, or (data) names a data file; otherwise it is a Hub name
    and left as is. A served model's name (rewrite.backend openai) is never a path.
    """
    base = recipe_path.resolve().parent
    out = dict(data)
    for keys in PATH_KEYS:
        holder = out
        for k in keys[:-1]:
            if not isinstance(holder.get(k), dict):
                holder = None
                break
            holder[k] = holder = dict(holder[k])
        value = holder.get(keys[-1]) if holder is not None else None
        if not isinstance(value, str) or not value or value.startswith("embedded:"):
            continue
        if keys == ("rewrite", "model") and _served(holder.get("backend")):
            continue  # the name of a served model, not a path
        if not ((base / value).exists() or looks_local(value, data_file=keys == ("data", "train"))):
            continue
        resolved = (base / Path(value).expanduser()).resolve()
        if not resolved.exists() and Path(value).expanduser().exists():
            raise ConfigError(f"{recipe_path}: {'.'.join(keys)}: {value!r} is read from the recipe's folder ({base}), "
                              "where it does not exist (it does from the current folder); write it relative to the "
                              "recipe, or as an absolute path")
        holder[keys[-1]] = str(resolved)
    return out


def parse_overrides(items: list[str]) -> dict:
    """``--set key.path=value`` items as a nested mapping; each value is read as YAML (``1e-4``, ``true``,
    ``[a, b]``), so it has the type it would have in the file."""
    out: dict = {}
    for item in items:
        key, sep, text = item.partition("=")
        keys = key.strip().split(".")
        if not sep or not all(keys):
            raise ConfigError(f"--set {item!r}: write KEY=VALUE with a dotted key, e.g. training.learning_rate=1e-4")
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError as err:
            raise ConfigError(f"--set {item!r}: the value is not valid YAML ({yaml_problem(err)})") from None
        holder = out
        for k in keys[:-1]:
            holder = holder.setdefault(k, {})
            if not isinstance(holder, dict):
                raise ConfigError(f"--set {item!r}: {k} is given a value by another --set")
        holder[keys[-1]] = value
    return out


def _served(backend) -> bool:
    from mpdistill.rewriting.backends import BACKENDS

    return isinstance(backend, str) and backend in BACKENDS and BACKENDS[backend].served


def _merge(base: dict, extra: dict, prefix: str = "") -> dict:
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v, f"{prefix}{k}.")
        elif isinstance(v, dict) and out.get(k) is None:
            out[k] = v  # a section the file leaves null (training.lora: null) is switched on
        elif isinstance(v, dict) and k in out:
            inner = next(iter(v)) if v else ""
            raise ConfigError(f"--set {prefix}{k}.{inner}: {prefix}{k} holds a value ({out[k]!r}), not a section with "
                              "keys")
        else:
            out[k] = v
    return out


def dump_recipe(recipe: Recipe) -> str:
    return yaml.safe_dump(recipe.model_dump(), sort_keys=False)
