"""Checkpoints a killed run can resume from: written whole or not at all, with MPD's random streams.

``transformers`` writes a checkpoint folder file by file under its final name, so a run killed
mid-save leaves ``checkpoint-N`` looking like a checkpoint that is not one. Here every checkpoint
is written under ``trainer/.partial/`` and renamed to ``trainer/checkpoint-N`` only once all of it
is on disk: a folder with a final name is always complete.

A checkpoint also carries the random streams MPD adds to TRL's (which rewrites are mixed in,
the rewriter's sampling seeds), and the order of the training data is a function of the epoch
alone, so a resumed run draws what an uninterrupted one would have. Bringing a run folder back to its
newest checkpoint is :func:`mpdistill.run.resume.prepare_resume`.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
from pathlib import Path

import torch
from torch.utils.data import Sampler
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

from mpdistill.errors import MPDistillError
from mpdistill.utils.durable import LogError, fsync_dir, fsync_tree, read_jsonl_log, write_jsonl, write_text
from mpdistill.utils.paths import ROLLOUTS, TRAIN_LOG

log = logging.getLogger(__name__)

STAGING = ".partial"
RNG_FILE = "mpdistill_rng_{rank}.json"


class ResumeError(MPDistillError, ValueError):
    """A run folder that cannot be resumed; the message says why and what to do."""


# What a run writes into its folder; any of them means a run was started there.
RUN_FILES = (ROLLOUTS, TRAIN_LOG, "model", "adapter", "trainer", "recipe.yaml")


def existing_run(run_dir: Path) -> str | None:
    """Why a new run cannot start in ``run_dir`` (None: it can)."""
    held = next((name for name in RUN_FILES if (run_dir / name).exists()), None)
    if held is None:
        return None
    hint = "" if (run_dir / "model").exists() else " or add --resume to continue it"
    return f"{run_dir} already holds a run ({held}); choose another --out{hint}"


class EpochOrderSampler(Sampler):
    """TRL's ``RepeatSampler`` with the order of epoch ``e`` fixed by the seed and ``e`` alone.

    ``RepeatSampler`` draws each epoch's permutation from one generator, so the order of epoch 2
    depends on epochs 0 and 1 having been drawn in the same process; a run resumed in epoch 2
    would see epoch 0's order. Here the generator is reseeded and advanced past the earlier
    epochs' draws before each pass: the same orders as one uninterrupted run, from any epoch.
    """

    def __init__(self, inner) -> None:
        self.inner = inner
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:  # called by accelerate's dataloader at every epoch
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.inner)

    def __iter__(self):
        generator = getattr(self.inner, "generator", None) if getattr(self.inner, "shuffle", False) else None
        if generator is not None and self.inner.seed is not None:
            generator.manual_seed(self.inner.seed)
            for _ in range(self.epoch):
                torch.randperm(self.inner.num_samples, generator=generator)
        return iter(self.inner)


class ResumableTraining:
    """Trainer mixin: atomic checkpoints that include the trainer's own random streams, and a
    training-data order that a resumed run reproduces.

    A class using it lists its ``random.Random`` objects in :meth:`random_streams`.
    """

    def random_streams(self) -> dict[str, random.Random]:
        return {}

    def checkpoint_modules(self) -> dict[str, torch.nn.Module]:
        """Modules besides the student whose weights change during training (a refreshed teacher):
        saved in each checkpoint as ``<name>.safetensors`` and loaded back on resume."""
        return {}

    def _get_train_sampler(self, dataset=None):
        return EpochOrderSampler(super()._get_train_sampler(dataset))

    def _save_checkpoint(self, model, trial):
        root = self.args.output_dir
        staging = os.path.join(root, STAGING)
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        if self.args.should_save:
            shutil.rmtree(staging, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        # transformers derives the folder from args.output_dir: point it at the staging area while it writes.
        self.args.output_dir = staging
        try:
            super()._save_checkpoint(model, trial)
        except BaseException:
            if self.args.should_save:  # never a half-written checkpoint (a resume ignores .partial anyway)
                shutil.rmtree(staging, ignore_errors=True)
            raise
        finally:
            self.args.output_dir = root
        if self.args.should_save:
            from safetensors.torch import save_model

            for key, module in self.checkpoint_modules().items():
                save_model(module, str(Path(staging, name, f"{key}.safetensors")))
            for file, text in getattr(self, "checkpoint_texts", {}).items():  # the settings it was trained under
                write_text(Path(staging, name, file), text)
        streams = {key: rng.getstate() for key, rng in self.random_streams().items()}
        if streams:
            rank = self.accelerator.process_index
            write_text(Path(staging, name, RNG_FILE.format(rank=rank)), json.dumps(streams))
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            src, dst = Path(staging, name), Path(root, name)
            fsync_tree(src)
            if dst.exists():  # a checkpoint of the same step from before a resume: superseded
                shutil.rmtree(dst)
            os.replace(src, dst)
            fsync_dir(Path(root))
            shutil.rmtree(staging, ignore_errors=True)
            rotate_checkpoints(root, save_total_limit=self.args.save_total_limit, use_mtime=False)
        self.accelerator.wait_for_everyone()

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        from safetensors.torch import load_model

        for key, module in self.checkpoint_modules().items():
            path = Path(resume_from_checkpoint, f"{key}.safetensors")
            if not path.is_file():
                raise ResumeError(f"{resume_from_checkpoint} has no {path.name} (the {key} as this run changed it), so "
                                  "the run cannot go on from there as it was; start it again in a new --out")
            load_model(module, str(path))

    def _issue_warnings_after_load(self, load_result):
        # A checkpoint holds a tied weight once (lm_head.weight is the embedding matrix), so loading it reports
        # the other name missing; transformers only lets keys in _keys_to_ignore_on_save pass. Others still warn.
        tied = tied_names(self.model, load_result.missing_keys)
        if tied:
            load_result = load_result._replace(missing_keys=[k for k in load_result.missing_keys if k not in tied])
        super()._issue_warnings_after_load(load_result)

    def _load_rng_state(self, checkpoint):
        super()._load_rng_state(checkpoint)
        if checkpoint is None:
            return
        path = Path(checkpoint, RNG_FILE.format(rank=self.accelerator.process_index))
        streams = self.random_streams()
        if not streams:
            return
        if not path.exists():
            log.warning("%s is missing: MPD's own random streams start afresh", path)
            return
        saved = json.loads(path.read_text(encoding="utf-8"))
        for key, rng in streams.items():
            if key in saved:
                version, internal, gauss = saved[key]
                rng.setstate((version, tuple(internal), gauss))


def tied_names(model: torch.nn.Module, missing: list[str]) -> set[str]:
    """The names in ``missing`` of parameters that share their tensor with a parameter that was loaded."""
    names: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(param), []).append(name)
    missing_set = set(missing)
    return {n for group in names.values() if not missing_set.issuperset(group) for n in group if n in missing_set}


def checkpoint_step(path: Path) -> int:
    return int(path.name.rsplit("-", 1)[1])


# The recipe a checkpoint was trained under, kept inside it: a resume is checked against what ran,
# not against a recipe.yaml that may have been edited since.
CHECKPOINT_RECIPE = "mpdistill_recipe.yaml"
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "adapter_model.safetensors", "pytorch_model.bin",
                "pytorch_model.bin.index.json", "adapter_model.bin")


def checkpoint_problem(path: Path) -> str | None:
    """What makes ``path`` unusable to resume from (a file missing, unreadable or cut short), or None.

    Read before anything loads: the trainer state, the weights (every safetensors file's header must
    fit its size), the optimizer and scheduler states (a sharded run's engine folder stands for them).
    """
    import json as _json

    try:
        _json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "trainer_state.json is missing or unreadable"
    weights = [name for name in WEIGHT_FILES if (path / name).is_file()]
    if not weights:
        return f"it holds no weights ({', '.join(WEIGHT_FILES[:3])}, ...)"
    for file in sorted(path.glob("*.safetensors")):
        if (why := _safetensors_problem(file)) is not None:
            return f"{file.name} {why}"
    sharded = any(p.is_dir() and (p.name.startswith("global_step") or p.name.startswith("pytorch_model_fsdp"))
                  for p in path.iterdir())
    if not sharded:
        for name in ("optimizer.pt", "scheduler.pt"):
            state = path / name
            if not state.is_file() or state.stat().st_size == 0:
                return f"{name} is missing or empty (a resume would start that state afresh)"
    return None


def _safetensors_problem(file: Path) -> str | None:
    """Why a safetensors file cannot be read whole (its header says more bytes than it has), or None."""
    import json as _json
    import struct

    try:
        size = file.stat().st_size
        with file.open("rb") as f:
            n = struct.unpack("<Q", f.read(8))[0]
            if n > size - 8:
                return "is cut short (its header is incomplete)"
            header = _json.loads(f.read(n))
    except (OSError, struct.error, ValueError):
        return "is unreadable"
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + n + end > size:
        return f"is cut short ({size:,} bytes of {8 + n + end:,})"
    return None


def latest_complete_checkpoint(trainer_dir: Path) -> tuple[Path | None, list[str]]:
    """The newest checkpoint a run can resume from, and a line for each newer one passed over because it is
    damaged (a run keeps ``save_total_limit`` checkpoints: an older whole one beats a newer broken one)."""
    skipped = []
    for path in _checkpoints_newest_first(trainer_dir):
        why = checkpoint_problem(path)
        if why is None:
            return path, skipped
        skipped.append(f"{path.name}: {why}")
    return None, skipped


def latest_checkpoint(trainer_dir: Path) -> Path | None:
    """The newest checkpoint under ``trainer_dir`` that transformers finished (staged ones never count);
    :func:`latest_complete_checkpoint` also reads that its files are whole."""
    return next((p for p in _checkpoints_newest_first(trainer_dir) if (p / "trainer_state.json").is_file()), None)


def _checkpoints_newest_first(trainer_dir: Path) -> list[Path]:
    """The ``checkpoint-N`` folders under ``trainer_dir``, by step (numeric, not lexical), newest first."""
    found = (p for p in trainer_dir.glob(f"{PREFIX_CHECKPOINT_DIR}-*") if p.is_dir() and p.name.rsplit("-", 1)[1].isdigit())
    return sorted(found, key=checkpoint_step, reverse=True)


def discard_partial(trainer_dir: Path) -> bool:
    """Remove a checkpoint that was being written when the run died; True if there was one."""
    staging = trainer_dir / STAGING
    if staging.exists():
        shutil.rmtree(staging)
        return True
    return False


def rewind_rollout_log(path: Path, step: int) -> tuple[int, int]:
    """Keep the records of steps before ``step`` (those the checkpoint includes); drop the rest.

    The resumed run generates the later steps again, so each step ends up in the log exactly
    once. A torn last line is reported and dropped. Returns (records kept, records dropped).
    """
    try:
        records, torn_at = read_jsonl_log(path)
    except LogError as err:
        raise ResumeError(f"{err}; the rollout log cannot be rewound") from None
    kept = [r for _, r in records if isinstance(r.get("step"), int) and r["step"] < step]
    dropped = len(records) - len(kept)
    if dropped or torn_at is not None:
        write_jsonl(path, kept)
    return len(kept), dropped
