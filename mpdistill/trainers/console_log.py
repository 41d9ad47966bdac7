"""One short line per logging step on the console, in place of transformers' printed metrics dict.

transformers prints every logged dict whole (``ProgressCallback.on_log``, or ``PrinterCallback``
without a progress bar): some 35 keys a step for MPD. :class:`ConsoleLog` is transformers' own
progress bar with a different ``on_log``: it prints the numbers that say how the method is doing,
for MPD ::

    step 4/6  loss 0.0459  accepted 81% (13/16)  compression 0.37  student 90.6 tok  trained 45.1 tok  lr 3.0e-04  5.1 s/step

The full metrics are unchanged in ``trainer.state.log_history`` (``train_log.jsonl``).
"""

from __future__ import annotations

import sys
import time

from tqdm.auto import tqdm
from transformers.trainer_callback import PrinterCallback, ProgressCallback

def _value(logs: dict, key: str) -> float | None:
    v = logs.get(key)
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


class ConsoleLog(ProgressCallback):
    """transformers' training progress bar (``bar``), with :meth:`format_line` printed at each log.

    ``mix_history`` is an MPD trainer's per-batch counts (see ``MPDTrainer._log_mix``): with it the
    line says how many samples the acceptance rate is out of.
    """

    def __init__(self, *, bar: bool = True, mix_history: list[dict] | None = None) -> None:
        super().__init__()
        self.bar, self.mix_history = bar, mix_history
        self._last_step, self._last_time = 0, time.monotonic()
        self._first_step = 0

    def on_train_begin(self, args, state, control, **kwargs):
        # A resumed run starts at its checkpoint's step.
        self._first_step = self._last_step = state.global_step
        self._last_time = time.monotonic()
        if self.bar:
            super().on_train_begin(args, state, control, **kwargs)
        else:
            self.current_step = 0

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar:
            super().on_step_end(args, state, control, **kwargs)

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar:
            super().on_train_end(args, state, control, **kwargs)

    def on_log(self, args, state, control, logs=None, **kwargs):
        # Under a launcher every process logs the same gathered numbers: one of them prints.
        if not state.is_world_process_zero or not logs:
            return
        now = time.monotonic()
        if "train_runtime" in logs:
            line = self.format_summary(state, logs)
        else:
            steps = state.global_step - self._last_step
            seconds = (now - self._last_time) / steps if steps > 0 else None
            line = self.format_line(state, logs, seconds, self._window_counts(state.global_step))
        self._last_step, self._last_time = state.global_step, now
        if self.training_bar is not None:
            tqdm.write(line, file=sys.stdout)  # clears the bar, prints, redraws it
            sys.stdout.flush()
        else:
            print(line, flush=True)

    def _window_counts(self, step: int) -> tuple[int, int] | None:
        """(accepted, samples) over the batches generated since the last log, summed over processes."""
        if not self.mix_history:
            return None
        rows = [h for h in self.mix_history if self._last_step <= h["step"] < step and "samples" in h]
        total = sum(h["samples"] for h in rows)
        return (sum(h["accepted"] for h in rows), total) if total else None

    def format_line(self, state, logs: dict, seconds_per_step: float | None = None,
                    counts: tuple[int, int] | None = None) -> str:
        parts = [f"step {state.global_step}/{state.max_steps}"]
        loss = _value(logs, "loss")
        if loss is not None:
            parts.append(f"loss {loss:.3g}")
        if "mpd/acceptance_rate" in logs:  # a method that rewrites: acceptance and compression
            rate = _value(logs, "mpd/acceptance_rate")
            if counts is not None:
                accepted, total = counts
                parts.append(f"accepted {100 * accepted / total:.0f}% ({accepted}/{total})")
            elif rate is not None:
                parts.append(f"accepted {100 * rate:.0f}%")
            ratio = _value(logs, "mpd/compression_ratio")
            if ratio is not None:  # absent in a window without an accepted rewrite
                parts.append(f"compression {ratio:.2f}")
            for label, key in (("student", "mpd/student_tokens"), ("trained", "mpd/trained_tokens")):
                if (v := _value(logs, key)) is not None:
                    parts.append(f"{label} {v:.1f} tok")
        else:
            # Off-policy KD trains on the teacher's (vetted) samples; OPD on the student's.
            label = "teacher" if "kd/kept_rate" in logs else "student"
            if (v := _value(logs, "completions/mean_length")) is not None:
                parts.append(f"{label} {v:.1f} tok")
            if (v := _value(logs, "completions/clipped_ratio")):
                parts.append(f"cut {100 * v:.0f}%")
            if (v := _value(logs, "kd/kept_rate")) is not None:
                parts.append(f"kept {100 * v:.0f}%")
        if (v := _value(logs, "nonfinite/skipped")):
            parts.append(f"non-finite {100 * v:.0f}% skipped")
        if (v := _value(logs, "learning_rate")) is not None:
            parts.append(f"lr {v:.1e}")
        if seconds_per_step is not None:
            parts.append(f"{seconds_per_step:.1f} s/step")
        return "  ".join(parts)

    def format_summary(self, state, logs: dict) -> str:
        steps = state.global_step - self._first_step
        runtime = _value(logs, "train_runtime") or 0.0
        parts = [f"done: step {state.global_step}/{state.max_steps}, {steps} steps in {runtime:.1f} s"]
        if steps > 0:
            parts[0] += f" ({runtime / steps:.1f} s/step)"
        if (v := _value(logs, "train_loss")) is not None:
            parts.append(f"mean loss {v:.3g}")
        return "  ".join(parts)


def use_console_log(trainer) -> ConsoleLog | None:
    """Put :class:`ConsoleLog` where transformers registered its log printer: the progress bar
    (kept, with short lines) or, with ``disable_tqdm``, the bare printer. A notebook's progress
    table is left as it is (None)."""
    progress = trainer.pop_callback(ProgressCallback)
    printer = trainer.pop_callback(PrinterCallback)
    if progress is None and printer is None:
        return None
    console = ConsoleLog(bar=progress is not None, mix_history=getattr(trainer, "mix_history", None))
    trainer.add_callback(console)
    return console
