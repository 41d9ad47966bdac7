"""The checks a run passes before any weights load, written once: ``mpdistill train`` raises what
:func:`pre_run_problems` finds and ``--dry-run`` prints it (with what only a dry run can say), so the
two cannot disagree. The checks that need the loaded tokenizers run again after loading."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from mpdistill.errors import ConfigError
from mpdistill.models.loading import model_path, resolve_model
from mpdistill.rewriting.backends import get_backend
from mpdistill.run.recipe import Recipe
from mpdistill.tasks.prompts import encode_message, has_thinking_switch
from mpdistill.trainers.methods import get_method, teacher_source
from mpdistill.utils.paths import looks_local

log = logging.getLogger(__name__)


def check_batch_fits(recipe: Recipe, n_rows: int, processes: int) -> None:
    """TRL draws whole steps of batch × accumulation × processes problems and drops the rest of an
    epoch: with fewer problems than one step takes, no step would run."""
    t = recipe.training
    per_step = t.batch_size * t.gradient_accumulation_steps * processes
    if n_rows < per_step:
        raise ConfigError(
            f"data: {n_rows} training problem(s), but one step takes {per_step} (training.batch_size {t.batch_size} "
            f"x training.gradient_accumulation_steps {t.gradient_accumulation_steps} x {processes} process(es)), so no "
            "step could run; lower training.batch_size or give more problems")


def check_prompt_lengths(recipe: Recipe, rows: list[dict], tokenizer, model_config) -> None:
    """Every training prompt and its completion fit in the positions the student reads."""
    from mpdistill.rollout.hf import max_positions

    positions = max_positions(model_config)
    if not positions:
        return
    t = recipe.training
    i, length = longest_prompt(recipe, rows, tokenizer)
    if length + t.max_completion_length > positions:
        raise ConfigError(
            f"training problem {i + 1} of {len(rows)} ({_brief(rows[i]['problem'])}): its prompt is {length:,} "
            f"tokens, which with training.max_completion_length "
            f"{t.max_completion_length:,} passes the {positions:,} positions the student reads; shorten or leave out "
            f"that problem, or lower training.max_completion_length to at most {max(positions - length, 0):,}")


def longest_prompt(recipe: Recipe, rows: list[dict], tokenizer) -> tuple[int, int]:
    """The training prompt with the most tokens, as the student reads it: (its row, its token count)."""
    chat = recipe.data.prompt_style == "chat"
    thinking = recipe.training.student_enable_thinking
    kwargs = None if thinking is None else {"enable_thinking": thinking}
    lengths = [len(encode_message(tokenizer, r["problem"], chat=chat, template_kwargs=kwargs)) for r in rows]
    i = max(range(len(lengths)), key=lengths.__getitem__)
    return i, lengths[i]


def _brief(text: str, width: int = 40) -> str:
    return repr(text if len(text) <= width else text[:width] + "...")


def generation_problems(recipe: Recipe, *, servers: bool = True) -> list[Exception]:
    """Everything generation needs beyond the models, checked before any model loads: vLLM is
    installed and its device (GPUs, or vLLM's CPU build) can serve the models asked of it; with
    ``servers``, a served rewriter and a vLLM rollout server answer (and the key variable is set).
    Each problem is an exception whose message is one line saying what to fix; a
    :class:`~mpdistill.rollout.vllm.BackendUnavailable` says whether it is about this machine's devices."""
    from mpdistill.rollout.vllm import BackendUnavailable, check_engine

    r, v = recipe.rewrite, recipe.training.vllm
    rewrites = get_method(recipe.method).rewrites
    checks = []
    if v is not None and v.mode == "colocate":
        checks.append(lambda: check_engine(
            "training.vllm", v.tensor_parallel_size, tp_key="training.vllm.tensor_parallel_size",
            processes=int(os.environ.get("WORLD_SIZE", "1")),
            models={f"the student {recipe.student!r}": resolve_model(recipe.student)},
            without="remove training.vllm to sample the student with transformers"))
    if v is not None and v.mode == "server":
        checks.append(lambda: _rollout_server(v, servers))
    backend = get_backend(r.backend)
    if rewrites and backend.check is not None:
        checks.append(lambda: backend.check(r, recipe.teacher, servers))
    problems = []
    for check in checks:
        try:
            check()
        except (BackendUnavailable, ConfigError) as err:
            problems.append(err)
    return problems


def _rollout_server(v, reachable: bool) -> None:
    from mpdistill.rollout.vllm import BackendUnavailable, check_server

    if not torch.cuda.is_available():
        # TRL pushes the student's new weights to the server after every step through vLLM's NCCL
        # weight transfer, which runs between CUDA devices only.
        raise BackendUnavailable(
            "training.vllm.mode server: TRL sends the student's new weights to the vLLM server over NCCL, "
            "which needs a CUDA GPU in the training process and none is visible here; use training.vllm.mode "
            "colocate, or remove training.vllm to sample the student with transformers",
            device_dependent=True,
        )
    if reachable:
        check_server("training.vllm.server_base_url", v.server_base_url, min(v.server_timeout_s, 30.0))


def check_generation_backends(recipe: Recipe, *, servers: bool = True) -> None:
    """:func:`generation_problems`, raised as one :class:`ConfigError` (a line per problem)."""
    problems = generation_problems(recipe, servers=servers)
    if problems:
        raise ConfigError("\n".join(map(str, problems)))


def check_thinking(recipe: Recipe, tokenizer, teacher_tokenizer=None) -> None:
    """A thinking switch set in the recipe needs a chat template that has one: the student's for
    ``training.student_enable_thinking``, the local teacher's for ``rewrite.teacher_enable_thinking``
    (a served teacher's template is the server's, not checked here; nor one not given)."""
    keys = [("training.student_enable_thinking", recipe.training.student_enable_thinking, tokenizer)]
    if (teacher_tokenizer is not None and get_method(recipe.method).rewrites
            and get_backend(recipe.rewrite.backend).local_template):
        keys.append(("rewrite.teacher_enable_thinking", recipe.rewrite.teacher_enable_thinking, teacher_tokenizer))
    for key, value, tok in keys:
        if value is not None and not has_thinking_switch(tok):
            raise ConfigError(f"{key} is set but the tokenizer's chat template has no enable_thinking switch")


def same_model_problem(recipe: Recipe) -> str | None:
    """A warning when the teacher a recipe distills from is the student itself (one folder, or one
    Hub name): the loss compares the student with itself, starts near zero and teaches nothing.
    Self-distillation, whose teacher is the student by design, is not warned."""
    method = get_method(recipe.method)
    if not method.uses_teacher or method.self_teacher:
        return None
    names = []
    for name in (recipe.student, recipe.teacher):
        try:
            path = resolve_model(name)
        except ValueError:
            return None
        names.append(str(Path(path).expanduser().resolve()) if looks_local(path) else path)
    if names[0] != names[1]:
        return None
    return (f"student and teacher are the same model ({recipe.student}): the loss compares the student with itself, "
            "starts near zero and moves nothing toward a teacher; give a stronger teacher (or use method "
            "self_distill, whose teacher is the student asked to be concise)")


def warn_if_templates_differ(recipe: Recipe, student_tokenizer, teacher_tokenizer) -> bool:
    """The teacher scores the student's tokens of the training prompt, rendered by the student's
    chat template. Where the teacher's own template renders the same message differently, say so:
    the teacher then scores a prompt in a format it was not tuned on. Returns whether they differ."""
    if recipe.data.prompt_style != "chat":
        return False
    kwargs = ({} if recipe.training.student_enable_thinking is None
              else {"enable_thinking": recipe.training.student_enable_thinking})
    probe = "What is 12 + 30?"
    try:
        renders = [encode_message(tok, probe, chat=True, template_kwargs=kwargs)
                   for tok in (student_tokenizer, teacher_tokenizer)]
    except Exception:  # noqa: BLE001 - a tokenizer without a chat template: the prompt style check reports it
        return False
    if renders[0] == renders[1]:
        return False
    log.warning(
        "the teacher's chat template renders a training prompt differently from the student's (%d vs %d tokens): "
        "the teacher scores prompts in the student's format. Use a teacher of the same family, or check that "
        "the difference does not matter", len(renders[0]), len(renders[1]))
    return True


@dataclass
class Problems:
    """What a run would refuse (``errors``) and what it would only warn about (``warnings``), one line each."""

    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def collect(self, check: Callable[[], None]) -> None:
        """Run one check that raises a :class:`ConfigError`; keep its message as an error."""
        try:
            check()
        except ConfigError as err:
            self.errors.append(str(err))

    def raise_errors(self) -> None:
        if self.errors:
            raise ConfigError("\n".join(self.errors))


def pre_run_problems(recipe: Recipe, rows: list[dict] | None, processes: int, *, servers: bool = True,
                     gpus_here: bool = True, tokenizer=None, teacher_tokenizer=None) -> Problems:
    """Everything checked before weights load, in this order: the training rows against the settings (gold answers
    where ``rewrite.require_gold`` needs them, enough problems for one step), what generation needs
    (vLLM and its device, a served rewriter or rollout server when ``servers``), the model folders, and,
    where the tokenizers are given, their thinking switches. ``rows`` None: the data is not here to count
    (a Hub dataset in a dry run). ``gpus_here`` False (a machine planning for GPU nodes): a problem of
    this machine's devices is a warning, not an error."""
    problems = Problems()
    if rows is not None:
        if recipe.rewrite.require_gold and get_method(recipe.method).teacher_text:
            missing = next((i for i, r in enumerate(rows) if r.get("answer") is None), None)
            if missing is not None:
                problems.errors.append(f"rewrite.require_gold is set but training problem {missing + 1} of {len(rows)} "
                                       "has no answer (data.answer_field)")
        problems.collect(lambda: check_batch_fits(recipe, len(rows), processes))
    for problem in generation_problems(recipe, servers=servers):
        device = getattr(problem, "device_dependent", False)
        (problems.warnings if device and not gpus_here else problems.errors).append(str(problem))
    for role, name in (("student", recipe.student), ("teacher", teacher_source(recipe))):  # None: no teacher
        if name is not None:
            try:
                model_path(name)
            except ConfigError as err:
                problems.errors.append(f"{role}: {err}")
    if tokenizer is not None:
        problems.collect(lambda: check_thinking(recipe, tokenizer, teacher_tokenizer))
    return problems
