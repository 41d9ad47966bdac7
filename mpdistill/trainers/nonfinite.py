"""Skip optimizer steps whose gradients are not finite, and stop a run that keeps producing them.

A NaN or infinite loss (or an overflow in the backward pass) makes every gradient it touches
non-finite; one such step applied by AdamW ruins the weights for good. The guard looks at the
gradients just before the optimizer step and, if any is NaN or infinite, drops them all: the
optimizer then leaves every weight and its moment estimates untouched (PyTorch optimizers skip
parameters without a gradient). The step still counts (the data and learning-rate schedule move
on) and is logged. After ``limit`` such steps in a row the run stops with a checkpoint of the
last good weights and :class:`NonFiniteHalt` names the step.
"""

from __future__ import annotations

import logging

import torch
from transformers import TrainerCallback

from mpdistill.errors import MPDistillError

log = logging.getLogger(__name__)


class NonFiniteHalt(MPDistillError, RuntimeError):
    """Training stopped because too many consecutive steps had non-finite gradients."""

    shared_by_main_process = True  # decided from numbers every process gathers alike


def gradients_finite(model: torch.nn.Module) -> bool:
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if not grads:
        return True
    # One norm per tensor (fused); a NaN or inf anywhere makes its tensor's norm non-finite.
    norms = torch._foreach_norm([g.detach() for g in grads])
    return bool(torch.stack([n.float() for n in norms]).isfinite().all())


class NonFiniteGuard(TrainerCallback):
    def __init__(self, limit: int, metrics: dict | None = None) -> None:
        self.limit = limit
        self.metrics = metrics  # the trainer's per-mode metric lists, where it has them (TRL's _metrics)
        self.in_a_row = 0
        self.skipped: list[int] = []
        self.halted_at: int | None = None

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        finite = gradients_finite(model)
        if self.metrics is not None:
            self.metrics["train"]["nonfinite/skipped"].append(0.0 if finite else 1.0)
        if finite:
            self.in_a_row = 0
            return control
        for p in model.parameters():
            p.grad = None
        self.in_a_row += 1
        self.skipped.append(state.global_step)
        log.warning(
            "step %d: non-finite loss or gradient; the update is skipped (%d in a row, limit %d)",
            state.global_step, self.in_a_row, self.limit,
        )
        if self.in_a_row > self.limit:
            self.halted_at = state.global_step
            control.should_training_stop = True
            # In the training log too (train_log.jsonl, mpdistill view): why the run stopped.
            state.log_history.append({"step": state.global_step, "mpd/halt": (
                f"more than {self.limit} steps in a row had a NaN/inf loss or gradient")})
        return control

    def on_step_end(self, args, state, control, **kwargs):
        if self.halted_at is not None:
            control.should_save = True  # the last good weights, to resume from once the cause is fixed
        return control
