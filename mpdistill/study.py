"""``mpdistill study``: MPD and every baseline on the embedded default, with the controls a skeptic asks for.

The rules are fixed here, before any run:

1. **Tuning on validation only.** Each method trains with seed 0 at every setting of its grid
   (:data:`GRID`: the learning rates; for GRPO also the length penalty) and answers
   ``n_validation`` problems of the *validation* split by greedy decoding. Its setting is the one
   with the highest validation accuracy; among settings within :data:`TIE_POINTS` points of it,
   the one with the fewest mean tokens (then the first in the grid).
2. **Seeds.** With its setting chosen, each method trains with every seed of ``seeds`` (seed 0's
   run is the one from step 1). A seed changes the training problems, their order and every
   sample drawn; the evaluation problems stay the same, so methods are compared problem by problem.
3. **Evaluation once, at the end**, on ``n_eval`` problems of the *evaluation* split (never seen
   in training or tuning), by every model — base and teacher included — at each temperature of
   :data:`TEMPERATURES` (0 = greedy; top-p 1, top-k 0). The **headline is greedy decoding for
   every model** (one fixed decoding: the one where the base student is strongest, so gains from
   merely sharpening the distribution do not count); the 0.6 and 1.0 tables are shown beside it.
4. **Cost** per training run, from its own logs: student tokens sampled, teacher tokens generated
   (rewrites, off-policy KD samples), tokens the loss ran on, tokens the teacher scored (every
   KL method's teacher reads each trained completion), wall time.
5. **MPD against each baseline**, per axis, over the seeds paired by index: *ahead* when every seed
   pairing agrees in direction and (accuracy) the paired 95% CI over all seed-problem pairs excludes
   zero; *behind* likewise; otherwise *level*.

Finished stages are kept in ``--out`` (models, evaluations), so a re-run resumes where it stopped.
"""

from __future__ import annotations

import json
import shutil
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.text import Text

from .config import Recipe, load_recipe
from .console import stdout
from .demo import _evaluate, _save_atomic
from .durable import atomic_write, replace_dir
from .evaluate import paired_delta_ci, wilson_interval
from .methods import get_method
from .models import load_model
from .paths import ROLLOUTS, check_output_dir
from .pipeline import check_generation_backends, prompt_record, train
from .recipes import shipped_path
from .rollout import GenerationSettings
from .tasks import get_task
from .tasks.problems import chain_problems

METHODS = ("mpd", "opd", "offpolicy_kd", "rewrite_sft", "self_distill", "grpo_length")
BASELINES = METHODS[1:]
TEMPERATURES = (0.0, 0.6, 1.0)
HEADLINE_TEMPERATURE = 0.0
TIE_POINTS = 1.0
LEARNING_RATES = (1e-4, 3e-4)
# Each method's grid: recipe overrides under training:. GRPO's penalty weight is tuned with its rate.
GRID: dict[str, list[dict]] = {m: [{"learning_rate": lr} for lr in LEARNING_RATES] for m in METHODS}
GRID["grpo_length"] = [{"learning_rate": lr, "length_penalty": a} for lr in LEARNING_RATES for a in (0.1, 0.3)]
# Fixed per method, not tuned: self-distillation's divergence is the reverse KL (OPSDC's).
FIXED = {"self_distill": {"beta": 1.0}}
RECIPE = shipped_path("embedded")

N_VALIDATION, N_EVAL = 400, 500
QUICK = {"training": {"steps": 2, "batch_size": 8, "logging_steps": 1}, "data": {"n_train": 32}}
QUICK_N_VALIDATION, QUICK_N_EVAL = 16, 16


@dataclass
class Plan:
    seeds: tuple[int, ...] = (0, 1, 2)
    methods: tuple[str, ...] = METHODS
    n_validation: int = N_VALIDATION
    n_eval: int = N_EVAL
    temperatures: tuple[float, ...] = TEMPERATURES
    overrides: dict = field(default_factory=dict)


def setting_name(setting: dict) -> str:
    return "_".join(f"{k.replace('learning_rate', 'lr').replace('length_penalty', 'alpha')}{v:g}"
                    for k, v in setting.items())


