"""``mpdistill study``: MPD and every baseline on the embedded default, with the controls a skeptic asks for.

The rules are fixed here, before any run:

1. **Tuning on validation only.** Each method trains with seed 0 at every setting of its grid
   (:data:`GRID`: learning rates 1e-4, 3e-4, 1e-3; for GRPO also the length penalty 0.1, 0.3) and answers
   ``n_validation`` problems of the *validation* split by greedy decoding. Its setting is the one
   with the highest validation accuracy; among settings within :data:`TIE_POINTS` points of it,
   the one with the fewest mean tokens (then the first in the grid).
2. **Seeds.** With its setting chosen, each method trains with every seed of ``seeds`` (seed 0's
   run is the one from step 1). A seed changes the training problems, their order and every
   sample drawn; the evaluation problems stay the same, so methods are compared problem by problem.
3. **Evaluation once, at the end**, on ``n_eval`` problems of the *evaluation* split (never seen
   in training or tuning), by every model — base and teacher included — at each temperature of
   :data:`TEMPERATURES` (0 = greedy; top-p 1, top-k 0); a trained model with its own seed as the
   sampling seed, base and teacher with every seed (greedy once: it does not depend on the seed).
   The **headline is greedy decoding for every model** (one fixed decoding, deterministic, and one
   that gives no credit for merely sharpening a sampled distribution); 0.6 and 1.0 are shown beside it.
4. **Cost** per training run, from its own logs: student tokens sampled (GRPO's reference samples
   included), teacher tokens read to generate (rewrite prompts, KD prompts) and generated (rewrites,
   KD samples), tokens the loss ran on, tokens the loss's teacher forward read (prompt and
   completion of every sample), wall time; and the size of the model each method uses as teacher.
5. **MPD against each baseline**, per axis, seeds paired by index. Per problem, each method's score
   is its mean over seeds (correct fraction; tokens); the 95% CI of the paired difference covers the
   evaluation problems. *Ahead* when that CI excludes zero and every seed pairing agrees in
   direction; *behind* likewise; otherwise *level*. Seed-to-seed spread is shown beside it.

Finished stages are kept in ``--out`` (models, evaluations), so a re-run resumes where it stopped.
"""

from __future__ import annotations

import json
import math
import shutil
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.text import Text

from .config import Recipe, load_recipe
from .console import stdout
from .demo import evaluate_chain, save_model_folder
from .durable import atomic_write, replace_dir, write_text
from .evaluate import paired_delta_ci, summarize, wilson_interval_mean
from .methods import get_method
from .models import load_model, load_tokenizer
from .paths import ROLLOUTS, TRAIN_LOG, check_output_dir
from .pipeline import check_generation_backends, prompt_record, train
from .recipes import shipped_path
from .rewrite import rewrite_settings_from
from .rollout import GenerationSettings
from .tasks import get_task
from .tasks.problems import chain_problems

METHODS = ("mpd", "opd", "offpolicy_kd", "rewrite_sft", "self_distill", "grpo_length")
BASELINES = METHODS[1:]
TEMPERATURES = (0.0, 0.6, 1.0)
HEADLINE_TEMPERATURE = 0.0
TIE_POINTS = 1.0
LEARNING_RATES = (1e-4, 3e-4, 1e-3)
# Each method's grid: recipe overrides under training:. GRPO's penalty weight is tuned with its rate.
LENGTH_PENALTIES = (0.1, 0.3)


def make_grid(rates: tuple[float, ...], penalties: tuple[float, ...]) -> dict[str, list[dict]]:
    grid = {m: [{"learning_rate": lr} for lr in rates] for m in METHODS}
    grid["grpo_length"] = [{"learning_rate": lr, "length_penalty": a} for lr in rates for a in penalties]
    return grid


