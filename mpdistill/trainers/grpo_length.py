"""The RL baseline: GRPO with a length penalty (the O1-Pruner / L1 / ThinkPrune line), on TRL's
``GRPOTrainer``.

The student samples ``num_generations`` solutions per problem and is trained by GRPO on one of

    length_penalty_on: correct (the default)
        reward = correct * max(0, 1 - length_penalty * tokens / reference_tokens)
    length_penalty_on: all
        reward = correct - length_penalty * tokens / reference_tokens

where ``correct`` is 1 when the task reads the gold answer in the solution, and
``reference_tokens`` is the initial student's mean solution length, measured before the first
step on training problems with the run's own sampling settings (or set by ``length_reference``).
The first form gates the penalty by correctness, as Kimi 1.5 and Arora & Zanette (2025) do: a
wrong answer scores 0 whatever its length and a correct one never scores below it, so the policy
cannot gain by answering wrongly in fewer tokens. The second penalises every answer, so among wrong
answers the shortest wins: with a large penalty a run can collapse to short wrong answers.
No teacher is involved. The two terms are separate reward functions, so TRL logs each
(``rewards/correct/mean``, ``rewards/length/mean``).

Settings come in the same :class:`~mpdistill.MPDConfig` as every other method (its
TrainingArguments fields, ``num_generations``, ``length_penalty``, ``length_reference``); TRL's
own GRPO settings keep TRL's defaults (DAPO loss, no KL to a reference model).
"""

from __future__ import annotations

import dataclasses
import random

from trl import GRPOConfig, GRPOTrainer

from mpdistill.errors import ConfigError
from mpdistill.rewriting.rewrite import answer_section
from mpdistill.rollout import GenerationSettings, generate_texts
from mpdistill.trainers.base import RolloutLog, RunFiles, by_name, check_training_rows, student_record
from mpdistill.trainers.checkpoints import ResumableTraining
from mpdistill.trainers.config import MPDConfig

# How many training problems the initial student answers to measure the reference length.
REFERENCE_PROBLEMS = 64


@dataclasses.dataclass
class LengthRLConfig(GRPOConfig):
    """TRL's ``GRPOConfig`` plus what every mpdistill run carries (task, log files, NaN guard)."""

    task: str = "math"
    length_penalty: float = 0.1
    length_reference: float | None = None
    length_penalty_on: str = "correct"
    max_nonfinite_steps: int = 3
    rollouts_file: str | None = None
    train_log_file: str | None = None

    get_task = MPDConfig.get_task
    rollouts_path = MPDConfig.rollouts_path
    train_log_path = MPDConfig.train_log_path


def grpo_config(args: MPDConfig) -> LengthRLConfig:
    """``args`` as GRPO settings: every TrainingArguments field and sampling setting as given; GRPO's
    ``beta`` (a KL coefficient, not the distillation mix) stays TRL's default."""
    ours = {f.name for f in dataclasses.fields(LengthRLConfig) if f.init}
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(args) if f.init and f.name in ours}
    values.pop("beta", None)
    values.pop("rewrite_config", None)
    if args.per_device_train_batch_size * args.gradient_accumulation_steps % args.num_generations:
        raise ConfigError(f"training.batch_size x gradient_accumulation_steps "
                          f"({args.per_device_train_batch_size * args.gradient_accumulation_steps}) must be a multiple of "
                          f"training.num_generations ({args.num_generations}): GRPO samples whole groups")
    return LengthRLConfig(**values)


