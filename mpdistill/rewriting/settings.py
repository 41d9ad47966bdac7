"""A recipe's ``rewrite:`` section: how the teacher is asked, how its rewrites are sampled,
accepted and mixed, and where they come from. ``MPDConfig``'s ``rewrite_*`` fields, the ``rewrite``
command's options and the dry run read this one declaration.

The rules here hold for every backend; what a backend asks of these settings (a served model's
endpoint, say) it declares itself and :func:`mpdistill.rewriting.backends.settings_problems` checks.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from mpdistill.tasks.prompts import DEFAULT_REWRITE_PROMPT, PROMPT_TEMPLATES, check_template
from mpdistill.utils.settings import StrictSettings


def with_task_defaults(section: dict, task: str) -> dict:
    """A ``rewrite:`` section's values with what it leaves out taken from ``task``: its rewrite prompt
    and whether that goes through the chat template. Filled in before the section is checked, so a
    recipe, ``MPDConfig`` and ``mpdistill rewrite`` check (and record) the values they use, once."""
    from mpdistill.tasks import get_task

    t = get_task(task)
    chat = section.get("use_chat_template")
    return {**section, "prompt_template": section.get("prompt_template") or t.rewrite_prompt or DEFAULT_REWRITE_PROMPT,
            "use_chat_template": t.rewrite_chat if chat is None else chat}


class RewriteConfig(StrictSettings):
    # The rewrite instruction, or the name of a built-in one: "default" or "thinking" (for students
    # that think in a <think> block; keeps the block and the answer section after it). Absent: the
    # task's (chain: the layout the embedded teacher was trained on; math: "default").
    prompt_template: str | None = None
    max_ratio: float = Field(default=0.9, gt=0, le=1)
    require_gold: bool = False
    # Reject (reason route_changed) a rewrite that leaves the student's route, by the task's test
    # (chain: its steps in the student's order; math: its numbers in the student's order).
    require_route_kept: bool = False
    on_reject: Literal["student", "drop"] = "student"
    on_policy_fraction: float = Field(default=0.0, ge=0, le=1)
    use_chat_template: bool | None = None  # absent: the task's (chain: no; math: yes)
    # Whether the teacher thinks before it writes a rewrite (the chat template's enable_thinking).
    # Absent: it writes the rewrite directly wherever that can be switched: a local teacher whose
    # template has the switch, and a served chat model (sent chat_template_kwargs, which vLLM and
    # SGLang read). Its own thinking is about the rewrite task and never a target for the student:
    # a rewrite with other think blocks than the student's trace is rejected (reason "structure").
    teacher_enable_thinking: bool | None = None
    # openai, chat: send that switch as chat_template_kwargs (vLLM and SGLang read it); false for a
    # server that refuses request fields it does not know (the served teacher then thinks by its default).
    send_chat_template_kwargs: bool = True
    max_new_tokens: int = Field(default=512, gt=0)
    temperature: float = Field(default=0.6, ge=0)
    top_p: float = Field(default=0.95, gt=0, le=1)
    top_k: int = Field(default=20, ge=0)
    batch_size: int = Field(default=64, gt=0)
    # Watching the mix (mpdistill/trainers/mix_monitor.py): every monitor_window steps, a warning on the console
    # and in the training log when most student traces have no answer the task can read, or no
    # rewrite was accepted (MPD then trains as OPD). The floors stop the run instead, naming the
    # cause; absent, it only warns.
    monitor_window: int = Field(default=5, gt=0)
    min_parsed_fraction: float | None = Field(default=None, ge=0, le=1)
    min_acceptance_rate: float | None = Field(default=None, ge=0, le=1)
    # Where rewrites come from: the local teacher ("transformers") or an OpenAI-compatible server
    # ("openai", e.g. `vllm serve`), which may run another, larger model. The local teacher still
    # scores the divergence either way. The API key is read from the environment variable named
    # by api_key_env; keys never live in recipe files.
    backend: str = "transformers"  # a registered backend (mpdistill/rewriting/backends.py)
    base_url: str | None = None
    # openai: the served model's name. vllm: the rewriting model (default: the teacher) for an
    # in-process vLLM engine on the training GPU(s), with this share of their memory and this many GPUs.
    model: str | None = None
    # None: the engine's own default share (a machine of its own, as for `mpdistill rewrite`).
    gpu_memory_utilization: float | None = Field(default=0.3, gt=0, le=1)
    tensor_parallel_size: int = Field(default=1, gt=0)
    api_key_env: str | None = None
    # openai: fields added to every request body, for options of a particular server.
    extra_body: dict[str, Any] = Field(default_factory=dict)
    max_concurrency: int = Field(default=8, gt=0)
    timeout_s: float = Field(default=60.0, gt=0)
    max_retries: int = Field(default=3, ge=0)
    deadline_s: float = Field(default=600.0, gt=0)
    # What the teacher reads before an accepted rewrite when it gives the loss's targets: the problem
    # alone (problem; the paper's, and what every other sample gets), or the problem followed by the
    # concise instruction (concise: training.teacher_instruction, else the task's), as OPSDC conditions
    # its teacher. A verbose teacher's targets inside a concise rewrite still lean verbose; this asks
    # for concise ones.
    teacher_context: Literal["problem", "concise"] = "problem"
    # openai: send each student trace to the server the moment it ends and train each micro-batch as
    # soon as its rewrites are in, within the same optimizer step (mpdistill/trainers/overlap.py). The loss
    # overlaps the rewrites only with training.gradient_accumulation_steps >= 2.
    overlap: bool = False

    _template = field_validator("prompt_template")(
        lambda cls, v: v if v is None else check_template(PROMPT_TEMPLATES.get(v, v)))

    @model_validator(mode="before")
    @classmethod
    def _no_key_in_files(cls, data):
        if isinstance(data, dict) and "api_key" in data:
            raise ValueError(
                "rewrite.api_key is not accepted: API keys never live in recipe files; put the key in an "
                "environment variable and name that variable in rewrite.api_key_env"
            )
        return data

    @model_validator(mode="after")
    def _overlap_lays_out_student_prompts(self):
        if self.overlap and self.teacher_context != "problem":
            raise ValueError("rewrite.teacher_context: concise is not available with rewrite.overlap (the overlapped "
                             "step lays out the teacher's prompts as the student's); set one of them back")
        return self

    @model_validator(mode="after")
    def _thinking_needs_chat(self):
        if self.teacher_enable_thinking is not None and self.use_chat_template is False:
            raise ValueError("rewrite.teacher_enable_thinking needs rewrite.use_chat_template: true")
        return self

