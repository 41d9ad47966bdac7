"""One training step of a trainer, timed phase by phase, by wrapping its methods on the instance
(no training code changes):

- ``student_rollout``: TRL's ``_generate_single_turn`` (the student's ``generate``);
- ``teacher_rewrite``: the MPD rewriter's ``rewrite`` call (an overlapped step: the time it waited
  for rewrites still on their way, ``_wait_for_rewrites``);
- ``verification``: the rest of MPD's ``_generate`` (decode, verify, mix, rollout log; overlapped:
  the rest of ``_start_overlapped_step`` including ``_send_for_rewrite``, which sends each request
  from inside the rollout, ``_settle`` and ``_finish_overlapped_step``, which logs the step);
- ``batch_preparation``: the rest of TRL's ``_prepare_inputs`` (tokenizing, padding);
- ``teacher_scoring``: the teacher's forward passes inside the loss;
- ``student_forward_backward``: the rest of ``training_step`` (student forward, chunked JSD, backward);
- ``optimizer``: gradient clipping, optimizer and scheduler step.

Peak memory per step is ``torch.cuda.max_memory_allocated`` on a GPU, None on CPU.
"""

from __future__ import annotations

import contextlib
import time
from typing import Callable, Iterator

import torch

PHASES = (
    "student_rollout",
    "teacher_rewrite",
    "verification",
    "batch_preparation",
    "teacher_scoring",
    "student_forward_backward",
    "optimizer",
)


