"""From a recipe to a trained student: resolve models and data, build the method's trainer, train.

``train(recipe, run_dir)`` is what ``mpdistill train`` and the demo call for every method, so MPD
and each baseline run through the same code with the same prompts, teacher and budget.
"""

from __future__ import annotations

import logging
import shutil
import sys
from contextlib import contextmanager
from pathlib import Path

import torch

from mpdistill.errors import ConfigError, HubError, one_line
from mpdistill.models.card import write_card
from mpdistill.models.loading import check_compatible, load_model
from mpdistill.models.record import write_record
from mpdistill.run.checks import (check_prompt_lengths, check_thinking, pre_run_problems, same_model_problem,
                                  warn_if_templates_differ)
from mpdistill.run.recipe import NOT_ONE_FIELD, TRL_NAMES, Recipe, dump_recipe
from mpdistill.run.resume import prepare_resume
from mpdistill.tasks import get_task
from mpdistill.tasks.problems import DataError, chain_problems, load_problems
from mpdistill.trainers.checkpoints import (CHECKPOINT_RECIPE, ROLLOUTS, TRAIN_LOG, checkpoint_step, existing_run,
                                            latest_checkpoint)
from mpdistill.trainers.config import MPDConfig, REWRITE_PREFIX
from mpdistill.trainers.methods import get_method, teacher_source
from mpdistill.trainers.mix_monitor import MixFloorHalt
from mpdistill.trainers.nonfinite import NonFiniteHalt
from mpdistill.trainers.train_log import write_train_log
from mpdistill.utils.durable import replace_dir, write_text
from mpdistill.utils.paths import check_output_dir
from mpdistill.utils.processes import distributed_state, is_main_process, launch_warnings, on_main_then_share
from mpdistill.utils.run_lock import OutputLock

log = logging.getLogger(__name__)

# Training prompts are drawn with a seed offset from the evaluation problems', and the demo
# excludes every evaluation prompt from them.
TRAIN_SEED_OFFSET = 1_000


def prompt_template(recipe: Recipe) -> str:
    """The user message a question becomes in a run of ``recipe``: ``data.prompt_template``, else the task's."""
    return recipe.data.prompt_template or get_task(recipe.task).prompt_template


def prompt_record(recipe: Recipe) -> dict:
    """How a model of ``recipe`` reads its problems. On the chain task the recipe's ``eval`` section
    is how the demo evaluates it, so its budget is recorded too (a family's budget does not apply to
    the embedded models, whose config says qwen3)."""
    record = {"task": recipe.task, "prompt_template": prompt_template(recipe), "prompt_style": recipe.data.prompt_style,
              "thinking": recipe.training.student_enable_thinking}
    if recipe.task == "chain":
        record["max_new_tokens"] = recipe.eval.max_new_tokens
    return record


def recipe_record(recipe: Recipe) -> dict:
    """The record of a model trained by ``recipe``: how it reads its problems, and how it was made."""
    return {**prompt_record(recipe), "method": recipe.method, "base_model": recipe.student, "teacher": teacher_source(recipe)}


def training_problems(recipe: Recipe, exclude: set[str] | None = None) -> list[dict]:
    d = recipe.data
    if d.train == "embedded:chain":
        return chain_problems(d.n_train, recipe.seed + TRAIN_SEED_OFFSET, exclude=exclude)
    rows = load_problems(
        d.train,
        question_field=d.question_field,
        answer_field=d.answer_field,
        split=d.split,
        prompt_style=d.prompt_style,
        limit=d.n_train,
        config=d.config,
        prompt_template=prompt_template(recipe),
        answer_from=d.answer_from,
    )
    if exclude:
        rows = [r for r in rows if r["problem"] not in exclude]
        if not rows:
            raise ConfigError(f"data.train {d.train!r}: every row is also an evaluation problem")
    return rows


def peft_config(recipe: Recipe):
    """``peft.LoraConfig`` for ``training.lora``, or None for full fine-tuning."""
    lora = recipe.training.lora
    if lora is None:
        return None
    from peft import LoraConfig

    return LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )


def save_merged(student_name: str, adapter_dir: Path, model_dir: Path, tokenizer, **trust) -> None:
    """The student with its trained adapter folded in, saved as a plain checkpoint (loads without peft)."""
    from peft import PeftModel

    base, _ = load_model(student_name, **trust)
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    merged.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)


