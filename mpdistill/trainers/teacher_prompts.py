"""A teacher that reads its own prompt in front of the student's completion: self-distillation's
instructed teacher, and MPD's ``rewrite.teacher_context: concise``."""

from __future__ import annotations

from typing import Any

import torch

from mpdistill.errors import ConfigError
from mpdistill.trainers.config import MPDConfig
from mpdistill.trainers.overlap import pad_prompts


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


class TeacherPrompts:
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