class PhaseClock:
    """Accumulates seconds per phase; synchronises the GPU around each timed region."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.cuda = torch.cuda.is_available()

    def now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    @contextlib.contextmanager
    def phase(self, name: str):
        start = self.now()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + self.now() - start

    def wrap(self, name: str, fn: Callable) -> Callable:
        def timed(*args, **kwargs):
            with self.phase(name):
                return fn(*args, **kwargs)

        return timed

    def reset(self) -> dict[str, float]:
        out, self.seconds = self.seconds, {}
        return out


def reset_peak_memory() -> None:
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def peak_memory_bytes() -> int | None:
    """Peak GPU memory allocated since the last reset; None on CPU.

    A CPU process's resident set keeps what the allocator once held, so it cannot attribute a
    peak to one step of two trainers sharing a process: :func:`mpdistill.experiments.bench.memory.bench_memory`
    uses one process per measurement there instead.
    """
    if torch.cuda.is_available():
        return int(torch.cuda.max_memory_allocated())
    return None


def instrument(trainer, clock: PhaseClock, *, budgets: bool = True) -> None:
    """Time the phases of ``trainer``'s step by wrapping its methods on the instance.

    ``budgets=False`` drops the per-rewrite length budgets, so their saving can be measured.
    """
    trainer._generate_single_turn = clock.wrap("student_rollout", trainer._generate_single_turn)
    if hasattr(trainer, "rewriter"):
        rewrite = trainer.rewriter.rewrite
        if not budgets:
            def rewrite(prompts, max_new_tokens=None, _full=rewrite):  # noqa: E306
                return _full(prompts)
        trainer.rewriter.rewrite = clock.wrap("teacher_rewrite", rewrite)
    trainer._generate = clock.wrap("_generate", trainer._generate)
    if getattr(trainer, "overlap", False):  # the overlapped step samples and waits outside _generate
        trainer._start_overlapped_step = clock.wrap("_overlap_start", trainer._start_overlapped_step)
        trainer._wait_for_rewrites = clock.wrap("teacher_rewrite", trainer._wait_for_rewrites)
        trainer._settle = clock.wrap("_overlap_settle", trainer._settle)
        # Sending runs inside generate (the watcher calls it as each trace ends): counted out of the rollout.
        trainer._send_for_rewrite = clock.wrap("_overlap_send", trainer._send_for_rewrite)
        trainer._finish_overlapped_step = clock.wrap("_overlap_finish", trainer._finish_overlapped_step)
    trainer._prepare_inputs = clock.wrap("_prepare_inputs", trainer._prepare_inputs)
    teacher = trainer.accelerator.unwrap_model(trainer.teacher_model)
    original_training_step = trainer.training_step

    def training_step(*args, **kwargs):
        with clock.phase("_training_step"):
            return original_training_step(*args, **kwargs)

    trainer.training_step = training_step
    original_redirect = trainer._forward_redirection

    def redirect(wrapper, unwrapped, fn, *args, **kwargs):
        # TRL routes the teacher's loss-time forward through _forward_redirection(teacher_model, ...).
        if unwrapped is teacher:
            with clock.phase("teacher_scoring"):
                return original_redirect(wrapper, unwrapped, fn, *args, **kwargs)
        return original_redirect(wrapper, unwrapped, fn, *args, **kwargs)

    trainer._forward_redirection = redirect


def prepare_to_step(trainer, clock: PhaseClock, *, steps: int, budgets: bool) -> Iterator:
    """Instrument ``trainer`` and make it ready for ``steps`` explicit steps; its batches."""
    instrument(trainer, clock, budgets=budgets)
    trainer.create_optimizer_and_scheduler(num_training_steps=steps)
    # Set by Trainer's own loop, which the bench replaces with explicit steps.
    trainer.current_gradient_accumulation_steps = trainer.args.gradient_accumulation_steps
    trainer.model.train()
    return iter(trainer.get_train_dataloader())


def _exclusive(raw: dict[str, float]) -> dict[str, float]:
    """Exclusive phase times from the nested wrapped timings."""
    g = raw.get
    generate = g("_generate", 0.0)
    rollout, rewrite = g("student_rollout", 0.0), g("teacher_rewrite", 0.0)
    prepare = g("_prepare_inputs", 0.0)
    scoring = g("teacher_scoring", 0.0)
    if "_overlap_start" in raw:  # the wait for rewrites happens in _prepare_inputs, after the rollout
        start, finish = raw["_overlap_start"], g("_overlap_finish", 0.0) + g("_overlap_settle", 0.0)
        # Sending, timed inside the rollout, is moved to verification (a trace cut at the length limit is
        # sent after generate returns: counted twice there, for microseconds).
        rollout -= g("_overlap_send", 0.0)
        verification, preparation = start - rollout + finish, prepare - start - rewrite - finish
    else:
        verification, preparation = generate - rollout - rewrite, prepare - generate
    return {
        "student_rollout": rollout,
        "teacher_rewrite": rewrite,
        "verification": max(verification, 0.0),
        "batch_preparation": max(preparation, 0.0),
        "teacher_scoring": scoring,
        "student_forward_backward": max(g("_training_step", 0.0) - prepare - scoring, 0.0),
        "optimizer": g("optimizer", 0.0),
    }


def run_step(trainer, batches: Iterator, clock: PhaseClock) -> dict:
    """One full training step: generation, (rewrite), loss, backward (each micro-batch), optimizer step."""
    model = trainer.model
    reset_peak_memory()
    clock.reset()
    start = clock.now()
    loss = sum(trainer.training_step(model, next(batches), None) for _ in range(trainer.args.gradient_accumulation_steps))
    with clock.phase("optimizer"):
        torch.nn.utils.clip_grad_norm_(model.parameters(), trainer.args.max_grad_norm)
        trainer.optimizer.step()
        trainer.lr_scheduler.step()
        trainer.optimizer.zero_grad(set_to_none=True)
    total = clock.now() - start
    trainer.state.global_step += 1
    phases = _exclusive(clock.reset())
    step = {"seconds": total, **phases, "peak_memory_bytes": peak_memory_bytes(), "loss": float(loss)}
    step.update(_tokens(trainer))
    return step


def _tokens(trainer) -> dict:
    """Tokens the student generated and tokens the loss ran on, from the trainer's own metrics."""
    m = trainer._metrics["train"]
    generated = m["completions/mean_length"][-1]  # TRL logs the student's own completions
    trained = m["mpd/trained_tokens"][-1] if m.get("mpd/trained_tokens") else generated
    out = {"student_tokens_per_sample": generated, "trained_tokens_per_sample": trained}
    if m.get("mpd/trained_on_rewrite"):
        out["rewrite_share"] = m["mpd/trained_on_rewrite"][-1]
    return out
