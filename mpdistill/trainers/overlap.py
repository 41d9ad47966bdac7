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
from typing import Callable, Iterator

import torch
from transformers import StoppingCriteria, StoppingCriteriaList
from trl.trainer.utils import pad


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
