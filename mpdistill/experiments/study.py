"""``mpdistill study``: MPD, its controls and every baseline on an embedded world, by the rules of
:mod:`mpdistill.experiments.study_design` (fixed before any run), reported by
:mod:`mpdistill.experiments.study_report`.

Finished stages are kept in ``--out`` (models, evaluations), so a re-run resumes where it stopped.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path

from rich.console import Console
from rich.text import Text

from mpdistill.errors import ConfigError
from mpdistill.evaluation.stats import summarize
from mpdistill.experiments.demo import evaluate_chain, save_model_folder
from mpdistill.experiments.study_design import (ARMS, ARMS_BY_NAME, ARM_NAMES, HEADLINE_TEMPERATURE, LADDERS, N_EVAL,
                                                N_VALIDATION, Plan, QUICK, QUICK_LADDERS, QUICK_N_EVAL,
                                                QUICK_N_VALIDATION, RULE, SHARE_FROM_MPD, TIE_POINTS, arm_recipe,
                                                setting_name, tune)
from mpdistill.experiments.study_report import cost_table, plot_pareto, report, table, versus
from mpdistill.models.loading import load_model, load_tokenizer
from mpdistill.models.worlds import DEFAULT_WORLD, get_world
from mpdistill.recipes import shipped_path
from mpdistill.rollout import GenerationSettings
from mpdistill.run.checks import check_generation_backends
from mpdistill.run.pipeline import prompt_record, train
from mpdistill.run.recipe import Recipe, load_recipe
from mpdistill.tasks import get_task
from mpdistill.tasks.problems import chain_problems
from mpdistill.trainers.methods import get_method
from mpdistill.utils.console import stdout
from mpdistill.utils.durable import atomic_write, replace_dir, write_text
from mpdistill.utils.paths import ROLLOUTS, check_output_dir


def rewrite_share(run_dir: Path) -> float:
    """The share of a run's samples trained on an accepted rewrite, from its rollout log."""
    rows = [json.loads(line) for line in (run_dir / ROLLOUTS).read_text(encoding="utf-8").splitlines()]
    return sum(r.get("trained_on") == "rewrite" for r in rows) / len(rows)


def run_study(out: str | Path, **options) -> dict:
    """The study into ``out`` (options: those of :func:`_run_study`). The folder is held while it runs:
    a second one on the same folder is refused, naming this one (mpdistill/utils/run_lock.py)."""
    from mpdistill.utils.run_lock import holding

    with holding(out):
        return _run_study(out, **options)


