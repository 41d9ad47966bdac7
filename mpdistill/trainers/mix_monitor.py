"""Watching what MPD trains on, so that a run which rewrites nothing does not pass for MPD.

MPD falls back to the student's own trace (plain on-policy distillation) for every sample it
cannot rewrite. A run whose answers the task cannot read (a Qwen3 student graded by the chain
task, a prompt that never asks for ``\\boxed{}``) or whose teacher never writes an acceptable
rewrite is OPD under MPD's name, and its logs look healthy. :class:`MixMonitor` looks at every
window of ``window`` optimizer steps and

- warns, on the console and in the training log (``mpd/warning``), when most of the student's
  traces have no final answer the task can read, or when no rewrite was accepted;
- stops the run, naming the cause, when a floor set in the recipe is not met
  (``rewrite.min_parsed_fraction``, ``rewrite.min_acceptance_rate``).

Every process sees the same (gathered) counts, so all of them stop at the same step.
"""

from __future__ import annotations

import logging

from transformers import TrainerCallback

from mpdistill.errors import MPDistillError

log = logging.getLogger(__name__)


class MixFloorHalt(MPDistillError, RuntimeError):
    """The run was stopped because a floor on the mix was not met; the message names the cause."""

    shared_by_main_process = True  # decided from numbers every process gathers alike


class MixMonitor(TrainerCallback):
    def __init__(self, trainer, *, window: int, task: str, min_parsed_fraction: float | None = None,
                 min_acceptance_rate: float | None = None) -> None:
        self.trainer = trainer  # an MPDTrainer: its ``mix_history`` holds one entry per batch
        self.window, self.task = window, task
        self.min_parsed, self.min_accepted = min_parsed_fraction, min_acceptance_rate
        self.halted: str | None = None
        self.warnings: list[str] = []

    def window_counts(self, step: int) -> dict | None:
        """Samples (those not kept on-policy by ``rewrite.on_policy_fraction``), unparsed traces and
        accepted rewrites over the steps (step - window, step] that this process has seen (a resumed
        run starts its history afresh), and the first of those steps."""
        rows = [h for h in self.trainer.mix_history if step - self.window < h["step"] + 1 <= step]
        if not rows:
            return None
        counts = {key: sum(r[key] for r in rows) for key in ("n", "unparsed", "accepted")}
        counts["first"] = min(r["step"] for r in rows) + 1
        return counts

    def on_step_end(self, args, state, control, **kwargs):
        step = state.global_step
        if step % self.window:
            return control
        counts = self.window_counts(step)
        if counts is None or not counts["n"]:
            return control
        first = counts["first"]
        parsed = 1 - counts["unparsed"] / counts["n"]
        accepted = counts["accepted"] / counts["n"]
        span = f"steps {first}-{step} ({counts['n']} samples)"
        fallback = self.trainer.fallback_description()
        unparsed_why = (f"{100 * (1 - parsed):.0f}% of the student's traces over {span} have no final answer the "
                        f"'{self.task}' task can read, so no rewrite is asked for them and {fallback}; check `task`, "
                        "`data.prompt_template` and `training.max_completion_length` (traces cut before their answer)")
        accepted_why = (f"{100 * accepted:.0f}% of samples over {span} were trained on an accepted rewrite; "
                        "the mpd/reject/* counts in the training log say why the others were rejected")
        if self.min_parsed is not None and parsed < self.min_parsed:
            self._halt(state, control, f"rewrite.min_parsed_fraction is {self.min_parsed:g}: {unparsed_why}")
        elif self.min_accepted is not None and accepted < self.min_accepted:
            self._halt(state, control, f"rewrite.min_acceptance_rate is {self.min_accepted:g}: {accepted_why}")
        elif parsed < 0.5:
            self._warn(state, f"{self.trainer._name} is mostly falling back here: {unparsed_why}")
        elif counts["accepted"] == 0:
            self._warn(state, f"{self.trainer._name}: no rewrite was accepted, so {fallback}; {accepted_why}")
        return control

    def _warn(self, state, message: str) -> None:
        self.warnings.append(message)
        if state.is_world_process_zero:  # every process decides alike; one says it
            log.warning(message)
        state.log_history.append({"step": state.global_step, "mpd/warning": message})

    def _halt(self, state, control, message: str) -> None:
        self.halted = f"training stopped at step {state.global_step}: {message}"
        if state.is_world_process_zero:
            log.error(self.halted)
        state.log_history.append({"step": state.global_step, "mpd/halt": self.halted})
        control.should_training_stop = True