def run_study(out: str | Path, *, quick: bool = False, seeds: tuple[int, ...] = (0, 1, 2),
              methods: tuple[str, ...] = METHODS, console: Console | None = None) -> dict:
    console = console or stdout
    out = Path(out)
    check_output_dir(out)
    unknown = [m for m in methods if m not in METHODS]
    if unknown or "mpd" not in methods:
        raise ValueError(f"--methods: MPD and any of {', '.join(BASELINES)} (got {', '.join(methods)})")
    plan = Plan(seeds=tuple(seeds), methods=tuple(methods),
                n_validation=QUICK_N_VALIDATION if quick else N_VALIDATION, n_eval=QUICK_N_EVAL if quick else N_EVAL,
                overrides=dict(QUICK) if quick else {})
    base_recipe = load_recipe(RECIPE, plan.overrides)
    check_generation_backends(base_recipe)
    task = get_task(base_recipe.task)
    started = time.time()
    validation = chain_problems(plan.n_validation, 0, split="validation")
    evaluation = chain_problems(plan.n_eval, 0, split="eval")
    held_out = {p["prompt"] for p in validation + evaluation}
    _check_same_study(out, plan)

    models = out / "models"
    for name, source in (("base", base_recipe.student), ("teacher", base_recipe.teacher)):
        if not (models / name / "config.json").exists():
            model, tok = load_model(source)
            _save_atomic(model, tok, models / name, prompt_record(base_recipe))

    costs: dict[str, dict] = {}
    tuning: dict[str, dict] = {}
    greedy = _settings(base_recipe, 0.0)
    for method in plan.methods:
        scores = []
        for setting in GRID[method]:
            run = f"{method}/{setting_name(setting)}/seed0"
            costs[run] = _train_once(out, run, _recipe(base_recipe, method, setting, 0), held_out, console)
            records = _eval_model(out, run, validation, task, greedy, 0, f"validation/{run}", console)
            scores.append(_summary(records))
        chosen = choose_setting(scores)
        tuning[method] = {"grid": [{"setting": s, **sc} for s, sc in zip(GRID[method], scores)],
                          "chosen": GRID[method][chosen], "rule": RULE}
        console.print(f"  {method}: chose {setting_name(GRID[method][chosen])} on validation "
                      f"({100 * scores[chosen]['accuracy']:.1f}% at {scores[chosen]['mean_tokens']:.1f} tokens, greedy)")
        for seed in plan.seeds:
            run = f"{method}/{setting_name(GRID[method][chosen])}/seed{seed}"
            if run not in costs:
                costs[run] = _train_once(out, run, _recipe(base_recipe, method, GRID[method][chosen], seed), held_out,
                                         console)

    # The evaluation split, once, at the end: every chosen run and the two untrained models.
    evals: dict[str, dict[str, dict[float, list[dict]]]] = {"base": {}, "teacher": {}}
    for temp in plan.temperatures:
        settings = _settings(base_recipe, temp)
        for name in ("base", "teacher"):
            evals[name].setdefault("-", {})[temp] = _eval_model(out, name, evaluation, task, settings, 0,
                                                                f"eval/t{temp:g}/{name}", console)
        for method in plan.methods:
            for seed in plan.seeds:
                run = f"{method}/{setting_name(tuning[method]['chosen'])}/seed{seed}"
                evals.setdefault(method, {}).setdefault(str(seed), {})[temp] = _eval_model(
                    out, run, evaluation, task, settings, seed, f"eval/t{temp:g}/{run}", console)

    results = {
        "plan": {"seeds": list(plan.seeds), "methods": list(plan.methods), "n_validation": plan.n_validation,
                 "n_eval": plan.n_eval, "temperatures": list(plan.temperatures), "grid": GRID, "fixed": FIXED,
                 "headline_temperature": HEADLINE_TEMPERATURE, "tie_points": TIE_POINTS, "quick": quick,
                 "recipe": base_recipe.model_dump()},
        "tuning": tuning,
        "tables": {f"{t:g}": table(evals, t, plan) for t in plan.temperatures},
        "versus": {f"{t:g}": versus(evals, t, plan) for t in plan.temperatures},
        "costs": cost_table(costs, tuning, plan),
        "wall_seconds": round(time.time() - started, 1),
    }
    atomic_write(out / "study.json", lambda tmp: Path(tmp).write_text(json.dumps(results, indent=2) + "\n"))
    atomic_write(out / "study.md", lambda tmp: Path(tmp).write_text(report(results)))
    atomic_write(out / "pareto.png", lambda tmp: plot_pareto(results, tmp))
    console.print(report(results))
    console.print(f"wrote {out / 'study.json'}, study.md, pareto.png in {results['wall_seconds']:.0f}s")
    return results