def _run_study(out: str | Path, *, quick: bool = False, seeds: tuple[int, ...] = (0, 1, 2),
              arms: tuple[str, ...] = ARM_NAMES, world: str = DEFAULT_WORLD, console: Console | None = None) -> dict:
    console = console or stdout
    out = Path(out)
    check_output_dir(out)
    w = get_world(world)
    unknown = [a for a in arms if a not in ARMS_BY_NAME]
    if unknown or "mpd" not in arms:
        raise ConfigError(f"--methods: mpd and any of {', '.join(ARM_NAMES[1:])} (got {', '.join(arms)})")
    arms = tuple(a for a in ARM_NAMES if a in arms)  # MPD first: the mixed control's share is MPD's
    plan = Plan(world=w.name, seeds=tuple(dict.fromkeys(seeds)), arms=arms,
                n_validation=QUICK_N_VALIDATION if quick else N_VALIDATION, n_eval=QUICK_N_EVAL if quick else N_EVAL,
                quick=quick, ladders=QUICK_LADDERS if quick else LADDERS)
    base_recipe = load_recipe(shipped_path(w.recipe), dict(QUICK) if quick else {})
    check_generation_backends(base_recipe)
    task = get_task(base_recipe.task)
    started = time.time()
    validation = chain_problems(plan.n_validation, 0, split="validation")
    evaluation = chain_problems(plan.n_eval, 0, split="eval")
    held_out = {p["prompt"] for p in validation + evaluation}
    _check_same_study(out, plan, base_recipe)
    console.rule(f"mpdistill study  world={w.name}  seeds={list(plan.seeds)}  arms={len(plan.arms)}")

    models = out / "models"
    for name, source in (("base", base_recipe.student), ("teacher", base_recipe.teacher)):
        if not (models / name / "config.json").exists():
            model, tok = load_model(source)
            save_model_folder(model, tok, models / name, prompt_record(base_recipe))
    tokenizer = load_tokenizer(str(models / "base"))

    tuning: dict[str, dict] = {}
    greedy = _settings(base_recipe, 0.0)
    for name in plan.arms:
        arm = ARMS_BY_NAME[name]
        extra = {}
        if name == SHARE_FROM_MPD:
            mpd_run = out / "runs" / "mpd" / setting_name(tuning["mpd"]["chosen"]) / "seed0"
            extra = {"teacher_share": round(rewrite_share(mpd_run), 3)}

        def evaluate(setting: dict, _arm=arm, _extra=extra) -> dict:
            run = f"{_arm.name}/{setting_name(setting)}/seed0"
            _train_once(out, run, arm_recipe(base_recipe, _arm, setting, 0, _extra), held_out, console)
            records = _eval_model(out, run, validation, task, greedy, 0, f"eval/validation/{run}")
            return {**summarize(records), "correct": sum(bool(r["correct"]) for r in records),
                    "tokens": sum(r["tokens"] for r in records)}

        result = tune(evaluate, {d: plan.ladders[d] for d in arm.tuned}, plan.tie_count)
        tuning[name] = {**result, "fixed": {**arm.fixed, **({"training": {**arm.fixed.get("training", {}), **extra}}
                                                            if extra else {})}, "rule": RULE}
        best = next(t for t in result["tried"] if t["setting"] == result["chosen"])
        flag = f" (at the limit of its grid: {', '.join(result['flagged'])})" if result["flagged"] else ""
        console.print(f"  {name}: chose {setting_name(result['chosen'])} of {len(result['tried'])} settings on validation "
                      f"({best['correct']}/{best['n']} at {best['mean_tokens']:.1f} tokens, greedy){flag}")
        for seed in plan.seeds:  # seed 0's is the tuning run, already there
            _train_once(out, f"{name}/{setting_name(result['chosen'])}/seed{seed}",
                        arm_recipe(base_recipe, arm, result["chosen"], seed, extra), held_out, console)

    # The evaluation split, once, at the end: every chosen run and the two untrained models.
    evals: dict[str, dict[str, dict[float, list[dict]]]] = {}
    for temp in plan.temperatures:
        settings = _settings(base_recipe, temp)
        for name in ("base", "teacher"):
            for seed in plan.seeds[:1] if temp == 0 else plan.seeds:
                evals.setdefault(name, {}).setdefault(str(seed), {})[temp] = _eval_model(
                    out, name, evaluation, task, settings, seed, f"eval/t{temp:g}/{name}/seed{seed}")
        for name in plan.arms:
            for seed in plan.seeds:
                run = f"{name}/{setting_name(tuning[name]['chosen'])}/seed{seed}"
                evals.setdefault(name, {}).setdefault(str(seed), {})[temp] = _eval_model(
                    out, run, evaluation, task, settings, seed, f"eval/t{temp:g}/{run}")
        console.print(f"  evaluated every model at {'greedy' if temp == 0 else f'temperature {temp:g}'}")

    results = {
        "world": {"name": w.name, "summary": w.summary, "student": base_recipe.student, "teacher": base_recipe.teacher},
        "plan": {"seeds": list(plan.seeds), "arms": list(plan.arms), "n_validation": plan.n_validation,
                 "n_eval": plan.n_eval, "temperatures": list(plan.temperatures),
                 "ladders": {k: {"ladder": list(v[0]), "start": list(v[1])} for k, v in plan.ladders.items()},
                 "arm_definitions": {a: {"method": ARMS_BY_NAME[a].method, "label": ARMS_BY_NAME[a].label,
                                         "fixed": ARMS_BY_NAME[a].fixed, "tuned": list(ARMS_BY_NAME[a].tuned),
                                         "changes": ARMS_BY_NAME[a].changes} for a in plan.arms},
                 "headline_temperature": HEADLINE_TEMPERATURE, "tie_points": TIE_POINTS, "tie_count": plan.tie_count,
                 "rule": RULE, "quick": quick, "recipe": base_recipe.model_dump(mode="json"), "machine": machine()},
        "tuning": tuning,
        "tables": {f"{t:g}": table(evals, t, plan) for t in plan.temperatures},
        "versus": {f"{t:g}": versus(evals, t, plan) for t in plan.temperatures},
        "costs": cost_table(out, tuning, plan, tokenizer, teacher_sizes(models)),
        "wall_seconds": round(time.time() - started, 1),
    }
    write_text(out / "study.json", json.dumps(results, indent=2) + "\n")
    write_text(out / "study.md", report(results))
    atomic_write(out / "pareto.png", lambda tmp: plot_pareto(results, tmp))
    console.print(report(results))
    console.print(f"wrote {out / 'study.json'}, study.md, pareto.png in {results['wall_seconds']:.0f}s")
    return results


