"""``mpdistill study``: MPD, its controls and every baseline on an embedded world, by rules fixed before any run.

The rules:

1. **Arms.** Each row of the study is an *arm*: a registered method with some settings fixed
   (:data:`ARMS`). Besides MPD and the five baselines there are three controls that take MPD apart:
   OPD mixed with the teacher's own samples at the share of samples MPD trained on rewrites (does
   the rewrite carry more than that much teacher text?), MPD with rejected samples dropped (what does
   the on-policy fallback add?) and MPD whose teacher gives an accepted rewrite's targets after the
   concise instruction (does the teacher's own, verbose, context undo the cut?). Two baselines run
   in two forms: GRPO's length penalty gated by correctness and not, self-distillation's teacher
   frozen and refreshed.
2. **Tuning on validation only.** Each arm trains with seed 0 at every setting of its grid and
   answers ``n_validation`` problems of the *validation* split by greedy decoding. A tuned setting
   moves along a ladder (:data:`LADDERS`; learning rate for every arm, GRPO's penalty weight too),
   starting from a window in its middle. The choice: the most correct answers; among settings within
   ``TIE_POINTS`` of it (a count of answers, ``n_validation * TIE_POINTS // 100``), the fewest
   tokens in all; then the most correct; then the first tried. A choice at an edge of what was tried
   extends the grid one rung outward along that setting (the others as chosen) and the rule is
   applied again, until the choice is interior or the ladder ends; a choice at a ladder's end is
   flagged in every table.
3. **Seeds.** With its setting chosen, each arm trains with every seed of ``seeds`` (seed 0's
   run is the one from step 2). A seed changes the training problems, their order and every
   sample drawn; the evaluation problems stay the same, so arms are compared problem by problem.
4. **Evaluation once, at the end**, on ``n_eval`` problems of the *evaluation* split (never seen
   in training or tuning), by every model — base and teacher included — at each temperature of
   :data:`TEMPERATURES` (0 = greedy; top-p 1, top-k 0); a trained model with its own seed as the
   sampling seed, base and teacher with every seed (greedy once: it does not depend on the seed).
   The **headline is greedy decoding for every model** (one fixed decoding, deterministic, and one
   that gives no credit for merely sharpening a sampled distribution); 0.6 and 1.0 are shown beside it.
5. **Cost** per training run, from its own logs: student tokens sampled (GRPO's reference samples
   included), teacher tokens read to generate (rewrite prompts, teacher samples) and generated,
   tokens the loss ran on, tokens the loss's teacher forward read (prompt and completion of every
   sample), wall time; and the size of the model each arm uses as teacher.
6. **MPD against each arm**, per axis, seeds paired by index. Per problem, each arm's score is its
   mean over seeds (correct fraction; tokens); the 95% CI of the paired difference covers the
   evaluation problems. *Ahead* when that CI excludes zero and every seed pairing agrees in
   direction; *behind* likewise; otherwise *level*. Seed-to-seed spread is shown beside it.

Finished stages are kept in ``--out`` (models, evaluations), so a re-run resumes where it stopped.
"""

from __future__ import annotations

import itertools
import json
import math
import shutil
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from rich.console import Console
from rich.text import Text

from mpdistill.errors import ConfigError
from mpdistill.evaluation.stats import paired_delta_ci, summarize, wilson_interval_mean
from mpdistill.experiments.demo import evaluate_chain, save_model_folder
from mpdistill.models.loading import load_model, load_tokenizer
from mpdistill.models.worlds import DEFAULT_WORLD, get_world
from mpdistill.recipes import shipped_path
from mpdistill.rewriting.rewrite import rewrite_settings_from
from mpdistill.rollout import GenerationSettings
from mpdistill.run.checks import check_generation_backends
from mpdistill.run.pipeline import prompt_record, train
from mpdistill.run.recipe import Recipe, load_recipe
from mpdistill.tasks import get_task
from mpdistill.tasks.problems import chain_problems
from mpdistill.trainers.methods import get_method
from mpdistill.utils.console import stdout
from mpdistill.utils.durable import atomic_write, replace_dir, write_text
from mpdistill.utils.paths import ROLLOUTS, TRAIN_LOG, check_output_dir


