"""``opd``: on-policy distillation, TRL's trainer as is, with the rollout log and resumable checkpoints."""

from __future__ import annotations

from mpdistill.rewriting.rewrite import answer_section
from mpdistill.trainers.base import BaseTrainer, RolloutLog, student_record


class OPDTrainer(RolloutLog, BaseTrainer):
    """On-policy distillation: TRL's trainer as is, with resumable checkpoints and the rollout log."""

    _name = "OPD"
    _card_summary = ("The student samples a solution and is trained by token-level KL against the teacher on "
                     "its own sample (on-policy distillation).")

    def _generate(self, prompts):
        out = super()._generate(prompts)
        completion_ids = out[1]
        texts = self.processing_class.batch_decode(completion_ids, skip_special_tokens=True)
        self._write_rollouts([student_record(self.task, prompt, row.get("answer"), text, len(ids),
                                             self.task.extract_answer(answer_section(text)))
                              for prompt, row, text, ids in zip(prompts, self._inputs, texts, completion_ids, strict=True)])
        return out
