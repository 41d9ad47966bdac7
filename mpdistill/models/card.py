"""The model card (``README.md``) of a saved student: what it is, how it was made, how it scores.

Every trainer writes one beside the weights (``save_model``) and wherever TRL asks for a card (its
checkpoints, ``push_to_hub``), so a model pushed to the Hub says what it was distilled from and
with which settings. The front matter is the Hub's own metadata (``huggingface_hub.ModelCardData``).
An evaluation table is added later, by whoever evaluates the model (:func:`set_card_evaluation`):
the demo does for each of its models.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from mpdistill.utils.durable import write_text
from mpdistill.utils.paths import EMBEDDED_PREFIX, looks_local

CARD = "README.md"
EVALUATION_HEADING = "## Evaluation"

CITATION = """\
@article{yang2026mpd,
  title   = {Reasoning Compression with Mixed-Policy Distillation},
  author  = {Yang and others},
  journal = {arXiv preprint arXiv:2605.08776},
  year    = {2026}
}"""


@dataclass
class CardFacts:
    """What the trainer cannot read from its own config: the models and data as the user named them
    (a loaded model only knows the folder it came from, which may be a path on one machine)."""

    student: str | None = None
    teacher: str | None = None
    dataset: str | None = None
    problems: int | None = None
    extra_tags: list[str] = field(default_factory=list)  # Hub tags transformers passes in (create_model_card)


def is_hub_id(name: str | None) -> bool:
    return bool(name) and not name.startswith(EMBEDDED_PREFIX) and not looks_local(name)


def base_license(student: str | None) -> str | None:
    """The student's license where it can be known offline: the embedded models are the project's
    (Apache-2.0); a local folder's own card may say. None: unknown here (the base model's applies)."""
    if not student:
        return None
    if student.startswith(EMBEDDED_PREFIX):
        return "apache-2.0"
    card = Path(student).expanduser() / CARD
    if looks_local(student) and card.is_file():
        from huggingface_hub import ModelCard

        return ModelCard.load(card).data.license
    return None


def _shown(name: str | None) -> str:
    if not name:
        return "unknown"
    if is_hub_id(name):
        return f"[{name}](https://huggingface.co/{name})"
    # A local folder or file by its name only: the card may be published, the machine's paths are not.
    return f"`{name if name.startswith(EMBEDDED_PREFIX) else Path(name).name}`"


def _settings_table(rows: list[tuple[str, object]]) -> str:
    lines = ["| setting | value |", "|---|---|"]
    lines += [f"| `{key}` | {value} |" for key, value in rows if value is not None]
    return "\n".join(lines)


def render_card(*, method: str, summary: str = "", rewrites: bool, facts: CardFacts, args, steps: int, processes: int = 1,
                lora: str | None = None, evaluation: str | None = None, kl_loss: bool = True,
                student_samples: bool = True, uses_teacher: bool = True, prompt_style: str = "chat") -> str:
    """The card's text. ``args``: the run's :class:`~mpdistill.trainers.config.MPDConfig`; ``steps``: the
    optimizer steps trained; ``summary``: what the method does, in a sentence; ``rewrites``: whether the method trains on a teacher's rewrites; ``lora``:
    None (full fine-tuning), "adapter" (the folder holds LoRA adapters) or "merged" (folded in);
    ``kl_loss`` / ``student_samples``: whether ``beta`` and the student's sampling settings apply (not
    to Rewrite-SFT's cross-entropy, not to off-policy KD, where only the teacher samples); ``uses_teacher``:
    false for a method without one (GRPO with a length penalty); ``prompt_style``: how the student was
    prompted (``chat`` or ``plain``), which the quick start shows."""
    from huggingface_hub import ModelCardData

    license_id = base_license(facts.student)
    metadata = ModelCardData(
        base_model=facts.student if is_hub_id(facts.student) else None,
        license=license_id,
        library_name="peft" if lora == "adapter" else "transformers",
        pipeline_tag="text-generation",
        datasets=[facts.dataset] if is_hub_id(facts.dataset) else None,
        tags=list(dict.fromkeys(["mpdistill", "trl", *(["distillation"] if uses_teacher else []),
                                 re.sub(r"\W+", "-", method.lower()), *facts.extra_tags])),
    )
    batch = args.per_device_train_batch_size * args.gradient_accumulation_steps * processes
    training = [("method", method), ("optimizer steps", steps), ("samples per step", batch),
                ("learning_rate", f"{args.learning_rate:g}"), ("lr_scheduler_type", _value(args.lr_scheduler_type)),
                ("beta (0 = forward KL, 1 = reverse KL)", args.beta if kl_loss else None),
                ("student sampling temperature", args.temperature if student_samples else None),
                ("max_completion_length", args.max_completion_length),
                ("seed", args.seed),
                ("LoRA", {"adapter": "yes: this folder holds the adapter", "merged": "yes, merged into these weights"}.get(lora))]
    # A method without a teacher (GRPO with a length penalty) has none to name; a student distilled from
    # its own frozen copy (self-distillation) is not "distilled" from another model.
    teacher = f" with {_shown(facts.teacher)} as the teacher" if uses_teacher else ""
    from_another = uses_teacher and facts.teacher != facts.student
    sections = [
        f"---\n{metadata.to_yaml()}\n---",
        f"# {method}-distilled student of {_shown(facts.student)}" if from_another
        else f"# {_shown(facts.student)} trained by {method}",
        f"This model is {_shown(facts.student)} after {steps} optimizer steps of **{method}**{teacher}, "
        f"trained with mpdistill. {summary}".rstrip(),
        "## Training\n\n" + _settings_table(training),
    ]
    rewrite = args.rewrite_config() if rewrites or not student_samples else None
    if not student_samples:  # off-policy KD: the teacher's samples are what the student learns from
        sections.append("### Teacher samples\n\n" + _settings_table([
            ("teacher temperature", rewrite.temperature), ("require_gold", rewrite.require_gold)]))
    if rewrites:
        sections.append("### Rewrites\n\n" + _settings_table([
            ("backend", rewrite.backend), ("max_ratio", rewrite.max_ratio), ("require_gold", rewrite.require_gold),
            ("require_route_kept", rewrite.require_route_kept), ("on_reject", rewrite.on_reject), ("on_policy_fraction", rewrite.on_policy_fraction),
            ("teacher temperature", rewrite.temperature), ("max_new_tokens", rewrite.max_new_tokens)]))
    if lora != "adapter":  # an adapter folder loads through peft on its base model, not on its own
        sections.append(quick_start(args.hub_model_id or "MODEL_DIR", args, prompt_style))
    data = f"{facts.problems} training problems" if facts.problems else "the training problems"
    sections.append(f"## Data\n\n{data} of the `{args.task}` task"
                    + (f", from {_shown(facts.dataset)}" if facts.dataset else "") + ".")
    sections.append(f"{EVALUATION_HEADING}\n\n" + (evaluation or (
        "Not evaluated yet: `mpdistill eval --model MODEL_DIR --benchmarks gsm8k,math500 --out EVAL_DIR` evaluates "
        "it, and `mpdistill compare BASE_EVAL_DIR EVAL_DIR` compares it with the model it started from.")))
    sections.append("## Framework versions\n\n" + "\n".join(f"- {name} {version}" for name, version in framework_versions()))
    sections.append("## License\n\n" + (
        f"`{license_id}`, the base model's license." if license_id else
        f"The base model's license applies: see {_shown(facts.student)}."))
    sections.append(f"## Citation\n\n```bibtex\n{CITATION}\n```")
    return "\n\n".join(sections) + "\n"


def quick_start(model: str, args, prompt_style: str) -> str:
    """A snippet that loads the model with transformers and asks it one question, prompted as it was
    trained (the task's prompt; the chat template with the run's thinking switch, or plain text)."""
    from mpdistill.tasks import get_task
    from mpdistill.tasks.prompts import user_message

    task = get_task(args.task)
    # One of the task's own problems where it makes them (the embedded chain task), else a plain question.
    question = task.problems(1, seed=0)[0]["problem"] if task.make_problems else "What is 12 + 30?"
    prompt = user_message(task.prompt_template, question)
    if prompt_style == "chat":
        kwargs = "".join(f", {k}={v!r}" for k, v in (args.chat_template_kwargs or {}).items())
        encode = (f"messages = [{{\"role\": \"user\", \"content\": {prompt!r}}}]\n"
                  f"inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors=\"pt\""
                  f", return_dict=True{kwargs})")
    else:
        encode = f"inputs = tokenizer({prompt!r}, return_tensors=\"pt\")"
    code = (f"from transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
            f"tokenizer = AutoTokenizer.from_pretrained({model!r})\n"
            f"model = AutoModelForCausalLM.from_pretrained({model!r})\n"
            f"{encode}\n"
            f"output = model.generate(**inputs, max_new_tokens={args.max_completion_length})\n"
            f"print(tokenizer.decode(output[0, inputs[\"input_ids\"].shape[1]:], skip_special_tokens=True))")
    return (f"## Quick start\n\nPrompted as it was trained (`mpdistill eval --model {model}` prompts and grades "
            f"it the same way):\n\n```python\n{code}\n```")


def framework_versions() -> list[tuple[str, str]]:
    """mpdistill and the libraries it runs on (a card's "Framework versions", ``mpdistill --version``)."""
    import torch
    import transformers
    import trl

    from mpdistill import __version__

    return [("mpdistill", __version__), ("TRL", trl.__version__), ("Transformers", transformers.__version__),
            ("PyTorch", torch.__version__)]


def _value(v):
    return getattr(v, "value", v)


def write_card(folder: str | Path, text: str) -> None:
    write_text(Path(folder) / CARD, text)


def set_card_evaluation(folder: str | Path, evaluation: str) -> bool:
    """Put ``evaluation`` (markdown) in the card's evaluation section; False if the folder has no card."""
    path = Path(folder) / CARD
    if not path.is_file():
        return False
    text = path.read_text(encoding="utf-8")
    start = text.find(EVALUATION_HEADING + "\n")
    if start < 0:
        return False
    body_start = start + len(EVALUATION_HEADING) + 1
    end = text.find("\n## ", body_start)
    end = len(text) if end < 0 else end + 1
    write_text(path, f"{text[:body_start]}\n{evaluation.strip()}\n\n{text[end:]}")
    return True