@dataclass(frozen=True)
class Arm:
    """One row of the study: a registered ``method`` with ``fixed`` recipe settings (by section:
    ``{"training": {...}, "rewrite": {...}}``), tuned along ``tuned`` (keys of :data:`LADDERS`)."""

    name: str
    method: str
    label: str
    fixed: dict = field(default_factory=dict)
    tuned: tuple[str, ...] = ("learning_rate",)
    # For a control: what it changes in MPD, in the ablation table's words.
    changes: str | None = None


# Self-distillation's divergence is the reverse KL (OPSDC's); its refreshed teacher is a copy of the
# student every 20 of the 80 steps. GRPO's two forms differ only in the gate.
ARMS: tuple[Arm, ...] = (
    Arm("mpd", "mpd", "MPD"),
    Arm("opd", "opd", "OPD", changes="no rewrites: every sample is the student's own trace"),
    Arm("opd_mixed", "opd_mixed", "OPD + teacher samples (at MPD's rewrite share)",
        changes="the teacher's own solutions instead of rewrites of the student's, at the share MPD trained on rewrites"),
    Arm("mpd_drop", "mpd", "MPD, rejects dropped", {"rewrite": {"on_reject": "drop"}},
        changes="rejected samples dropped instead of trained on the student's own trace"),
    Arm("mpd_concise_teacher", "mpd", "MPD, teacher asked to be concise", {"rewrite": {"teacher_context": "concise"}},
        changes="the teacher gives a rewrite's targets after the concise instruction, not the problem alone"),
    Arm("offpolicy_kd", "offpolicy_kd", "off-policy KD"),
    Arm("rewrite_sft", "rewrite_sft", "rewrite-SFT"),
    Arm("self_distill", "self_distill", "self-distillation (frozen)", {"training": {"beta": 1.0}}),
    Arm("self_distill_refresh", "self_distill", "self-distillation (refreshed)",
        {"training": {"beta": 1.0, "teacher_sync_steps": 20}}),
    Arm("grpo_length", "grpo_length", "GRPO, gated length penalty", {"training": {"length_penalty_on": "correct"}},
        tuned=("learning_rate", "length_penalty")),
    Arm("grpo_length_ungated", "grpo_length", "GRPO, ungated length penalty", {"training": {"length_penalty_on": "all"}},
        tuned=("learning_rate", "length_penalty")),
)
ARMS_BY_NAME = {a.name: a for a in ARMS}
ARM_NAMES = tuple(ARMS_BY_NAME)
# The control whose teacher share is MPD's measured rewrite share (rule 1).
SHARE_FROM_MPD = "opd_mixed"

TEMPERATURES = (0.0, 0.6, 1.0)
HEADLINE_TEMPERATURE = 0.0
TIE_POINTS = 1
# Each tuned setting's ladder and the window tuning starts from; the ladder's ends are the limits.
LADDERS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "learning_rate": ((1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3), (1e-4, 3e-4, 1e-3)),
    "length_penalty": ((0.03, 0.1, 0.3, 1.0), (0.1, 0.3)),
}
# --quick: two rungs each and no room to extend, so that the rule still has a choice to make.
QUICK_LADDERS = {"learning_rate": ((3e-4, 1e-3), (3e-4, 1e-3)), "length_penalty": ((0.1, 0.3), (0.1, 0.3))}

N_VALIDATION, N_EVAL = 400, 500
QUICK = {"training": {"steps": 2, "batch_size": 8, "logging_steps": 1}, "data": {"n_train": 32}}
QUICK_N_VALIDATION, QUICK_N_EVAL = 16, 16
SHORT_NAMES = {"learning_rate": "lr", "length_penalty": "alpha"}


