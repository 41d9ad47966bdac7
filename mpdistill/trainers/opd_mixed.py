"""``opd_mixed``: the control for MPD, OPD with a share of the samples replaced by the teacher's own."""

from __future__ import annotations

import random

from accelerate.utils import gather_object
from trl import DistillationTrainer

from mpdistill.rewriting.rewrite import answer_section
from mpdistill.trainers.base import student_record
from mpdistill.trainers.offpolicy_kd import OffPolicyKDTrainer


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
