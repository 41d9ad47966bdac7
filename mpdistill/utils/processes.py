"""Many training processes, one run folder.

Under ``torchrun`` or ``accelerate launch`` every process runs the same ``mpdistill train``. One
process (the main one) owns the run folder: it checks it, writes the recipe and the logs, prepares
a resume and renames saved models into place. The others wait for it where they must, and every
decision it makes (go ahead, or the error that stops the run) reaches all of them, so no process is
left waiting in a collective call for one that has already exited.

Outside a launcher there is one process and these helpers cost nothing.
"""

from __future__ import annotations

from typing import Callable, TypeVar

T = TypeVar("T")


def distributed_state():
    """accelerate's process state (it joins the process group a launcher set up: gloo on CPU).

    On a machine without a GPU it is made as the trainer will make it (``use_cpu``): left to its
    own defaults, under an FSDP launch it would fall back to one process and every process would
    believe it is the main one.
    """
    from dataclasses import fields
    from datetime import timedelta

    import torch
    from accelerate import PartialState
    from transformers import TrainingArguments

    # It joins the process group before the trainer's arguments do, so it sets the group's timeout:
    # the trainer's own (ddp_timeout), not the shorter default of torch's NCCL backend.
    ddp_timeout = next(f.default for f in fields(TrainingArguments) if f.name == "ddp_timeout")
    return PartialState(cpu=not torch.cuda.is_available(), timeout=timedelta(seconds=ddp_timeout))


def is_main_process() -> bool:
    return distributed_state().is_main_process


def on_main_then_share(fn: Callable[[], T]) -> T:
    """Run ``fn`` on the main process only and return its result on every process.

    An exception raised by ``fn`` is raised on every process (the others get the same type and
    message), after all of them have heard of it, marked ``shared_by_main_process``.
    """
    state = distributed_state()
    if state.num_processes == 1:
        return fn()
    from accelerate.utils import broadcast_object_list

    outcome: list = [None, None]
    if state.is_main_process:
        try:
            outcome = [fn(), None]
        except Exception as err:  # noqa: BLE001 - shared with the other processes, then raised everywhere
            outcome = [None, err]
    broadcast_object_list(outcome, from_process=0)
    result, error = outcome
    if error is not None:
        error.shared_by_main_process = True  # the same on every process: the main one reports it
        raise error
    return result


def count_on_every_process(local: int) -> int:
    """The largest of ``local`` over all processes (``local`` itself with one process)."""
    state = distributed_state()
    if state.num_processes == 1:
        return local
    from accelerate.utils import gather_object

    return max(gather_object([local]))


def launch_warnings() -> list[str]:
    """What a launch asks for that will not happen here, said before training starts."""
    import os

    import torch

    warnings = []
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true" and not torch.cuda.is_available():
        # accelerate turns FSDP on for accelerator devices only; on CPU processes it keeps DDP.
        warnings.append("the launch asks for FSDP, but accelerate shards models with FSDP on GPUs only: on this "
                        "CPU-only machine every process holds whole copies of the student and teacher (DDP)")
    return warnings