GRID = make_grid(LEARNING_RATES, LENGTH_PENALTIES)
# --quick: two rates, and both penalties at one of them, so that the rule still has a choice to make.
QUICK_GRID = {**make_grid(LEARNING_RATES[1:], LENGTH_PENALTIES[:1]),
              "grpo_length": [{"learning_rate": LEARNING_RATES[1], "length_penalty": a} for a in LENGTH_PENALTIES]}
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
    quick: bool = False
    grid: dict = field(default_factory=lambda: GRID)


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
    plan = Plan(seeds=tuple(dict.fromkeys(seeds)), methods=tuple(dict.fromkeys(methods)),
                n_validation=QUICK_N_VALIDATION if quick else N_VALIDATION, n_eval=QUICK_N_EVAL if quick else N_EVAL,
                quick=quick, grid=QUICK_GRID if quick else GRID)
    base_recipe = load_recipe(RECIPE, dict(QUICK) if quick else {})
    check_generation_backends(base_recipe)
    task = get_task(base_recipe.task)
    started = time.time()
    validation = chain_problems(plan.n_validation, 0, split="validation")
    evaluation = chain_problems(plan.n_eval, 0, split="eval")
    held_out = {p["prompt"] for p in validation + evaluation}
    _check_same_study(out, plan, base_recipe)

    models = out / "models"
    for name, source in (("base", base_recipe.student), ("teacher", base_recipe.teacher)):
        if not (models / name / "config.json").exists():
            model, tok = load_model(source)
            save_model_folder(model, tok, models / name, prompt_record(base_recipe))
    tokenizer = load_tokenizer(str(models / "base"))

    tuning: dict[str, dict] = {}
    greedy = _settings(base_recipe, 0.0)
    for method in plan.methods:
        scores = []
        grid = plan.grid[method]
        for setting in grid:
            run = f"{method}/{setting_name(setting)}/seed0"
            _train_once(out, run, _recipe(base_recipe, method, setting, 0), held_out, console)
            records = _eval_model(out, run, validation, task, greedy, 0, f"eval/validation/{run}")
            scores.append(summarize(records))
        chosen = choose_setting(scores)
        rates = [g["learning_rate"] for g in grid]
        tuning[method] = {"grid": [{"setting": s, **sc} for s, sc in zip(grid, scores)], "chosen": grid[chosen],
                          "rule": RULE, "at_grid_edge": grid[chosen]["learning_rate"] in (min(rates), max(rates))}
        console.print(f"  {method}: chose {setting_name(grid[chosen])} on validation "
                      f"({100 * scores[chosen]['accuracy']:.1f}% at {scores[chosen]['mean_tokens']:.1f} tokens, greedy)")
        for seed in plan.seeds:  # seed 0's is the tuning run, already there
            _train_once(out, f"{method}/{setting_name(grid[chosen])}/seed{seed}",
                        _recipe(base_recipe, method, grid[chosen], seed), held_out, console)

    # The evaluation split, once, at the end: every chosen run and the two untrained models.
    evals: dict[str, dict[str, dict[float, list[dict]]]] = {}
    for temp in plan.temperatures:
        settings = _settings(base_recipe, temp)
        for name in ("base", "teacher"):
            for seed in plan.seeds[:1] if temp == 0 else plan.seeds:
                evals.setdefault(name, {}).setdefault(str(seed), {})[temp] = _eval_model(
                    out, name, evaluation, task, settings, seed, f"eval/t{temp:g}/{name}/seed{seed}")
        for method in plan.methods:
            for seed in plan.seeds:
                run = f"{method}/{setting_name(tuning[method]['chosen'])}/seed{seed}"
                evals.setdefault(method, {}).setdefault(str(seed), {})[temp] = _eval_model(
                    out, run, evaluation, task, settings, seed, f"eval/t{temp:g}/{run}")
        console.print(f"  evaluated every model at {'greedy' if temp == 0 else f'temperature {temp:g}'}")

    results = {
        "plan": {"seeds": list(plan.seeds), "methods": list(plan.methods), "n_validation": plan.n_validation,
                 "n_eval": plan.n_eval, "temperatures": list(plan.temperatures), "grid": plan.grid, "fixed": FIXED,
                 "headline_temperature": HEADLINE_TEMPERATURE, "tie_points": TIE_POINTS, "quick": quick,
                 "recipe": base_recipe.model_dump(mode="json"), "machine": machine()},
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
    """Parameters of the model each method's loss or rewrites use as teacher."""
    from safetensors import safe_open

    def params(folder: Path) -> int:
        with safe_open(str(folder / "model.safetensors"), "pt") as f:
            return sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())

    teacher, student = params(models / "teacher"), params(models / "base")
    return {m: (0 if not get_method(m).uses_teacher else student if get_method(m).self_teacher else teacher)
            for m in METHODS}


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


def _train_once(out: Path, run: str, recipe: Recipe, held_out: set[str], console: Console) -> None:
    """Train ``run`` unless its model is there, trained with this very recipe; its wall time is kept in
    the run folder (``cost.json``). A run trained again loses its evaluations (they were of the old model)."""
    from .checkpoints import recipe_changes
    from .config import ConfigError

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


