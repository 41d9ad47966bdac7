"""``mpdistill demo``: MPD and the three distillation baselines on the embedded default, side by side
(the full comparison, every baseline tuned and seeded: ``mpdistill study``).

One process, one seed: the embedded student (base) is trained by each method with the same
recipe (the shipped ``embedded``: ``mpdistill/recipes/embedded.yaml``; only ``method`` changes),
then base, the four trained students and the teacher answer the same held-out problems with the
same sampling settings. Finished stages are kept, so a re-run with the same ``--out`` resumes
where it stopped.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.text import Text

from mpdistill.evaluation.folder import EvalError
from mpdistill.evaluation.runner import TransformersBackend, Unit, run_units
from mpdistill.evaluation.stats import build_results, format_table, paired_delta_ci, write_report
from mpdistill.models.card import set_card_evaluation
from mpdistill.models.loading import load_model
from mpdistill.models.record import write_record
from mpdistill.models.worlds import DEFAULT_WORLD, get_world, world_of
from mpdistill.recipes import recipe_file, shipped_path
from mpdistill.rollout import GenerationSettings
from mpdistill.run.checks import check_generation_backends
from mpdistill.run.pipeline import prompt_record, train
from mpdistill.run.recipe import Recipe, load_recipe
from mpdistill.tasks import get_task
from mpdistill.tasks.problems import chain_problems
from mpdistill.utils.console import stdout
from mpdistill.utils.durable import atomic_write, replace_dir
from mpdistill.utils.paths import TRAIN_LOG, check_output_dir
from mpdistill.view import write_view
from mpdistill.view.curves import plot_training_curves

METHODS = ("mpd", "opd", "offpolicy_kd", "rewrite_sft")
EVAL_ORDER = ("base", *METHODS, "teacher")
RECIPE = shipped_path("embedded")  # the default world's

# --quick: the same pipeline on a budget small enough for a test (< 2 minutes on 2 cores).
QUICK = {"training": {"steps": 3, "batch_size": 8, "logging_steps": 1}, "data": {"n_train": 64}}
QUICK_EVAL_N = 64
# Rollouts whose texts go on the demo's view.html (every rollout's verdict and lengths always do).
VIEW_TEXTS = 4000


def _eval_settings(recipe: Recipe) -> GenerationSettings:
    e = recipe.eval
    return GenerationSettings(
        max_new_tokens=e.max_new_tokens, temperature=e.temperature, top_p=e.top_p, top_k=e.top_k, batch_size=e.batch_size
    )


def run_demo(out: str | Path, **options) -> dict:
    """The demo into ``out`` (options: those of :func:`_run_demo`). The folder is held while it runs:
    a second one on the same folder is refused, naming this one (mpdistill/utils/run_lock.py)."""
    from mpdistill.utils.run_lock import holding

    with holding(out):
        return _run_demo(out, **options)


def _run_demo(out: str | Path, *, quick: bool = False, seed: int | None = None, recipe_path: str | Path | None = None,
             rewrite_backend: str | None = None, world: str = DEFAULT_WORLD, console: Console | None = None) -> dict:
    """``rewrite_backend`` ("transformers" or "vllm") overrides the recipe's ``rewrite.backend``:
    with "vllm" the teacher writes MPD's and rewrite-SFT's rewrites on an in-process vLLM engine
    (its GPU build, or its CPU build on a laptop) while still scoring the loss with transformers.
    ``world``: the embedded world whose recipe runs when ``recipe_path`` names none."""
    console = console or stdout
    out = Path(out)
    check_output_dir(out)
    # A file, or a shipped recipe's name; default: the world's own.
    path = recipe_file(recipe_path) if recipe_path else shipped_path(get_world(world).recipe)
    overrides = dict(QUICK) if quick else {}
    if seed is not None:
        overrides["seed"] = seed
    if rewrite_backend is not None:
        overrides["rewrite"] = {"backend": rewrite_backend}
    recipe = load_recipe(path, overrides)
    n_eval = QUICK_EVAL_N if quick else recipe.eval.n
    task = get_task(recipe.task)
    check_generation_backends(recipe.model_copy(update={"method": "mpd"}))  # before any method trains
    started = time.time()

    # Held-out problems first: training prompts are drawn to exclude every one of them.
    eval_problems = chain_problems(n_eval, recipe.seed, split="eval")
    held_out = {p["prompt"] for p in eval_problems}

    check_same_demo(out, recipe)
    models_dir = out / "models"
    fresh: set[str] = set()  # models written by this run: their old evaluations no longer apply
    found = world_of(recipe.student)
    world_name = found[0].name if found else None  # a recipe of the user's own models names no world
    console.rule(f"mpdistill demo  {f'world={world_name}  ' if world_name else ''}seed={recipe.seed}  n_eval={n_eval}  "
                 f"steps={recipe.training.steps}")
    for name, source in (("base", recipe.student), ("teacher", recipe.teacher)):
        target = models_dir / name
        if not (target / "config.json").exists():
            model, tok = load_model(source)
            save_model_folder(model, tok, target, prompt_record(recipe))  # as they are, before any training
            fresh.add(name)
    for method in METHODS:
        target = models_dir / method
        if (target / "config.json").exists():
            console.print(Text.assemble(("✓", "green"), f" {method}: trained model found in {target}, skipping"))
            continue
        console.print(Text.assemble((f"training {method}", "bold"),
                                    f" ({recipe.training.steps} steps, batch {recipe.training.batch_size})"))
        t0 = time.time()
        run_dir = out / "runs" / method
        if run_dir.exists():
            # An interrupted training of this method: keep its logs, start the method afresh.
            stale = _free_name(run_dir.with_name(f"{method}.interrupted"))
            run_dir.rename(stale)
            console.print(f"  kept the interrupted run's files in {stale}")
        model_dir = train(recipe.model_copy(update={"method": method}), run_dir, exclude_prompts=held_out)
        replace_dir(model_dir, target)
        fresh.add(method)
        console.print(f"  done in {time.time() - t0:.0f}s")

    settings = _eval_settings(recipe)
    records: dict[str, list[dict]] = {}
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
    ) as bar:
        for name in EVAL_ORDER:
            path = out / "eval" / f"{name}.jsonl"
            if name in fresh:
                path.unlink(missing_ok=True)  # samples of a model this run replaced
            job = bar.add_task(f"eval {name:<12}", total=n_eval)
            model, tok = load_model(str(models_dir / name))
            records[name] = evaluate_chain(model, tok, eval_problems, task, settings, recipe.seed, path,
                                      progress=lambda k, _j=job: bar.advance(_j, k))

    results = build_results(recipe.seed, records)
    results["eval_settings"] = {**settings.kwargs(), "n": n_eval}
    results["recipe"] = recipe.model_dump()
    results["world"] = world_name
    results["comparisons"] = compare_to_baselines(results, records)
    results["wall_seconds"] = round(time.time() - started, 1)
    write_report(out, results)
    runs = {m: out / "runs" / m for m in METHODS if (out / "runs" / m / TRAIN_LOG).exists()}
    atomic_write(out / "curves.png", lambda tmp: plot_training_curves(
        runs, tmp, title=f"Training, seed {recipe.seed}, {recipe.training.steps} steps of {recipe.training.batch_size}"))
    for method in METHODS:  # each trained student's card gets its row of the table, beside the base's
        set_card_evaluation(models_dir / method, card_evaluation(results, method, settings))
    # MPD's run (curves, every rollout with its rewrite) and its answers against the base's, in one page.
    viewed = [p for p in (out / "runs" / "mpd", out / "eval" / "base.jsonl", out / "eval" / "mpd.jsonl") if p.exists()]
    write_view(viewed, out / "view.html", max_texts=VIEW_TEXTS)
    console.print(format_table(results))
    for line in results["comparisons"]["lines"]:
        console.print(line)
    console.print(f"wrote {out / 'results.json'}, results.md, tradeoff.png, curves.png, view.html in "
                  f"{results['wall_seconds']:.0f}s")
    return results


def evaluate_chain(model, tok, problems: list[dict], task, settings: GenerationSettings, seed: int, path: Path,
              progress) -> list[dict]:
    """The evaluator of ``mpdistill eval`` on chain problems (id = the prompt): resumes ``path``."""
    units = [Unit("chain", p["prompt"], 0, tuple(tok(p["prompt"], add_special_tokens=False)["input_ids"]), p["answer"])
             for p in problems]
    backend = TransformersBackend(model, tok, settings)
    try:
        return run_units(units, backend, task, tok, path, seed=seed, batch_size=settings.batch_size, progress=progress)
    except EvalError:  # samples of other problems or settings: this model's evaluation starts over
        path.unlink()
        return run_units(units, backend, task, tok, path, seed=seed, batch_size=settings.batch_size, progress=progress)


def card_evaluation(results: dict, method: str, settings: GenerationSettings) -> str:
    """A model card's evaluation section: the method's row and the base's, with the decoding used."""
    rows = {name: m for name, m in results["methods"].items() if name in ("base", method)}
    table = format_table({**results, "methods": rows}).split("\n\n")[0]
    decoding = ("greedy decoding" if settings.temperature <= 0 else
                f"sampling at temperature {settings.temperature:g}, top_p {settings.top_p:g}, top_k {settings.top_k}")
    world = f" (world {results['world']})" if results.get("world") else ""
    return (f"`mpdistill demo`{world}, seed {results['seed']}: n = {results['n_eval']} held-out chain problems, one answer "
            f"each by {decoding}, at most {settings.max_new_tokens} new tokens.\n\n{table}")