RULE = (f"highest validation accuracy (greedy); among settings within {TIE_POINTS:g} points of it, the fewest "
        "mean tokens; then the first in the grid")


def choose_setting(scores: list[dict]) -> int:
    """The index of the chosen setting under :data:`RULE`."""
    best = max(s["accuracy"] for s in scores)
    close = [i for i, s in enumerate(scores) if 100 * (best - s["accuracy"]) <= TIE_POINTS + 1e-9]
    return min(close, key=lambda i: (scores[i]["mean_tokens"], i))


def _recipe(base: Recipe, method: str, setting: dict, seed: int) -> Recipe:
    training = {**base.training.model_dump(), **FIXED.get(method, {}), **setting}
    return base.model_copy(update={"method": method, "seed": seed,
                                   "training": type(base.training).model_validate(training)})


def _settings(recipe: Recipe, temperature: float) -> GenerationSettings:
    e = recipe.eval
    return GenerationSettings(max_new_tokens=e.max_new_tokens, temperature=temperature, top_p=1.0, top_k=0,
                              batch_size=e.batch_size)


def _train_once(out: Path, run: str, recipe: Recipe, held_out: set[str], console: Console) -> dict:
    """Train ``run`` unless its model is there; returns its cost record (kept in the run folder)."""
    run_dir = out / "runs" / run
    cost_file = run_dir / "cost.json"
    if (out / "models" / run / "config.json").exists() and cost_file.exists():
        return json.loads(cost_file.read_text())
    if run_dir.exists():  # an interrupted run: start it afresh
        shutil.rmtree(run_dir)
    console.print(Text.assemble((f"training {run}", "bold"),
                                f" ({recipe.training.steps} steps, batch {recipe.training.batch_size})"))
    t0 = time.time()
    model_dir = train(recipe, run_dir, exclude_prompts=held_out)
    seconds = time.time() - t0
    cost = run_cost(run_dir / ROLLOUTS, recipe.method, seconds)
    atomic_write(cost_file, lambda tmp: Path(tmp).write_text(json.dumps(cost) + "\n"))
    replace_dir(model_dir, out / "models" / run)
    console.print(f"  done in {seconds:.0f}s")
    return cost


def run_cost(rollouts: Path, method: str, seconds: float) -> dict:
    """What a run spent, from its rollout log: one line per sample the step trained on."""
    student = teacher = loss = samples = accepted = route_kept = 0
    for line in rollouts.read_text(encoding="utf-8").splitlines():
        r = json.loads(line)
        samples += 1
        student += r.get("student_tokens") or 0
        teacher += (r.get("rewrite_tokens") or 0) + (r.get("teacher_tokens") or 0)
        on = r.get("trained_on")
        loss += {"rewrite": r.get("rewrite_tokens"), "student": r.get("student_tokens"),
                 "teacher": r.get("teacher_tokens")}.get(on) or 0
        if r.get("accepted") and r.get("rewrite") is not None:  # an accepted rewrite (not a KD sample)
            accepted += 1
            route_kept += bool(r.get("route_kept"))
    kl = get_method(method).teacher and method != "rewrite_sft"
    return {"samples": samples, "student_tokens": student, "teacher_generated_tokens": teacher,
            "loss_tokens": loss, "teacher_scored_tokens": loss if kl else 0, "seconds": round(seconds, 1),
            "accepted": accepted, "route_kept_rate": route_kept / accepted if accepted else None}


def _eval_model(out: Path, name: str, problems: list[dict], task, settings: GenerationSettings, seed: int,
                file: str, console: Console) -> list[dict]:
    path = out / f"{file}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    model, tok = load_model(str(out / "models" / name))
    return _evaluate(model, tok, problems, task, settings, seed, path, progress=lambda k: None)


