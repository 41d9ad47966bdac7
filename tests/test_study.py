"""`mpdistill study --quick` end to end on the shipped embedded models (a few minutes on 2 cores),
and the study's rules (the tuning choice, the cost accounting, the MPD-vs-baseline verdicts)."""

import json
import os

import pytest
from typer.testing import CliRunner

from mpdistill.cli import app
from mpdistill.study import GRID, METHODS, QUICK_N_EVAL, TEMPERATURES, choose_setting, run_cost, setting_name

SEEDS = (0, 1)


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("study")
    result = CliRunner().invoke(app, ["study", "--quick", "--seeds", "0,1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


def test_every_model_is_evaluated_at_every_temperature_with_seeds_and_intervals(study_dir):
    results = json.loads((study_dir / "study.json").read_text())
    assert results["plan"]["seeds"] == list(SEEDS) and results["plan"]["quick"] is True
    for temp in TEMPERATURES:
        rows = {r["model"]: r for r in results["tables"][f"{temp:g}"]}
        assert list(rows) == ["base", *METHODS, "teacher"]
        for name, row in rows.items():
            runs = 1 if name in ("base", "teacher") else len(SEEDS)
            assert row["runs"] == runs and len(row["accuracy"]["per_seed"]) == runs, name
            lo, hi = row["accuracy_ci95_pooled"]
            assert 0 <= lo <= row["accuracy"]["mean"] <= hi <= 1
            assert row["accuracy"]["min"] <= row["accuracy"]["mean"] <= row["accuracy"]["max"]
            # Each evaluation is on disk, one record per problem, at its own temperature.
            seeds = ["-"] if runs == 1 else SEEDS
            for seed in seeds:
                run = name if runs == 1 else f"{name}/{setting_name(results['tuning'][name]['chosen'])}/seed{seed}"
                lines = (study_dir / "eval" / f"t{temp:g}" / f"{run}.jsonl").read_text().splitlines()
                assert len(lines) == QUICK_N_EVAL
    # Greedy answers do not depend on the evaluation seed: base's are the same as any rerun's would be.
    assert set(results["versus"]["0"]) == set(METHODS[1:])
    table = (study_dir / "study.md").read_text()
    assert "(the headline)" in table and "greedy decoding" in table and "temperature 0.6" in table
    assert (study_dir / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_each_method_is_tuned_on_validation_by_the_stated_rule(study_dir):
    results = json.loads((study_dir / "study.json").read_text())
    for method in METHODS:
        t = results["tuning"][method]
        assert [g["setting"] for g in t["grid"]] == GRID[method]
        assert t["chosen"] == GRID[method][choose_setting(t["grid"])]
        for g in t["grid"]:  # every setting was trained with seed 0 and scored on the validation split
            assert (study_dir / "eval" / "validation" / method / setting_name(g["setting"]) / "seed0.jsonl").exists()
    # The evaluation split never reached training or tuning: no training prompt is an evaluation prompt.
    eval_prompts = {json.loads(line)["id"] for line in (study_dir / "eval" / "t0" / "base.jsonl").read_text().splitlines()}
    for rollouts in (study_dir / "runs").rglob("rollouts.jsonl"):
        trained = {json.loads(line)["prompt"] for line in rollouts.read_text().splitlines()}
        assert not trained & eval_prompts, rollouts


def test_costs_count_what_each_method_generated_and_trained_on(study_dir):
    costs = {c["method"]: c for c in json.loads((study_dir / "study.json").read_text())["costs"]}
    assert costs["mpd"]["teacher_generated_tokens"] > 0 and costs["mpd"]["student_tokens"] > 0
    assert costs["rewrite_sft"]["teacher_scored_tokens"] == 0  # cross-entropy: no teacher forward
    assert costs["offpolicy_kd"]["student_tokens"] == 0 and costs["offpolicy_kd"]["teacher_generated_tokens"] > 0
    for name in ("opd", "self_distill", "grpo_length"):
        assert costs[name]["teacher_generated_tokens"] == 0
        assert costs[name]["loss_tokens"] == costs[name]["student_tokens"] > 0
    assert costs["grpo_length"]["teacher_scored_tokens"] == 0
    assert costs["mpd"]["route_kept_rate"] is None or 0 <= costs["mpd"]["route_kept_rate"] <= 1
    assert costs["opd"]["route_kept_rate"] is None and costs["offpolicy_kd"]["route_kept_rate"] is None


def test_a_rerun_resumes_without_training_again(study_dir):
    before = json.loads((study_dir / "study.json").read_text())
    models = {p: p.stat().st_mtime_ns for p in (study_dir / "models").rglob("model.safetensors")}
    result = CliRunner().invoke(app, ["study", "--quick", "--seeds", "0,1", "--out", str(study_dir)])
    assert result.exit_code == 0, result.output
    assert "training " not in result.output
    assert {p: p.stat().st_mtime_ns for p in (study_dir / "models").rglob("model.safetensors")} == models
    after = json.loads((study_dir / "study.json").read_text())
    assert after["tables"] == before["tables"] and after["tuning"] == before["tuning"]


def test_another_plan_in_the_same_folder_is_refused(study_dir):
    result = CliRunner().invoke(app, ["study", "--out", str(study_dir)])
    assert result.exit_code == 2 and "other settings" in result.output


@pytest.mark.parametrize("args, words", [
    (["--seeds", "1,2"], "must include 0"),
    (["--methods", "opd,grpo_length"], "MPD and any of"),
    (["--methods", "mpd,nope"], "MPD and any of"),
])
def test_bad_options_are_named(tmp_path, args, words):
    result = CliRunner().invoke(app, ["study", "--quick", "--out", str(tmp_path / "s"), *args])
    assert result.exit_code == 2 and words in result.output
    assert not (tmp_path / "s" / "models").exists()


def test_the_tuning_rule_prefers_accuracy_then_fewer_tokens():
    scores = [{"accuracy": 0.90, "mean_tokens": 40.0}, {"accuracy": 0.905, "mean_tokens": 30.0},
              {"accuracy": 0.80, "mean_tokens": 10.0}]
    assert choose_setting(scores) == 1  # within a point of the best: the fewer tokens
    scores[1]["accuracy"] = 0.93  # now 3 points ahead of the first: accuracy decides
    scores[0]["mean_tokens"] = 20.0
    assert choose_setting(scores) == 1
    assert choose_setting([{"accuracy": 0.5, "mean_tokens": 7.0}, {"accuracy": 0.5, "mean_tokens": 7.0}]) == 0


def test_run_cost_reads_the_rollout_log(tmp_path):
    log = tmp_path / "rollouts.jsonl"
    rows = [
        {"student_tokens": 100, "rewrite": "x", "rewrite_tokens": 30, "accepted": True, "route_kept": True,
         "trained_on": "rewrite"},
        {"student_tokens": 90, "rewrite": "y", "rewrite_tokens": 95, "accepted": False, "route_kept": None,
         "trained_on": "student"},
        {"student_tokens": 80, "rewrite": "z", "rewrite_tokens": 20, "accepted": True, "route_kept": False,
         "trained_on": "rewrite"},
    ]
    log.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cost = run_cost(log, "mpd", 12.34)
    assert cost == {"samples": 3, "student_tokens": 270, "teacher_generated_tokens": 145, "loss_tokens": 30 + 90 + 20,
                    "teacher_scored_tokens": 140, "seconds": 12.3, "accepted": 2, "route_kept_rate": 0.5}
    assert run_cost(log, "rewrite_sft", 1.0)["teacher_scored_tokens"] == 0
    os.remove(log)