class LengthPenaltyGRPOTrainer(RunFiles, RolloutLog, ResumableTraining, GRPOTrainer):
    """GRPO with a length penalty, constructed like the distillation trainers (``teacher_model`` is
    accepted for the same call and not used)."""

    _tag_names = ["trl", "grpo", "length-penalty"]
    _name = "GRPO with a length penalty"
    _kl_loss = False
    _uses_teacher = False

    @property
    def _card_summary(self) -> str:
        reward = ("correct x max(0, 1 - length_penalty x tokens / (the initial student's mean tokens)), so a wrong "
                  "answer gets nothing whatever its length" if self.args.length_penalty_on == "correct" else
                  "correct - length_penalty x tokens / (the initial student's mean tokens)")
        return f"The student samples several solutions per problem and is trained by GRPO on the reward {reward}; no teacher."

    def __init__(self, model, teacher_model=None, args: MPDConfig | None = None, train_dataset=None, eval_dataset=None,
                 processing_class=None, *, teacher_processing_class=None, peft_config=None, **kwargs) -> None:
        if not isinstance(args, MPDConfig):
            raise TypeError(f"{type(self).__name__} takes an mpdistill.MPDConfig (output_dir, task, the sampling and "
                            f"length_penalty settings), got {type(args).__name__}")
        # Its reward is the answer's correctness: a row without a gold answer would train on length alone.
        check_training_rows(train_dataset, needs_answer="grpo_length (its reward is the answer's correctness)")
        self._start_run_files(model, None, train_dataset)
        config = grpo_config(args)
        model, config.model_init_kwargs, processing_class = by_name(model, config.model_init_kwargs, processing_class,
                                                                    args.trust_remote_code)
        self.task = config.get_task()
        super().__init__(model, reward_funcs=[self._correct, self._length], args=config, train_dataset=train_dataset,
                         eval_dataset=eval_dataset, processing_class=processing_class, peft_config=peft_config, **kwargs)
        self._finish_run_files(config)
        # Measured per run (so per seed): the reward's scale is the initial student's length as this run samples it.
        self.length_reference = config.length_reference or self._measure_reference(train_dataset)

    def _measure_reference(self, dataset) -> float:
        """The initial student's mean tokens per solution on the first training problems, sampled as
        the run samples (its temperature, top-p/k and completion limit), seeded by the run's seed."""
        rows = [dataset[i] for i in range(min(REFERENCE_PROBLEMS, len(dataset)))]
        prompts, _, _ = self._tokenize_prompts([r["prompt"] for r in rows])  # as TRL renders them for sampling
        a = self.args
        settings = GenerationSettings(max_new_tokens=a.max_completion_length, temperature=a.temperature,
                                      top_p=a.top_p, top_k=a.top_k or 0, batch_size=len(rows))
        model = self.accelerator.unwrap_model(self.model)
        gens = generate_texts(model, self.processing_class, [list(p) for p in prompts], settings,
                              seed=random.Random(a.seed).randrange(2**31))
        model.train()
        mean = sum(len(g.token_ids) + (0 if g.truncated else 1) for g in gens) / len(gens)
        if mean <= 0:
            raise ConfigError("the initial student wrote empty solutions: no length to penalise against")
        return float(mean)

    def _graded(self, prompts, completions, completion_ids, answer=None) -> list[dict]:
        """Each completion as a rollout-log record, graded against its problem's gold answer."""
        golds = answer or [None] * len(completions)
        texts = [c if isinstance(c, str) else c[-1]["content"] for c in completions]
        answers = [self.task.extract_answer(answer_section(t)) for t in texts]
        return [student_record(self.task, p, gold, t, len(ids), a)
                for p, gold, t, ids, a in zip(prompts, golds, texts, completion_ids, answers)]

    def _correct(self, prompts, completions, completion_ids, **kwargs) -> list[float]:
        records = self._graded(prompts, completions, completion_ids, kwargs.get("answer"))
        self._write_rollouts(records)
        return [float(bool(r["student_correct"])) for r in records]

    def _length(self, prompts, completions, completion_ids, **kwargs) -> list[float]:
        self._metrics["train" if self.model.training else "eval"]["length/reference_tokens"].append(self.length_reference)
        penalties = [self.args.length_penalty * len(ids) / self.length_reference for ids in completion_ids]
        if self.args.length_penalty_on == "all":
            return [-p for p in penalties]
        # Gated: only a correct answer pays for its length, and never more than its whole reward.
        correct = [bool(r["student_correct"]) for r in self._graded(prompts, completions, completion_ids,
                                                                     kwargs.get("answer"))]
        return [-min(1.0, p) if ok else 0.0 for p, ok in zip(penalties, correct)]

    # TRL names reward functions by __name__ in its metrics; bound methods keep theirs.
    _correct.__name__ = "correct"
    _length.__name__ = "length"