def _summary(records: list[dict]) -> dict:
    n = len(records)
    right = sum(bool(r["correct"]) for r in records)
    return {"n": n, "accuracy": right / n, "mean_tokens": sum(r["tokens"] for r in records) / n}


def _spread(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values), "per_seed": values}


def table(evals: dict, temp: float, plan: Plan) -> list[dict]:
    rows = []
    for name in ("base", *plan.methods, "teacher"):
        runs = [by_temp[temp] for by_temp in evals[name].values()]
        summaries = [_summary(r) for r in runs]
        pooled = [bool(x["correct"]) for r in runs for x in r]
        lo, hi = wilson_interval(sum(pooled), len(pooled))
        rows.append({"model": name, "runs": len(runs), "n_per_run": plan.n_eval,
                     "accuracy": _spread([s["accuracy"] for s in summaries]),
                     "accuracy_ci95_pooled": [lo, hi],
                     "mean_tokens": _spread([s["mean_tokens"] for s in summaries])})
    return rows


def versus(evals: dict, temp: float, plan: Plan) -> dict:
    """MPD against each baseline at ``temp``, seeds paired by index (rule 5 of the module docstring)."""
    mpd = [evals["mpd"][str(s)][temp] for s in plan.seeds]
    out = {}
    for name in (m for m in plan.methods if m != "mpd"):
        other = [evals[name][str(s)][temp] for s in plan.seeds]
        d_acc = [_summary(a)["accuracy"] - _summary(b)["accuracy"] for a, b in zip(mpd, other)]
        d_tok = [_summary(a)["mean_tokens"] / _summary(b)["mean_tokens"] - 1 for a, b in zip(mpd, other)]
        delta, lo, hi = paired_delta_ci([bool(x["correct"]) for r in other for x in r],
                                        [bool(x["correct"]) for r in mpd for x in r])
        acc = ("ahead" if lo > 0 and all(d > 0 for d in d_acc) else
               "behind" if hi < 0 and all(d < 0 for d in d_acc) else "level")
        tok = ("ahead" if all(d < 0 for d in d_tok) else "behind" if all(d > 0 for d in d_tok) else "level")
        out[name] = {"accuracy_delta": delta, "accuracy_delta_ci95": [lo, hi], "accuracy_delta_per_seed": d_acc,
                     "accuracy": acc, "token_change_per_seed": d_tok, "token_change": statistics.fmean(d_tok),
                     "tokens": tok}
    return out


def cost_table(costs: dict, tuning: dict, plan: Plan) -> list[dict]:
    rows = []
    for method in plan.methods:
        runs = [costs[f"{method}/{setting_name(tuning[method]['chosen'])}/seed{s}"] for s in plan.seeds]
        mean = {k: statistics.fmean(r[k] for r in runs) for k in
                ("samples", "student_tokens", "teacher_generated_tokens", "loss_tokens", "teacher_scored_tokens", "seconds")}
        kept = [r["route_kept_rate"] for r in runs if r["route_kept_rate"] is not None]
        rows.append({"method": method, **mean, "route_kept_rate": statistics.fmean(kept) if kept else None,
                     "accepted": statistics.fmean(r["accepted"] for r in runs)})
    return rows


def _fmt_spread(s: dict, scale: float = 1.0, digits: int = 1) -> str:
    return f"{scale * s['mean']:.{digits}f} ± {scale * s['sd']:.{digits}f}"


