"""The study's tables and figure: each arm per decoding with its spread over seeds, MPD against each
arm with paired CIs and a verdict, the costs of training, and the accuracy/tokens plane."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from mpdistill.evaluation.stats import paired_delta_ci, summarize, wilson_interval_mean
from mpdistill.experiments.study_design import Plan, setting_name
from mpdistill.rewriting.rewrite import rewrite_settings_from
from mpdistill.run.recipe import Recipe, load_recipe
from mpdistill.tasks import get_task
from mpdistill.trainers.methods import get_method
from mpdistill.utils.paths import ROLLOUTS, TRAIN_LOG


def run_cost(run_dir: Path, recipe: Recipe, seconds: float, tokenizer) -> dict:
    """What a run spent, from its rollout log (one line per training sample) and training log.

    ``teacher_read``: prompt tokens of the teacher's generations (a rewrite prompt holds the problem
    and the student's whole trace; a teacher sample's, the problem). ``teacher_forward``: tokens the
    loss's teacher forward reads (its prompt and the completion of every sample the step carried,
    dropped ones included), for methods trained by KL to a teacher."""
    method = get_method(recipe.method)
    trainer = method.trainer_class()
    kl = method.uses_teacher and trainer._kl_loss
    rewrite = rewrite_settings_from(recipe.rewrite)
    instruction = recipe.training.teacher_instruction or get_task(recipe.task).concise_instruction or ""
    concise_targets = recipe.rewrite.teacher_context == "concise"

    def n(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    c = {"samples": 0, "student_tokens": 0, "teacher_read_tokens": 0, "teacher_generated_tokens": 0, "loss_tokens": 0,
         "teacher_forward_tokens": 0, "accepted": 0, "trained_on_teacher_text": 0}
    route_kept = 0
    for line in (run_dir / ROLLOUTS).read_text(encoding="utf-8").splitlines():
        r = json.loads(line)
        trained_on = r.get("trained_on")
        c["samples"] += 1
        c["student_tokens"] += r.get("student_tokens") or 0
        if r.get("rewrite") is not None:  # a rewrite was written: the teacher read the rewrite prompt
            c["teacher_read_tokens"] += n(rewrite.render(r["prompt"], r["student"]))
            c["teacher_generated_tokens"] += r.get("rewrite_tokens") or 0
        if r.get("teacher") is not None:  # a teacher sample (off-policy KD, the mixed control)
            c["teacher_read_tokens"] += n(r["prompt"])
            c["teacher_generated_tokens"] += r.get("teacher_tokens") or 0
        # The completion the step carried (a dropped sample keeps it, with a zero loss mask): the
        # teacher's sample, the accepted rewrite, or the student's own trace.
        teachers = trained_on == "teacher" or (trained_on == "dropped" and r.get("student") is None)
        carried = (r.get("teacher_tokens") if teachers else
                   r.get("rewrite_tokens") if trained_on == "rewrite" else r.get("student_tokens")) or 0
        c["loss_tokens"] += 0 if trained_on == "dropped" else carried
        if kl:
            instructed = method.self_teacher or (concise_targets and trained_on == "rewrite")
            c["teacher_forward_tokens"] += n(r["prompt"] + (instruction if instructed else "")) + carried
        if r.get("accepted") and r.get("rewrite") is not None:  # an accepted rewrite (not a teacher sample)
            c["accepted"] += 1
            route_kept += bool(r.get("route_kept"))
        c["trained_on_teacher_text"] += trained_on in ("rewrite", "teacher")
    if recipe.method == "grpo_length":  # the reference length: REFERENCE_PROBLEMS samples before the first step
        from mpdistill.trainers.grpo_length import REFERENCE_PROBLEMS

        logged = [e["length/reference_tokens"] for e in _train_log(run_dir) if "length/reference_tokens" in e]
        if logged:
            c["student_tokens"] += round(min(REFERENCE_PROBLEMS, recipe.data.n_train) * logged[0])
    c["seconds"] = round(seconds, 1)
    c["route_kept_rate"] = route_kept / c["accepted"] if c["accepted"] else None
    return c


def _train_log(run_dir: Path) -> list[dict]:
    path = run_dir / TRAIN_LOG
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _spread(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else None,
            "min": min(values), "max": max(values), "per_seed": values}


def _per_problem(runs: list[list[dict]], key: str) -> list[float]:
    """Each problem's mean over runs of ``key`` (correct as 0/1, or tokens): the runs answer the same
    problems in the same order."""
    return [statistics.fmean(float(r[i][key]) for r in runs) for i in range(len(runs[0]))]


def table(evals: dict, temp: float, plan: Plan) -> list[dict]:
    rows = []
    for name in ("base", *plan.arms, "teacher"):
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
    """MPD against each other arm at ``temp`` (rule 6 of the module docstring)."""
    mpd = [evals["mpd"][str(s)][temp] for s in plan.seeds]
    ours = [summarize(r) for r in mpd]
    mpd_correct, mpd_tokens = _per_problem(mpd, "correct"), _per_problem(mpd, "tokens")
    out = {}
    for name in (a for a in plan.arms if a != "mpd"):
        other = [evals[name][str(s)][temp] for s in plan.seeds]
        theirs = [summarize(r) for r in other]
        d_acc = [a["accuracy"] - b["accuracy"] for a, b in zip(ours, theirs)]
        d_tok = [a["mean_tokens"] - b["mean_tokens"] for a, b in zip(ours, theirs)]
        delta, lo, hi = paired_delta_ci(_per_problem(other, "correct"), mpd_correct)
        other_tokens = _per_problem(other, "tokens")
        t_delta, t_lo, t_hi = paired_delta_ci(other_tokens, mpd_tokens, bounds=None)
        out[name] = {"accuracy_delta": delta, "accuracy_delta_ci95": [lo, hi], "accuracy_delta_per_seed": d_acc,
                     "accuracy": verdict(lo, hi, d_acc, higher_is_better=True),
                     "token_delta": t_delta, "token_delta_ci95": [t_lo, t_hi], "token_delta_per_seed": d_tok,
                     "token_change": t_delta / statistics.fmean(other_tokens),
                     "tokens": verdict(t_lo, t_hi, d_tok, higher_is_better=False)}
    return out


def verdict(lo: float, hi: float, per_seed: list[float], *, higher_is_better: bool) -> str:
    """MPD's standing on one axis from the paired CI of (MPD - other) and the per-seed differences:
    ahead or behind only where the interval excludes zero and every seed pairing agrees."""
    up = lo > 0 and all(d > 0 for d in per_seed)
    down = hi < 0 and all(d < 0 for d in per_seed)
    if not (up or down):
        return "level"
    return "ahead" if up == higher_is_better else "behind"


COST_KEYS = ("samples", "student_tokens", "teacher_read_tokens", "teacher_generated_tokens", "loss_tokens",
             "teacher_forward_tokens", "seconds", "accepted")


def cost_table(out: Path, tuning: dict, plan: Plan, tokenizer, sizes: dict[str, int]) -> list[dict]:
    """Each arm's chosen runs' costs (:func:`run_cost`), mean over seeds. ``tokenizer``: the embedded
    student's, which the teacher shares (it counts the prompts the teacher read)."""
    rows = []
    for name in plan.arms:
        folders = [out / "runs" / name / setting_name(tuning[name]["chosen"]) / f"seed{s}" for s in plan.seeds]
        runs = [run_cost(f, load_recipe(f / "recipe.yaml"), json.loads((f / "cost.json").read_text())["seconds"],
                         tokenizer) for f in folders]
        mean = {k: statistics.fmean(r[k] for r in runs) for k in COST_KEYS}
        kept = [r["route_kept_rate"] for r in runs if r["route_kept_rate"] is not None]
        rows.append({"method": name, **mean, "teacher_parameters": sizes[name],
                     "route_kept_rate": statistics.fmean(kept) if kept else None,
                     # The share of samples the loss ran on text the teacher wrote (rewrites or its own samples).
                     "trained_on_teacher_text": statistics.fmean(r["trained_on_teacher_text"] / r["samples"] for r in runs)})
    return rows


