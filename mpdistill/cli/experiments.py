"""``mpdistill demo | study | bootstrap``: the experiments on the embedded worlds, and their models trained again
from scratch."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Optional

import typer

from mpdistill.cli.app import WORLD, app, checked_world, fail, interrupted, one_line_errors, storage_failed
from mpdistill.utils.console import stdout as console


@contextlib.contextmanager
def _kept_for_a_rerun(out: Path):
    """Ctrl-C, or a write the storage refused, in work that a re-run with the same --out resumes: what
    is kept and how to go on, in one line."""
    try:
        yield
    except KeyboardInterrupt:
        interrupted(f"finished trainings and evaluations are kept in {out}; run the same command again to go on "
                    "from there")
    except Exception as err:  # noqa: BLE001 - only a refused write is said here
        storage_failed(err, lambda: f"Finished trainings and evaluations are kept in {out}; once it can be written "
                                    "again, run the same command again to go on from there")


@app.command()
@one_line_errors
def demo(
    out: Path = typer.Option(Path("mpd-demo"), "--out", help="Output folder (re-running with it resumes)."),
    quick: bool = typer.Option(False, "--quick", help="A small version of the demo (for tests)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Override the recipe's seed."),
    recipe: Optional[str] = typer.Option(None, "--recipe", help="Recipe file, or a shipped recipe's name (default: "
                                         "the world's: embedded or embedded-verbose-teacher; `mpdistill recipes` "
                                         "lists them)."),
    rewrite_backend: Optional[str] = typer.Option(
        None, "--rewrite-backend", help="Where the teacher writes its rewrites: transformers (the recipe's default) or "
        "vllm (an in-process vLLM engine; its CPU build works on a laptop, see docs/VLLM.md)."),
    world: str = WORLD,
) -> None:
    """Train MPD and the three distillation baselines on an embedded world and compare them on held-out problems."""
    from mpdistill.experiments.demo import run_demo

    if rewrite_backend not in (None, "transformers", "vllm"):
        fail(f"--rewrite-backend must be transformers or vllm, got {rewrite_backend!r}")
    with _kept_for_a_rerun(out):
        run_demo(out, quick=quick, seed=seed, recipe_path=recipe, rewrite_backend=rewrite_backend,
                 world=checked_world(world), console=console)


@app.command()
@one_line_errors
def study(
    out: Path = typer.Option(Path("mpd-study"), "--out", help="Output folder (re-running with it resumes)."),
    quick: bool = typer.Option(False, "--quick", help="A small version of the study (for tests)."),
    seeds: str = typer.Option("0,1,2", "--seeds", help="Training seeds, comma-separated (0 must be one: tuning uses it)."),
    methods: Optional[str] = typer.Option(None, "--methods", help="mpd and the arms to compare it with (baselines "
                                          "and controls, docs/RESULTS.md), comma-separated (default: every one)."),
    world: str = WORLD,
) -> None:
    """MPD, its controls and every baseline on an embedded world: tuned on validation, several seeds, three decodings, costs."""
    from mpdistill.experiments.study import ARM_NAMES, run_study

    try:
        seed_list = tuple(int(s) for s in seeds.split(",") if s.strip())
    except ValueError:
        fail(f"--seeds takes comma-separated integers, got {seeds!r}")
    if 0 not in seed_list:
        fail(f"--seeds must include 0 (each method is tuned with seed 0); got {seeds!r}")
    chosen = tuple(m.strip() for m in methods.split(",")) if methods else ARM_NAMES
    with _kept_for_a_rerun(out):
        run_study(out, quick=quick, seeds=seed_list, arms=chosen, world=checked_world(world), console=console)


@app.command()
@one_line_errors
def bootstrap(
    out: Path = typer.Option(..., "--out", help="Folder for student/ and teacher/."),
    seed: int = typer.Option(0, "--seed"),
    student_max_steps: Optional[int] = typer.Option(None, "--student-max-steps"),
    teacher_max_steps: Optional[int] = typer.Option(None, "--teacher-max-steps"),
    first_check: Optional[int] = typer.Option(None, "--first-check", help="First step with a validation check."),
    only: Optional[str] = typer.Option(
        None, "--only", help="Train only 'student' or only 'teacher'."
    ),
    world: str = WORLD,
) -> None:
    """Train an embedded world's student and teacher from scratch (deterministic from the seed)."""
    from dataclasses import asdict, replace

    from mpdistill.models.worlds import WORLDS, BootstrapPlan
    from mpdistill.models.worlds import bootstrap as run

    checked_world(world)
    # The world's own plan (its stop rules and checks), with this seed and these options.
    plan = BootstrapPlan(**{**asdict(WORLDS[world].plan), "seed": seed})
    for field, value in (
        ("student_max_steps", student_max_steps),
        ("teacher_max_steps", teacher_max_steps),
        ("first_check", first_check),
    ):
        if value is not None:
            plan = replace(plan, **{field: value})
    from mpdistill.models.worlds import STAGES

    if only is not None and only not in STAGES:
        fail(f"--only must be one of {', '.join(STAGES)}; got {only!r}")
    names = (only,) if only else STAGES

    def progress(name: str, step: int, loss: float, scores: dict | None) -> None:
        if scores is not None:
            shown = ", ".join(f"{k} {v:.3f}" for k, v in scores.items())
            console.print(f"{name}: step {step} validation: {shown}")
        elif step == 1 or step % 100 == 0:
            console.print(f"{name}: step {step} loss {loss:.4f}")

    manifest = run(out, plan, progress=progress, only=names, world=world)
    for name, info in manifest["stages"].items():
        console.print(
            f"{name}: {info['parameters']:,} parameters, {info['steps']} steps, "
            f"final loss {info['final_loss']:.4f}, {info['seconds']}s"
        )
