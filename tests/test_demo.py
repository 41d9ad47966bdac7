"""`mpdistill demo --quick` end to end on the shipped embedded models (about a minute on 2 cores)."""

import json

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig
from typer.testing import CliRunner

from mpdistill.cli import app
from mpdistill.experiments.demo import EVAL_ORDER, QUICK_EVAL_N

METHOD_FIELDS = {"accuracy", "accuracy_ci95", "mean_tokens", "n", "token_reduction_vs_base", "accuracy_delta_vs_base",
                 "aes"}
EVAL_FIELDS = {"benchmark", "id", "sample", "response", "tokens", "truncated", "extracted", "gold", "correct"}


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    result = CliRunner().invoke(app, ["demo", "--quick", "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


def test_results_cover_every_method_with_sample_size_and_interval(demo_dir):
    results = json.loads((demo_dir / "results.json").read_text())
    assert results["seed"] == 0 and results["n_eval"] == QUICK_EVAL_N
    assert list(results["methods"]) == list(EVAL_ORDER)
    for name, m in results["methods"].items():
        assert METHOD_FIELDS <= set(m), name
        lo, hi = m["accuracy_ci95"]
        assert 0 <= lo <= m["accuracy"] <= hi <= 1 and m["n"] == QUICK_EVAL_N
    assert results["methods"]["base"]["token_reduction_vs_base"] == 0
    assert set(results["comparisons"]) >= {"opd", "offpolicy_kd", "rewrite_sft"}
    table = (demo_dir / "results.md").read_text()
    assert all(name in table for name in EVAL_ORDER)
    assert (demo_dir / "tradeoff.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_demo_draws_training_curves_and_fills_each_models_card(demo_dir):
    from huggingface_hub import ModelCard

    assert (demo_dir / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    results = json.loads((demo_dir / "results.json").read_text())
    for method in ("mpd", "opd", "offpolicy_kd", "rewrite_sft"):
        card = ModelCard.load(demo_dir / "models" / method / "README.md")
        assert card.data.license == "apache-2.0" and "mpdistill" in card.data.tags
        evaluation = card.text.split("## Evaluation", 1)[1].split("\n## ", 1)[0]
        accuracy = f"{100 * results['methods'][method]['accuracy']:.1f}"
        assert f"| {method} | {QUICK_EVAL_N} | {accuracy} [" in evaluation and "| base |" in evaluation
        assert "sampling at temperature 1" in evaluation and f"n = {QUICK_EVAL_N}" in evaluation
        assert str(demo_dir) not in card.content  # no path of the machine in a card that may be published


def test_demo_writes_a_view_of_the_mpd_run_and_its_answers_against_the_base(demo_dir):
    page = (demo_dir / "view.html").read_text()
    data = json.loads(page.split('<script type="application/json" id="page-data">', 1)[1].split("</script>", 1)[0])
    assert [s["kind"] for s in data["sections"]] == ["run", "eval", "eval", "comparison"]
    rollouts = (demo_dir / "runs" / "mpd" / "rollouts.jsonl").read_text().splitlines()
    assert data["sections"][0]["rollouts"]["n"] == len(rollouts) == len(data["sections"][0]["rollouts"]["texts"])
    assert "http://" not in page.replace("http://www.w3.org", "") and "https://" not in page  # nothing fetched


def test_eval_files_are_graded_from_the_responses(demo_dir):
    from mpdistill.tasks import chain

    results = json.loads((demo_dir / "results.json").read_text())
    for name in EVAL_ORDER:
        rows = [json.loads(line) for line in (demo_dir / "eval" / f"{name}.jsonl").read_text().splitlines()]
        assert len(rows) == QUICK_EVAL_N and all(EVAL_FIELDS <= set(r) for r in rows)
        for r in rows:
            assert r["extracted"] == chain.extract_answer(r["response"])
            assert r["correct"] == (r["extracted"] == r["gold"] == chain.ChainProblem.parse(r["id"]).answer)
        accuracy = sum(r["correct"] for r in rows) / len(rows)
        assert results["methods"][name]["accuracy"] == pytest.approx(accuracy)
        # Held-out problems never appear among the training prompts.
        if name == "mpd":
            trained = {json.loads(line)["prompt"] for line in (demo_dir / "runs" / "mpd" / "rollouts.jsonl").open()}
            assert not trained & {r["id"] for r in rows}


def test_every_model_loads_with_plain_transformers(demo_dir):
    for name in EVAL_ORDER:
        path = demo_dir / "models" / name
        model = AutoModelForCausalLM.from_pretrained(path)
        tok = AutoTokenizer.from_pretrained(path)
        assert model.config.vocab_size == len(tok)
        assert GenerationConfig.from_pretrained(path).eos_token_id == tok.eos_token_id


def test_rerun_resumes_without_retraining(demo_dir):
    before = (demo_dir / "results.json").read_text()
    stamp = (demo_dir / "models" / "mpd" / "model.safetensors").stat().st_mtime_ns
    result = CliRunner().invoke(app, ["demo", "--quick", "--out", str(demo_dir)])
    assert result.exit_code == 0, result.output
    assert "skipping" in result.output
    assert (demo_dir / "models" / "mpd" / "model.safetensors").stat().st_mtime_ns == stamp
    after = json.loads((demo_dir / "results.json").read_text())
    assert after["methods"] == json.loads(before)["methods"]


def test_an_interrupted_method_is_retrained_and_its_files_kept(demo_dir):
    import shutil

    shutil.rmtree(demo_dir / "models" / "opd")
    (demo_dir / "runs" / "opd" / "marker").write_text("from the interrupted run")
    (demo_dir / "eval" / "opd.jsonl").write_text("stale\n")  # must be redone for the new model
    result = CliRunner().invoke(app, ["demo", "--quick", "--out", str(demo_dir)])
    assert result.exit_code == 0, result.output
    assert (demo_dir / "models" / "opd" / "config.json").exists()
    assert (demo_dir / "runs" / "opd.interrupted-1" / "marker").read_text() == "from the interrupted run"
    assert not (demo_dir / "runs" / "opd" / "marker").exists()
    rows = (demo_dir / "eval" / "opd.jsonl").read_text().splitlines()
    assert len(rows) == QUICK_EVAL_N and rows[0] != "stale"


def test_mpdistill_eval_reproduces_the_demo_sample_for_sample(demo_dir, tmp_path):
    """The README's command: `mpdistill eval` on a demo model needs no task or sampling flags (the
    model folder records its task and prompt; its generation_config, how it samples) and, with the
    demo's batch size, draws the very same responses as the demo did."""
    from mpdistill.run.recipe import load_recipe
    from mpdistill.experiments.demo import RECIPE

    batch = load_recipe(RECIPE).eval.batch_size
    out = tmp_path / "eval"
    result = CliRunner().invoke(app, ["eval", "--model", str(demo_dir / "models" / "mpd"), "--limit", str(QUICK_EVAL_N),
                                      "--batch-size", str(batch), "--out", str(out)])
    assert result.exit_code == 0, result.output
    config = json.loads((out / "eval_config.json").read_text())
    assert config["task"] == "chain" and [b["name"] for b in config["benchmarks"]] == ["chain"]
    assert (config["temperature"], config["top_p"], config["top_k"]) == (1.0, 1.0, 0)
    assert config["chat_template"] is False and config["max_new_tokens"] == 256
    demo = {(r["id"], r["sample"]): r for r in map(json.loads, (demo_dir / "eval" / "mpd.jsonl").open())}
    mine = {(r["id"], r["sample"]): r for r in map(json.loads, (out / "samples.jsonl").open())}
    assert mine.keys() == demo.keys()
    assert all(mine[k]["response"] == demo[k]["response"] and mine[k]["correct"] == demo[k]["correct"] for k in demo)
    summary = json.loads((out / "summary.json").read_text())["benchmarks"]["chain"]
    results = json.loads((demo_dir / "results.json").read_text())["methods"]["mpd"]
    assert summary["accuracy"] == pytest.approx(results["accuracy"])


def test_a_rerun_with_other_settings_is_refused_before_anything_changes(demo_dir):
    before = (demo_dir / "results.json").read_text()
    result = CliRunner().invoke(app, ["demo", "--quick", "--seed", "1", "--out", str(demo_dir)])
    assert result.exit_code == 2, result.output
    assert f"error: {demo_dir} holds a demo trained with other settings (seed: 0 -> 1)" in result.stderr
    assert "use a new --out to keep both" in result.stderr
    assert (demo_dir / "results.json").read_text() == before