def _fmt_spread(s: dict, scale: float = 1.0, digits: int = 1) -> str:
    sd = "—" if s["sd"] is None else f"{scale * s['sd']:.{digits}f}"
    return f"{scale * s['mean']:.{digits}f} ± {sd}"


def _decoding(temp: float) -> str:
    return "greedy decoding" if temp == 0 else f"sampling at temperature {temp:g} (top-p 1, top-k 0)"


def label(results: dict, name: str) -> str:
    """An arm's display name, flagged where its chosen setting sits at the limit of its grid."""
    if name in ("base", "teacher"):
        return {"base": "base student", "teacher": "teacher"}[name]
    text = results["plan"]["arm_definitions"][name]["label"]
    return text + (" †" if results["tuning"][name]["flagged"] else "")


def report(results: dict) -> str:
    p, w = results["plan"], results["world"]
    lines = [f"World **{w['name']}**: {w['summary']} (student {w['student']}, teacher {w['teacher']}).", "",
             f"Seeds {p['seeds']}; n = {p['n_eval']} evaluation problems per model, seed and decoding; tuning on "
             f"{p['n_validation']} validation problems (seed 0, greedy) by the rule: {p['rule']}. Accuracy: mean ± sd "
             "over seeds, and the 95% interval (Wilson, of per-problem means over seeds) which covers the "
             "evaluation problems, not the training seeds; ± — where there is one run. † marks an arm whose "
             "chosen setting sits at the limit of its grid (see Tuning).", ""]
    for temp in p["temperatures"]:
        head = " (the headline)" if temp == p["headline_temperature"] else ""
        lines += [f"### {w['name']}: evaluation by {_decoding(temp)}{head}", "",
                  "| model | runs | accuracy %, mean ± sd [95% CI] | mean tokens, mean ± sd | accuracy per seed | "
                  "cut at the limit |", "|---|---:|---:|---:|---|---:|"]
        for row in results["tables"][f"{temp:g}"]:
            lo, hi = row["accuracy_ci95"]
            seeds = ", ".join(f"{100 * a:.1f}" for a in row["accuracy"]["per_seed"])
            lines.append(f"| {label(results, row['model'])} | {row['runs']} | {_fmt_spread(row['accuracy'], 100)} "
                         f"[{100 * lo:.1f}, {100 * hi:.1f}] | {_fmt_spread(row['mean_tokens'])} | {seeds} | "
                         f"{100 * row['truncation_rate']:.1f}% |")
        lines += ["", "| MPD vs | accuracy, points [paired 95% CI] | per seed | accuracy | tokens [paired 95% CI] | "
                  "per seed | tokens |", "|---|---:|---|---|---:|---|---|"]
        for name, v in results["versus"][f"{temp:g}"].items():
            lines.append(_versus_row(label(results, name), v))
        lines.append("")
    controls = [a for a in p["arms"] if p["arm_definitions"][a]["changes"]]
    if controls:
        lines += [f"### {w['name']}: what carries MPD's cut (MPD against each control)", "",
                  "Each control changes one thing in MPD; MPD's lead or lag on a control is what that thing does. "
                  "Greedy (the headline) and temperature 1.", "",
                  "| control | what it changes | decoding | accuracy, points [paired 95% CI] | accuracy | "
                  "tokens [paired 95% CI] | tokens |", "|---|---|---|---:|---|---:|---|"]
        for name in controls:
            for temp in (t for t in p["temperatures"] if t in (p["headline_temperature"], 1.0)):
                v = results["versus"][f"{temp:g}"][name]
                lo, hi = v["accuracy_delta_ci95"]
                t_lo, t_hi = v["token_delta_ci95"]
                lines.append(f"| {label(results, name)} | {p['arm_definitions'][name]['changes']} | "
                             f"{'greedy' if temp == 0 else f't={temp:g}'} | {100 * v['accuracy_delta']:+.1f} "
                             f"[{100 * lo:+.1f}, {100 * hi:+.1f}] | {v['accuracy']} | {v['token_delta']:+.1f} "
                             f"[{t_lo:+.1f}, {t_hi:+.1f}] ({100 * v['token_change']:+.0f}%) | {v['tokens']} |")
        lines.append("")
    lines += [f"### {w['name']}: what each arm's training run cost (mean over seeds, per run)", "",
              "| arm | samples | student tokens sampled | teacher (parameters) | teacher tokens read to generate | "
              "teacher tokens generated | loss tokens | teacher forward tokens (loss) | wall s | trained on teacher text "
              "| route kept |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for c in results["costs"]:
        kept = "" if c["route_kept_rate"] is None else f"{100 * c['route_kept_rate']:.1f}%"
        size = "none" if not c["teacher_parameters"] else f"{c['teacher_parameters'] / 1000:.0f}k"
        lines.append(f"| {label(results, c['method'])} | {c['samples']:.0f} | {c['student_tokens']:,.0f} | {size} | "
                     f"{c['teacher_read_tokens']:,.0f} | {c['teacher_generated_tokens']:,.0f} | {c['loss_tokens']:,.0f} | "
                     f"{c['teacher_forward_tokens']:,.0f} | {c['seconds']:.0f} | "
                     f"{100 * c['trained_on_teacher_text']:.1f}% | {kept} |")
    lines += ["", f"### {w['name']}: tuning (seed 0, validation, greedy)", "",
              "| arm | setting | correct | accuracy % | mean tokens | chosen |", "|---|---|---:|---:|---:|---|"]
    for name, t in results["tuning"].items():
        for g in t["tried"]:
            chosen = ""
            if g["setting"] == t["chosen"]:
                chosen = "✓" + (f" († at the limit of the grid: {', '.join(t['flagged'])})" if t["flagged"] else "")
            lines.append(f"| {label(results, name)} | {setting_name(g['setting'])} | {g['correct']}/{g['n']} | "
                         f"{100 * g['accuracy']:.1f} | {g['mean_tokens']:.1f} | {chosen} |")
    return "\n".join(lines) + "\n"


def _versus_row(name: str, v: dict) -> str:
    lo, hi = v["accuracy_delta_ci95"]
    t_lo, t_hi = v["token_delta_ci95"]
    return (f"| {name} | {100 * v['accuracy_delta']:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}] | "
            f"{', '.join(f'{100 * d:+.1f}' for d in v['accuracy_delta_per_seed'])} | {v['accuracy']} | "
            f"{v['token_delta']:+.1f} [{t_lo:+.1f}, {t_hi:+.1f}] ({100 * v['token_change']:+.0f}%) | "
            f"{', '.join(f'{d:+.1f}' for d in v['token_delta_per_seed'])} | {v['tokens']} |")


def plot_pareto(results: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    temps = results["plan"]["temperatures"]
    fig, axes = plt.subplots(1, len(temps), figsize=(5.2 * len(temps), 4.6), squeeze=False)
    colors = plt.get_cmap("tab20").colors
    markers = "osD^vP*X<>hp"
    for ax, temp in zip(axes[0], temps):
        for i, row in enumerate(results["tables"][f"{temp:g}"]):  # one color and marker per model in every panel
            a, t = row["accuracy"], row["mean_tokens"]
            ax.errorbar(t["mean"], 100 * a["mean"], xerr=t["sd"] or 0, yerr=100 * (a["sd"] or 0),
                        fmt=markers[i % len(markers)], color=colors[(2 * i) % 20 if i < 10 else (2 * i + 1) % 20],
                        capsize=3, markersize=6, alpha=0.85, label=label(results, row["model"]))
        ax.set_title("greedy" if temp == 0 else f"temperature {temp:g}")
        ax.set_xlabel("mean tokens per answer")
        ax.set_ylabel("accuracy %")
        ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center right", fontsize=7.5)
    fig.suptitle(f"World {results['world']['name']}: accuracy vs tokens, mean ± sd over seeds {results['plan']['seeds']} "
                 f"(n = {results['plan']['n_eval']} problems per run)")
    fig.tight_layout(rect=(0, 0, 0.8, 1))
    fig.savefig(path, format="png", dpi=110)
    plt.close(fig)
