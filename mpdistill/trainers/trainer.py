"""MPD and its baselines as TRL ``DistillationTrainer`` subclasses (step 4 of the pipeline).

TRL's trainer samples the student (``_generate``), pads prompt and completion, and minimises the
chunked full-vocabulary generalized JSD between teacher and student at every completion token,
with the teacher conditioned on the original prompt. Each method here changes only *which*
completion the loss runs on, or the loss itself:

=================  ==========================================  ==============================
method             completion trained on                        loss
=================  ==========================================  ==============================
``opd``            the student's own sample ``y``                JSD(beta) vs teacher (TRL as is)
``mpd``            the teacher's verified rewrite ``z`` of ``y`` JSD(beta) vs teacher
``offpolicy_kd``   the teacher's own sample for the prompt      JSD(beta) vs teacher
``rewrite_sft``    accepted rewrites ``z`` only                 cross-entropy, no teacher logits
=================  ==========================================  ==============================

The hook is TRL's private ``_generate(prompts) -> (prompt_ids, completion_ids, tool_mask,
images, tool_images)``; ``tests/test_trl_contract.py`` fails loudly if it moves. A dropped
sample keeps its tokens but gets a zero loss mask through the ``tool_mask`` slot, which TRL
multiplies into the loss mask and the token count that normalises the loss.
"""

from __future__ import annotations

import functools
import logging
import random
import re
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import gather_object
from transformers import TrainerCallback
from trl import DistillationTrainer

from mpdistill.trainers.checkpoints import ResumableTraining, checkpoint_step, rewind_rollout_log
from mpdistill.utils.durable import append_jsonl
from mpdistill.errors import ConfigError, HubError, one_line
from mpdistill.trainers.mix_monitor import MixFloorHalt, MixMonitor
from mpdistill.models.card import CardFacts, render_card, write_card
from mpdistill.models.record import write_record
from mpdistill.trainers.config import MPDConfig
from mpdistill.trainers.nonfinite import NonFiniteGuard, NonFiniteHalt
from mpdistill.utils.processes import count_on_every_process
from mpdistill.trainers.overlap import FinishWatcher, finish_order, micro_batch_inputs, pad_prompts, rescale_gradients, watching_generate
from mpdistill.rewriting.rewrite import (REASONS, Rewriter, RewriteSettings, Sample, answer_section, encode_completion, mix,
                      on_policy_picks, plan_rewrite, rewrite_batch, settle_rewrite)
from mpdistill.rewriting.backends import Teacher, build_rewriter
from mpdistill.rollout import generate_texts, pad_generate_calls
from mpdistill.trainers.train_log import TrainLogFile

log = logging.getLogger(__name__)


def problem_text(prompt: Any) -> str:
    """The problem as the rewriter should see it: the text, or the last user turn of a chat."""
    if isinstance(prompt, str):
        return prompt
    users = [m["content"] for m in prompt if m.get("role") == "user"]
    if not users or not isinstance(users[-1], str):
        raise ValueError(f"conversational prompt has no text user turn: {prompt!r}")
    return users[-1]


def student_record(task, prompt: Any, gold: str | None, text: str, tokens: int, answer: str | None) -> dict:
    """A rollout-log line for a student sample trained on as sampled, graded where the problem has a
    gold answer (``answer``: what the task read from ``text``, after its thinking; None: nothing)."""
    return {"prompt": prompt, "gold": gold, "student_answer": answer,
            "student_correct": None if gold is None else answer is not None and task.answers_match(answer, gold),
            "student": text, "student_tokens": tokens, "trained_on": "student"}


class _RolloutLogMixin:
    """Appends one JSON line per sample to ``rollouts_path``, on the main process only."""

    @property
    def rollouts_path(self) -> Path | None:
        path = self.args.rollouts_path()
        return Path(path) if path else None

    def _write_rollouts(self, records: list[dict]) -> None:
        rank = self.accelerator.process_index
        records = gather_object([{**r, "process": rank} for r in records])
        if self.rollouts_path is None or not self.accelerator.is_main_process:
            return
        # One line per sample, flushed before the step trains: a crash tears at most this batch's last line.
        append_jsonl(self.rollouts_path, [{"step": self.state.global_step, "index": i, **r} for i, r in enumerate(records)])

    def _stash_inputs(self, inputs: list[dict]) -> None:
        # ``_generate`` only receives prompts; the gold answer and problem text ride along here.
        self._inputs = inputs


