"""`mpdistill study --quick` end to end on the shipped embedded models (a few minutes on 2 cores),
and the study's rules (the tuning choice, the cost accounting, the MPD-vs-baseline verdicts)."""

import itertools
import json

import pytest
from typer.testing import CliRunner

from mpdistill.cli import app
from mpdistill.run.recipe import load_recipe
from mpdistill.models.loading import load_model
from mpdistill.recipes import shipped_path
from mpdistill.tasks import chain
from mpdistill.experiments.study import rewrite_share
from mpdistill.experiments.study_design import (ARM_NAMES, ARMS_BY_NAME, QUICK_LADDERS, QUICK_N_EVAL, QUICK_N_VALIDATION,
                                                TEMPERATURES, choose_setting, setting_name, tune)
from mpdistill.experiments.study_report import run_cost, verdict

SEEDS = (0, 1)


def trained_any(output: str) -> bool:
    """Whether the study's console says it trained a run ("training mpd/lr0.0003/seed0 (2 steps, ...)")."""
    return any(line.startswith("training ") and "steps, batch" in line for line in output.splitlines())


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("study")
    result = CliRunner().invoke(app, ["study", "--quick", "--seeds", "0,1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert trained_any(result.output)  # what the re-run tests below look for, and must not find
    return out


def test_every_model_is_evaluated_at_every_temperature_with_seeds_and_intervals(study_dir):
    results = json.loads((study_dir / "study.json").read_text())
    assert results["plan"]["seeds"] == list(SEEDS) and results["plan"]["quick"] is True
    for temp in TEMPERATURES:
        rows = {r["model"]: r for r in results["tables"][f"{temp:g}"]}
        assert list(rows) == ["base", *ARM_NAMES, "teacher"]
        for name, row in rows.items():
            # Greedy answers do not depend on the seed: base and teacher answer once there.
            runs = 1 if name in ("base", "teacher") and temp == 0 else len(SEEDS)
            assert row["runs"] == runs and len(row["accuracy"]["per_seed"]) == runs, (name, temp)
            assert (row["accuracy"]["sd"] is None) == (runs == 1)
            lo, hi = row["accuracy_ci95"]
            assert 0 <= lo <= row["accuracy"]["mean"] <= hi <= 1
            assert row["accuracy"]["min"] <= row["accuracy"]["mean"] <= row["accuracy"]["max"]
            # Each evaluation is on disk, one record per problem, at its own temperature.
            for seed in SEEDS[:runs]:
                run = (f"{name}/seed{seed}" if name in ("base", "teacher")
                       else f"{name}/{setting_name(results['tuning'][name]['chosen'])}/seed{seed}")
                lines = (study_dir / "eval" / f"t{temp:g}" / f"{run}.jsonl").read_text().splitlines()
                assert len(lines) == QUICK_N_EVAL
                assert {json.loads(line)["correct"] for line in lines} <= {True, False}
    for temp in TEMPERATURES:
        versus = results["versus"][f"{temp:g}"]
        assert set(versus) == set(ARM_NAMES[1:])
        for v in versus.values():
            lo, hi = v["accuracy_delta_ci95"]
            assert lo <= v["accuracy_delta"] <= hi and v["accuracy"] in ("ahead", "level", "behind")
            assert v["tokens"] in ("ahead", "level", "behind") and len(v["token_delta_per_seed"]) == len(SEEDS)
            t_lo, t_hi = v["token_delta_ci95"]  # in tokens, not clipped to an accuracy's [-1, 1]
            assert t_lo <= v["token_delta"] <= t_hi
    table = (study_dir / "study.md").read_text()
    assert "(the headline)" in table and "greedy decoding" in table and "temperature 0.6" in table
    assert (study_dir / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_each_arm_is_tuned_on_validation_by_the_stated_rule(study_dir):
    results = json.loads((study_dir / "study.json").read_text())
    assert results["world"]["name"] == "concise-teacher"
    for name in ARM_NAMES:
        t = results["tuning"][name]
        dims = ARMS_BY_NAME[name].tuned
        expected = [dict(zip(dims, v)) for v in itertools.product(*(QUICK_LADDERS[d][1] for d in dims))]
        assert [g["setting"] for g in t["tried"]] == expected  # --quick ladders leave no room to extend
        assert t["chosen"] == t["tried"][choose_setting(t["tried"], results["plan"]["tie_count"])]["setting"]
        # Every choice of --quick sits at a ladder's end: flagged, never silently.
        assert t["flagged"] and set(t["position"].values()) <= {"limit", "interior"}
        for g in t["tried"]:  # every setting was trained with seed 0 and scored on the validation split
            lines = (study_dir / "eval" / "validation" / name / setting_name(g["setting"]) / "seed0.jsonl").read_text()
            records = [json.loads(line) for line in lines.splitlines()]
            assert g["correct"] == sum(r["correct"] for r in records) and g["tokens"] == sum(r["tokens"] for r in records)
    assert "†" in (study_dir / "study.md").read_text()
    # Neither held-out split reached training: no training prompt is a validation or evaluation prompt.
    held_out = {json.loads(line)["id"] for line in (study_dir / "eval" / "t0" / "base" / "seed0.jsonl").read_text().splitlines()}
    held_out |= {json.loads(line)["id"] for line in
                 (study_dir / "eval" / "validation" / "mpd" / "lr0.0003" / "seed0.jsonl").read_text().splitlines()}
    assert len(held_out) == QUICK_N_EVAL + QUICK_N_VALIDATION
    for rollouts in (study_dir / "runs").rglob("rollouts.jsonl"):
        trained = {json.loads(line)["prompt"] for line in rollouts.read_text().splitlines()}
        assert trained and not trained & held_out, rollouts


def test_costs_count_what_each_method_generated_and_trained_on(study_dir):
    costs = {c["method"]: c for c in json.loads((study_dir / "study.json").read_text())["costs"]}
    mpd = costs["mpd"]
    assert mpd["teacher_generated_tokens"] > 0 and mpd["student_tokens"] > 0
    # A rewrite prompt holds the student's whole trace: the teacher reads more than it writes.
    assert mpd["teacher_read_tokens"] > mpd["teacher_generated_tokens"]
    assert mpd["teacher_forward_tokens"] > mpd["loss_tokens"]  # prompts included
    assert costs["rewrite_sft"]["teacher_forward_tokens"] == 0  # cross-entropy: no teacher forward
    kd = costs["offpolicy_kd"]
    assert kd["student_tokens"] == 0 and kd["teacher_generated_tokens"] > 0 and kd["teacher_read_tokens"] > 0
    for name in ("opd", "self_distill", "grpo_length"):
        assert costs[name]["teacher_generated_tokens"] == costs[name]["teacher_read_tokens"] == 0
    assert costs["opd"]["loss_tokens"] == costs["opd"]["student_tokens"] > 0
    # GRPO's student also sampled the reference length's problems before its first step.
    assert costs["grpo_length"]["student_tokens"] > costs["grpo_length"]["loss_tokens"] > 0
    assert costs["grpo_length"]["teacher_forward_tokens"] == 0 and costs["grpo_length"]["teacher_parameters"] == 0
    assert costs["self_distill"]["teacher_parameters"] < costs["opd"]["teacher_parameters"]  # the student's copy
    assert mpd["route_kept_rate"] is None or 0 <= mpd["route_kept_rate"] <= 1
    assert costs["opd"]["route_kept_rate"] is None and kd["route_kept_rate"] is None
    assert costs["opd"]["trained_on_teacher_text"] == 0 and kd["trained_on_teacher_text"] > 0


def test_a_rerun_resumes_without_training_again(study_dir):
    before = json.loads((study_dir / "study.json").read_text())
    models = {p: p.stat().st_mtime_ns for p in (study_dir / "models").rglob("model.safetensors")}
    result = CliRunner().invoke(app, ["study", "--quick", "--seeds", "0,1", "--out", str(study_dir)])
    assert result.exit_code == 0, result.output
    assert not trained_any(result.output)
    assert {p: p.stat().st_mtime_ns for p in (study_dir / "models").rglob("model.safetensors")} == models
    after = json.loads((study_dir / "study.json").read_text())
    assert after["tables"] == before["tables"] and after["tuning"] == before["tuning"]


def test_another_plan_in_the_same_folder_is_refused(study_dir):
    result = CliRunner().invoke(app, ["study", "--out", str(study_dir)])
    assert result.exit_code == 2 and "other settings" in result.output


def test_a_run_trained_with_other_settings_is_refused(study_dir):
    saved = study_dir / "runs" / "mpd" / "lr0.0003" / "seed0" / "recipe.yaml"
    original = saved.read_text()
    saved.write_text(original.replace("steps: 2", "steps: 3"))
    try:
        result = CliRunner().invoke(app, ["study", "--quick", "--seeds", "0,1", "--out", str(study_dir)])
    finally:
        saved.write_text(original)
    assert result.exit_code == 2
    assert "mpd/lr0.0003/seed0 trained with other settings" in result.output and "steps" in result.output
    assert not trained_any(result.output)


@pytest.mark.parametrize("args, words", [
    (["--seeds", "1,2"], "must include 0"),
    (["--methods", "opd,grpo_length"], "mpd and any of"),
    (["--methods", "mpd,nope"], "mpd and any of"),
    (["--world", "nope"], "--world must be one of"),
])
def test_bad_options_are_named(tmp_path, args, words):
    result = CliRunner().invoke(app, ["study", "--quick", "--out", str(tmp_path / "s"), *args])
    assert result.exit_code == 2 and words in result.output
    assert not (tmp_path / "s" / "models").exists()


def test_the_tuning_rule_prefers_correct_answers_then_fewer_tokens_on_counts():
    scores = [{"correct": 360, "tokens": 16000}, {"correct": 362, "tokens": 12000}, {"correct": 320, "tokens": 4000}]
    assert choose_setting(scores, 4) == 1  # within 4 answers of the best: the fewer tokens
    scores[1]["correct"] = 372  # now 12 answers ahead of the first: correctness decides
    scores[0]["tokens"] = 8000
    assert choose_setting(scores, 4) == 1
    # Exactly the margin is a tie, one answer more is not (counts: no float tolerance decides).
    assert choose_setting([{"correct": 396, "tokens": 9000}, {"correct": 400, "tokens": 9100}], 4) == 0
    assert choose_setting([{"correct": 395, "tokens": 9000}, {"correct": 400, "tokens": 9100}], 4) == 1
    # Equal tokens: the more correct wins, wherever it sits in the grid (off-policy KD's 99.0% vs 100.0%).
    assert choose_setting([{"correct": 396, "tokens": 12000}, {"correct": 400, "tokens": 12000},
                           {"correct": 396, "tokens": 12000}], 4) == 1
    assert choose_setting([{"correct": 5, "tokens": 7}, {"correct": 5, "tokens": 7}], 0) == 0


LADDER = {"learning_rate": ((1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3), (1e-4, 3e-4, 1e-3))}


def _scores(best_rate: float):
    """Validation counts that peak at ``best_rate`` (fewer correct answers the further a rate is from it)."""
    import math

    calls = []

    def evaluate(setting):
        calls.append(setting)
        distance = abs(math.log10(setting["learning_rate"]) - math.log10(best_rate))
        return {"correct": round(400 - 40 * distance), "tokens": 10000}

    return evaluate, calls


def test_a_choice_at_the_grid_edge_extends_the_grid_until_it_is_interior():
    evaluate, calls = _scores(3e-5)
    result = tune(evaluate, LADDER, tie_count=4)
    rates = [c["learning_rate"] for c in calls]
    assert rates == [1e-4, 3e-4, 1e-3, 3e-5, 1e-5]  # the window, then one rung down at a time
    assert result["chosen"] == {"learning_rate": 3e-5}
    assert result["position"] == {"learning_rate": "interior"} and result["flagged"] == []


def test_a_choice_at_the_ladders_end_is_flagged():
    evaluate, calls = _scores(1e-2)
    result = tune(evaluate, LADDER, tie_count=4)
    assert [c["learning_rate"] for c in calls] == [1e-4, 3e-4, 1e-3, 3e-3]
    assert result["chosen"] == {"learning_rate": 3e-3}
    assert result["position"] == {"learning_rate": "limit"} and result["flagged"] == ["learning_rate"]
    evaluate, calls = _scores(3e-4)  # interior from the start: nothing more is tried
    assert tune(evaluate, LADDER, tie_count=4)["flagged"] == [] and len(calls) == 3


def test_two_tuned_settings_extend_along_the_one_at_its_edge():
    ladders = {**LADDER, "length_penalty": ((0.03, 0.1, 0.3, 1.0), (0.1, 0.3))}

    def evaluate(setting):  # best at rate 3e-4 with the largest penalty
        return {"correct": 400 - (0 if setting["learning_rate"] == 3e-4 else 20) + round(10 * setting["length_penalty"]),
                "tokens": 100}

    result = tune(evaluate, ladders, tie_count=0)
    tried = [g["setting"] for g in result["tried"]]
    # One rung up the penalty (its ladder's end), then the rate on that new line: tried there only once,
    # it sits at both of its edges until its neighbours are tried too.
    assert tried[6:] == [{"learning_rate": 3e-4, "length_penalty": 1.0}, {"learning_rate": 1e-4, "length_penalty": 1.0},
                         {"learning_rate": 1e-3, "length_penalty": 1.0}]
    assert result["chosen"] == {"learning_rate": 3e-4, "length_penalty": 1.0}
    assert result["position"] == {"learning_rate": "interior", "length_penalty": "limit"}


@pytest.mark.parametrize("lo, hi, per_seed, higher, expected", [
    (0.01, 0.05, [0.02, 0.03, 0.01], True, "ahead"),
    (0.01, 0.05, [0.02, 0.03, 0.01], False, "behind"),  # more tokens is worse
    (-0.05, -0.01, [-0.02, -0.03, -0.01], True, "behind"),
    (-0.05, -0.01, [-0.02, -0.03, -0.01], False, "ahead"),
    (-0.01, 0.05, [0.02, 0.03, 0.01], True, "level"),  # the interval holds zero
    (0.01, 0.05, [0.02, -0.03, 0.01], True, "level"),  # one seed pairing disagrees
    (0.0, 0.05, [0.02, 0.03, 0.01], True, "level"),  # touching zero is not excluding it
])
def test_the_verdict_needs_the_interval_and_every_seed(lo, hi, per_seed, higher, expected):
    assert verdict(lo, hi, per_seed, higher_is_better=higher) == expected


def test_the_mixed_control_trains_at_mpds_measured_rewrite_share(study_dir):
    results = json.loads((study_dir / "study.json").read_text())
    mpd_run = study_dir / "runs" / "mpd" / setting_name(results["tuning"]["mpd"]["chosen"]) / "seed0"
    share = round(rewrite_share(mpd_run), 3)
    assert results["tuning"]["opd_mixed"]["fixed"]["training"]["teacher_share"] == share
    for seed in (0, 1):
        run = study_dir / "runs" / "opd_mixed" / setting_name(results["tuning"]["opd_mixed"]["chosen"]) / f"seed{seed}"
        assert load_recipe(run / "recipe.yaml").training.teacher_share == share


def test_each_arm_trains_with_its_fixed_settings(study_dir):
    results = json.loads((study_dir / "study.json").read_text())

    def recipe(name):
        return load_recipe(study_dir / "runs" / name / setting_name(results["tuning"][name]["chosen"]) / "seed0" /
                           "recipe.yaml")

    assert recipe("mpd_drop").rewrite.on_reject == "drop" and recipe("mpd").rewrite.on_reject == "student"
    assert recipe("mpd_concise_teacher").rewrite.teacher_context == "concise"
    assert recipe("self_distill_refresh").training.teacher_sync_steps == 20
    assert recipe("self_distill").training.teacher_sync_steps is None
    assert recipe("grpo_length").training.length_penalty_on == "correct"
    assert recipe("grpo_length_ungated").training.length_penalty_on == "all"
    assert {recipe(a).method for a in ARM_NAMES} == {"mpd", "opd", "opd_mixed", "offpolicy_kd", "rewrite_sft",
                                                     "self_distill", "grpo_length"}


def test_run_cost_reads_the_rollout_log(tmp_path):
    rows = [
        {"prompt": "Q:1+2\n", "student": "so 1+2=3\nA:3", "student_tokens": 100, "rewrite": "1+2=3\nA:3",
         "rewrite_tokens": 30, "accepted": True, "route_kept": True, "trained_on": "rewrite"},
        {"prompt": "Q:1+2\n", "student": "so 1+2=3\nA:3", "student_tokens": 90, "rewrite": "x", "rewrite_tokens": 95,
         "accepted": False, "route_kept": None, "trained_on": "student"},
        {"prompt": "Q:1+2\n", "student": "so 1+2=3\nA:3", "student_tokens": 80, "rewrite": "1+2=3\nA:3",
         "rewrite_tokens": 20, "accepted": True, "route_kept": False, "trained_on": "rewrite"},
        {"prompt": "Q:1+2\n", "student": "A:3", "student_tokens": 3, "rewrite": None, "rewrite_tokens": None,
         "accepted": False, "route_kept": None, "trained_on": "dropped"},
    ]
    (tmp_path / "rollouts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    _, tok = load_model("embedded:student")
    n = lambda text: len(tok(text, add_special_tokens=False)["input_ids"])  # noqa: E731
    recipe = load_recipe(shipped_path("embedded"))
    cost = run_cost(tmp_path, recipe, 12.34, tok)
    read = n("Q:1+2\nrewrite:\nso 1+2=3\nA:3\nshort:\n")
    assert cost == {"samples": 4, "student_tokens": 273, "teacher_read_tokens": 3 * read,
                    "teacher_generated_tokens": 145, "loss_tokens": 30 + 90 + 20,
                    "teacher_forward_tokens": 4 * n("Q:1+2\n") + 30 + 90 + 20 + 3, "accepted": 2, "seconds": 12.3,
                    "route_kept_rate": 0.5, "trained_on_teacher_text": 2}
    # With the teacher scoring rewrites after the concise instruction, its forward reads that too, on rewrites only.
    concise = recipe.model_copy(update={"rewrite": recipe.rewrite.model_copy(update={"teacher_context": "concise"})})
    assert run_cost(tmp_path, concise, 1.0, tok)["teacher_forward_tokens"] == (
        cost["teacher_forward_tokens"] + 2 * n(chain.CONCISE_INSTRUCTION))
    sft = run_cost(tmp_path, recipe.model_copy(update={"method": "rewrite_sft"}), 1.0, tok)
    assert sft["teacher_forward_tokens"] == 0 and sft["teacher_read_tokens"] == 3 * read


def test_run_cost_of_off_policy_kd_counts_the_teachers_samples(tmp_path):
    kd = {"prompt": "Q:1+2\n", "student": None, "rewrite": None, "teacher": "1+2=3\nA:3", "student_tokens": None,
          "rewrite_tokens": None, "teacher_tokens": 7, "accepted": True, "trained_on": "teacher"}
    rows = [kd, {**kd, "teacher_tokens": 5, "accepted": False, "trained_on": "dropped"}]
    (tmp_path / "rollouts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    tok = load_model("embedded:student")[1]
    prompt = len(tok("Q:1+2\n", add_special_tokens=False)["input_ids"])
    cost = run_cost(tmp_path, load_recipe(shipped_path("embedded"), {"method": "offpolicy_kd"}), 1.0, tok)
    # The dropped sample is generated and read by the loss's teacher forward (masked), but not trained on.
    assert (cost["student_tokens"], cost["teacher_generated_tokens"], cost["loss_tokens"]) == (0, 12, 7)
    assert cost["teacher_read_tokens"] == 2 * prompt and cost["teacher_forward_tokens"] == 2 * prompt + 12
    assert cost["accepted"] == 0 and cost["route_kept_rate"] is None  # KD samples are not rewrites


def test_run_cost_of_the_mixed_control_counts_both_samples(tmp_path):
    """opd_mixed: the student sampled every problem; the teacher answered the picked ones; the loss ran on the
    teacher's sample where it passed the filter, else on the student's."""
    base = {"prompt": "Q:1+2\n", "student": "so 1+2=3\nA:3", "student_tokens": 10, "rewrite": None,
            "rewrite_tokens": None, "accepted": False, "trained_on": "student"}
    rows = [base, {**base, "teacher": "1+2=3\nA:3", "teacher_tokens": 7, "accepted": True, "trained_on": "teacher"},
            {**base, "teacher": "1+2", "teacher_tokens": 4, "reason": "unparsed"}]
    (tmp_path / "rollouts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    tok = load_model("embedded:student")[1]
    cost = run_cost(tmp_path, load_recipe(shipped_path("embedded"), {"method": "opd_mixed"}), 1.0, tok)
    assert (cost["student_tokens"], cost["teacher_generated_tokens"], cost["loss_tokens"]) == (30, 11, 10 + 7 + 10)
    assert cost["trained_on_teacher_text"] == 1 and cost["accepted"] == 0


def test_mpd_is_ahead_of_an_arm_it_beats_and_behind_one_that_beats_it():
    """The verdict's direction through versus(): MPD more accurate and shorter than OPD on every problem and
    seed is ahead on both axes; the reverse, behind on both (a swapped argument or sign would flip these)."""
    import random

    from mpdistill.experiments.study_design import Plan
    from mpdistill.experiments.study_report import versus

    rng = random.Random(0)

    def run(p_correct, tokens):
        return [{"correct": rng.random() < p_correct, "tokens": tokens + rng.randint(-2, 2)} for _ in range(300)]

    plan = Plan(seeds=(0, 1, 2), arms=("mpd", "opd"), n_eval=300)
    for better, worse, expect in (("mpd", "opd", "ahead"), ("opd", "mpd", "behind")):
        evals = {better: {str(s): {0.0: run(0.9, 30)} for s in plan.seeds},
                 worse: {str(s): {0.0: run(0.6, 60)} for s in plan.seeds}}
        v = versus(evals, 0.0, plan)["opd"]
        assert (v["accuracy"], v["tokens"]) == (expect, expect), v
        assert (v["accuracy_delta"] > 0) == (expect == "ahead") and (v["token_delta"] < 0) == (expect == "ahead")
