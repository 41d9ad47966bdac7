"""``offpolicy_kd``: the divergence on the teacher's own samples, vetted as MPD's rewrites are."""

from __future__ import annotations

import random
from dataclasses import replace

from accelerate.utils import gather_object

from mpdistill.rewriting.rewrite import answer_section
from mpdistill.rollout import generate_texts, pad_generate_calls
from mpdistill.trainers.base import BaseTrainer, RolloutLog
from mpdistill.utils.processes import count_on_every_process


class OffPolicyKDTrainer(RolloutLog, BaseTrainer):
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