def report(results: dict) -> str:
    p = results["plan"]
    lines = [f"Seeds {p['seeds']}; {p['n_eval']} evaluation problems per model and temperature; tuning on "
             f"{p['n_validation']} validation problems by the rule: {RULE}.", ""]
    for temp in p["temperatures"]:
        name = "greedy decoding" if temp == 0 else f"sampling at temperature {temp:g} (top-p 1, top-k 0)"
        head = " (the headline)" if temp == p["headline_temperature"] else ""
        lines += [f"### Evaluation by {name}{head}", "",
                  "| model | runs | accuracy %, mean ± sd over seeds [pooled 95% CI] | mean tokens, mean ± sd | "
                  "accuracy per seed |", "|---|---:|---:|---:|---|"]
        for row in results["tables"][f"{temp:g}"]:
            lo, hi = row["accuracy_ci95_pooled"]
            seeds = ", ".join(f"{100 * a:.1f}" for a in row["accuracy"]["per_seed"])
            lines.append(f"| {row['model']} | {row['runs']} | {_fmt_spread(row['accuracy'], 100)} "
                         f"[{100 * lo:.1f}, {100 * hi:.1f}] | {_fmt_spread(row['mean_tokens'])} | {seeds} |")
        lines += ["", "| MPD vs | accuracy, points [paired 95% CI] | per seed | accuracy | tokens, per seed | tokens |",
                  "|---|---:|---|---|---|---|"]
        for name_, v in results["versus"][f"{temp:g}"].items():
            lo, hi = v["accuracy_delta_ci95"]
            lines.append(f"| {name_} | {100 * v['accuracy_delta']:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}] | "
                         f"{', '.join(f'{100 * d:+.1f}' for d in v['accuracy_delta_per_seed'])} | {v['accuracy']} | "
                         f"{', '.join(f'{100 * d:+.0f}%' for d in v['token_change_per_seed'])} | {v['tokens']} |")
        lines.append("")
    lines += ["### What each method's run cost (mean over seeds, per run)", "",
              "| method | samples | student tokens | teacher tokens generated | loss tokens | teacher tokens scored | "
              "wall s | route kept |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for c in results["costs"]:
        kept = "" if c["route_kept_rate"] is None else f"{100 * c['route_kept_rate']:.1f}%"
        lines.append(f"| {c['method']} | {c['samples']:.0f} | {c['student_tokens']:,.0f} | "
                     f"{c['teacher_generated_tokens']:,.0f} | {c['loss_tokens']:,.0f} | {c['teacher_scored_tokens']:,.0f} | "
                     f"{c['seconds']:.0f} | {kept} |")
    lines += ["", "### Tuning (seed 0, validation, greedy)", "", "| method | setting | accuracy % | mean tokens | chosen |",
              "|---|---|---:|---:|---|"]
    for method, t in results["tuning"].items():
        for g in t["grid"]:
            chosen = "✓" if g["setting"] == t["chosen"] else ""
            lines.append(f"| {method} | {setting_name(g['setting'])} | {100 * g['accuracy']:.1f} | "
                         f"{g['mean_tokens']:.1f} | {chosen} |")
    return "\n".join(lines) + "\n"


def plot_pareto(results: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    temps = results["plan"]["temperatures"]
    fig, axes = plt.subplots(1, len(temps), figsize=(5 * len(temps), 4.2), squeeze=False)
    for ax, temp in zip(axes[0], temps):
        for row in results["tables"][f"{temp:g}"]:
            a, t = row["accuracy"], row["mean_tokens"]
            ax.errorbar(t["mean"], 100 * a["mean"], xerr=t["sd"], yerr=100 * a["sd"], fmt="o", capsize=3,
                        label=row["model"])
            ax.annotate(row["model"], (t["mean"], 100 * a["mean"]), fontsize=7, xytext=(4, 4),
                        textcoords="offset points")
        ax.set_title("greedy" if temp == 0 else f"temperature {temp:g}")
        ax.set_xlabel("mean tokens per answer")
        ax.set_ylabel("accuracy %")
        ax.grid(alpha=0.3)
    fig.suptitle(f"Accuracy vs tokens, mean ± sd over seeds {results['plan']['seeds']} "
                 f"(n = {results['plan']['n_eval']} per model)")
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=110)
    plt.close(fig)


def _check_same_study(out: Path, plan: Plan) -> None:
    """A re-run resumes only a study of the same plan (another --quick would mix two in one table)."""
    from .config import ConfigError

    marker = out / "plan.json"
    wanted = {"quick": bool(plan.overrides), "n_validation": plan.n_validation, "n_eval": plan.n_eval}
    if marker.exists():
        found = json.loads(marker.read_text())
        if found != wanted:
            raise ConfigError(f"{out} holds a study with other settings ({found}); use a new --out to keep both")
    else:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write(marker, lambda tmp: Path(tmp).write_text(json.dumps(wanted) + "\n"))

