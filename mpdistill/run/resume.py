"""Resuming a run folder: the recipe checked against the run's own, and the folder brought back to
its newest complete checkpoint (a half-written one removed, the rollout log cut back to the steps
that checkpoint includes)."""

from __future__ import annotations

import logging
from pathlib import Path

from mpdistill.run.recipe import Recipe, load_recipe
from mpdistill.trainers.checkpoints import (CHECKPOINT_RECIPE, ResumeError, checkpoint_step, discard_partial,
                                            latest_complete_checkpoint, rewind_rollout_log)
from mpdistill.utils.durable import LogError, changed_settings, read_jsonl_log
from mpdistill.utils.paths import ROLLOUTS

log = logging.getLogger(__name__)


# Recipe keys a resumed run may change: they decide how the run is operated, not what it learns.
RESUMABLE_CHANGES = {
    "training.steps", "training.save_steps", "training.save_total_limit", "training.logging_steps",
    "training.max_nonfinite_steps", "rewrite.base_url", "rewrite.api_key_env", "rewrite.max_concurrency",
    "rewrite.timeout_s", "rewrite.max_retries", "rewrite.deadline_s",
    # When to warn or stop: a run resumed after a floor stopped it may lower the floor.
    "rewrite.monitor_window", "rewrite.min_parsed_fraction", "rewrite.min_acceptance_rate",
    # Where logs and models are reported and pushed (TrainingArguments fields written under training:).
    *(f"training.{key}" for key in ("report_to", "run_name", "logging_dir", "logging_first_step", "disable_tqdm",
                                    "dataloader_num_workers", "push_to_hub", "hub_model_id", "hub_strategy",
                                    "hub_private_repo", "hub_token")),
}


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in d.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def recipe_changes(saved: Recipe, given: Recipe, allowed=()) -> list[str]:
    """``key: old -> new`` for each setting ``given`` changes from ``saved``, but for keys in ``allowed``."""
    before, after = _flatten(saved.model_dump(mode="json")), _flatten(given.model_dump(mode="json"))
    return changed_settings(before, after, [k for k in sorted(before.keys() | after.keys()) if k not in allowed])


def check_resumable(recipe: Recipe, run_dir: Path) -> None:
    """The recipe of a resumed run must be the saved one, but for keys in :data:`RESUMABLE_CHANGES`."""
    saved_path = run_dir / "recipe.yaml"
    if not saved_path.exists():
        raise ResumeError(f"{run_dir} has no recipe.yaml: it is not a run folder (or its run never started)")
    # Paths in a run's own recipe are absolute; older runs wrote them as given, from where they started.
    changed = recipe_changes(load_recipe(saved_path, paths_from=Path.cwd()), recipe, allowed=RESUMABLE_CHANGES)
    if changed:
        lines = "; ".join(changed)
        raise ResumeError(
            f"cannot resume {run_dir} with a different recipe ({lines}). Resume with its own recipe "
            f"(mpdistill train --resume --out {run_dir}) or start a new run in another --out"
        )


def prepare_resume(recipe: Recipe, run_dir: Path) -> Path | None:
    """Check a run folder can be resumed and bring it back to its newest checkpoint.

    Returns that checkpoint (None: no checkpoint yet, the run restarts from step 0). The rollout
    log keeps exactly the steps the checkpoint includes; a half-written checkpoint is removed.
    """
    check_resumable(recipe, run_dir)
    if (run_dir / "model").exists():
        raise ResumeError(f"{run_dir} already finished (model/ is there); nothing to resume")
    trainer_dir = run_dir / "trainer"
    if discard_partial(trainer_dir):
        log.warning("%s: removed a checkpoint that was being written when the run stopped", trainer_dir)
    checkpoint, skipped = latest_complete_checkpoint(trainer_dir)
    if skipped and checkpoint is None:
        raise ResumeError(f"{run_dir} has no checkpoint to resume from ({'; '.join(skipped)}); move them aside to "
                          "restart from step 0, or start a new run in another --out")
    for line in skipped:
        log.warning("%s: not resumed from %s; going on from %s", trainer_dir, line, checkpoint.name)
    if checkpoint is not None:
        check_trained_under(recipe, checkpoint)
    step = checkpoint_step(checkpoint) if checkpoint else 0
    kept, dropped = rewind_rollout_log(run_dir / ROLLOUTS, step)
    missing = missing_steps(run_dir / ROLLOUTS, step)
    if missing:
        log.warning("%s lacks the samples of step(s) %s, which %s trained: the log of this run stays incomplete there",
                    run_dir / ROLLOUTS, _ranges(missing), checkpoint.name)
    if checkpoint is None:
        log.warning("%s has no checkpoint yet (training.save_steps): training restarts from step 0", run_dir)
    else:
        log.warning("resuming %s from %s (step %d); rollout log: %d records kept, %d from later steps dropped",
                    run_dir, checkpoint.name, step, kept, dropped)
    return checkpoint


def check_trained_under(recipe: Recipe, checkpoint: Path) -> None:
    """The recipe of a resumed run against the one its checkpoint was trained under (kept in it): an
    edited recipe.yaml cannot change what the rest of the run learns while its record claims the old."""
    saved = checkpoint / CHECKPOINT_RECIPE
    if not saved.is_file():  # written by a version that kept no recipe in its checkpoints
        return
    changed = recipe_changes(load_recipe(saved), recipe, allowed=RESUMABLE_CHANGES)
    if changed:
        raise ResumeError(f"{checkpoint.name} was trained under other settings than the recipe now given "
                          f"({'; '.join(changed)}); its recipe.yaml was edited since. Put them back, or start a new "
                          "run in another --out")


def missing_steps(path: Path, step: int) -> list[int]:
    """The steps before ``step`` that have no record in the rollout log (every method logs every step)."""
    if not path.exists() or step == 0:
        return []
    try:
        records, _ = read_jsonl_log(path)
    except LogError:
        return []
    seen = {r.get("step") for _, r in records}
    return [s for s in range(step) if s not in seen]


def _ranges(steps: list[int]) -> str:
    parts, start = [], None
    for i, s in enumerate(steps):
        start = s if start is None else start
        if i + 1 == len(steps) or steps[i + 1] != s + 1:
            parts.append(str(start) if start == s else f"{start}-{s}")
            start = None
    return ", ".join(parts)