def vllm_rollout_args(v) -> dict:
    """TRL ``DistillationConfig`` fields for ``training.vllm`` (student rollouts on vLLM)."""
    if v is None:
        return {"use_vllm": False}
    return dict(
        use_vllm=True,
        vllm_mode=v.mode,
        vllm_server_base_url=v.server_base_url,
        vllm_server_timeout=v.server_timeout_s,
        vllm_gpu_memory_utilization=v.gpu_memory_utilization,
        vllm_tensor_parallel_size=v.tensor_parallel_size,
        vllm_max_model_length=v.max_model_length,
        vllm_enable_sleep_mode=v.enable_sleep_mode,
    )


def checkpointing_arg(enabled: bool) -> dict:
    """Activation checkpointing under the name this transformers release uses for it
    (``gradient_checkpointing`` in older releases, ``activation_checkpointing`` in newer ones)."""
    from dataclasses import fields

    from transformers import TrainingArguments

    names = {f.name for f in fields(TrainingArguments)}
    return {"activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing": enabled}


def training_arguments(recipe: Recipe, run_dir: Path) -> MPDConfig:
    """The recipe as the trainers' :class:`MPDConfig`: TRL's ``DistillationConfig`` fields from
    ``training:`` (a few under shorter names, and any other field as written), MPD's ``rewrite_*``
    fields from ``rewrite:``. Whatever transformers or TRL refuse in it is a ConfigError naming the
    setting, raised by ``train`` before any weights load or folder is written. (``--dry-run`` does not
    build it: transformers sets up the launch it runs under, and a dry run plans for another machine.)"""
    t = recipe.training
    # Every training: key is the MPDConfig field of its name (TRL's where TRL has it), but for those
    # TRL_NAMES renames and the few that become something else (below).
    same = {TRL_NAMES.get(key, key): getattr(t, key) for key in type(t).model_fields if key not in NOT_ONE_FIELD}
    settings = dict(
        **same,
        **checkpointing_arg(t.gradient_checkpointing),
        save_strategy="steps" if t.save_steps else "no",
        save_steps=t.save_steps or 500,
        chat_template_kwargs=(
            None if t.student_enable_thinking is None else {"enable_thinking": t.student_enable_thinking}
        ),
        **vllm_rollout_args(t.vllm),
        output_dir=str(run_dir / "trainer"),
        seed=recipe.seed,
        data_seed=recipe.seed,
        task=recipe.task,
        trust_remote_code=recipe.security.trust_remote_code,
        report_to="none",
        run_name=f"{recipe.method}-{run_dir.name}",  # what a tracker names the run (training.run_name sets another)
        use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=0,
        # A bar redrawn in a redirected log is a wall of lines: there the console log's one line per
        # logging step is the progress (training.disable_tqdm sets it either way).
        disable_tqdm=not sys.stderr.isatty(),
        rollouts_file=str(run_dir / ROLLOUTS),
        train_log_file=str(run_dir / TRAIN_LOG),
        **{REWRITE_PREFIX + key: value for key, value in recipe.rewrite.model_dump().items()},
    )
    settings.update(t.trl_args)  # every other TrainingArguments / DistillationConfig field, as the recipe sets it
    try:
        return MPDConfig(**settings)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"training: transformers refuses these settings: {err}") from None


def build_trainer(recipe: Recipe, student, teacher, tokenizer, rows: list[dict], run_dir: Path, *,
                  teacher_tokenizer=None, args=None):
    """The method's trainer. ``tokenizer`` is the student's (it renders the training prompts);
    ``teacher_tokenizer`` renders the local teacher's rewrite prompts (default: the student's,
    which shares its vocabulary); ``args``: the recipe's :func:`training_arguments`, when already built."""
    from datasets import Dataset

    teacher_tokenizer = teacher_tokenizer if teacher_tokenizer is not None else tokenizer
    check_thinking(recipe, tokenizer, teacher_tokenizer)
    trainer = get_method(recipe.method).trainer_class()(
        model=student,
        teacher_model=teacher,
        args=args if args is not None else training_arguments(recipe, run_dir),
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        teacher_processing_class=teacher_tokenizer,
        peft_config=peft_config(recipe),
    )
    # The card names the models and data as the recipe does (the loaded models know only their folders).
    facts = trainer.card_facts
    facts.student, facts.teacher, facts.dataset = recipe.student, teacher_source(recipe), recipe.data.train
    from mpdistill.trainers.console_log import use_console_log

    # One short line per logging step instead of the whole metrics dict (all of it stays in train_log.jsonl).
    use_console_log(trainer)
    return trainer


