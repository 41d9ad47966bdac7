"""From a recipe to a trained student: resolve models and data, build the method's trainer, train.

``train(recipe, run_dir)`` is what ``mpdistill train`` and the demo call for every method, so MPD
and each baseline run through the same code with the same prompts, teacher and budget.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from .config import ConfigError, Recipe, dump_recipe
from .rewrite import Rewriter, RewriteSettings, TransformersRewriter
from .rollout import GenerationSettings
from .tasks import get_task
from .tasks.problems import chain_problems, load_problems

EMBEDDED_PREFIX = "embedded:"
# Training prompts are drawn with a seed offset from the evaluation problems', and the demo
# excludes every evaluation prompt from them.
TRAIN_SEED_OFFSET = 1_000


def resolve_model(name: str) -> str:
    """A local path for ``name``: the embedded models, an existing folder, or a Hub name as is."""
    if name.startswith(EMBEDDED_PREFIX):
        from .embedded import embedded_dir

        which = name[len(EMBEDDED_PREFIX) :]
        if which not in ("student", "teacher"):
            raise ConfigError(f"unknown embedded model {name!r}; use embedded:student or embedded:teacher")
        return str(embedded_dir() / which)
    return name


def looks_local(path: str) -> bool:
    """Whether a resolved model name is a folder: a Hub name is "org/name" at most, so more slashes,
    a leading ``.``, ``/`` or ``~``, or an existing path mean a local folder."""
    return path.startswith((".", "/", "~")) or path.count("/") > 1 or Path(path).exists()


def model_path(name: str) -> str:
    """:func:`resolve_model`, refusing a local folder that does not exist (before anything loads)."""
    path = resolve_model(name)
    if looks_local(path) and not Path(path).expanduser().is_dir():
        raise ConfigError(f"model {name!r}: no such folder {path}")
    return path


def load_tokenizer(name: str) -> PreTrainedTokenizerBase:
    """A model's tokenizer alone (left padding, as for generation)."""
    path = model_path(name)
    try:
        return AutoTokenizer.from_pretrained(path, padding_side="left")
    except (OSError, ValueError) as err:
        raise ConfigError(f"cannot load the tokenizer of {name!r}: {err}") from None


def load_model(name: str, *, dtype: torch.dtype = torch.float32) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    path = model_path(name)
    try:
        tok = AutoTokenizer.from_pretrained(path, padding_side="left")
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, use_safetensors=True)
    except OSError as err:
        raise ConfigError(f"cannot load model {name!r}: {err}") from None
    return model, tok


def check_compatible(student_name: str, s_tok, s_model, teacher_name: str, t_tok, t_model) -> None:
    """Token-level divergence needs one vocabulary: same tokenizer pieces and same logit width."""
    s_vocab, t_vocab = s_tok.get_vocab(), t_tok.get_vocab()
    if s_vocab != t_vocab:
        only_s = len(set(s_vocab) - set(t_vocab))
        only_t = len(set(t_vocab) - set(s_vocab))
        raise ConfigError(
            f"teacher {teacher_name!r} does not share the vocabulary of student {student_name!r} "
            f"({len(s_vocab)} vs {len(t_vocab)} tokens; {only_s} only in the student's, {only_t} only in the "
            "teacher's). MPD compares next-token distributions, so both must use the same tokenizer."
        )
    sv, tv = s_model.config.get_text_config().vocab_size, t_model.config.get_text_config().vocab_size
    if sv != tv:
        raise ConfigError(f"student {student_name!r} has vocab_size {sv} but teacher {teacher_name!r} has {tv}")


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
    )
    if exclude:
        rows = [r for r in rows if r["problem"] not in exclude]
        if not rows:
            raise ConfigError(f"data.train {d.train!r}: every row is also an evaluation problem")
    return rows


def rewrite_settings(recipe: Recipe) -> RewriteSettings:
    r = recipe.rewrite
    return RewriteSettings(
        prompt_template=r.prompt_template,
        max_ratio=r.max_ratio,
        require_gold=r.require_gold,
        on_reject=r.on_reject,
        on_policy_fraction=r.on_policy_fraction,
        use_chat_template=r.use_chat_template,
        generation=GenerationSettings(
            max_new_tokens=r.max_new_tokens,
            temperature=r.temperature,
            top_p=r.top_p,
            top_k=r.top_k,
            batch_size=r.batch_size,
        ),
    )


def make_rewriter(recipe: Recipe, settings: RewriteSettings, teacher, tokenizer) -> Rewriter:
    """The local teacher as rewriter, or the served one for ``rewrite.backend: openai``.

    Either way the local ``teacher`` is the model whose logits the student is trained against.
    """
    r = recipe.rewrite
    if r.backend == "openai":
        from .served_rewriter import OpenAIRewriter

        return OpenAIRewriter(
            r.base_url,
            r.model,
            api_key_env=r.api_key_env,
            chat=r.use_chat_template,
            temperature=r.temperature,
            top_p=r.top_p,
            top_k=r.top_k or None,
            max_tokens=r.max_new_tokens,
            max_concurrency=r.max_concurrency,
            timeout_s=r.timeout_s,
            max_retries=r.max_retries,
            deadline_s=r.deadline_s,
            seed=recipe.seed,
        )
    thinking = r.teacher_enable_thinking
    return TransformersRewriter(
        teacher, tokenizer, settings.generation, use_chat_template=settings.use_chat_template,
        chat_template_kwargs=None if thinking is None else {"enable_thinking": thinking}, seed=recipe.seed,
    )


def check_rewrite_server(recipe: Recipe) -> None:
    """For a served rewriter: the API key variable is set and the server answers (before loading models)."""
    r = recipe.rewrite
    if r.backend == "openai" and recipe.method in ("mpd", "rewrite_sft"):
        from .served_rewriter import check_endpoint

        check_endpoint(r.base_url, min(r.timeout_s, 30.0), model=r.model, api_key_env=r.api_key_env)


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


