"""``mpdistill bench`` runs and reports every field; time-to-reduction arithmetic on a known log."""

import json

import pytest
import torch
from typer.testing import CliRunner

from mpdistill.experiments.bench.phases import PHASES
from mpdistill.experiments.bench.reduction import format_time_to_reduction, time_to_reduction
from mpdistill.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def quick_bench(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    result = runner.invoke(app, ["bench", "--quick", "--json", str(out), "--eval-throughput"])
    assert result.exit_code == 0, result.output
    return json.loads(out.read_text()), result.output


def test_bench_reports_every_phase_for_both_methods(quick_bench):
    result, output = quick_bench
    steps = result["steps"]
    assert steps["n_steps_per_method"] == 2
    for method in ("mpd", "opd"):
        m = steps["methods"][method]
        assert set(m["phases_median_seconds"]) == set(PHASES)
        assert len(m["steps"]) == 2 and all(s["seconds"] > 0 for s in m["steps"])
        # Per-step peaks only on a GPU; on CPU they come from --memory-lengths (one process per cell).
        assert (m["peak_memory_bytes_max"] is None) == (not torch.cuda.is_available())
        assert m["rollout_tokens_per_second"] > 0
        assert m["student_tokens_per_sample"] > 0 and m["trained_tokens_per_sample"] > 0
    # OPD has no rewrite; MPD's embedded teacher rewrites the student's finished traces.
    assert steps["methods"]["opd"]["phases_median_seconds"]["teacher_rewrite"] == 0
    assert steps["methods"]["mpd"]["phases_median_seconds"]["teacher_rewrite"] > 0
    r = steps["ratio_mpd_over_opd"]
    assert len(r["per_step"]) == 2 and r["min"] <= r["median"] <= r["max"]
    assert "MPD/OPD step time, n = 2 pairs" in output and "| teacher_scoring |" in output


def test_bench_eval_throughput_compares_the_same_outputs(quick_bench):
    e = quick_bench[0]["eval"]
    assert e["n_prompts"] == 40 and e["batched"]["tokens"] > 0 and e["speedup"] > 0
    assert e["responses_that_differ"] == 0  # greedy: batching must not change what is generated


def test_memory_lengths_with_random_weights(tmp_path):
    path = "tests/fixtures/qwen3/Qwen3-tiny.json"
    out = tmp_path / "m.json"
    result = runner.invoke(app, ["bench", "--student", str(path), "--teacher", str(path), "--tokenizer",
                                 "tests/fixtures/qwen3", "--batch-size", "2", "--completion-length", "8",
                                 "--prompt-length", "8", "--warmup", "0", "--repeats", "1",
                                 "--memory-lengths", "4,8", "--json", str(out)])
    assert result.exit_code == 0, result.output
    rows = json.loads(out.read_text())["memory"]["rows"]
    assert [r["completion_length"] for r in rows] == [4, 8]
    assert all(r["mpd_peak_bytes"] >= r["mpd_models_loaded_bytes"] > 0 for r in rows)
    assert all(r["opd_peak_bytes"] >= r["opd_models_loaded_bytes"] > 0 for r in rows)
    # Random weights never stop early: every completion has the full length.
    assert [r["opd_student_tokens"] for r in rows] == [4, 8]


def test_random_weights_need_a_tokenizer(tmp_path):
    path = tmp_path / "c.json"
    path.write_text("{}")
    result = runner.invoke(app, ["bench", "--student", str(path), "--teacher", str(path)])
    assert result.exit_code == 2 and "--tokenizer" in result.output


def test_time_to_reduction_on_a_known_log(tmp_path):
    (tmp_path / "results.json").write_text(json.dumps({"methods": {
        "base": {"mean_tokens": 100.0}, "mpd": {"token_reduction_vs_base": 0.6}}}))
    for method, lengths in (("mpd", [70, 45, 38]), ("opd", [90, 70, 60])):
        log = tmp_path / "runs" / method / "train_log.jsonl"
        log.parent.mkdir(parents=True)
        log.write_text("".join(json.dumps({"completions/mean_length": n, "step_time": 2.0, "step": 5 * (i + 1)}) + "\n"
                               for i, n in enumerate(lengths)) + json.dumps({"train_runtime": 1}) + "\n")
    r = time_to_reduction(tmp_path)
    assert r["targets"] == [0.25, 0.5, 0.6]
    mpd, opd = r["methods"]["mpd"], r["methods"]["opd"]
    assert mpd["reached"]["0.25"] == {"step": 5, "seconds": 10.0}
    assert mpd["reached"]["0.5"] == {"step": 10, "seconds": 20.0}
    assert mpd["reached"]["0.6"] == {"step": 15, "seconds": 30.0}
    assert opd["reached"] == {"0.25": {"step": 10, "seconds": 20.0}}
    table = format_time_to_reduction(r)
    assert "not reached" in table and "| mpd | 10 s (step 5) |" in table


def test_loss_memory_rows():
    from mpdistill.experiments.bench.memory import bench_loss_memory, format_loss_memory

    result = bench_loss_memory([8, 16], vocab_size=1000, hidden_size=8)
    assert [r["tokens"] for r in result["rows"]] == [8, 16]
    assert all(r["loss_peak_bytes"] >= 0 and r["full_logits_bytes"] == r["tokens"] * 1000 * 4 for r in result["rows"])
    assert "| 16 |" in format_loss_memory(result)


def test_bad_count_lists_are_refused():
    result = runner.invoke(app, ["bench", "--no-steps", "--loss-memory", "12,x"])
    assert result.exit_code == 2 and "--loss-memory" in result.output


def test_served_latency_bench_reports_serial_and_overlapped_against_opd(tmp_path):
    out = tmp_path / "served.json"
    result = runner.invoke(app, ["bench", "--no-steps", "--served-latency", "0.5,1", "--batch-size", "2",
                                 "--completion-length", "128", "--warmup", "1", "--repeats", "1", "--json", str(out)])
    assert result.exit_code == 0, result.output
    served = json.loads(out.read_text())["served"]
    assert [lv["fraction"] for lv in served["levels"]] == [0.5, 1.0]
    assert served["settings"]["gradient_accumulation_steps"] == 4 and served["settings"]["samples_per_step"] == 8
    for lv in served["levels"]:
        assert lv["n_step_triples"] == 1
        phases = lv["phases_median_seconds"]
        # The serial step waits the whole delay; the overlapped one no longer than that.
        assert phases["serial"]["teacher_rewrite"] >= lv["delay_s"]
        assert phases["overlap"]["teacher_rewrite"] <= phases["serial"]["teacher_rewrite"] + 0.05
        assert phases["opd"]["teacher_rewrite"] == 0
    # Each triple's delay is its fraction of the median of the three OPD steps before it.
    opd = [x for x in served["steps"]["opd"] if x.get("calibration") or not x["warmup"]]
    assert len(opd) == 3 + 2
    for i, step in enumerate(opd[3:], start=3):
        scale = sorted(x["seconds"] for x in opd[i - 3:i])[1]
        assert step["delay_s"] == pytest.approx(step["fraction"] * scale)
    assert "MPD overlapped / OPD" in result.output and "rewrite time hidden" in result.output
    for lv in served["levels"]:  # one triple per latency: one stage
        assert [st["triples"] for st in lv["by_stage"]] == [[1, 1]] and lv["by_stage"][0]["floor_estimate"] > 0
    assert "floor estimate" in result.output


def test_served_latency_takes_positive_fractions():
    result = runner.invoke(app, ["bench", "--no-steps", "--served-latency", "0.5,-1"])
    assert result.exit_code == 2 and "--served-latency takes comma-separated positive numbers" in result.output