def run_cost(run_dir: Path, recipe: Recipe, seconds: float, tokenizer) -> dict:
    """What a run spent, from its rollout log (one line per training sample) and training log.

    ``teacher_read``: prompt tokens of the teacher's generations (a rewrite prompt holds the problem
    and the student's whole trace; a KD sample's, the problem). ``teacher_forward``: tokens the loss's
    teacher forward reads (prompt and trained completion of every sample, dropped ones included), for
    methods trained by KL to a teacher."""
    method = get_method(recipe.method)
    trainer = method.trainer_class()
    kl = method.uses_teacher and trainer._kl_loss
    rewrite = rewrite_settings_from(recipe.rewrite)
    instruction = recipe.training.teacher_instruction or get_task(recipe.task).concise_instruction or ""

    def n(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    c = {"samples": 0, "student_tokens": 0, "teacher_read_tokens": 0, "teacher_generated_tokens": 0, "loss_tokens": 0,
         "teacher_forward_tokens": 0, "accepted": 0}
    route_kept = 0
    for line in (run_dir / ROLLOUTS).read_text(encoding="utf-8").splitlines():
        r = json.loads(line)
        c["samples"] += 1
        c["student_tokens"] += r.get("student_tokens") or 0
        if r.get("rewrite") is not None:  # a rewrite was written: the teacher read the rewrite prompt
            c["teacher_read_tokens"] += n(rewrite.render(r["prompt"], r["student"]))
            c["teacher_generated_tokens"] += r.get("rewrite_tokens") or 0
        if r.get("teacher") is not None:  # an off-policy KD sample
            c["teacher_read_tokens"] += n(r["prompt"])
            c["teacher_generated_tokens"] += r.get("teacher_tokens") or 0
        # The completion the step carried (a dropped sample keeps it, with a zero loss mask): the
        # teacher's sample (KD), the accepted rewrite, or the student's own trace.
        carried = (r.get("teacher_tokens") if r.get("teacher") is not None else
                   r.get("rewrite_tokens") if r.get("trained_on") == "rewrite" else r.get("student_tokens")) or 0
        c["loss_tokens"] += 0 if r.get("trained_on") == "dropped" else carried
        if kl:
            prompt = r["prompt"] + (instruction if method.self_teacher else "")
            c["teacher_forward_tokens"] += n(prompt) + carried
        if r.get("accepted") and r.get("rewrite") is not None:  # an accepted rewrite (not a KD sample)
            c["accepted"] += 1
            route_kept += bool(r.get("route_kept"))
    if recipe.method == "grpo_length":  # the reference length: REFERENCE_PROBLEMS samples before the first step
        from .length_rl import REFERENCE_PROBLEMS

        logged = [e["length/reference_tokens"] for e in _train_log(run_dir) if "length/reference_tokens" in e]
        if logged:
            c["student_tokens"] += round(min(REFERENCE_PROBLEMS, recipe.data.n_train) * logged[0])
    c["seconds"] = round(seconds, 1)
    c["route_kept_rate"] = route_kept / c["accepted"] if c["accepted"] else None
    return c


def _train_log(run_dir: Path) -> list[dict]:
    path = run_dir / TRAIN_LOG
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _eval_model(out: Path, name: str, problems: list[dict], task, settings: GenerationSettings, seed: int,
                file: str) -> list[dict]:
    path = out / f"{file}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    model, tok = load_model(str(out / "models" / name))
    return evaluate_chain(model, tok, problems, task, settings, seed, path, progress=lambda k: None)


def _spread(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else None,
            "min": min(values), "max": max(values), "per_seed": values}


def _per_problem(runs: list[list[dict]], key: str) -> list[float]:
    """Each problem's mean over runs of ``key`` (correct as 0/1, or tokens): the runs answer the same
    problems in the same order."""
    return [statistics.fmean(float(r[i][key]) for r in runs) for i in range(len(runs[0]))]


def table(evals: dict, temp: float, plan: Plan) -> list[dict]:
    rows = []
    for name in ("base", *plan.methods, "teacher"):
        runs = [by_temp[temp] for by_temp in evals[name].values() if temp in by_temp]
        summaries = [summarize(r) for r in runs]
        lo, hi = wilson_interval_mean(_per_problem(runs, "correct"))
        rows.append({"model": name, "runs": len(runs), "n_per_run": plan.n_eval,
                     "accuracy": _spread([s["accuracy"] for s in summaries]),
                     "accuracy_ci95": [lo, hi],
                     "mean_tokens": _spread([s["mean_tokens"] for s in summaries]),
                     "truncation_rate": statistics.fmean(s["truncation_rate"] for s in summaries)})
    return rows


def versus(evals: dict, temp: float, plan: Plan) -> dict:
    """MPD against each baseline at ``temp`` (rule 5 of the module docstring)."""
    mpd = [evals["mpd"][str(s)][temp] for s in plan.seeds]
    ours = [summarize(r) for r in mpd]
    mpd_correct, mpd_tokens = _per_problem(mpd, "correct"), _per_problem(mpd, "tokens")
    out = {}
    for name in (m for m in plan.methods if m != "mpd"):
        other = [evals[name][str(s)][temp] for s in plan.seeds]
        theirs = [summarize(r) for r in other]
        d_acc = [a["accuracy"] - b["accuracy"] for a, b in zip(ours, theirs)]
        d_tok = [a["mean_tokens"] - b["mean_tokens"] for a, b in zip(ours, theirs)]
        delta, lo, hi = paired_delta_ci(_per_problem(other, "correct"), mpd_correct)
        other_tokens = _per_problem(other, "tokens")
        t_delta, t_lo, t_hi = paired_delta_ci(other_tokens, mpd_tokens, bounds=None)
        out[name] = {"accuracy_delta": delta, "accuracy_delta_ci95": [lo, hi], "accuracy_delta_per_seed": d_acc,
                     "accuracy": _verdict(lo, hi, d_acc, higher_is_better=True),
                     "token_delta": t_delta, "token_delta_ci95": [t_lo, t_hi], "token_delta_per_seed": d_tok,
                     "token_change": t_delta / statistics.fmean(other_tokens),
                     "tokens": _verdict(t_lo, t_hi, d_tok, higher_is_better=False)}
    return out


def _verdict(lo: float, hi: float, per_seed: list[float], *, higher_is_better: bool) -> str:
    up = lo > 0 and all(d > 0 for d in per_seed)
    down = hi < 0 and all(d < 0 for d in per_seed)
    if not (up or down):
        return "level"
    return "ahead" if up == higher_is_better else "behind"


COST_KEYS = ("samples", "student_tokens", "teacher_read_tokens", "teacher_generated_tokens", "loss_tokens",
             "teacher_forward_tokens", "seconds", "accepted")


def cost_table(out: Path, tuning: dict, plan: Plan, tokenizer, sizes: dict[str, int]) -> list[dict]:
    """Each method's chosen runs' costs (:func:`run_cost`), mean over seeds. ``tokenizer``: the
    embedded student's, which the teacher shares (it counts the prompts the teacher read)."""
    rows = []
    for method in plan.methods:
        folders = [out / "runs" / method / setting_name(tuning[method]["chosen"]) / f"seed{s}" for s in plan.seeds]
        runs = [run_cost(f, load_recipe(f / "recipe.yaml"), json.loads((f / "cost.json").read_text())["seconds"],
                         tokenizer) for f in folders]
        mean = {k: statistics.fmean(r[k] for r in runs) for k in COST_KEYS}
        kept = [r["route_kept_rate"] for r in runs if r["route_kept_rate"] is not None]
        rows.append({"method": method, **mean, "teacher_parameters": sizes[method],
                     "route_kept_rate": statistics.fmean(kept) if kept else None})
    return rows


def _fmt_spread(s: dict, scale: float = 1.0, digits: int = 1) -> str:
    sd = "—" if s["sd"] is None else f"{scale * s['sd']:.{digits}f}"
    return f"{scale * s['mean']:.{digits}f} ± {sd}"


def _decoding(temp: float) -> str:
    return "greedy decoding" if temp == 0 else f"sampling at temperature {temp:g} (top-p 1, top-k 0)"


def report(results: dict) -> str:
    p = results["plan"]
    lines = [f"Seeds {p['seeds']}; n = {p['n_eval']} evaluation problems per model, seed and decoding; tuning on "
             f"{p['n_validation']} validation problems (seed 0, greedy) by the rule: {RULE}. Accuracy: mean ± sd "
             "over seeds, and the 95% interval (Wilson, of per-problem means over seeds) which covers the "
             "evaluation problems, not the training seeds; ± — where there is one run.", ""]
    for temp in p["temperatures"]:
        head = " (the headline)" if temp == p["headline_temperature"] else ""
        lines += [f"### Evaluation by {_decoding(temp)}{head}", "",
                  "| model | runs | accuracy %, mean ± sd [95% CI] | mean tokens, mean ± sd | accuracy per seed | "
                  "cut at the limit |", "|---|---:|---:|---:|---|---:|"]
        for row in results["tables"][f"{temp:g}"]:
            lo, hi = row["accuracy_ci95"]
            seeds = ", ".join(f"{100 * a:.1f}" for a in row["accuracy"]["per_seed"])
            lines.append(f"| {row['model']} | {row['runs']} | {_fmt_spread(row['accuracy'], 100)} "
                         f"[{100 * lo:.1f}, {100 * hi:.1f}] | {_fmt_spread(row['mean_tokens'])} | {seeds} | "
                         f"{100 * row['truncation_rate']:.1f}% |")
        lines += ["", "| MPD vs | accuracy, points [paired 95% CI] | per seed | accuracy | tokens [paired 95% CI] | "
                  "per seed | tokens |", "|---|---:|---|---|---:|---|---|"]
        for name, v in results["versus"][f"{temp:g}"].items():
            lo, hi = v["accuracy_delta_ci95"]
            t_lo, t_hi = v["token_delta_ci95"]
            lines.append(f"| {name} | {100 * v['accuracy_delta']:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}] | "
                         f"{', '.join(f'{100 * d:+.1f}' for d in v['accuracy_delta_per_seed'])} | {v['accuracy']} | "
                         f"{v['token_delta']:+.1f} [{t_lo:+.1f}, {t_hi:+.1f}] ({100 * v['token_change']:+.0f}%) | "
                         f"{', '.join(f'{d:+.1f}' for d in v['token_delta_per_seed'])} | {v['tokens']} |")
        lines.append("")
    lines += ["### What each method's training run cost (mean over seeds, per run)", "",
              "| method | samples | student tokens sampled | teacher (parameters) | teacher tokens read to generate | "
              "teacher tokens generated | loss tokens | teacher forward tokens (loss) | wall s | rewrites accepted "
              "| route kept |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for c in results["costs"]:
        kept = "" if c["route_kept_rate"] is None else f"{100 * c['route_kept_rate']:.1f}%"
        size = "none" if not c["teacher_parameters"] else f"{c['teacher_parameters'] / 1000:.0f}k"
        lines.append(f"| {c['method']} | {c['samples']:.0f} | {c['student_tokens']:,.0f} | {size} | "
                     f"{c['teacher_read_tokens']:,.0f} | {c['teacher_generated_tokens']:,.0f} | {c['loss_tokens']:,.0f} | "
                     f"{c['teacher_forward_tokens']:,.0f} | {c['seconds']:.0f} | {c['accepted']:.0f} | {kept} |")
    lines += ["", "### Tuning (seed 0, validation, greedy)", "",
              "| method | setting | accuracy % | mean tokens | chosen |", "|---|---|---:|---:|---|"]
    for method, t in results["tuning"].items():
        for g in t["grid"]:
            chosen = ("✓ (at the edge of the grid)" if t["at_grid_edge"] else "✓") if g["setting"] == t["chosen"] else ""
            lines.append(f"| {method} | {setting_name(g['setting'])} | {100 * g['accuracy']:.1f} | "
                         f"{g['mean_tokens']:.1f} | {chosen} |")
    return "\n".join(lines) + "\n"


def plot_pareto(results: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    temps = results["plan"]["temperatures"]
    fig, axes = plt.subplots(1, len(temps), figsize=(5 * len(temps), 4.2), squeeze=False)
    colors = plt.get_cmap("tab10").colors
    markers = "osD^vP*X"
    for ax, temp in zip(axes[0], temps):
        for i, row in enumerate(results["tables"][f"{temp:g}"]):  # one color and marker per model in every panel
            a, t = row["accuracy"], row["mean_tokens"]
            ax.errorbar(t["mean"], 100 * a["mean"], xerr=t["sd"] or 0, yerr=100 * (a["sd"] or 0), fmt=markers[i % 8],
                        color=colors[i % 10], capsize=3, markersize=6, alpha=0.85, label=row["model"])
        ax.set_title("greedy" if temp == 0 else f"temperature {temp:g}")
        ax.set_xlabel("mean tokens per answer")
        ax.set_ylabel("accuracy %")
        ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center right", fontsize=8)
    fig.suptitle(f"Accuracy vs tokens: mean ± sd over seeds {results['plan']['seeds']} "
                 f"(n = {results['plan']['n_eval']} problems per run)")
    fig.tight_layout(rect=(0, 0, 0.9, 1))
    fig.savefig(path, format="png", dpi=110)
    plt.close(fig)


def _check_same_study(out: Path, plan: Plan, recipe: Recipe) -> None:
    """A re-run resumes only a study of the same plan, recipe and embedded models (another --quick,
    recipe or re-bootstrapped student would mix two studies in one table). Each run is also checked
    against its own recipe when it is reused (``_train_once``)."""
    import hashlib

    from .config import ConfigError
    from .models import resolve_model

    def digest(name: str) -> str:
        return hashlib.sha256((Path(resolve_model(name)) / "model.safetensors").read_bytes()).hexdigest()[:16]

    marker = out / "plan.json"
    wanted = {"quick": plan.quick, "n_validation": plan.n_validation, "n_eval": plan.n_eval,
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