@contextmanager
def same_on_every_process():
    """Errors of checks every process makes alike (same recipe, files, models): under a launcher the
    main process reports them, once (see mpdistill.cli.app.fail)."""
    try:
        yield
    except (ConfigError, DataError) as err:
        err.shared_by_main_process = True
        raise


def train(recipe: Recipe, run_dir: str | Path, *, exclude_prompts: set[str] | None = None, resume: bool = False) -> Path:
    """Train ``recipe.method`` and save the student to ``run_dir/model``; returns that folder.

    Everything that can be checked without training — models, vocabularies, data — is checked
    before the first step. With ``resume``, an interrupted run in ``run_dir`` continues from its
    newest checkpoint (see :func:`prepare_resume`). The main process holds ``run_dir`` while it
    trains: a second ``train`` on the same folder is refused, naming this one (mpdistill/utils/run_lock.py).
    """
    run_dir = Path(run_dir)
    lock = OutputLock(run_dir) if is_main_process() else None
    try:
        return _train(recipe, run_dir, lock, exclude_prompts=exclude_prompts, resume=resume)
    finally:
        if lock is not None:
            lock.release()


def _train(recipe: Recipe, run_dir: Path, lock, *, exclude_prompts: set[str] | None, resume: bool) -> Path:
    def claim_folder() -> Path | None:  # the main process owns the folder; the others learn the outcome
        check_output_dir(run_dir)
        lock.acquire()  # before it looks at the folder: a second writer is refused here
        if resume:
            return prepare_resume(recipe, run_dir)
        if why := existing_run(run_dir):
            raise ConfigError(why)
        return None

    checkpoint = on_main_then_share(claim_folder)
    for warning in launch_warnings() if is_main_process() else []:
        log.warning(warning)
    with same_on_every_process():  # decided from the same recipe and files by every process: said once
        rows = training_problems(recipe, exclude=exclude_prompts)
        pre_run_problems(recipe, rows, distributed_state().num_processes).raise_errors()
        teacher_name = teacher_source(recipe)  # None for a method without a teacher
        args = training_arguments(recipe, run_dir)  # what transformers would refuse, before any weights load
    trust = dict(allow_pickle=recipe.security.allow_pickle_checkpoints, trust_remote_code=recipe.security.trust_remote_code)
    student, tokenizer = load_model(recipe.student, **trust)
    # The teacher is never trained: with training.bf16 its weights are held in bf16 (half the memory).
    teacher, t_tok = (None, None) if teacher_name is None else load_model(
        teacher_name, dtype=torch.bfloat16 if recipe.training.bf16 else torch.float32, **trust)
    with same_on_every_process():
        if teacher is not None:
            check_compatible(recipe.student, tokenizer, student, teacher_name, t_tok, teacher)
        check_thinking(recipe, tokenizer, t_tok)
        check_prompt_lengths(recipe, rows, tokenizer, student.config)
    if is_main_process() and teacher is not None:
        warn_if_templates_differ(recipe, tokenizer, t_tok)
        if same := same_model_problem(recipe):
            log.warning(same)

    def write_recipe() -> None:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_text(run_dir / "recipe.yaml", dump_recipe(recipe))

    on_main_then_share(write_recipe)
    try:
        trainer = build_trainer(recipe, student, teacher, tokenizer, rows, run_dir, teacher_tokenizer=t_tok, args=args)
        trainer.checkpoint_texts = {CHECKPOINT_RECIPE: dump_recipe(recipe)}  # what each checkpoint was trained under
    except BaseException:
        if not resume and is_main_process():
            (run_dir / "recipe.yaml").unlink(missing_ok=True)  # nothing ran: the folder is free again
        raise
    sharded = getattr(trainer, "is_fsdp_enabled", False) or getattr(trainer, "is_deepspeed_enabled", False)
    if checkpoint is not None and checkpoint_step(checkpoint) >= recipe.training.steps and not sharded:
        # Every step is in that checkpoint (the run stopped while saving the model): transformers'
        # loop would train one more step before it checks the count, so only its state is loaded.
        from transformers import TrainerState

        trainer._load_from_checkpoint(str(checkpoint))
        trainer.state = TrainerState.load_from_json(str(checkpoint / "trainer_state.json"))
        if trainer.accelerator.is_main_process:  # the log as that checkpoint has it (nothing trains to write it)
            write_train_log(run_dir / TRAIN_LOG, trainer.state.log_history)
    else:
        try:
            trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
        except (NonFiniteHalt, MixFloorHalt) as halt:
            # The trainer says why it stopped (train_log.jsonl has every step it logged); the run's
            # folder says where it can go on from.
            where = latest_checkpoint(run_dir / "trainer")
            fix = ("fix the cause (or lower the floor in the run's recipe.yaml)" if isinstance(halt, MixFloorHalt)
                   else "the weights there are the last good ones")
            raise type(halt)(f"{halt}. The last checkpoint is {where}: {fix}; continue with "
                             f"`mpdistill train --resume --out {run_dir}`" if where else str(halt)) from None
    if trainer.state.global_step == 0:  # never "saved" a student that no step changed
        with same_on_every_process():
            raise ConfigError(f"no training step ran (data: {len(rows)} problems); nothing was saved. The run's "
                              f"files are in {run_dir}")
    model_dir = run_dir / "model"
    record = recipe_record(recipe)  # mpdistill eval reads the task and prompt from it
    if recipe.training.lora is None:
        _save_final(trainer, model_dir, record)
    else:
        # The adapter as trained, then (once, on the main process) the merged student for eval.
        _save_final(trainer, run_dir / "adapter", record)
        if trainer.accelerator.is_main_process:
            with _staged(model_dir) as staged:
                save_merged(recipe.student, run_dir / "adapter", staged, tokenizer, **trust)
                _describe_saved(staged, record, trainer.model_card(merged=True))
        trainer.accelerator.wait_for_everyone()
    if trainer.args.push_to_hub:
        push_to_hub(trainer, run_dir / "adapter" if recipe.training.lora is not None else model_dir)
    return model_dir