def compare_to_baselines(results: dict, records: dict[str, list[dict]]) -> dict:
    """MPD against each baseline on both axes, on the same problems.

    Accuracy is compared with the paired 95% CI of (MPD - baseline): "better"/"worse" only when
    the interval excludes zero, otherwise "tied". Tokens: fewer or not, with the relative change.
    """
    m = results["methods"]
    mpd = m["mpd"]
    out: dict = {"lines": []}
    for name in ("opd", "offpolicy_kd", "rewrite_sft"):
        b = m[name]
        delta, lo, hi = paired_delta_ci([r["correct"] for r in records[name]], [r["correct"] for r in records["mpd"]])
        accuracy = "better" if lo > 0 else "worse" if hi < 0 else "tied"
        token_change = mpd["mean_tokens"] / b["mean_tokens"] - 1
        out[name] = {
            "accuracy_delta": delta,
            "accuracy_delta_ci95": [lo, hi],
            "accuracy": accuracy,
            "token_change": token_change,
            "fewer_tokens": token_change < 0,
            "beats_on_both": token_change < 0 and accuracy != "worse",
        }
        out["lines"].append(
            f"MPD vs {name}: {100 * token_change:+.1f}% tokens ({mpd['mean_tokens']:.1f} vs {b['mean_tokens']:.1f}), "
            f"accuracy {100 * delta:+.1f} pts [{100 * lo:+.1f}, {100 * hi:+.1f}] -> {accuracy} (n={mpd['n']})"
        )
    return out


def check_same_demo(out: Path, recipe: Recipe) -> None:
    """A re-run keeps the models already trained in ``out``: only if they were trained with this
    recipe (another seed, --quick or recipe would mix two demos in one table)."""
    from mpdistill.run.resume import recipe_changes
    from mpdistill.errors import ConfigError

    for method in METHODS:
        saved = out / "runs" / method / "recipe.yaml"
        if (out / "models" / method / "config.json").exists() and saved.exists():
            changed = recipe_changes(load_recipe(saved), recipe.model_copy(update={"method": method}))
            if changed:
                raise ConfigError(f"{out} holds a demo trained with other settings ({'; '.join(changed[:5])}"
                                  f"{'; ...' if len(changed) > 5 else ''}); use a new --out to keep both")


def _free_name(path: Path) -> Path:
    n = 1
    while path.with_name(f"{path.name}-{n}").exists():
        n += 1
    return path.with_name(f"{path.name}-{n}")


def save_model_folder(model, tok, target: Path, record: dict) -> None:
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    write_record(tmp, **record)
    replace_dir(tmp, target)