def save_merged(student_name: str, adapter_dir: Path, model_dir: Path, tokenizer) -> None:
    """The student with its trained adapter folded in, saved as a plain checkpoint (loads without peft)."""
    from peft import PeftModel

    base = AutoModelForCausalLM.from_pretrained(resolve_model(student_name), dtype=torch.float32, use_safetensors=True)
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    merged.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)


def check_thinking(recipe: Recipe, tokenizer) -> None:
    """A thinking switch set in the recipe needs a chat template that has one."""
    has_switch = "enable_thinking" in str(getattr(tokenizer, "chat_template", None) or "")
    keys = [("training.student_enable_thinking", recipe.training.student_enable_thinking)]
    if recipe.method in ("mpd", "rewrite_sft"):
        keys.append(("rewrite.teacher_enable_thinking", recipe.rewrite.teacher_enable_thinking))
    for key, value in keys:
        if value is not None and not has_switch:
            raise ConfigError(f"{key} is set but the tokenizer's chat template has no enable_thinking switch")


def build_trainer(recipe: Recipe, student, teacher, tokenizer, rows: list[dict], run_dir: Path):
    from datasets import Dataset
    from trl import DistillationConfig, DistillationTrainer

    from .trainer import MPDTrainer, OffPolicyKDTrainer, RewriteSFTTrainer

    check_thinking(recipe, tokenizer)
    t = recipe.training
    args = DistillationConfig(
        output_dir=str(run_dir / "trainer"),
        max_steps=t.steps,
        per_device_train_batch_size=t.batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        learning_rate=t.learning_rate,
        lr_scheduler_type=t.lr_scheduler_type,
        warmup_steps=t.warmup_steps,
        beta=t.beta,
        temperature=t.temperature,
        top_p=t.top_p,
        top_k=t.top_k,
        max_completion_length=t.max_completion_length,
        logging_steps=t.logging_steps,
        activation_checkpointing=t.gradient_checkpointing,
        bf16=t.bf16,
        max_grad_norm=t.max_grad_norm,
        seed=recipe.seed,
        data_seed=recipe.seed,
        report_to="none",
        save_strategy="steps" if t.save_steps else "no",
        save_steps=t.save_steps or 500,
        use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=0,
        disable_tqdm=False,
        chat_template_kwargs=(
            None if t.student_enable_thinking is None else {"enable_thinking": t.student_enable_thinking}
        ),
    )
    common = dict(
        model=student,
        peft_config=peft_config(recipe),
        teacher_model=teacher,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
    )
    if recipe.method == "opd":
        return DistillationTrainer(**common)
    rollouts = run_dir / "rollouts.jsonl"
    if recipe.method == "offpolicy_kd":
        gen = GenerationSettings(
            max_new_tokens=t.max_completion_length, temperature=t.temperature, top_p=t.top_p, top_k=t.top_k,
            batch_size=recipe.rewrite.batch_size,
        )
        return OffPolicyKDTrainer(**common, teacher_generation=gen, rollouts_path=rollouts)
    settings = rewrite_settings(recipe)
    rewriter = make_rewriter(recipe, settings, teacher, tokenizer)
    cls = MPDTrainer if recipe.method == "mpd" else RewriteSFTTrainer
    return cls(
        **common,
        rewriter=rewriter,
        rewrite_settings=settings,
        task=get_task(recipe.task),
        rollouts_path=rollouts,
    )


def train(recipe: Recipe, run_dir: str | Path, *, exclude_prompts: set[str] | None = None) -> Path:
    """Train ``recipe.method`` and save the student to ``run_dir/model``; returns that folder.

    Everything that can be checked without training — models, vocabularies, data — is checked
    before the first step.
    """
    run_dir = Path(run_dir)
    for existing in ("rollouts.jsonl", "model", "adapter"):
        if (run_dir / existing).exists():
            raise ConfigError(f"{run_dir} already holds a run ({existing}); choose another --out or move it away")
    rows = training_problems(recipe, exclude=exclude_prompts)
    if recipe.rewrite.require_gold and recipe.method in ("mpd", "rewrite_sft"):
        missing = next((i for i, r in enumerate(rows) if r.get("answer") is None), None)
        if missing is not None:
            raise ConfigError(f"rewrite.require_gold is set but training row {missing} has no answer (data.answer_field)")
    check_rewrite_server(recipe)
    student, tokenizer = load_model(recipe.student)
    # The teacher is never trained: with training.bf16 its weights are held in bf16 (half the memory).
    teacher, t_tok = load_model(recipe.teacher, dtype=torch.bfloat16 if recipe.training.bf16 else torch.float32)
    check_compatible(recipe.student, tokenizer, student, recipe.teacher, t_tok, teacher)
    check_thinking(recipe, tokenizer)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "recipe.yaml").write_text(dump_recipe(recipe), encoding="utf-8")
    trainer = build_trainer(recipe, student, teacher, tokenizer, rows, run_dir)
    trainer.train()
    model_dir = run_dir / "model"
    if recipe.training.lora is None:
        trainer.save_model(str(model_dir))
    else:
        # The adapter as trained, then (once, on the main process) the merged student for eval.
        trainer.save_model(str(run_dir / "adapter"))
        if trainer.accelerator.is_main_process:
            save_merged(recipe.student, run_dir / "adapter", model_dir, tokenizer)
        trainer.accelerator.wait_for_everyone()
    with (run_dir / "train_log.jsonl").open("w", encoding="utf-8") as f:
        for entry in trainer.state.log_history:
            f.write(json.dumps(entry) + "\n")
    return model_dir