class RunFiles:
    """What every method's trainer does around TRL's loop, whatever TRL trainer it is: a run the
    NaN/inf guard or the mix monitor stopped raises, a resumed run's rollout log is rewound, and a
    saved student carries its ``mpdistill.json`` and model card. The class names ``_name``,
    ``_card_summary``, ``_kl_loss``, ``_student_samples`` and holds ``card_facts`` and ``task``."""

    _kl_loss = True  # trained by KL to the teacher (Rewrite-SFT: cross-entropy)
    _checks_gold = False  # rewrite_require_gold applies: it trains on text the teacher wrote, vetted by the answer
    _student_samples = True  # the student samples what it trains on (off-policy KD: the teacher does)
    _uses_teacher = True  # GRPO with a length penalty has none

    def train(self, resume_from_checkpoint=None, **kwargs):
        """TRL's ``train``; a resumed run's rollout log keeps only the steps its checkpoint holds, and a
        run the NaN/inf guard or the mix monitor stopped raises instead of returning as if it finished."""
        if getattr(self, "_trained", False):
            raise RuntimeError(f"{type(self).__name__}.train() was already called on this trainer: build a new trainer "
                               "for another run (or pass resume_from_checkpoint to go on from a checkpoint of this one)")
        if resume_from_checkpoint:
            resume_from_checkpoint = str(self._checkpoint_to_resume(resume_from_checkpoint))
        rollouts = getattr(self, "rollouts_path", None)
        if resume_from_checkpoint and rollouts is not None and self.accelerator.is_main_process:
            rewind_rollout_log(rollouts, checkpoint_step(Path(resume_from_checkpoint)))
        self._trained = True
        output = super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)
        for callback in self.callback_handler.callbacks:
            if isinstance(callback, MixMonitor) and callback.halted:
                raise MixFloorHalt(callback.halted)
            if isinstance(callback, NonFiniteGuard) and callback.halted_at is not None:
                raise NonFiniteHalt(
                    f"training stopped at step {self.state.global_step}: more than {callback.limit} steps in a row "
                    f"had a NaN/inf loss or gradient (skipped steps: {callback.skipped[-callback.limit - 1:]}); lower "
                    "the learning rate or check the data")
        return output

    def _checkpoint_to_resume(self, given) -> Path:
        """``resume_from_checkpoint`` checked before anything loads: ``True`` is the newest whole checkpoint of
        ``output_dir`` (a damaged newer one is passed over with a warning); a path must be whole."""
        from mpdistill.trainers.checkpoints import ResumeError, checkpoint_problem, latest_complete_checkpoint

        if given is True:
            found, skipped = latest_complete_checkpoint(Path(self.args.output_dir))
            if found is None:
                raise ResumeError(f"{self.args.output_dir} has no checkpoint to resume from"
                                  + (f" ({'; '.join(skipped)})" if skipped else ""))
            for line in skipped:
                log.warning("not resumed from %s; going on from %s", line, found.name)
            return found
        path = Path(given)
        why = checkpoint_problem(path) if path.is_dir() else "no such folder"
        if why is not None:
            raise ResumeError(f"cannot resume from {path}: {why}")
        return path

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """TRL's ``save_model``, with the folder's ``mpdistill.json`` (task, prompt) that ``mpdistill eval``
        reads and its model card (``README.md``). The saved config generates with its KV cache, which
        training turns off for gradient checkpointing; a folder saved by the user holds no pickle."""
        config = getattr(self.accelerator.unwrap_model(self.model), "config", None)
        cache_off = getattr(config, "use_cache", None) is False
        if cache_off:
            config.use_cache = True
        try:
            super().save_model(output_dir, _internal_call)
        finally:
            if cache_off:
                config.use_cache = False
        if not _internal_call and self.accelerator.is_main_process:
            folder = output_dir or self.args.output_dir
            drop_training_arguments(folder)
            self._describe_folder(folder)

    def _describe_folder(self, folder: str) -> None:
        """``mpdistill.json`` and the model card beside saved weights."""
        prompt = next(iter(self.train_dataset or []), {}).get("prompt", "")  # plain text, or a conversation
        kwargs = self.args.chat_template_kwargs or {}
        write_record(folder, task=self.args.task, prompt_template=self.task.prompt_template,
                     prompt_style="plain" if isinstance(prompt, str) else "chat", thinking=kwargs.get("enable_thinking"))
        write_card(folder, self.model_card())

    def model_card(self, evaluation: str | None = None, *, merged: bool = False) -> str:
        """This run's model card: the models, the method and its settings, the data, the steps trained
        (``merged``: for the student with its LoRA adapter folded in)."""
        lora = ("merged" if merged else "adapter") if hasattr(self.model, "peft_config") else None
        return render_card(method=self._name, summary=getattr(self, "_card_summary", ""),
                           rewrites=getattr(self, "rewriter", None) is not None, kl_loss=self._kl_loss,
                           student_samples=self._student_samples, uses_teacher=self._uses_teacher,
                           facts=self.card_facts, args=self.args, steps=self.state.global_step,
                           processes=self.accelerator.num_processes, lora=lora, evaluation=evaluation)

    def create_model_card(self, model_name: str | None = None, dataset_name: str | None = None,
                          tags: str | list[str] | None = None) -> None:
        """mpdistill's card and ``mpdistill.json`` in the output folder, where TRL writes its card (at
        each checkpoint save, and before ``push_to_hub`` uploads that folder): a pushed model says how
        it was made. ``tags``: the Hub tags transformers adds (the trainer's and the model's)."""
        if self.is_world_process_zero():
            facts = self.card_facts
            if dataset_name and not facts.dataset:
                facts.dataset = dataset_name
            facts.extra_tags = list(dict.fromkeys([*facts.extra_tags, *([tags] if isinstance(tags, str) else tags or [])]))
            self._describe_folder(self.args.output_dir)

    def init_hf_repo(self, token: str | None = None) -> None:
        """transformers creates the Hub repository when a ``push_to_hub`` run starts (on the main process):
        a failure stops every process after the constructor, in one line, before any step trains."""
        try:
            super().init_hf_repo(token=token)
        except Exception as err:  # noqa: BLE001 (huggingface_hub raises HTTP, URI and network errors)
            self._hub_error = (f"push_to_hub: cannot create the Hub repository {self.args.hub_model_id or ''} "
                               f"({type(err).__name__}: {one_line(err)}); check hub_model_id, HF_TOKEN and the network, or "
                               "turn push_to_hub off")


def drop_training_arguments(folder: str | Path) -> None:
    """Remove transformers' ``training_args.bin`` from a model folder meant to be shared: a pickle runs
    code when loaded, and the run's settings are in its ``recipe.yaml`` and model card. (Checkpoints
    keep theirs.)"""
    from transformers.trainer import TRAINING_ARGS_NAME

    (Path(folder) / TRAINING_ARGS_NAME).unlink(missing_ok=True)


def check_training_rows(dataset, *, needs_answer: str | None = None) -> None:
    """A training dataset's rows have what every step reads: a ``prompt`` (text, or a chat as a list of
    messages) in each, and, where ``needs_answer`` (the setting that needs it) is given, a gold
    ``answer``. Raises a ConfigError naming the field and the first row that lacks it; an empty dataset
    is refused too (no step could run). A dataset without a length (streamed) is read as it trains."""
    if dataset is None or not hasattr(dataset, "__len__"):
        return
    if len(dataset) == 0:
        raise ConfigError("train_dataset is empty: no training step could run")
    columns = getattr(dataset, "column_names", None)
    if columns is not None and "prompt" not in columns:
        raise ConfigError(f"train_dataset has no 'prompt' field (its fields: {', '.join(columns) or 'none'}); each row "
                          "needs the prompt the student answers (text, or a chat as a list of messages)")
    prompts = dataset["prompt"] if columns is not None else [row.get("prompt") for row in dataset]
    for i, prompt in enumerate(prompts):
        if not (isinstance(prompt, str) and prompt.strip()) and not (
                isinstance(prompt, list) and prompt and all(isinstance(m, dict) for m in prompt)):
            shown = "missing" if prompt is None else f"a {type(prompt).__name__}" if not isinstance(prompt, str) else "empty"
            raise ConfigError(f"train_dataset row {i}: 'prompt' is {shown}; it must be text or a chat (a list of "
                              "messages)")
    if needs_answer is None:
        return
    answers = dataset["answer"] if columns is not None and "answer" in columns else None
    if answers is None and columns is not None:
        raise ConfigError(f"train_dataset has no 'answer' field, which {needs_answer} needs (its fields: "
                          f"{', '.join(columns)})")
    answers = answers if answers is not None else [row.get("answer") for row in dataset]
    for i, answer in enumerate(answers):
        if answer is None or not str(answer).strip():
            raise ConfigError(f"train_dataset row {i}: 'answer' is missing, and {needs_answer} needs a gold answer "
                              "in every row")


