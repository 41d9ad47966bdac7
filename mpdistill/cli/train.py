"""``mpdistill train``: one method from a recipe, or its plan (``--dry-run``)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from mpdistill.cli.app import app, fail, interrupted, one_line_errors, storage_failed
from mpdistill.utils.console import stdout as console


@app.command("train")
@one_line_errors
def train_cmd(
    config: Optional[str] = typer.Argument(None, help="Recipe file, or a shipped recipe's name (`mpdistill recipes` "
                                           "lists them); with --resume, defaults to the run's own."),
    out: Optional[Path] = typer.Option(
        None, "--out", help="Run folder: model/, rollouts.jsonl, train_log.jsonl, recipe.yaml (required unless --dry-run)."
    ),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Check the recipe and print the resolved plan (models, data, devices, batch) without loading weights."
    ),
    resume: bool = typer.Option(
        False, "--resume", help="Continue the interrupted run in --out from its newest checkpoint (training.save_steps)."
    ),
    overrides: list[str] = typer.Option(
        [], "--set", metavar="KEY=VALUE", help="Override one recipe key for this run, e.g. --set training.learning_rate=1e-4 "
        "(repeatable; the value is read as YAML). Any TrainingArguments field can be set under training. The run's "
        "recipe.yaml records the result."),
) -> None:
    """Train one method from a recipe."""
    from mpdistill.run.recipe import load_recipe, parse_overrides

    if config is None:
        if not (resume and out is not None):
            fail("give a recipe (or --resume --out RUN to continue a run with its own recipe)")
        config = out / "recipe.yaml"
        if not config.exists():
            fail(f"{out} has no recipe.yaml: it is not a run folder")
    else:
        from mpdistill.recipes import recipe_file

        config = recipe_file(config)
    if dry_run:
        from mpdistill.utils.console import error, warn
        from mpdistill.run.dry_run import describe_run, format_run_description

        p = describe_run(load_recipe(config, parse_overrides(overrides)), out)
        console.print(format_run_description(p))
        for line in p["warnings"]:
            warn(line)
        for line in p["errors"]:
            error(line)
        if p["errors"]:
            raise typer.Exit(code=2)
        return
    if out is None:
        fail("--out is required (or use --dry-run to only check the recipe)")
    from mpdistill.run.pipeline import train

    own = out is not None and config == out / "recipe.yaml"
    try:
        # A run's own recipe: older runs wrote relative paths as given, from where they were started.
        recipe = load_recipe(config, parse_overrides(overrides), paths_from=Path.cwd() if own else None)
        model_dir = train(recipe, out, resume=resume)
    except KeyboardInterrupt:
        interrupted(_train_saved(out))
    except Exception as err:  # noqa: BLE001 - only a refused write is said here; anything else is a bug, shown as such
        storage_failed(err, lambda: _train_saved(out).replace("The run can continue",
                                                               "Once it can be written again, the run can continue"))
    from mpdistill.utils.processes import is_main_process

    if is_main_process():  # under a launcher, one line for the run, not one per process
        console.print(f"saved {recipe.method} student to {model_dir}")


def _train_saved(out: Path) -> str:
    from mpdistill.trainers.checkpoints import ROLLOUTS, latest_complete_checkpoint

    if not (out / "recipe.yaml").exists():
        return f"Training had not started; nothing was written to {out}"
    checkpoint = latest_complete_checkpoint(out / "trainer")[0]
    logged = f"; the rollouts so far are in {out / ROLLOUTS}" if (out / ROLLOUTS).exists() else ""
    start = "from step 0 (no checkpoint was saved yet: training.save_steps sets how often)" if checkpoint is None \
        else f"from its newest checkpoint, {checkpoint}"
    return f"The run can continue {start}{logged}: mpdistill train --resume --out {out}"
