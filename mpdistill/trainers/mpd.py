"""``mpd``: Mixed-Policy Distillation. The student samples, the teacher rewrites each sample, a
verified rewrite replaces the sample, and the loss is TRL's divergence on what is kept."""

from __future__ import annotations

import logging
import random
import time
from collections import Counter

from accelerate.utils import gather_object

from mpdistill.errors import ConfigError
from mpdistill.rewriting.backends import Teacher, build_rewriter
from mpdistill.rewriting.rewrite import REASONS, RewriteSettings, Rewriter, Sample, encode_completion, rewrite_batch
from mpdistill.tasks.prompts import problem_text
from mpdistill.trainers.base import BaseTrainer, RolloutLog, student_record
from mpdistill.trainers.mix_monitor import MixMonitor
from mpdistill.trainers.overlap import OverlappedStep
from mpdistill.trainers.teacher_prompts import TeacherPrompts, concise_instruction, teacher_prompt
from mpdistill.utils.processes import count_on_every_process

log = logging.getLogger(__name__)


class _TimedRewriter:
    """A rewriter whose ``rewrite`` calls are timed (``mpd/rewrite_wait_s`` of a serial step)."""

    def __init__(self, rewriter: Rewriter) -> None:
        self.rewriter, self.seconds = rewriter, 0.0

    def rewrite(self, prompts, max_new_tokens=None):
        started = time.perf_counter()
        try:
            return self.rewriter.rewrite(prompts, max_new_tokens=max_new_tokens)
        finally:
            self.seconds += time.perf_counter() - started


