"""Command line: ``mpdistill demo | train | bootstrap``."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Mixed-Policy Distillation for reasoning compression.")
console = Console()


def _fail(message: str) -> None:
    from rich.markup import escape

    # Messages quote user text (paths, keys, dataset[split]); never read them as markup.
    console.print(f"[red]error:[/] {escape(message)}")
    raise typer.Exit(code=2)


@app.command()
def demo(
    out: Path = typer.Option(Path("mpd-demo"), "--out", help="Output folder (re-running with it resumes)."),
    quick: bool = typer.Option(False, "--quick", help="A small version of the demo (for tests)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Override the recipe's seed."),
    recipe: Optional[Path] = typer.Option(None, "--recipe", help="Recipe to use instead of recipes/embedded.yaml."),
) -> None:
    """Train MPD and every baseline on the embedded default and compare them on held-out problems."""
    from .config import ConfigError
    from .demo import run_demo
    from .tasks.problems import DataError

    try:
        run_demo(out, quick=quick, seed=seed, recipe_path=recipe, console=console)
    except (ConfigError, DataError) as err:
        _fail(str(err))


@app.command("train")
def train_cmd(
    config: Path = typer.Argument(..., help="Recipe YAML (see recipes/)."),
    out: Path = typer.Option(..., "--out", help="Run folder: model/, rollouts.jsonl, train_log.jsonl, recipe.yaml."),
) -> None:
    """Train one method from a recipe."""
    from .config import ConfigError, load_recipe
    from .pipeline import train
    from .tasks.problems import DataError

    try:
        recipe = load_recipe(config)
        model_dir = train(recipe, out)
    except (ConfigError, DataError) as err:
        _fail(str(err))
    console.print(f"saved {recipe.method} student to {model_dir}")


@app.command()
def bootstrap(
    out: Path = typer.Option(..., "--out", help="Folder for student/ and teacher/."),
    seed: int = typer.Option(0, "--seed"),
    student_max_steps: Optional[int] = typer.Option(None, "--student-max-steps"),
    teacher_max_steps: Optional[int] = typer.Option(None, "--teacher-max-steps"),
    first_check: Optional[int] = typer.Option(None, "--first-check", help="First step with a validation check."),
    only: Optional[str] = typer.Option(
        None, "--only", help="Train only 'student' or only 'teacher'."
    ),
) -> None:
    """Train the embedded student and teacher from scratch (deterministic from the seed)."""
    from dataclasses import replace

    from .embedded import BootstrapPlan
    from .embedded import bootstrap as run

    plan = BootstrapPlan(seed=seed)
    for field, value in (
        ("student_max_steps", student_max_steps),
        ("teacher_max_steps", teacher_max_steps),
        ("first_check", first_check),
    ):
        if value is not None:
            plan = replace(plan, **{field: value})
    from .embedded import STAGES

    if only is not None and only not in STAGES:
        _fail(f"--only must be one of {', '.join(STAGES)}; got {only!r}")
    names = (only,) if only else STAGES

    def progress(name: str, step: int, loss: float, scores: dict | None) -> None:
        if scores is not None:
            shown = ", ".join(f"{k} {v:.3f}" for k, v in scores.items())
            console.print(f"{name}: step {step} validation: {shown}")
        elif step == 1 or step % 100 == 0:
            console.print(f"{name}: step {step} loss {loss:.4f}")

    manifest = run(out, plan, progress=progress, only=names)
    for name, info in manifest["stages"].items():
        console.print(
            f"{name}: {info['parameters']:,} parameters, {info['steps']} steps, "
            f"final loss {info['final_loss']:.4f}, {info['seconds']}s"
        )


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    app()


if __name__ == "__main__":
    sys.exit(main())
