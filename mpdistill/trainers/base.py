"""What every method's trainer shares: TRL's constructor with model names and the loading policy,
the run's files (rollout log, ``mpdistill.json``, model card), resumable checkpoints, the NaN/inf
guard and the halts, and the checks of the training rows."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from accelerate.utils import gather_object
from trl import DistillationTrainer

from mpdistill.errors import ConfigError, HubError, one_line
from mpdistill.models.card import CardFacts, render_card, write_card
from mpdistill.models.record import write_record
from mpdistill.trainers.checkpoints import ResumableTraining, checkpoint_step, rewind_rollout_log
from mpdistill.trainers.config import MPDConfig
from mpdistill.trainers.mix_monitor import MixFloorHalt, MixMonitor
from mpdistill.trainers.nonfinite import NonFiniteGuard, NonFiniteHalt
from mpdistill.trainers.train_log import TrainLogFile
from mpdistill.utils.durable import append_jsonl

log = logging.getLogger(__name__)


def student_record(task, prompt: Any, gold: str | None, text: str, tokens: int, answer: str | None) -> dict:
    """A rollout-log line for a student sample trained on as sampled, graded where the problem has a
    gold answer (``answer``: what the task read from ``text``, after its thinking; None: nothing)."""
    return {"prompt": prompt, "gold": gold, "student_answer": answer,
            "student_correct": None if gold is None else answer is not None and task.answers_match(answer, gold),
            "student": text, "student_tokens": tokens, "trained_on": "student"}


class RolloutLog:
    """Appends one JSON line per sample to ``rollouts_path``, on the main process only, and keeps the
    step's rows at hand (``self._inputs``) for ``_generate``, which TRL gives only the prompts. With
    ``log_completions``, the same samples reach the trackers as a table at each logging step
    (:mod:`mpdistill.trainers.tracking`)."""

    _tracked_rollouts: tuple[dict, ...] = ()  # the trackers' rows since the last log (log_completions)

    @property
    def rollouts_path(self) -> Path | None:
        path = self.args.rollouts_path()
        return Path(path) if path else None

    def _write_rollouts(self, records: list[dict]) -> None:
        rank = self.accelerator.process_index
        records = gather_object([{**r, "process": rank} for r in records])
        if not self.accelerator.is_main_process:
            return
        if self.args.log_completions:  # the trackers' rollout table, sent at the next log
            from mpdistill.trainers.tracking import rollout_rows

            self._tracked_rollouts += tuple(rollout_rows(records, self.state.global_step))
        if self.rollouts_path is None:
            return
        # One line per sample, flushed before the step trains: a crash tears at most this batch's last line.
        append_jsonl(self.rollouts_path, [{"step": self.state.global_step, "index": i, **r} for i, r in enumerate(records)])

    def log(self, logs: dict, start_time: float | None = None) -> None:
        super().log(logs, start_time)
        if self._tracked_rollouts:  # kept on the main process only
            from mpdistill.trainers.tracking import send_rollout_table

            send_rollout_table(self, list(self._tracked_rollouts))
            self._tracked_rollouts = ()

    def _generate_and_score_completions(self, inputs):
        # TRL's ``_generate`` receives only the prompts; the rows (gold answer, problem text) ride along here.
        self._inputs = inputs
        return super()._generate_and_score_completions(inputs)


class RunFiles:
    """What every method's trainer does around TRL's loop, whatever TRL trainer it is: a run the
    NaN/inf guard or the mix monitor stopped raises, a resumed run's rollout log is rewound, and a
    saved student carries its ``mpdistill.json`` and model card. The class names ``_name``,
    ``_card_summary``, ``_kl_loss``, ``_student_samples`` and holds ``card_facts`` and ``task``."""

    _kl_loss = True  # trained by KL to the teacher (Rewrite-SFT: cross-entropy)
    _checks_gold = False  # rewrite_require_gold applies: it trains on text the teacher wrote, vetted by the answer
    _student_samples = True  # the student samples what it trains on (off-policy KD: the teacher does)
    _uses_teacher = True  # GRPO with a length penalty has none

    def _start_run_files(self, model, teacher_model, train_dataset) -> None:
        """Before TRL's constructor: the models' names as the user gave them, for the model card (a
        loaded model knows only its folder)."""
        self.card_facts = CardFacts(student=model if isinstance(model, str) else loaded_name(model),
                                    teacher=teacher_model if isinstance(teacher_model, str) else loaded_name(teacher_model),
                                    problems=len(train_dataset) if hasattr(train_dataset, "__len__") else None)
        self._hub_error: str | None = None  # set by init_hf_repo (on the main process, where transformers runs it)

    def _finish_run_files(self, args) -> None:
        """After TRL's constructor: a Hub repository that could not be created stops every process alike;
        the NaN/inf guard and the live training log watch every step."""
        check_hub_repository(self)
        self.add_callback(NonFiniteGuard(args.max_nonfinite_steps, metrics=self._metrics))
        if path := args.train_log_path():
            self.add_callback(TrainLogFile(path))

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

    def _prompt_style(self) -> str:
        """How the student was prompted: ``plain`` text, or a ``chat`` through its template."""
        prompt = next(iter(self.train_dataset or []), {}).get("prompt", "")  # plain text, or a conversation
        return "plain" if isinstance(prompt, str) else "chat"

    def _describe_folder(self, folder: str) -> None:
        """``mpdistill.json`` and the model card beside saved weights."""
        kwargs = self.args.chat_template_kwargs or {}
        write_record(folder, task=self.args.task, prompt_template=self.task.prompt_template,
                     prompt_style=self._prompt_style(), thinking=kwargs.get("enable_thinking"))
        write_card(folder, self.model_card())

    def model_card(self, evaluation: str | None = None, *, merged: bool = False) -> str:
        """This run's model card: the models, the method and its settings, the data, the steps trained
        (``merged``: for the student with its LoRA adapter folded in)."""
        lora = ("merged" if merged else "adapter") if hasattr(self.model, "peft_config") else None
        return render_card(method=self._name, summary=getattr(self, "_card_summary", ""),
                           rewrites=getattr(self, "rewriter", None) is not None, kl_loss=self._kl_loss,
                           student_samples=self._student_samples, uses_teacher=self._uses_teacher,
                           facts=self.card_facts, args=self.args, steps=self.state.global_step,
                           processes=self.accelerator.num_processes, lora=lora, evaluation=evaluation,
                           prompt_style=self._prompt_style())

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


def by_name(model, init_kwargs: dict | None, processing_class, trust_remote_code: bool):
    """A model given by name, for TRL to load under mpdistill's loading policy: the embedded names
    resolved, safetensors only (pickled weights run code when loaded; ``use_safetensors=None`` in the
    init kwargs, or a model loaded by hand, opts in), and its tokenizer checked (a folder without its
    tokenizer files is refused). A loaded model passes as it is. Returns (model, init kwargs, tokenizer)."""
    if not isinstance(model, str):
        return model, init_kwargs, processing_class
    from mpdistill.models.loading import load_tokenizer, resolve_model

    model = resolve_model(model)
    if processing_class is None:
        processing_class = load_tokenizer(model, trust_remote_code=trust_remote_code)
    return model, {"use_safetensors": True, **(init_kwargs or {})}, processing_class


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


class BaseTrainer(RunFiles, ResumableTraining, DistillationTrainer):
    """What every method's trainer shares: TRL's constructor with model names (the embedded models'
    included), an :class:`MPDConfig`, resumable checkpoints and the NaN/inf guard.

    ``teacher_processing_class`` renders the teacher's own prompts (its rewrites, its samples);
    default: the teacher's tokenizer when the teacher is given by name, else ``processing_class``.
    """

    def __init__(self, model, teacher_model=None, args: MPDConfig | None = None, train_dataset=None,
                 eval_dataset=None, processing_class=None, *, teacher_processing_class=None, **kwargs) -> None:
        from mpdistill.models.loading import check_compatible

        self._start_run_files(model, teacher_model, train_dataset)
        if args is None:  # as TRL names its default output folder: after the model
            name = model if isinstance(model, str) else getattr(model.config, "_name_or_path", "") or "model"
            args = MPDConfig(re.sub(r"[^\w.-]+", "-", f"{Path(name).name}-{self._name}"))
        elif not isinstance(args, MPDConfig):
            raise TypeError(f"{type(self).__name__} takes an mpdistill.MPDConfig (TRL's DistillationConfig plus MPD's "
                            f"settings), got {type(args).__name__}")
        # The rows, before any model loads: a missing field found mid-step is a bare KeyError after minutes.
        check_training_rows(train_dataset, needs_answer="rewrite_require_gold" if args.rewrite_require_gold and
                            self._checks_gold else None)
        model, args.model_init_kwargs, processing_class = by_name(model, args.model_init_kwargs, processing_class,
                                                                  args.trust_remote_code)
        teacher_model, args.teacher_model_init_kwargs, teacher_processing_class = by_name(
            teacher_model, args.teacher_model_init_kwargs, teacher_processing_class, args.trust_remote_code)
        super().__init__(model, teacher_model, args, train_dataset, eval_dataset, processing_class, **kwargs)
        self._finish_run_files(args)
        if args.use_vllm:
            from mpdistill.rollout.vllm import refresh_colocated_engine_in_place

            refresh_colocated_engine_in_place(getattr(self, "vllm_generation", None))
        self.teacher_tokenizer = teacher_processing_class or self._tokenizer
        if self.teacher_model is not None:  # one vocabulary, piece by piece (TRL compares only the sizes)
            check_compatible("the student", self._tokenizer, self.model, "the teacher", self.teacher_tokenizer,
                             self.local_teacher())
        self.task = args.get_task()

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


def loaded_name(model) -> str | None:
    config = getattr(model, "config", None)
    return getattr(config, "_name_or_path", None) or None