class MPDTrainer(TeacherPrompts, OverlappedStep, RolloutLog, BaseTrainer):
    """Mixed-Policy Distillation: KL to the teacher on the teacher's rewrite of the student's sample.

    ``rewriter``: where rewrites come from; default: the backend ``args.rewrite_backend`` names
    (the local teacher unless set; see :mod:`mpdistill.rewriting.backends`). With
    ``args.rewrite_teacher_context == "concise"`` the teacher gives the targets of an accepted
    rewrite after the problem and the concise instruction (see ``rewrite.teacher_context``).
    """

    _tag_names = ["trl", "distillation", "mpd"]
    _checks_gold = True
    _name = "MPD"
    _card_summary = ("The student samples a solution, the teacher rewrites it concisely, a rewrite that keeps the "
                     "answer is accepted, and the student is trained by token-level KL against the teacher on that "
                     "shorter trajectory (Mixed-Policy Distillation).")

    def __init__(self, *args, rewriter: Rewriter | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.tools:
            raise ValueError("MPD does not support tool calling: a rewrite cannot replay tool results")
        self.rewrite_settings = self._rewrite_settings()
        if self.rewrite_settings.require_route_kept and self.task.route_kept is None:
            raise ConfigError(f"rewrite.require_route_kept: the task {self.task.name!r} cannot tell whether a rewrite "
                              "keeps the student's route (its route_kept is not set)")
        # The instruction the teacher reads before an accepted rewrite when it gives the loss's targets (None: none).
        self.scoring_instruction = (concise_instruction(self.args, self.task)
                                    if self.args.rewrite_teacher_context == "concise" else None)
        self._last_samples: list[Sample] = []
        if rewriter is None:
            teacher = self.local_teacher()
            rewriter = build_rewriter(self.args.rewrite_config(), Teacher(
                name=getattr(teacher, "name_or_path", "teacher"), tokenizer=self.teacher_tokenizer, model=teacher,
                bf16=bool(self.args.bf16), trust_remote_code=self.args.trust_remote_code), seed=self.args.seed)
        self.rewriter = rewriter
        # Overlapped steps (mpdistill/trainers/overlap.py): rewrites requested as traces end, answered in the background.
        self.overlap = bool(self.args.rewrite_overlap)
        if self.overlap:
            if not callable(getattr(rewriter, "submit", None)):
                raise ConfigError(f"rewrite.overlap needs a rewriter that answers in the background (rewrite.backend: "
                                  f"openai); {type(rewriter).__name__} writes on the training hardware, so there is "
                                  "nothing to overlap: set rewrite.overlap: false")
            if self.is_deepspeed_enabled:
                raise ConfigError("rewrite.overlap rescales the accumulated gradients, which DeepSpeed keeps to itself: "
                                  "set rewrite.overlap: false under DeepSpeed")
            if any(kind in str(self.args.optim).lower() for kind in ("lomo", "layerwise")):
                raise ConfigError(f"rewrite.overlap rescales the accumulated gradients before the optimizer step, and "
                                  f"{self.args.optim} updates the weights during backward: set rewrite.overlap: false")
            if self.args.gradient_accumulation_steps == 1:
                log.warning("rewrite.overlap with gradient_accumulation_steps 1: the step's one micro-batch waits for "
                            "every rewrite, so only the rollout's tail can hide them; 4 or more micro-batches let the "
                            "loss of the first ones run while the last rewrites are on their way")
        if self.accelerator.num_processes > 1 and hasattr(rewriter, "sync_batches"):
            rewriter.sync_batches = count_on_every_process  # the local teacher's generate calls, in step
        self._mix_rng = random.Random(self.args.seed + self.accelerator.process_index)
        self._inputs: list[dict] = []
        # One entry per training batch, summed over processes: what the mix monitor watches.
        self.mix_history: list[dict] = []
        a = self.args
        self.add_callback(MixMonitor(self, window=a.rewrite_monitor_window, task=a.task,
                                     min_parsed_fraction=a.rewrite_min_parsed_fraction,
                                     min_acceptance_rate=a.rewrite_min_acceptance_rate))

    def _rewrite_settings(self) -> RewriteSettings:
        return self.args.rewrite_settings()

    def fallback_description(self) -> str:
        """What a sample without an accepted rewrite trains on, in words (for the mix monitor)."""
        if self.rewrite_settings.on_reject == "drop":
            return "they are dropped from the loss"
        return "they train as plain on-policy distillation (the student's own traces): MPD is then OPD"

    def random_streams(self) -> dict[str, random.Random]:
        streams = {"mix": self._mix_rng}
        rewriter_rng = getattr(self.rewriter, "rng", None)  # the local teacher's sampling seeds
        if isinstance(rewriter_rng, random.Random):
            streams["rewriter"] = rewriter_rng
        return streams

    def _generate_and_score_completions(self, inputs):
        out = super()._generate_and_score_completions(inputs)
        if self.scoring_instruction is None:
            return out
        return self._attach_teacher_prompts(out, [
            teacher_prompt(row["prompt"], self.scoring_instruction) if s.trained_on == "rewrite" else row["prompt"]
            for row, s in zip(inputs, self._last_samples, strict=True)])

    def _sample(self, row: dict, ids: list[int], text: str) -> Sample:
        return Sample(
            # What the rewrite prompt shows: the bare question where the row has one, else the problem
            # as the student was asked it.
            problem=row.get("question") or row.get("problem") or problem_text(row["prompt"]),
            student_text=text,
            student_ids=list(ids),
            gold=row.get("answer"),
            # TRL keeps the token the student stopped on: a rewrite of the trace ends with it too.
            end_id=ids[-1] if len(ids) and ids[-1] in self.eos_token_ids else None,
        )

    def _encode(self, text: str, end_id: int | None) -> list[int]:
        return encode_completion(self._tokenizer, text, end_id)

    def _generate(self, prompts):
        prompt_ids, completion_ids, _, images, tool_images = super()._generate(prompts)
        mode = "train" if self.model.training else "eval"
        texts = self.processing_class.batch_decode(completion_ids, skip_special_tokens=True)
        samples = [self._sample(row, ids, text) for row, text, ids in zip(self._inputs, texts, completion_ids, strict=True)]
        before = self._rewriter_counts()
        calls_before = getattr(self.rewriter, "generate_calls", None)
        timed = _TimedRewriter(self.rewriter)
        rewrite_batch(samples, timed, self.rewrite_settings, self.task, self._encode, self._mix_rng)
        self._metrics[mode]["mpd/rewrite_wait_s"].append(timed.seconds)
        self._log_rewriter_counts(before, mode)
        if calls_before is not None and self.accelerator.num_processes > 1:
            # The local teacher's generate calls this batch, fewest and most over processes: they must
            # be equal (padded), or a sharded teacher would leave a process waiting for the others.
            calls = gather_object([self.rewriter.generate_calls - calls_before])
            self._metrics[mode]["mpd/rewriter/generate_calls_min"].append(float(min(calls)))
            self._metrics[mode]["mpd/rewriter/generate_calls_max"].append(float(max(calls)))

        new_ids, keep = zip(*map(self._trained_ids, samples)) if samples else ((), ())
        self._last_samples = samples
        self._log_mix(samples, mode)
        self._write_rollouts([self._record(prompt, s) for prompt, s in zip(prompts, samples)])
        return prompt_ids, list(new_ids), list(keep), images, tool_images

    @staticmethod
    def _trained_ids(s: Sample) -> tuple[list[int], list[int]]:
        """The completion the loss runs on, and its loss mask (zero for a dropped sample)."""
        ids = s.rewrite_ids if s.trained_on == "rewrite" else s.student_ids
        return ids, [0 if s.trained_on == "dropped" else 1] * len(ids)

    def _rewriter_counts(self) -> dict[str, int] | None:
        """A served rewriter's running request/retry counts (None for the local teacher)."""
        stats = getattr(self.rewriter, "stats", None)
        if not isinstance(stats, dict):
            return None
        return {"requests": stats.get("requests", 0), "retries": stats.get("retries", 0)}

    def _log_rewriter_counts(self, before: dict[str, int] | None, mode: str) -> None:
        # Per step and summed over processes, so retries against a flaky server show in the logs.
        if before is None:
            return
        after = self._rewriter_counts()
        deltas = gather_object([{k: after[k] - before[k] for k in before}])
        for key in before:
            self._metrics[mode][f"mpd/rewriter/{key}"].append(float(sum(d[key] for d in deltas)))

    def _record(self, prompt, s: Sample) -> dict:
        # The student's own answer (read by rewrite_batch, after its thinking), graded where the problem
        # has one: accuracy on the training samples.
        return {
            **student_record(self.task, prompt, s.gold, s.student_text, len(s.student_ids), s.student_answer),
            "rewrite": s.rewrite_text,
            "accepted": bool(s.verdict and s.verdict.accepted),
            "reason": s.verdict.reason if s.verdict else None,
            "rewrite_tokens": len(s.rewrite_ids) if s.rewrite_ids is not None else None,
            "trained_on": s.trained_on,
            "route_kept": s.route_kept,
        }

    def _log_mix(self, samples: list[Sample], mode: str) -> None:
        # Gathered so that every process logs the same global numbers.
        rows = gather_object(
            [
                (len(s.student_ids), len(s.rewrite_ids) if s.rewrite_ids is not None else -1, s.verdict.reason, s.trained_on)
                for s in samples
            ]
        )
        kept = [k for k in gather_object([s.route_kept for s in samples]) if k is not None]
        if kept:  # of the accepted rewrites, the share that walks the student's own route
            self._metrics[mode]["mpd/route_kept"].append(sum(kept) / len(kept))
        m = self._metrics[mode]
        n = len(rows)
        accepted = [(st, rw) for st, rw, reason, _ in rows if reason == "accepted"]
        if mode == "train":  # the samples the mixing rule could rewrite: on-policy picks are not among them
            eligible = [r for r in rows if r[2] != "on_policy"]
            self.mix_history.append({"step": self.state.global_step, "n": len(eligible), "accepted": len(accepted),
                                     "unparsed": sum(r[2] == "student_unparsed" for r in eligible),
                                     "samples": n})  # all of them: the console's "accepted a/b"
        m["mpd/student_tokens"].append(sum(r[0] for r in rows) / n)
        m["mpd/acceptance_rate"].append(len(accepted) / n)
        if accepted:
            m["mpd/rewrite_tokens"].append(sum(rw for _, rw in accepted) / len(accepted))
            m["mpd/compression_ratio"].append(sum(rw for _, rw in accepted) / sum(st for st, _ in accepted))
        trained_lengths = [rw if t == "rewrite" else st for st, rw, _, t in rows if t != "dropped"]
        if trained_lengths:  # what the loss runs on: shorter than mpd/student_tokens when rewrites are accepted
            m["mpd/trained_tokens"].append(sum(trained_lengths) / len(trained_lengths))
        trained = Counter(t for *_, t in rows)
        for what in ("rewrite", "student", "dropped"):
            m[f"mpd/trained_on_{what}"].append(trained[what] / n)
        reasons = Counter(r for _, _, r, _ in rows)
        for reason in REASONS[1:]:
            m[f"mpd/reject/{reason}"].append(reasons[reason] / n)