class _Trainer(RunFiles, ResumableTraining, DistillationTrainer):
    """What every method's trainer shares: TRL's constructor with model names (the embedded models'
    included), an :class:`MPDConfig`, resumable checkpoints and the NaN/inf guard.

    ``teacher_processing_class`` renders the teacher's own prompts (its rewrites, its samples);
    default: the teacher's tokenizer when the teacher is given by name, else ``processing_class``.
    """

    def __init__(self, model, teacher_model=None, args: MPDConfig | None = None, train_dataset=None,
                 eval_dataset=None, processing_class=None, *, teacher_processing_class=None, **kwargs) -> None:
        from mpdistill.models.loading import check_compatible, load_tokenizer, resolve_model

        # The names as the user gave them, for the model card (a loaded model knows only its folder).
        self.card_facts = CardFacts(student=model if isinstance(model, str) else _loaded_name(model),
                                    teacher=teacher_model if isinstance(teacher_model, str) else _loaded_name(teacher_model),
                                    problems=len(train_dataset) if hasattr(train_dataset, "__len__") else None)
        if args is None:  # as TRL names its default output folder: after the model
            name = model if isinstance(model, str) else getattr(model.config, "_name_or_path", "") or "model"
            args = MPDConfig(re.sub(r"[^\w.-]+", "-", f"{Path(name).name}-{self._name}"))
        elif not isinstance(args, MPDConfig):
            raise TypeError(f"{type(self).__name__} takes an mpdistill.MPDConfig (TRL's DistillationConfig plus MPD's "
                            f"settings), got {type(args).__name__}")
        # The rows, before any model loads: a missing field found mid-step is a bare KeyError after minutes.
        check_training_rows(train_dataset, needs_answer="rewrite_require_gold" if args.rewrite_require_gold and
                            self._checks_gold else None)
        if isinstance(model, str):  # loaded by TRL, under mpdistill's loading policy
            model = resolve_model(model)
            # Safetensors only, as models.load_model: pickled weights run code when loaded (use_safetensors=None
            # in model_init_kwargs, or a model loaded by hand, to opt in).
            args.model_init_kwargs = {"use_safetensors": True, **(args.model_init_kwargs or {})}
            if processing_class is None:  # checked: a folder without its tokenizer files is refused
                processing_class = load_tokenizer(model, trust_remote_code=args.trust_remote_code)
        if isinstance(teacher_model, str):
            teacher_model = resolve_model(teacher_model)
            args.teacher_model_init_kwargs = {"use_safetensors": True, **(args.teacher_model_init_kwargs or {})}
            if teacher_processing_class is None:
                teacher_processing_class = load_tokenizer(teacher_model, trust_remote_code=args.trust_remote_code)
        self._hub_error: str | None = None  # set by init_hf_repo (on the main process, where transformers runs it)
        super().__init__(model, teacher_model, args, train_dataset, eval_dataset, processing_class, **kwargs)
        check_hub_repository(self)
        if args.use_vllm:
            from mpdistill.rollout.vllm import refresh_colocated_engine_in_place

            refresh_colocated_engine_in_place(getattr(self, "vllm_generation", None))
        self.teacher_tokenizer = teacher_processing_class or self._tokenizer
        if self.teacher_model is not None:  # one vocabulary, piece by piece (TRL compares only the sizes)
            check_compatible("the student", self._tokenizer, self.model, "the teacher", self.teacher_tokenizer,
                             self.local_teacher())
        self.task = args.get_task()
        self.add_callback(NonFiniteGuard(args.max_nonfinite_steps, metrics=self._metrics))
        if path := args.train_log_path():
            self.add_callback(TrainLogFile(path))

    def local_teacher(self):
        """The teacher's own module (not the training wrapper around it), for generation."""
        return self.accelerator.unwrap_model(self.teacher_model)


def check_hub_repository(trainer) -> None:
    """After a ``push_to_hub`` trainer's constructor: the Hub repository's creation failed on the main
    process (``RunFiles.init_hf_repo``) -> every process stops alike, or the others would wait at their
    first collective; else a warning that the run's logs go up with the model."""
    if not trainer.args.push_to_hub:
        return
    errors = [e for e in gather_object([trainer._hub_error]) if e]
    if errors:
        error = HubError(errors[0])
        error.shared_by_main_process = True
        raise error
    _warn_logs_would_be_pushed(trainer.args)


def _warn_logs_would_be_pushed(args: MPDConfig) -> None:
    """transformers' push_to_hub uploads the whole output folder: logs kept there go with the model."""
    inside = [p for p in (args.rollouts_path(), args.train_log_path())
              if p and Path(args.output_dir).resolve() in Path(p).resolve().parents]
    if inside:
        log.warning("push_to_hub uploads %s, which holds %s (training prompts and model outputs): set rollouts_file "
                    "and train_log_file outside it to keep them off the Hub", args.output_dir,
                    " and ".join(Path(p).name for p in inside))


def _loaded_name(model) -> str | None:
    config = getattr(model, "config", None)
    return getattr(config, "_name_or_path", None) or None


class _TimedRewriter:
    """A rewriter whose ``rewrite`` calls are timed (``mpd/rewrite_wait_s`` of a serial step)."""

    def __init__(self, rewriter: Rewriter) -> None:
        self.rewriter, self.seconds = rewriter, 0.0

    def rewrite(self, prompts, max_new_tokens=None):
        started = time.perf_counter()
        try:
            return self.rewriter.rewrite(prompts, max_new_tokens=max_new_tokens)
        finally:
            self.seconds += time.perf_counter() - started


@dataclass
class _PendingStep:
    """One overlapped step's samples, their rewrites on the way and its micro-batches."""

    prompts: list
    n: int
    picks: list[bool]  # kept on-policy (drawn in batch order, as a serial step draws them)
    counts_before: dict | None  # the served rewriter's request counts at the step's start
    samples: list = field(default_factory=list)
    budgets: list = field(default_factory=list)
    answers: list = field(default_factory=list)  # PendingRewrite (served_rewriter), None where nothing was sent
    groups: list[list[int]] = field(default_factory=list)
    prompts_padded: tuple = ()  # (ids, mask) of every row, padded as TRL pads the generation batch
    provisional: torch.Tensor | None = None
    grad_scale: float = 1.0
    wait_s: float = 0.0
    losses: list = field(default_factory=list)

    def __post_init__(self) -> None:
        self.samples, self.budgets, self.answers = [None] * self.n, [None] * self.n, [None] * self.n


class OPDTrainer(_RolloutLogMixin, _Trainer):
    """On-policy distillation: TRL's trainer as is, with resumable checkpoints and the rollout log."""

    _name = "OPD"
    _card_summary = ("The student samples a solution and is trained by token-level KL against the teacher on "
                     "its own sample (on-policy distillation).")

    def _generate_and_score_completions(self, inputs):
        self._stash_inputs(inputs)
        return super()._generate_and_score_completions(inputs)

    def _generate(self, prompts):
        out = super()._generate(prompts)
        completion_ids = out[1]
        texts = self.processing_class.batch_decode(completion_ids, skip_special_tokens=True)
        self._write_rollouts([student_record(self.task, prompt, row.get("answer"), text, len(ids),
                                             self.task.extract_answer(answer_section(text)))
                              for prompt, row, text, ids in zip(prompts, self._inputs, texts, completion_ids, strict=True)])
        return out