@dataclass
class Plan:
    world: str = DEFAULT_WORLD
    seeds: tuple[int, ...] = (0, 1, 2)
    arms: tuple[str, ...] = ARM_NAMES
    n_validation: int = N_VALIDATION
    n_eval: int = N_EVAL
    temperatures: tuple[float, ...] = TEMPERATURES
    quick: bool = False
    ladders: dict = field(default_factory=lambda: LADDERS)

    @property
    def tie_count(self) -> int:
        return self.n_validation * TIE_POINTS // 100


def setting_name(setting: dict) -> str:
    return "_".join(f"{SHORT_NAMES.get(k, k)}{v:g}" for k, v in setting.items())


RULE = (f"the most correct validation answers (greedy); among settings within {TIE_POINTS} point of it as a count of "
        "answers, the fewest tokens in all, then the most correct, then the first tried; a choice at an edge of what "
        "was tried extends the grid one rung outward along that setting until it is interior or the ladder ends")


def choose_setting(scores: list[dict], tie_count: int) -> int:
    """The index of the chosen setting: ``scores`` hold counts (``correct``, ``tokens``: totals over the
    same validation problems), compared as integers."""
    best = max(s["correct"] for s in scores)
    close = [i for i, s in enumerate(scores) if best - s["correct"] <= tie_count]
    return min(close, key=lambda i: (scores[i]["tokens"], -scores[i]["correct"], i))


def tune(evaluate: Callable[[dict], dict], ladders: dict[str, tuple[tuple, tuple]], tie_count: int) -> dict:
    """Rule 2: try the starting windows' product, choose, and extend the grid outward from a choice at an
    edge until it is interior or a ladder ends. ``evaluate(setting) -> {"correct", "tokens", ...}``.

    Returns the settings tried (in order, with their scores), the chosen one, and per tuned setting
    where the choice sits: ``interior``, ``edge`` (at the end of what was tried with room left: only
    while extending) or ``limit`` (at the end of its ladder)."""
    dims = list(ladders)
    tried: list[dict] = []
    scores: list[dict] = []

    def run(setting: dict) -> None:
        if setting not in tried:
            tried.append(setting)
            scores.append(evaluate(setting))

    for values in itertools.product(*(ladders[d][1] for d in dims)):
        run(dict(zip(dims, values)))
    while True:
        chosen = tried[choose_setting(scores, tie_count)]
        where, extend = {}, []
        for d in dims:
            ladder = ladders[d][0]
            line = sorted({s[d] for s in tried if all(s[o] == chosen[o] for o in dims if o != d)}, key=ladder.index)
            at = ladder.index(chosen[d])
            outward = ([at - 1] if chosen[d] == line[0] else []) + ([at + 1] if chosen[d] == line[-1] else [])
            outward = [i for i in outward if 0 <= i < len(ladder)]
            if not (chosen[d] == line[0] or chosen[d] == line[-1]):
                where[d] = "interior"
            elif outward:
                where[d] = "edge"
                extend += [{**chosen, d: ladder[i]} for i in outward]
            else:
                where[d] = "limit"
        if not extend:
            return {"tried": [{"setting": s, **sc} for s, sc in zip(tried, scores)], "chosen": chosen,
                    "position": where, "flagged": sorted(d for d, w in where.items() if w != "interior")}
        for setting in extend:
            run(setting)


def arm_recipe(base: Recipe, arm: Arm, setting: dict, seed: int, extra: dict | None = None) -> Recipe:
    """``base`` with the arm's method, its fixed settings, ``extra`` fixed ones (the measured teacher
    share), the tuned ``setting`` (training keys) and ``seed``."""
    fixed = {**arm.fixed, "training": {**arm.fixed.get("training", {}), **(extra or {}), **setting}}
    sections = {key: type(getattr(base, key)).model_validate({**getattr(base, key).model_dump(), **values})
                for key, values in fixed.items()}
    return base.model_copy(update={"method": arm.method, "seed": seed, **sections})


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
