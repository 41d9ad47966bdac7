"""Rewrites in flight while the trainer works: the overlapped MPD step (``rewrite.overlap: true``).

The serial step (TRL's, the default) samples the step's whole generation batch, waits for every
rewrite, pads, shuffles, and splits the batch into ``gradient_accumulation_steps`` micro-batches.
With a served rewriter (``rewrite.backend: openai``, its own hardware) the overlapped step does
the same work in another order, within the same optimizer step, so nothing is trained on a
rollout of older weights than the serial step uses:

1. the student samples the whole batch in one ``generate`` call, as in the serial step (split
   into chunks of 16 or 8 it took 1.4x or 2.1x as long on CPU: each chunk pays every decoding
   step again); a :class:`FinishWatcher` sends each trace to the rewriter at the decoding step it
   ends, so early finishers are rewritten while the longer traces are still being written;
2. micro-batches are the samples in the order their traces ended (shortest first, see
   :func:`finish_order`) instead of a random shuffle: the first needs only the first finishers'
   rewrites, which left first;
3. a micro-batch's loss runs as soon as its rewrites are in, while the later ones are on the way.

The accumulated gradient is the same sum: TRL divides every micro-batch's loss by the tokens of
the whole generation batch, and how the samples are grouped does not change a sum (prompts keep
the batch's padding, so every token keeps its position). That count is known only once the last
rewrite is in, so the overlapped step divides by the student's tokens (known after sampling) and
rescales the gradients by their ratio before they are clipped (:func:`rescale_gradients`): equal to
the serial step's up to float rounding. A model with dropout (LoRA's ``dropout``) draws its masks per
micro-batch, so there the two steps train alike in distribution, not draw for draw.
"""

from __future__ import annotations

import contextlib
import functools
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch
from accelerate.utils import gather_object
from transformers import StoppingCriteria, StoppingCriteriaList
from trl.trainer.utils import pad

from mpdistill.errors import ConfigError
from mpdistill.rewriting.rewrite import mix, on_policy_picks, plan_rewrite, settle_rewrite


class FinishWatcher(StoppingCriteria):
    """Calls ``on_finish(row, completion_ids)`` at the decoding step where a row of a batched
    ``generate`` writes its first end token (the ids include it, as TRL's completions do). Stops
    nothing: rows end as they would without it."""

    def __init__(self, end_ids: list[int], on_finish: Callable[[int, list[int]], None]) -> None:
        self.end_ids = list(end_ids)
        self.on_finish = on_finish
        self.prompt_length = 0
        self.ended: torch.Tensor | None = None
        self._end_ids: torch.Tensor | None = None

    def start(self, prompt_length: int, rows: int, device) -> None:
        self.prompt_length = prompt_length
        self.ended = torch.zeros(rows, dtype=torch.bool, device=device)
        self._end_ids = torch.tensor(self.end_ids, device=device)

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        ends = torch.isin(input_ids[:, -1], self._end_ids)
        new = ends & ~self.ended
        if new.any():
            self.ended |= new
            for row in new.nonzero().flatten().tolist():
                self.on_finish(row, input_ids[row, self.prompt_length:].tolist())
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


@contextlib.contextmanager
def watching_generate(model, watcher: FinishWatcher) -> Iterator[None]:
    """``model.generate`` calls made inside report their rows' ends to ``watcher`` (the trainer's
    own ``generate`` call is left as it is: the watcher rides along as a stopping criterion)."""
    before = vars(model).get("generate")  # a generate already set on this instance, put back after
    original = model.generate

    def generate(*args, **kwargs):
        ids = kwargs["input_ids"] if "input_ids" in kwargs else args[0]
        watcher.start(ids.shape[1], ids.shape[0], ids.device)
        criteria = StoppingCriteriaList([watcher, *(kwargs.pop("stopping_criteria", None) or [])])
        return original(*args, stopping_criteria=criteria, **kwargs)

    model.generate = generate
    try:
        yield
    finally:
        if before is None:
            del model.generate  # the class's method again
        else:
            model.generate = before


def finish_order(completion_lengths: list[int]) -> list[int]:
    """Sample indices in the order a batched ``generate`` finishes them: shortest completion first
    (ties in batch order)."""
    return sorted(range(len(completion_lengths)), key=lambda i: (completion_lengths[i], i))


def pad_prompts(prompt_ids: list[list[int]], *, pad_token_id: int, pad_to_multiple_of: int | None,
                device) -> tuple[torch.Tensor, torch.Tensor]:
    """The step's prompts padded on the left to the widest of them, as TRL pads a generation batch:
    each micro-batch takes its rows, so every prompt token keeps the position the serial step gives it."""
    rows = [torch.tensor(r, dtype=torch.long) for r in prompt_ids]
    ids = pad(rows, padding_value=pad_token_id, padding_side="left", pad_to_multiple_of=pad_to_multiple_of)
    mask = pad([torch.ones_like(r) for r in rows], padding_value=0, padding_side="left",
               pad_to_multiple_of=pad_to_multiple_of)
    return ids.to(device=device), mask.to(device=device)