def teacher_prompt(prompt: Any, instruction: str) -> Any:
    """The prompt as the self-distillation teacher reads it: the problem, then ``instruction`` (a
    chat's last user turn gets it as a new paragraph; a plain prompt gets it on a line of its own)."""
    if isinstance(prompt, str):
        return prompt + ("" if not prompt or prompt.endswith("\n") else "\n") + instruction
    turns = [dict(m) for m in prompt]
    last = max((i for i, m in enumerate(turns) if m.get("role") == "user"), default=None)
    if last is None or not isinstance(turns[last]["content"], str):
        raise ValueError(f"conversational prompt has no text user turn for the instruction: {prompt!r}")
    turns[last]["content"] = f"{turns[last]['content']}\n\n{instruction}"
    return turns


class _TeacherPrompts:
    """The loss's teacher reads a prompt of its own in front of each completion (the student keeps its
    prompt): a trainer sets ``teacher_prompt_ids``/``teacher_prompt_mask`` in its batch with
    :meth:`_attach_teacher_prompts`.

    The hook: TRL's private ``_get_last_hidden_state(unwrapped_model, input_ids, attention_mask, logits_to_keep)``,
    which ``_compute_loss`` calls for the student and then for the teacher; the teacher's call gets
    its own prompts in front of the same completions (``tests/test_trl_contract.py``).
    """

    _teacher_view: tuple[torch.Tensor, torch.Tensor] | None = None
    _teacher_swapped = False

    def _attach_teacher_prompts(self, out: dict, prompts: list) -> dict:
        ids, _, _ = self._tokenize_prompts(prompts)
        # Left-padded as TRL pads the prompts, so that every teacher prompt ends where its completion starts.
        out["teacher_prompt_ids"], out["teacher_prompt_mask"] = pad_prompts(
            [list(p) for p in ids], pad_token_id=self._tokenizer.pad_token_id, pad_to_multiple_of=self.pad_to_multiple_of,
            device=out["prompt_ids"].device)
        return out

    def _compute_loss(self, unwrapped_student, inputs, num_items_in_batch):
        if "teacher_prompt_ids" not in inputs:
            return super()._compute_loss(unwrapped_student, inputs, num_items_in_batch)
        self._teacher_view = (torch.cat([inputs["teacher_prompt_ids"], inputs["completion_ids"]], dim=1),
                              torch.cat([inputs["teacher_prompt_mask"], inputs["completion_mask"]], dim=1))
        self._teacher_swapped = False
        try:
            result = super()._compute_loss(unwrapped_student, inputs, num_items_in_batch)
        finally:
            self._teacher_view = None
        if not self._teacher_swapped:  # the teacher would have read the student's prompt, silently
            raise RuntimeError(f"{self._name}: TRL's loss did not score the teacher through _get_last_hidden_state; "
                               "the installed TRL moved the hook (tests/test_trl_contract.py)")
        return result

    def _get_last_hidden_state(self, unwrapped_model, input_ids, attention_mask, logits_to_keep, *args, **kwargs):
        if self._teacher_view is not None and unwrapped_model is self.local_teacher():
            input_ids, attention_mask = self._teacher_view
            self._teacher_swapped = True
        return super()._get_last_hidden_state(unwrapped_model, input_ids, attention_mask, logits_to_keep, *args, **kwargs)


def concise_instruction(args: MPDConfig, task) -> str:
    """What a teacher asked to be concise reads after the problem: ``training.teacher_instruction``,
    else the task's concise instruction."""
    instruction = args.teacher_instruction or task.concise_instruction
    if not instruction:
        raise ConfigError(f"task {task.name!r} has no concise instruction for the teacher: set training.teacher_instruction")
    return instruction


class TeacherRefresh(TrainerCallback):
    """Every ``every`` optimizer steps, the teacher becomes ``(1 - rate) * teacher + rate * student``
    (``rate`` 1: a copy), through TRL's ``SyncRefModelCallback.sync_target_model`` (which gathers
    ZeRO-3 shards). The refreshed teacher is saved in each checkpoint (see ``ResumableTraining``)."""

    def __init__(self, trainer, every: int, rate: float) -> None:
        self.trainer, self.every, self.rate = trainer, every, rate

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % self.every == 0:
            from trl.trainer.callbacks import SyncRefModelCallback

            t = self.trainer
            SyncRefModelCallback.sync_target_model(t.accelerator.unwrap_model(t.model), t.local_teacher(), self.rate)


class SelfDistillTrainer(_TeacherPrompts, OPDTrainer):
    """Self-distillation with a concise instruction (OPSDC-style): OPD whose teacher is the frozen
    initial student reading the prompt plus ``args.teacher_instruction`` (the task's "be concise"
    instruction when unset). The student samples without the instruction; the divergence runs on its
    sample's tokens, each scored by the teacher after its own, instructed, prompt.

    ``args.teacher_sync_steps`` refreshes the teacher from the student every that many steps
    (OPSDC's main setting): the instructed teacher then improves as the student does.
    """

    _name = "Self-distillation"

    @property
    def _card_summary(self) -> str:
        teacher = ("its own frozen initial copy" if self.args.teacher_sync_steps is None else
                   f"a copy of itself refreshed every {self.args.teacher_sync_steps} steps")
        return (f"The student samples a solution and is trained by token-level KL against {teacher}, which reads "
                "the problem with an instruction to be concise (on-policy self-distillation).")

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.instruction = concise_instruction(self.args, self.task)
        if self.local_teacher() is self.accelerator.unwrap_model(self.model):
            raise ConfigError("self-distillation needs a frozen copy of the student as teacher_model, not the student "
                              "being trained (pass the student's name or a second loaded copy)")
        a = self.args
        if a.teacher_sync_steps is not None:
            if hasattr(self.model, "peft_config"):
                raise ConfigError("training.teacher_sync_steps copies the student's weights into the teacher, which a "
                                  "LoRA student does not train all of: leave training.lora out, or the refresh")
            if getattr(self, "is_fsdp_enabled", False) or self.is_deepspeed_enabled:
                raise ConfigError("training.teacher_sync_steps is not available with sharded models (FSDP, DeepSpeed): "
                                  "a checkpoint could not hold the refreshed teacher whole")
            self.add_callback(TeacherRefresh(self, a.teacher_sync_steps, a.teacher_update_rate))

    def checkpoint_modules(self) -> dict:
        # A refreshed teacher is no longer the initial student: a resumed run must find it as it was.
        return {} if self.args.teacher_sync_steps is None else {"teacher": self.local_teacher()}

    def _generate_and_score_completions(self, inputs):
        out = super()._generate_and_score_completions(inputs)
        return self._attach_teacher_prompts(out, [teacher_prompt(row["prompt"], self.instruction) for row in inputs])