def push_to_hub(trainer, folder: Path) -> None:
    """The saved student (the adapter, with LoRA), its card and ``mpdistill.json``, to the repository
    the trainer created at its start (``hub_model_id``, ``hub_token``, ``hub_revision``). Only once the
    model is saved locally, so a failed push loses nothing; the run's logs stay local."""
    if not trainer.accelerator.is_main_process:
        return
    from huggingface_hub import upload_folder

    try:
        upload_folder(repo_id=trainer.hub_model_id, folder_path=str(folder), commit_message="End of training",
                      token=trainer.args.hub_token, revision=trainer.args.hub_revision)
    except Exception as err:  # noqa: BLE001 (HTTP, network and repository errors alike)
        raise HubError(f"the model is saved in {folder}, but pushing it to {trainer.hub_model_id} failed "
                       f"({type(err).__name__}: {one_line(err)}); push it again with `hf upload {trainer.hub_model_id} "
                       f"{folder}`") from None


def _save_final(trainer, target: Path, record: dict) -> None:
    """``trainer.save_model`` into a staging folder renamed into place, so ``target`` is whole or absent.
    (As an internal save: a ``push_to_hub`` run pushes once the model is in place, see :func:`push_to_hub`.)"""
    from mpdistill.trainers.base import drop_training_arguments

    main = trainer.accelerator.is_main_process
    with _staged(target, owner=main) as staged:
        trainer.save_model(str(staged), _internal_call=True)
        if main:
            drop_training_arguments(staged)
            _describe_saved(staged, record, trainer.model_card())
    trainer.accelerator.wait_for_everyone()


@contextmanager
def _staged(target: Path, *, owner: bool = True):
    """A staging folder beside ``target``, renamed into place when the block ends: ``target`` is whole
    or absent. A half-written one is removed at once, which also frees the room a full disk needs.
    Only the ``owner`` (the main process, under a launcher) renames or removes it."""
    staged = target.with_name(f".{target.name}.partial")
    try:
        yield staged
        if owner:
            replace_dir(staged, target)
    except BaseException:
        if owner:
            shutil.rmtree(staged, ignore_errors=True)
        raise


def _describe_saved(folder: Path, record: dict, card: str) -> None:
    """A saved model's ``mpdistill.json`` (how ``mpdistill eval`` prompts it) and its model card."""
    write_record(folder, **record)
    write_card(folder, card)