def micro_batch_inputs(prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, completion_ids: list[list[int]],
                       keep: list[list[int]], num_items_in_batch: torch.Tensor, *, pad_token_id: int,
                       pad_to_multiple_of: int | None, device) -> dict:
    """One micro-batch as TRL's ``_generate_and_score_completions`` lays out a text batch: its rows of
    the padded prompts (:func:`pad_prompts`), completions padded on the right, ``tool_mask`` zero for
    dropped samples (``tests/test_overlap.py`` holds the two layouts side by side)."""

    def padded(rows, value):
        return pad([torch.tensor(r, dtype=torch.long) for r in rows], padding_value=value, padding_side="right",
                   pad_to_multiple_of=pad_to_multiple_of).to(device=device)

    return {
        "prompt_ids": prompt_ids,
        "prompt_mask": prompt_mask,
        "completion_ids": padded(completion_ids, pad_token_id),
        "completion_mask": padded([[1] * len(r) for r in completion_ids], 0),
        "num_items_in_batch": num_items_in_batch,
        "tool_mask": padded(keep, 1),
    }


def rescale_gradients(model: torch.nn.Module, factor: float) -> None:
    """Multiply every accumulated gradient by ``factor`` (before clipping and the optimizer step)."""
    with torch.no_grad():
        for p in model.parameters():
            if p.grad is not None:
                p.grad.mul_(factor)


@dataclass
class _PendingStep:
    """One overlapped step's samples, their rewrites on the way and its micro-batches."""

    prompts: list
    n: int
    picks: list[bool]  # kept on-policy (drawn in batch order, as a serial step draws them)
    counts_before: dict | None  # the served rewriter's request counts at the step's start
    samples: list = field(default_factory=list)
    budgets: list = field(default_factory=list)
    answers: list = field(default_factory=list)  # PendingRewrite (rewriting.served), None where nothing was sent
    groups: list[list[int]] = field(default_factory=list)
    prompts_padded: tuple = ()  # (ids, mask) of every row, padded as TRL pads the generation batch
    provisional: torch.Tensor | None = None
    grad_scale: float = 1.0
    wait_s: float = 0.0
    losses: list = field(default_factory=list)

    def __post_init__(self) -> None:
        self.samples, self.budgets, self.answers = [None] * self.n, [None] * self.n, [None] * self.n