class MPDTrainer(_TeacherPrompts, _RolloutLogMixin, _Trainer):
    """Mixed-Policy Distillation: KL to the teacher on the teacher's rewrite of the student's sample.

    ``rewriter``: where rewrites come from; default: the backend ``args.rewrite_backend`` names
    (the local teacher unless set; see :mod:`mpdistill.rewriting.backends`). With
    ``args.rewrite_teacher_context == "concise"`` the teacher gives the targets of an accepted
    rewrite after the problem and the concise instruction (see ``rewrite.teacher_context``).
    """

    _tag_names = ["trl", "distillation", "mpd"]
    _checks_gold = True
    _name = "MPD"
    _card_summary = ("The student samples a solution, the teacher rewrites it concisely, a rewrite that keeps the "
                     "answer is accepted, and the student is trained by token-level KL against the teacher on that "
                     "shorter trajectory (Mixed-Policy Distillation).")

    def __init__(self, *args, rewriter: Rewriter | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.tools:
            raise ValueError("MPD does not support tool calling: a rewrite cannot replay tool results")
        self.rewrite_settings = self._rewrite_settings()
        if self.rewrite_settings.require_route_kept and self.task.route_kept is None:
            raise ConfigError(f"rewrite.require_route_kept: the task {self.task.name!r} cannot tell whether a rewrite "
                              "keeps the student's route (its route_kept is not set)")
        # The instruction the teacher reads before an accepted rewrite when it gives the loss's targets (None: none).
        self.scoring_instruction = (concise_instruction(self.args, self.task)
                                    if self.args.rewrite_teacher_context == "concise" else None)
        self._last_samples: list[Sample] = []
        if rewriter is None:
            teacher = self.local_teacher()
            rewriter = build_rewriter(self.args.rewrite_config(), Teacher(
                name=getattr(teacher, "name_or_path", "teacher"), tokenizer=self.teacher_tokenizer, model=teacher,
                bf16=bool(self.args.bf16), trust_remote_code=self.args.trust_remote_code), seed=self.args.seed)
        self.rewriter = rewriter
        # Overlapped steps (mpdistill/trainers/overlap.py): rewrites requested as traces end, answered in the background.
        self.overlap = bool(self.args.rewrite_overlap)
        if self.overlap:
            if not callable(getattr(rewriter, "submit", None)):
                raise ConfigError(f"rewrite.overlap needs a rewriter that answers in the background (rewrite.backend: "
                                  f"openai); {type(rewriter).__name__} writes on the training hardware, so there is "
                                  "nothing to overlap: set rewrite.overlap: false")
            if self.is_deepspeed_enabled:
                raise ConfigError("rewrite.overlap rescales the accumulated gradients, which DeepSpeed keeps to itself: "
                                  "set rewrite.overlap: false under DeepSpeed")
            if any(kind in str(self.args.optim).lower() for kind in ("lomo", "layerwise")):
                raise ConfigError(f"rewrite.overlap rescales the accumulated gradients before the optimizer step, and "
                                  f"{self.args.optim} updates the weights during backward: set rewrite.overlap: false")
            if self.args.gradient_accumulation_steps == 1:
                log.warning("rewrite.overlap with gradient_accumulation_steps 1: the step's one micro-batch waits for "
                            "every rewrite, so only the rollout's tail can hide them; 4 or more micro-batches let the "
                            "loss of the first ones run while the last rewrites are on their way")
        self._pending: _PendingStep | None = None
        if self.accelerator.num_processes > 1 and hasattr(rewriter, "sync_batches"):
            rewriter.sync_batches = count_on_every_process  # the local teacher's generate calls, in step
        self._mix_rng = random.Random(self.args.seed + self.accelerator.process_index)
        self._inputs: list[dict] = []
        # One entry per training batch, summed over processes: what the mix monitor watches.
        self.mix_history: list[dict] = []
        a = self.args
        self.add_callback(MixMonitor(self, window=a.rewrite_monitor_window, task=a.task,
                                     min_parsed_fraction=a.rewrite_min_parsed_fraction,
                                     min_acceptance_rate=a.rewrite_min_acceptance_rate))

    def _rewrite_settings(self) -> RewriteSettings:
        return self.args.rewrite_settings()

    def fallback_description(self) -> str:
        """What a sample without an accepted rewrite trains on, in words (for the mix monitor)."""
        if self.rewrite_settings.on_reject == "drop":
            return "they are dropped from the loss"
        return "they train as plain on-policy distillation (the student's own traces): MPD is then OPD"

    def random_streams(self) -> dict[str, random.Random]:
        streams = {"mix": self._mix_rng}
        rewriter_rng = getattr(self.rewriter, "rng", None)  # the local teacher's sampling seeds
        if isinstance(rewriter_rng, random.Random):
            streams["rewriter"] = rewriter_rng
        return streams

    def _generate_and_score_completions(self, inputs):
        self._stash_inputs(inputs)
        out = super()._generate_and_score_completions(inputs)
        if self.scoring_instruction is None:
            return out
        return self._attach_teacher_prompts(out, [
            teacher_prompt(row["prompt"], self.scoring_instruction) if s.trained_on == "rewrite" else row["prompt"]
            for row, s in zip(inputs, self._last_samples, strict=True)])

    def _sample(self, row: dict, ids: list[int], text: str) -> Sample:
        return Sample(
            # What the rewrite prompt shows: the bare question where the row has one, else the problem
            # as the student was asked it.
            problem=row.get("question") or row.get("problem") or problem_text(row["prompt"]),
            student_text=text,
            student_ids=list(ids),
            gold=row.get("answer"),
            # TRL keeps the token the student stopped on: a rewrite of the trace ends with it too.
            end_id=ids[-1] if len(ids) and ids[-1] in self.eos_token_ids else None,
        )

    def _encode(self, text: str, end_id: int | None) -> list[int]:
        return encode_completion(self._tokenizer, text, end_id)

    def _generate(self, prompts):
        prompt_ids, completion_ids, _, images, tool_images = super()._generate(prompts)
        mode = "train" if self.model.training else "eval"
        texts = self.processing_class.batch_decode(completion_ids, skip_special_tokens=True)
        samples = [self._sample(row, ids, text) for row, text, ids in zip(self._inputs, texts, completion_ids, strict=True)]
        before = self._rewriter_counts()
        calls_before = getattr(self.rewriter, "generate_calls", None)
        timed = _TimedRewriter(self.rewriter)
        rewrite_batch(samples, timed, self.rewrite_settings, self.task, self._encode, self._mix_rng)
        self._metrics[mode]["mpd/rewrite_wait_s"].append(timed.seconds)
        self._log_rewriter_counts(before, mode)
        if calls_before is not None and self.accelerator.num_processes > 1:
            # The local teacher's generate calls this batch, fewest and most over processes: they must
            # be equal (padded), or a sharded teacher would leave a process waiting for the others.
            calls = gather_object([self.rewriter.generate_calls - calls_before])
            self._metrics[mode]["mpd/rewriter/generate_calls_min"].append(float(min(calls)))
            self._metrics[mode]["mpd/rewriter/generate_calls_max"].append(float(max(calls)))

        new_ids, keep = zip(*map(self._trained_ids, samples)) if samples else ((), ())
        self._last_samples = samples
        self._log_mix(samples, mode)
        self._write_rollouts([self._record(prompt, s) for prompt, s in zip(prompts, samples)])
        return prompt_ids, list(new_ids), list(keep), images, tool_images

    @staticmethod
    def _trained_ids(s: Sample) -> tuple[list[int], list[int]]:
        """The completion the loss runs on, and its loss mask (zero for a dropped sample)."""
        ids = s.rewrite_ids if s.trained_on == "rewrite" else s.student_ids
        return ids, [0 if s.trained_on == "dropped" else 1] * len(ids)

    # -- the overlapped step (rewrite.overlap; see mpdistill/trainers/overlap.py) ---------------------------

    def _prepare_inputs(self, generation_batch):
        if not (self.overlap and self.model.training):
            return super()._prepare_inputs(generation_batch)
        k = self._step % self.args.gradient_accumulation_steps
        if k == 0 or self._pending is None:
            self._start_overlapped_step(generation_batch)
        return self._micro_batch(k)

    def _start_overlapped_step(self, inputs: list[dict]) -> None:
        """Sample the step's whole batch, sending each trace to the rewriter as it ends."""
        if any(key in inputs[0] for key in ("image", "images")):
            raise ConfigError("rewrite.overlap lays out text batches only: set rewrite.overlap: false for images")
        self._stash_inputs(inputs)
        prompts = [x["prompt"] for x in inputs]
        n = len(prompts)
        pending = self._pending = _PendingStep(prompts, n, on_policy_picks(n, self.rewrite_settings, self._mix_rng),
                                               self._rewriter_counts())
        watcher = FinishWatcher(self.eos_token_ids, self._send_for_rewrite)
        with watching_generate(self.accelerator.unwrap_model(self.model), watcher):
            prompt_ids, completion_ids, _, _, _ = super()._generate(prompts)
        for row, ids in enumerate(completion_ids):
            if pending.samples[row] is None:  # stopped at the length limit (or sampled by vLLM): sent now
                self._send_for_rewrite(row, list(ids))
            elif pending.samples[row].student_ids != list(ids):
                raise RuntimeError(f"sample {row}: the trace seen as it ended differs from the one generate returned")
        torch.randperm(n)  # the draw TRL's shuffle makes in a serial step, so the next step samples alike
        order = finish_order([len(ids) for ids in completion_ids])
        size = -(-n // self.args.gradient_accumulation_steps)
        pending.groups = [order[i:i + size] for i in range(0, n, size)]
        pending.prompts_padded = pad_prompts(prompt_ids, pad_token_id=self._tokenizer.pad_token_id,
                                             pad_to_multiple_of=self.pad_to_multiple_of, device=self.accelerator.device)
        # The loss's divisor until the trained tokens are known: the student's tokens (see rescale_gradients).
        pending.provisional = self.accelerator.gather(torch.tensor(sum(map(len, completion_ids)),
                                                                   device=self.accelerator.device)).sum()

    def _send_for_rewrite(self, row: int, ids: list[int]) -> None:
        pending = self._pending
        text = self.processing_class.decode(ids, skip_special_tokens=True)
        s = pending.samples[row] = self._sample(self._inputs[row], ids, text)
        budget = pending.budgets[row] = plan_rewrite(s, pending.picks[row], self.rewrite_settings, self.task)
        if budget is not None:
            pending.answers[row] = self.rewriter.submit(self.rewrite_settings.render(s.problem, s.student_text), budget)

    def _wait_for_rewrites(self, rows: list[int]) -> dict:
        """These samples' rewrites, as they arrive (each by its request's deadline)."""
        pending = self._pending
        started = time.perf_counter()
        outputs = {row: pending.answers[row].result() for row in rows if pending.answers[row] is not None}
        pending.wait_s += time.perf_counter() - started
        return outputs

    def _settle(self, rows: list[int], outputs: dict) -> None:
        """Verify and mix these samples, as rewrite_batch does in a serial step."""
        pending = self._pending
        for row in rows:
            s = pending.samples[row]
            if row in outputs:
                settle_rewrite(s, outputs[row], pending.budgets[row], self.rewrite_settings, self.task, self._encode)
            mix(s, self.rewrite_settings, self.task)

    def _micro_batch(self, k: int) -> dict:
        pending = self._pending
        rows = pending.groups[k]
        self._settle(rows, self._wait_for_rewrites(rows))
        trained = [self._trained_ids(pending.samples[row]) for row in rows]
        if k == len(pending.groups) - 1:
            self._finish_overlapped_step()
        prompt_ids, prompt_mask = pending.prompts_padded
        return micro_batch_inputs(prompt_ids[rows], prompt_mask[rows], [ids for ids, _ in trained],
                                  [keep for _, keep in trained], pending.provisional,
                                  pad_token_id=self._tokenizer.pad_token_id, pad_to_multiple_of=self.pad_to_multiple_of,
                                  device=self.accelerator.device)

    def _finish_overlapped_step(self) -> None:
        """Every rewrite is in: the step's logs, as a serial step writes them, and the gradients' scale."""
        pending, mode = self._pending, "train"
        self._metrics[mode]["mpd/rewrite_wait_s"].append(pending.wait_s)
        self._log_rewriter_counts(pending.counts_before, mode)
        self._log_mix(pending.samples, mode)
        self._write_rollouts([self._record(prompt, s) for prompt, s in zip(pending.prompts, pending.samples)])
        completions = [self._trained_ids(s) for s in pending.samples]
        if self.log_completions:  # as TRL logs a serial step's: the prompts and what the loss ran on
            decode = functools.partial(self.processing_class.batch_decode, skip_special_tokens=True)
            self._logs["prompt"].extend(gather_object(decode(pending.prompts_padded[0])))
            self._logs["completion"].extend(gather_object(decode([ids for ids, _ in completions])))
        trained = sum(sum(keep) for _, keep in completions)
        tokens = self.accelerator.gather(torch.tensor(trained, device=self.accelerator.device)).sum()
        # TRL's divisor (clamped at 1) over the provisional one each micro-batch's loss was divided by.
        pending.grad_scale = float(pending.provisional.clamp(min=1)) / float(tokens.clamp(min=1))

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        pending = self._pending
        if not (self.overlap and self.model.training) or pending is None:
            return loss
        if self._step % self.args.gradient_accumulation_steps:  # TRL has counted this micro-batch
            pending.losses.append(loss)
            return loss
        self._pending = None
        scale = pending.grad_scale
        rescale_gradients(model, scale)
        # The trainer sums what each micro-batch returns into the logged loss: this one also corrects the earlier
        # ones (not a NaN/inf one, which the trainer replaced by its running average).
        earlier = sum((l for l in pending.losses if torch.isfinite(l)), torch.zeros_like(loss))
        return loss * scale + earlier * (scale - 1)

    def train(self, *args, **kwargs):
        try:
            return super().train(*args, **kwargs)
        finally:
            if self.overlap and callable(getattr(self.rewriter, "close", None)):
                self.rewriter.close()  # requests of a step that did not finish

    def _rewriter_counts(self) -> dict[str, int] | None:
        """A served rewriter's running request/retry counts (None for the local teacher)."""
        stats = getattr(self.rewriter, "stats", None)
        if not isinstance(stats, dict):
            return None
        return {"requests": stats.get("requests", 0), "retries": stats.get("retries", 0)}

    def _log_rewriter_counts(self, before: dict[str, int] | None, mode: str) -> None:
        # Per step and summed over processes, so retries against a flaky server show in the logs.
        if before is None:
            return
        after = self._rewriter_counts()
        deltas = gather_object([{k: after[k] - before[k] for k in before}])
        for key in before:
            self._metrics[mode][f"mpd/rewriter/{key}"].append(float(sum(d[key] for d in deltas)))

    def _record(self, prompt, s: Sample) -> dict:
        # The student's own answer (read by rewrite_batch, after its thinking), graded where the problem
        # has one: accuracy on the training samples.
        return {
            **student_record(self.task, prompt, s.gold, s.student_text, len(s.student_ids), s.student_answer),
            "rewrite": s.rewrite_text,
            "accepted": bool(s.verdict and s.verdict.accepted),
            "reason": s.verdict.reason if s.verdict else None,
            "rewrite_tokens": len(s.rewrite_ids) if s.rewrite_ids is not None else None,
            "trained_on": s.trained_on,
            "route_kept": s.route_kept,
        }

    def _log_mix(self, samples: list[Sample], mode: str) -> None:
        # Gathered so that every process logs the same global numbers.
        rows = gather_object(
            [
                (len(s.student_ids), len(s.rewrite_ids) if s.rewrite_ids is not None else -1, s.verdict.reason, s.trained_on)
                for s in samples
            ]
        )
        kept = [k for k in gather_object([s.route_kept for s in samples]) if k is not None]
        if kept:  # of the accepted rewrites, the share that walks the student's own route
            self._metrics[mode]["mpd/route_kept"].append(sum(kept) / len(kept))
        m = self._metrics[mode]
        n = len(rows)
        accepted = [(st, rw) for st, rw, reason, _ in rows if reason == "accepted"]
        if mode == "train":  # the samples the mixing rule could rewrite: on-policy picks are not among them
            eligible = [r for r in rows if r[2] != "on_policy"]
            self.mix_history.append({"step": self.state.global_step, "n": len(eligible), "accepted": len(accepted),
                                     "unparsed": sum(r[2] == "student_unparsed" for r in eligible),
                                     "samples": n})  # all of them: the console's "accepted a/b"
        m["mpd/student_tokens"].append(sum(r[0] for r in rows) / n)
        m["mpd/acceptance_rate"].append(len(accepted) / n)
        if accepted:
            m["mpd/rewrite_tokens"].append(sum(rw for _, rw in accepted) / len(accepted))
            m["mpd/compression_ratio"].append(sum(rw for _, rw in accepted) / sum(st for st, _ in accepted))
        trained_lengths = [rw if t == "rewrite" else st for st, rw, _, t in rows if t != "dropped"]
        if trained_lengths:  # what the loss runs on: shorter than mpd/student_tokens when rewrites are accepted
            m["mpd/trained_tokens"].append(sum(trained_lengths) / len(trained_lengths))
        trained = Counter(t for *_, t in rows)
        for what in ("rewrite", "student", "dropped"):
            m[f"mpd/trained_on_{what}"].append(trained[what] / n)
        reasons = Counter(r for _, _, r, _ in rows)
        for reason in REASONS[1:]:
            m[f"mpd/reject/{reason}"].append(reasons[reason] / n)


class RewriteSFTTrainer(MPDTrainer):
    """Baseline: cross-entropy on accepted rewrites only, no teacher logits in the loss."""

    _name = "Rewrite-SFT"
    _kl_loss = False
    _card_summary = ("The student samples a solution, the teacher rewrites it concisely, and the student is trained "
                     "by cross-entropy on the accepted rewrites alone.")

    def _rewrite_settings(self) -> RewriteSettings:
        # Cross-entropy on the student's own samples would be self-training, not this baseline.
        return replace(self.args.rewrite_settings(), on_reject="drop", on_policy_fraction=0.0)

    def _compute_loss(self, unwrapped_student, inputs, num_items_in_batch):
        input_ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
        attention_mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
        mask = inputs["completion_mask"] * inputs.get("tool_mask", 1)
        k = inputs["completion_ids"].size(1)
        hidden = self._get_last_hidden_state(unwrapped_student, input_ids, attention_mask, k)
        head = unwrapped_student.get_output_embeddings()
        nll = chunked_token_nll(hidden, head, inputs["completion_ids"], mask)
        n_valid = mask.sum()
        denom = num_items_in_batch if num_items_in_batch is not None else n_valid.clamp(min=1)
        loss = nll / denom
        return loss, torch.zeros((), device=loss.device), n_valid


def chunked_token_nll(
    hidden: torch.Tensor, head: torch.nn.Module, targets: torch.Tensor, mask: torch.Tensor, chunk: int = 1024
) -> torch.Tensor:
    """Summed masked NLL, projecting ``chunk`` positions at a time (never B x L x V logits at once)."""
    h = hidden.reshape(-1, hidden.size(-1))
    t = targets.reshape(-1)
    keep = mask.reshape(-1) != 0
    h, t = h[keep], t[keep]
    # A graph-connected zero, so a batch whose samples were all dropped still backpropagates.
    total = hidden.sum().float() * 0.0
    for start in range(0, h.size(0), chunk):
        hs, ts = h[start : start + chunk], t[start : start + chunk]
        total = total + torch.utils.checkpoint.checkpoint(
            lambda x, y: torch.nn.functional.cross_entropy(head(x).float(), y, reduction="sum"),
            hs,
            ts,
            use_reentrant=False,
        )
    return total


class OffPolicyKDTrainer(_RolloutLogMixin, _Trainer):
    """Baseline: the same divergence on the teacher's own samples for each prompt.

    The teacher samples as it does when it rewrites (the recipe's rewrite sampling) and its samples
    pass the same answer filter as MPD's rewrites: one cut at the length limit, without a final
    answer or, with ``require_gold``, with a wrong one is dropped from the loss (logged with its
    reason), so the two methods learn from equally vetted teacher text.
    """

    _checks_gold = True
    _name = "Off-policy KD"
    _student_samples = False
    _card_summary = ("The teacher samples solutions; those cut off or without a readable answer (or, with "
                     "require_gold, a wrong one) are dropped, and the student is trained by token-level KL against "
                     "the teacher on the rest (off-policy distillation).")

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        a = self.args
        # The teacher samples as it does for MPD's rewrites, up to the student's completion length.
        self.teacher_generation = replace(a.rewrite_settings().generation, max_new_tokens=a.max_completion_length)
        self.require_gold = a.rewrite_require_gold
        self._seed_rng = random.Random(a.seed + self.accelerator.process_index)
        self._inputs: list[dict] = []

    def random_streams(self) -> dict[str, random.Random]:
        return {"teacher_seeds": self._seed_rng}

    def _generate_and_score_completions(self, inputs):
        self._stash_inputs(inputs)
        return super()._generate_and_score_completions(inputs)

    def _vet(self, gen, gold: str | None) -> str:
        """``accepted``, or why the sample is not trained on (the reasons of MPD's verification)."""
        if gen.truncated:
            return "truncated"
        answer = self.task.extract_answer(answer_section(gen.text))
        if answer is None:
            return "unparsed"
        if self.require_gold and gold is not None and not self.task.answers_match(answer, gold):
            return "wrong_answer"
        return "accepted"

    def _teacher_samples(self, prompt_ids: list[list[int]]) -> list:
        """The teacher's own samples for these prompts, one seed per batch. With several processes each
        makes as many ``generate`` calls as the busiest (a sharded teacher's calls are collective)."""
        calls = [0]
        gens = generate_texts(self.local_teacher(), self._tokenizer, prompt_ids, self.teacher_generation,
                              seed=self._seed_rng.randrange(2**31), on_generate=lambda: calls.__setitem__(0, calls[0] + 1))
        if self.accelerator.num_processes > 1:
            pad_generate_calls(self.local_teacher(), self._tokenizer, count_on_every_process(calls[0]) - calls[0])
        return gens

    def _generate(self, prompts):
        prompt_ids, _, _ = self._tokenize_prompts(prompts)
        gens = self._teacher_samples([list(p) for p in prompt_ids])
        # Each sample ends with the token the teacher stopped on, as a completion the teacher wrote.
        completion_ids = [g.token_ids if g.truncated else g.token_ids + [g.end_id] for g in gens]
        if len(self._inputs) != len(gens):
            raise RuntimeError(f"{len(gens)} teacher samples for {len(self._inputs)} training rows")
        golds = [row.get("answer") for row in self._inputs]
        reasons = [self._vet(g, gold) for g, gold in zip(gens, golds)]
        keep = [[int(r == "accepted")] * len(ids) for r, ids in zip(reasons, completion_ids)]
        mode = "train" if self.model.training else "eval"
        m = self._metrics[mode]
        m["completions/mean_length"].append(sum(map(len, completion_ids)) / len(completion_ids))
        vetted = gather_object(reasons)
        m["kd/kept_rate"].append(sum(r == "accepted" for r in vetted) / len(vetted))
        self._write_rollouts(
            [
                {"prompt": p, "gold": gold, "student": None, "rewrite": None, "teacher": g.text, "accepted": r == "accepted",
                 "reason": r, "student_tokens": None, "rewrite_tokens": None, "teacher_tokens": len(ids),
                 "trained_on": "teacher" if r == "accepted" else "dropped", "route_kept": None}
                for p, g, ids, r, gold in zip(prompts, gens, completion_ids, reasons, golds)
            ]
        )
        return prompt_ids, completion_ids, keep, None, None


class MixedOPDTrainer(OffPolicyKDTrainer):
    """Control for MPD: on-policy distillation in which a share of the samples (``args.teacher_share``,
    drawn per sample) is replaced by the teacher's own sample for the problem, trained the same way
    (GKD's mixing of on-policy and teacher sequences; GKD's lambda is ``1 - teacher_share``).

    With the share set to what MPD accepted, it asks whether MPD's rewrites carry more than "OPD plus
    that much teacher text". The teacher samples and vets as off-policy KD does; a teacher sample that
    fails the filter falls back to the student's own, as MPD's rejected rewrites do.
    """

    _name = "OPD mixed with teacher samples"
    _student_samples = True

    @property
    def _card_summary(self) -> str:
        return (f"The student samples a solution and is trained by token-level KL against the teacher on it, except "
                f"for a share of {self.args.teacher_share:g} of the samples, which are replaced by the teacher's own "
                "solution to the problem (on-policy distillation mixed with teacher samples, as GKD mixes them).")

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._mix_rng = random.Random(self.args.seed + self.accelerator.process_index)

    def random_streams(self) -> dict[str, random.Random]:
        return {**super().random_streams(), "mix": self._mix_rng}

    def _generate(self, prompts):
        # The student samples every problem (TRL as is); the picked ones are then answered by the teacher.
        prompt_ids, completion_ids, _, images, tool_images = DistillationTrainer._generate(self, prompts)
        share = self.args.teacher_share
        picks = [self._mix_rng.random() < share for _ in prompts]
        texts = self.processing_class.batch_decode(completion_ids, skip_special_tokens=True)
        rows = [i for i, pick in enumerate(picks) if pick]
        gens = dict(zip(rows, self._teacher_samples([list(prompt_ids[i]) for i in rows])))
        golds = [row.get("answer") for row in self._inputs]
        completion_ids, records = list(completion_ids), []
        for i, (prompt, text) in enumerate(zip(prompts, texts, strict=True)):
            record = student_record(self.task, prompt, golds[i], text, len(completion_ids[i]),
                                    self.task.extract_answer(answer_section(text)))
            if i in gens:
                g = gens[i]
                ids = g.token_ids if g.truncated else g.token_ids + [g.end_id]
                reason = self._vet(g, golds[i])
                record.update(teacher=g.text, teacher_tokens=len(ids), accepted=reason == "accepted", reason=reason)
                if reason == "accepted":
                    completion_ids[i] = ids
                    record["trained_on"] = "teacher"
            records.append(record)
        m = self._metrics["train" if self.model.training else "eval"]
        trained = gather_object([r["trained_on"] for r in records])
        m["mixed/trained_on_teacher"].append(sum(t == "teacher" for t in trained) / len(trained))
        m["completions/mean_length"].append(sum(map(len, completion_ids)) / len(completion_ids))
        self._write_rollouts(records)
        return prompt_ids, completion_ids, [[1] * len(ids) for ids in completion_ids], images, tool_images