def machine() -> dict:
    import os
    import platform

    import torch

    return {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "platform": f"{platform.system()} {platform.machine()}", "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def teacher_sizes(models: Path) -> dict[str, int]:
    """Parameters of the model each arm's loss or generations use as teacher."""
    from safetensors import safe_open

    def params(folder: Path) -> int:
        with safe_open(str(folder / "model.safetensors"), "pt") as f:
            return sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())

    teacher, student = params(models / "teacher"), params(models / "base")
    sizes = {}
    for arm in ARMS:
        m = get_method(arm.method)
        sizes[arm.name] = 0 if not m.uses_teacher else student if m.self_teacher else teacher
    return sizes


def _settings(recipe: Recipe, temperature: float) -> GenerationSettings:
    e = recipe.eval
    return GenerationSettings(max_new_tokens=e.max_new_tokens, temperature=temperature, top_p=1.0, top_k=0,
                              batch_size=e.batch_size)


def _train_once(out: Path, run: str, recipe: Recipe, held_out: set[str], console: Console) -> None:
    """Train ``run`` unless its model is there, trained with this very recipe; its wall time is kept in
    the run folder (``cost.json``). A run trained again loses its evaluations (they were of the old model)."""
    from mpdistill.run.resume import recipe_changes
    from mpdistill.errors import ConfigError

    run_dir = out / "runs" / run
    cost_file = run_dir / "cost.json"
    if (out / "models" / run / "config.json").exists() and cost_file.exists():
        changed = recipe_changes(load_recipe(run_dir / "recipe.yaml"), recipe)
        if changed:
            raise ConfigError(f"{out} holds {run} trained with other settings ({'; '.join(changed[:5])}); use a new "
                              "--out to keep both")
        return
    if run_dir.exists():  # an interrupted run: start it afresh
        shutil.rmtree(run_dir)
    for stale in (out / "eval").glob(f"*/{run}.jsonl"):
        stale.unlink()
    console.print(Text.assemble((f"training {run}", "bold"),
                                f" ({recipe.training.steps} steps, batch {recipe.training.batch_size})"))
    t0 = time.time()
    model_dir = train(recipe, run_dir, exclude_prompts=held_out)
    seconds = time.time() - t0
    # The wall time is kept; the token counts are read from the run's logs when the costs are tabled.
    write_text(cost_file, json.dumps({"seconds": round(seconds, 1)}) + "\n")
    replace_dir(model_dir, out / "models" / run)
    console.print(f"  done in {seconds:.0f}s")


def _eval_model(out: Path, name: str, problems: list[dict], task, settings: GenerationSettings, seed: int,
                file: str) -> list[dict]:
    path = out / f"{file}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    model, tok = load_model(str(out / "models" / name))
    return evaluate_chain(model, tok, problems, task, settings, seed, path, progress=lambda k: None)


def _check_same_study(out: Path, plan: Plan, recipe: Recipe) -> None:
    """A re-run resumes only a study of the same world, plan, recipe and embedded models (another --quick,
    world or re-bootstrapped student would mix two studies in one table). Each run is also checked
    against its own recipe when it is reused (``_train_once``)."""
    import hashlib

    from mpdistill.errors import ConfigError
    from mpdistill.models.loading import resolve_model

    def digest(name: str) -> str:
        return hashlib.sha256((Path(resolve_model(name)) / "model.safetensors").read_bytes()).hexdigest()[:16]

    marker = out / "plan.json"
    wanted = {"world": plan.world, "quick": plan.quick, "n_validation": plan.n_validation, "n_eval": plan.n_eval,
              "student": digest(recipe.student), "teacher": digest(recipe.teacher),
              "eval": recipe.eval.model_dump(mode="json")}
    if marker.exists():
        found = json.loads(marker.read_text())
        if found != wanted:
            changed = sorted(k for k in wanted.keys() | found.keys() if found.get(k) != wanted.get(k))
            raise ConfigError(f"{out} holds a study with other settings or models ({', '.join(changed)} differ); use a "
                              "new --out to keep both")
    else:
        out.mkdir(parents=True, exist_ok=True)
        write_text(marker, json.dumps(wanted) + "\n")