class OverlappedStep:
    """MPDTrainer's overlapped step (``rewrite.overlap: true``): TRL's ``_prepare_inputs`` and
    ``training_step`` taken over while training, the rest of the trainer unchanged. It reads the
    trainer's ``_sample``, ``_trained_ids``, ``_record`` and ``_log_mix`` as a serial step does."""

    _pending: _PendingStep | None = None

    def _prepare_inputs(self, generation_batch):
        if not (self.overlap and self.model.training):
            return super()._prepare_inputs(generation_batch)
        k = self._step % self.args.gradient_accumulation_steps
        if k == 0 or self._pending is None:
            self._start_overlapped_step(generation_batch)
        return self._micro_batch(k)

    def _start_overlapped_step(self, inputs: list[dict]) -> None:
        """Sample the step's whole batch, sending each trace to the rewriter as it ends."""
        if any(key in inputs[0] for key in ("image", "images")):
            raise ConfigError("rewrite.overlap lays out text batches only: set rewrite.overlap: false for images")
        self._inputs = inputs  # as RolloutLog keeps them
        prompts = [x["prompt"] for x in inputs]
        n = len(prompts)
        pending = self._pending = _PendingStep(prompts, n, on_policy_picks(n, self.rewrite_settings, self._mix_rng),
                                               self._rewriter_counts())
        watcher = FinishWatcher(self.eos_token_ids, self._send_for_rewrite)
        with watching_generate(self.accelerator.unwrap_model(self.model), watcher):
            prompt_ids, completion_ids, _, _, _ = super()._generate(prompts)
        for row, ids in enumerate(completion_ids):
            if pending.samples[row] is None:  # stopped at the length limit (or sampled by vLLM): sent now
                self._send_for_rewrite(row, list(ids))
            elif pending.samples[row].student_ids != list(ids):
                raise RuntimeError(f"sample {row}: the trace seen as it ended differs from the one generate returned")
        torch.randperm(n)  # the draw TRL's shuffle makes in a serial step, so the next step samples alike
        order = finish_order([len(ids) for ids in completion_ids])
        size = -(-n // self.args.gradient_accumulation_steps)
        pending.groups = [order[i:i + size] for i in range(0, n, size)]
        pending.prompts_padded = pad_prompts(prompt_ids, pad_token_id=self._tokenizer.pad_token_id,
                                             pad_to_multiple_of=self.pad_to_multiple_of, device=self.accelerator.device)
        # The loss's divisor until the trained tokens are known: the student's tokens (see rescale_gradients).
        pending.provisional = self.accelerator.gather(torch.tensor(sum(map(len, completion_ids)),
                                                                   device=self.accelerator.device)).sum()

    def _send_for_rewrite(self, row: int, ids: list[int]) -> None:
        pending = self._pending
        text = self.processing_class.decode(ids, skip_special_tokens=True)
        s = pending.samples[row] = self._sample(self._inputs[row], ids, text)
        budget = pending.budgets[row] = plan_rewrite(s, pending.picks[row], self.rewrite_settings, self.task)
        if budget is not None:
            pending.answers[row] = self.rewriter.submit(self.rewrite_settings.render(s.problem, s.student_text), budget)

    def _wait_for_rewrites(self, rows: list[int]) -> dict:
        """These samples' rewrites, as they arrive (each by its request's deadline)."""
        pending = self._pending
        started = time.perf_counter()
        outputs = {row: pending.answers[row].result() for row in rows if pending.answers[row] is not None}
        pending.wait_s += time.perf_counter() - started
        return outputs

    def _settle(self, rows: list[int], outputs: dict) -> None:
        """Verify and mix these samples, as rewrite_batch does in a serial step."""
        pending = self._pending
        for row in rows:
            s = pending.samples[row]
            if row in outputs:
                settle_rewrite(s, outputs[row], pending.budgets[row], self.rewrite_settings, self.task, self._encode)
            mix(s, self.rewrite_settings, self.task)

    def _micro_batch(self, k: int) -> dict:
        pending = self._pending
        rows = pending.groups[k]
        self._settle(rows, self._wait_for_rewrites(rows))
        trained = [self._trained_ids(pending.samples[row]) for row in rows]
        if k == len(pending.groups) - 1:
            self._finish_overlapped_step()
        prompt_ids, prompt_mask = pending.prompts_padded
        return micro_batch_inputs(prompt_ids[rows], prompt_mask[rows], [ids for ids, _ in trained],
                                  [keep for _, keep in trained], pending.provisional,
                                  pad_token_id=self._tokenizer.pad_token_id, pad_to_multiple_of=self.pad_to_multiple_of,
                                  device=self.accelerator.device)

    def _finish_overlapped_step(self) -> None:
        """Every rewrite is in: the step's logs, as a serial step writes them, and the gradients' scale."""
        pending, mode = self._pending, "train"
        self._metrics[mode]["mpd/rewrite_wait_s"].append(pending.wait_s)
        self._log_rewriter_counts(pending.counts_before, mode)
        self._log_mix(pending.samples, mode)
        self._write_rollouts([self._record(prompt, s) for prompt, s in zip(pending.prompts, pending.samples)])
        completions = [self._trained_ids(s) for s in pending.samples]
        if self.log_completions:  # as TRL logs a serial step's: the prompts and what the loss ran on
            decode = functools.partial(self.processing_class.batch_decode, skip_special_tokens=True)
            self._logs["prompt"].extend(gather_object(decode(pending.prompts_padded[0])))
            self._logs["completion"].extend(gather_object(decode([ids for ids, _ in completions])))
        trained = sum(sum(keep) for _, keep in completions)
        tokens = self.accelerator.gather(torch.tensor(trained, device=self.accelerator.device)).sum()
        # TRL's divisor (clamped at 1) over the provisional one each micro-batch's loss was divided by.
        pending.grad_scale = float(pending.provisional.clamp(min=1)) / float(tokens.clamp(min=1))

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        pending = self._pending
        if not (self.overlap and self.model.training) or pending is None:
            return loss
        if self._step % self.args.gradient_accumulation_steps:  # TRL has counted this micro-batch
            pending.losses.append(loss)
            return loss
        self._pending = None
        scale = pending.grad_scale
        rescale_gradients(model, scale)
        # The trainer sums what each micro-batch returns into the logged loss: this one also corrects the earlier
        # ones (not a NaN/inf one, which the trainer replaced by its running average).
        earlier = sum((l for l in pending.losses if torch.isfinite(l)), torch.zeros_like(loss))
        return loss * scale + earlier * (scale - 1)

    def train(self, *args, **kwargs):
        try:
            return super().train(*args, **kwargs)
        finally:
            if self.overlap and callable(getattr(self.rewriter, "close", None)):
                self.rewriter.close()  # requests of a step that did not finish
