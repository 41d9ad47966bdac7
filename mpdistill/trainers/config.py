"""``MPDConfig``: TRL's ``DistillationConfig`` with MPD's own settings, for every method's trainer.

Every ``TrainingArguments`` / ``DistillationConfig`` field keeps its name and meaning. MPD adds:

* ``task``: how answers are read and compared and the prompt a problem becomes (:mod:`mpdistill.tasks`);
* ``rewrite_<key>`` for every key of a recipe's ``rewrite:`` section (:class:`mpdistill.rewriting.settings.RewriteConfig`
  documents each one): the rewrite prompt, acceptance and mixing rule, the teacher's sampling and
  where rewrites come from (``rewrite_backend``: the local teacher, an in-process vLLM engine or a
  served model). ``rewrite_prompt_template`` and ``rewrite_use_chat_template`` default to the task's;
* ``max_nonfinite_steps``, ``rollouts_file`` and ``train_log_file``.

The ``rewrite_*`` fields are made from ``RewriteConfig`` and validated by it, so a recipe's
``rewrite.max_ratio`` and ``MPDConfig(rewrite_max_ratio=...)`` are one setting with one check.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any

from pydantic import ValidationError
from trl import DistillationConfig

from mpdistill.rewriting.backends import settings_problems
from mpdistill.rewriting.rewrite import RewriteSettings, rewrite_settings_from
from mpdistill.rewriting.settings import RewriteConfig, with_task_defaults
from mpdistill.tasks import TASKS, Task, get_task
from mpdistill.utils.paths import ROLLOUTS, TRAIN_LOG

REWRITE_PREFIX = "rewrite_"


def _rewrite_field(name: str, info) -> tuple[str, Any, dataclasses.Field]:
    default = {"default_factory": info.default_factory} if info.default_factory else {"default": info.default}
    help_text = f"The recipe's rewrite.{name} (see mpdistill.rewriting.settings.RewriteConfig)."
    return REWRITE_PREFIX + name, info.annotation, dataclasses.field(**default, metadata={"help": help_text})


# The rewrite_* fields, appended after DistillationConfig's so its positional output_dir stays first.
_WithRewriteFields = dataclasses.make_dataclass(
    "_WithRewriteFields",
    [_rewrite_field(name, info) for name, info in RewriteConfig.model_fields.items()],
    bases=(DistillationConfig,),
)


@dataclasses.dataclass
class MPDConfig(_WithRewriteFields):
    """TRL's ``DistillationConfig`` plus MPD's settings (see the module docstring)."""

    task: str = dataclasses.field(default="math", metadata={"help": "A registered task: chain or math (mpdistill.tasks)."})
    teacher_instruction: str | None = dataclasses.field(
        default=None, metadata={"help": "Self-distillation: what the teacher's prompt gains after the problem (default: the "
                                        "task's concise instruction)."})
    teacher_sync_steps: int | None = dataclasses.field(
        default=None, metadata={"help": "Self-distillation: refresh the teacher from the student every this many "
                                        "optimizer steps (None: the frozen initial student throughout)."})
    teacher_update_rate: float = dataclasses.field(
        default=1.0, metadata={"help": "Self-distillation: teacher <- (1 - rate) * teacher + rate * student at each "
                                       "refresh (1: a copy)."})
    teacher_share: float = dataclasses.field(
        default=0.25, metadata={"help": "opd_mixed: the share of samples trained on the teacher's own sample instead "
                                        "of the student's (GKD's lambda is 1 - teacher_share)."})
    num_generations: int = dataclasses.field(
        default=8, metadata={"help": "grpo_length: solutions sampled per problem (a GRPO group)."})
    length_penalty: float = dataclasses.field(
        default=0.1, metadata={"help": "grpo_length: the weight of tokens / reference tokens in the reward."})
    length_reference: float | None = dataclasses.field(
        default=None, metadata={"help": "grpo_length: the reference tokens (default: the initial student's mean, "
                                        "measured before the first step)."})
    length_penalty_on: str = dataclasses.field(
        default="correct", metadata={"help": "grpo_length: 'correct' (reward = correct * max(0, 1 - length_penalty * "
                                             "tokens / reference)) or 'all' (reward = correct - length_penalty * tokens "
                                             "/ reference)."})
    max_nonfinite_steps: int = dataclasses.field(
        default=3, metadata={"help": "A step with a NaN/inf loss or gradient is skipped; more in a row stop the run."})
    rollouts_file: str | None = dataclasses.field(
        default=None, metadata={"help": "One JSON line per sample (default: OUTPUT_DIR/rollouts.jsonl; '' for none)."})
    train_log_file: str | None = dataclasses.field(
        default=None, metadata={"help": "One JSON line per logging step, written as it is logged (default: "
                                        "OUTPUT_DIR/train_log.jsonl; '' for none)."})

    def __post_init__(self) -> None:
        if self.bf16 is None and not self.fp16:
            # TRL turns bf16 on when unset, which transformers then refuses on a machine without a GPU.
            import torch

            self.bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        super().__post_init__()
        if self.task not in TASKS:
            raise ValueError(f"task: unknown task {self.task!r}; known: {TASKS.known()}")
        if self.max_nonfinite_steps < 0:
            raise ValueError(f"max_nonfinite_steps must be >= 0, got {self.max_nonfinite_steps}")
        if self.length_penalty_on not in ("correct", "all"):
            raise ValueError(f"length_penalty_on must be 'correct' or 'all', got {self.length_penalty_on!r}")
        if not 0 <= self.teacher_share <= 1:
            raise ValueError(f"teacher_share must be in [0, 1], got {self.teacher_share}")
        if self.teacher_sync_steps is not None and self.teacher_sync_steps <= 0:
            raise ValueError(f"teacher_sync_steps must be a positive number of steps or None, got {self.teacher_sync_steps}")
        if not 0 < self.teacher_update_rate <= 1:
            raise ValueError(f"teacher_update_rate must be in (0, 1], got {self.teacher_update_rate}")
        self.rewrite_config()  # one check for every rewrite_* field, RewriteConfig's

    def rewrite_config(self) -> RewriteConfig:
        """The ``rewrite_*`` fields as a recipe's validated ``rewrite:`` section (task defaults filled in)."""
        values = {f.name[len(REWRITE_PREFIX):]: getattr(self, f.name)
                  for f in dataclasses.fields(self) if f.name.startswith(REWRITE_PREFIX)}
        try:
            config = RewriteConfig.model_validate(with_task_defaults(values, self.task))
        except ValidationError as err:
            problems = [f"{REWRITE_PREFIX}{'.'.join(map(str, e['loc']))}: {e['msg'].removeprefix('Value error, ')}"
                        if e["loc"] else e["msg"].removeprefix("Value error, ") for e in err.errors()]
        else:
            problems = settings_problems(config)  # what the chosen backend asks of them
            if not problems:
                return config
        # A rule across settings names them as recipe keys (rewrite.base_url): here they are fields.
        raise ValueError("; ".join(re.sub(r"\brewrite\.(\w+)", REWRITE_PREFIX + r"\1", p) for p in problems))

    def get_task(self) -> Task:
        return get_task(self.task)

    def rewrite_settings(self) -> RewriteSettings:
        """How rewrites are prompted for, sampled, accepted and mixed in this run."""
        return rewrite_settings_from(self.rewrite_config())

    def rollouts_path(self) -> str | None:
        return _file_or_default(self.rollouts_file, self.output_dir, ROLLOUTS)

    def train_log_path(self) -> str | None:
        return _file_or_default(self.train_log_file, self.output_dir, TRAIN_LOG)


def _file_or_default(path: str | None, output_dir: str, name: str) -> str | None:
    """A file setting: None means ``output_dir/name``, '' means no file."""
    if path == "":
        return None
    return path or os.path.join(output_dir, name)
