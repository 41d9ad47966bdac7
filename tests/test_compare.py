"""Tests for mpdistill.evaluation.compare on small evaluation folders written by hand, against values computed by hand."""

from __future__ import annotations

import json
import logging
import math

import pytest

from mpdistill.evaluation.compare import (
    CompareError,
    compare_runs,
    format_comparison,
    load_eval_dir,
    plot_comparison,
    write_comparison,
)
from mpdistill.evaluation.stats import wilson_interval, wilson_interval_mean

# The shape of the settings ``mpdistill eval`` records.
SETTINGS = {
    "model": "m", "benchmarks": [{"name": "gsm8k", "source": "shipped", "n_problems": 4}], "backend": "transformers",
    "n_samples": 1, "max_new_tokens": 256, "temperature": 0.6, "top_p": 0.95, "top_k": 20,
    "sampling_source": "model generation_config", "thinking": None, "chat_template": True,
    "prompt_template": "{problem}", "batch_size": 16, "seed": 0, "limit": None,
}  # fmt: skip
GOLD_SETTINGS = dict(SETTINGS, backend="references", max_new_tokens=None, temperature=None, top_p=None, top_k=None,
                     sampling_source="none (reference solutions)", chat_template=None, prompt_template=None)


def _sample(bench: str, pid: str, correct: bool, tokens: int | None, sample: int = 0) -> dict:
    return {
        "benchmark": bench,
        "id": pid,
        "sample": sample,
        "response": "The answer is \\boxed{1}.",
        "tokens": tokens,
        "thinking_tokens": None if tokens is None else tokens // 2,
        "answer_tokens": None if tokens is None else tokens - tokens // 2,
        "truncated": False,
        "extracted": "1",
        "gold": "1",
        "correct": correct,
    }


def _problems(bench: str, rows: dict[str, list[tuple[bool, int | None]]]) -> list[dict]:
    """Samples from ``{id: [(correct, tokens), ...]}``, numbered 0..k-1 per problem."""
    return [_sample(bench, pid, c, t, k) for pid, samples in rows.items() for k, (c, t) in enumerate(samples)]


def _write_run(folder, samples: list[dict], model: str = "m", settings: dict | None = None, tail: bytes = b""):
    folder.mkdir(parents=True, exist_ok=True)
    settings = dict(SETTINGS if settings is None else settings, model=model)
    (folder / "summary.json").write_text(json.dumps({"model": model, "settings": settings, "benchmarks": {}}))
    text = "".join(json.dumps(s, ensure_ascii=False) + "\n" for s in samples).encode("utf-8")
    (folder / "samples.jsonl").write_bytes(text + tail)
    return folder


def _simple_pair(tmp_path):
    """Base 2/4 correct at 100 tokens, new 3/4 correct at 60 tokens, one sample per problem."""
    base = _problems("gsm8k", {f"p{i}": [(c, 100)] for i, c in enumerate([True, True, False, False])})
    new = _problems("gsm8k", {f"p{i}": [(c, 60)] for i, c in enumerate([True, True, True, False])})
    return _write_run(tmp_path / "base", base, "base-model"), _write_run(tmp_path / "new", new, "new-model")


# --- numbers -------------------------------------------------------------------------------------


def test_compare_numbers_by_hand(tmp_path):
    base_dir, new_dir = _simple_pair(tmp_path)
    res = compare_runs(base_dir, new_dir)
    assert res["base"] == {"dir": str(base_dir), "model": "base-model"}
    assert res["new"] == {"dir": str(new_dir), "model": "new-model"}
    assert res["skipped"] == {} and res["warnings"] == []
    assert res["aes_coefficients"] == {"alpha": 1, "beta": 3, "gamma": 5}
    r = res["benchmarks"]["gsm8k"]
    assert (r["n_problems"], r["only_in_base"], r["only_in_new"]) == (4, 0, 0)
    assert r["base"]["accuracy"] == 0.5 and r["new"]["accuracy"] == 0.75
    assert r["base"]["accuracy_ci95"] == pytest.approx(list(wilson_interval(2, 4)))
    assert r["new"]["accuracy_ci95"] == pytest.approx(list(wilson_interval(3, 4)))
    # Differences 0, 0, 1, 0: mean 0.25, sample sd 0.5, se 0.25 -> 0.25 +- 1.96 * 0.25.
    assert r["accuracy_delta"] == pytest.approx(0.25)
    assert r["accuracy_delta_ci95"] == pytest.approx([0.25 - 0.49, 0.25 + 0.49])
    assert r["base"]["mean_tokens"] == 100 and r["new"]["mean_tokens"] == 60
    assert r["token_reduction"] == pytest.approx(0.4)
    # dL = 0.4, dA = (0.75 - 0.5) / 0.5 = 0.5 -> 0.4 + 3 * 0.5.
    assert r["aes"] == pytest.approx(1.9)
    assert r["base"]["samples_per_problem"] == 1 and r["base"]["n_samples"] == 4
    assert r["base"]["samples_per_problem_range"] == [1, 1]


def test_multi_sample_problems_are_averaged_per_problem(tmp_path):
    # Base, 2 samples each: p0 (T,F) 10/30 -> 0.5, 20; p1 (T,T) 40/40 -> 1, 40; p2 (F,F) 50/70 -> 0, 60.
    base = _problems("math500", {
        "p0": [(True, 10), (False, 30)], "p1": [(True, 40), (True, 40)], "p2": [(False, 50), (False, 70)],
    })  # fmt: skip
    new = _problems("math500", {"p0": [(True, 10)], "p1": [(True, 20)], "p2": [(False, 30)]})
    res = compare_runs(_write_run(tmp_path / "b", base), _write_run(tmp_path / "n", new))
    r = res["benchmarks"]["math500"]
    assert r["base"]["accuracy"] == pytest.approx(0.5) and r["new"]["accuracy"] == pytest.approx(2 / 3)
    assert r["base"]["mean_tokens"] == pytest.approx(40) and r["new"]["mean_tokens"] == pytest.approx(20)
    assert (r["base"]["samples_per_problem"], r["new"]["samples_per_problem"]) == (2, 1)
    assert (r["base"]["n_samples"], r["new"]["n_samples"]) == (6, 3)
    # Differences 0.5, 0, 0: mean 1/6, sample sd sqrt(1/12), se 1/6 -> 1/6 +- 1.96 / 6.
    assert r["accuracy_delta"] == pytest.approx(1 / 6)
    assert r["accuracy_delta_ci95"] == pytest.approx([1 / 6 - 1.96 / 6, 1 / 6 + 1.96 / 6])
    assert r["token_reduction"] == pytest.approx(0.5)
    # dL = 0.5, dA = (2/3 - 1/2) / (1/2) = 1/3 -> 0.5 + 3 * 1/3.
    assert r["aes"] == pytest.approx(1.5)
    # Wilson with n = 3 problems and 1.5 successes, worked out by hand: centre 0.5, half-width 0.37467.
    assert r["base"]["accuracy_ci95"] == pytest.approx([0.12533, 0.87467], abs=1e-4)


def test_varying_samples_per_problem_weigh_problems_equally(tmp_path):
    # p0: 1 sample, correct, 10 tokens; p1: 3 samples, wrong, 20/20/50 tokens.
    # Per problem: accuracy (1 + 0) / 2 = 0.5, tokens (10 + 30) / 2 = 20 (per sample it would be 0.25 and 25).
    base = _problems("gsm8k", {"p0": [(True, 10)], "p1": [(False, 20), (False, 20), (False, 50)]})
    new = _problems("gsm8k", {"p0": [(True, 10)], "p1": [(True, 10)]})
    res = compare_runs(_write_run(tmp_path / "b", base), _write_run(tmp_path / "n", new))
    r = res["benchmarks"]["gsm8k"]
    assert r["base"]["accuracy"] == 0.5 and r["base"]["mean_tokens"] == 20
    assert r["base"]["samples_per_problem"] is None
    assert r["base"]["samples_per_problem_range"] == [1, 3]
    assert any("vary from 1 to 3" in w for w in res["warnings"])
    assert "1–3/1" in format_comparison(res)


def test_wilson_interval_mean_matches_integer_wilson_for_binary_scores():
    assert wilson_interval_mean([1.0, 1.0, 0.0, 0.0, 1.0]) == pytest.approx(wilson_interval(3, 5))
    lo, hi = wilson_interval_mean([1.0, 1.0, 1.0])
    assert hi == 1.0 and 0 < lo < 1


# --- pairing and skipping ------------------------------------------------------------------------


def test_problems_are_paired_by_id(tmp_path):
    base = _problems("gsm8k", {"p0": [(False, 10)], "p1": [(True, 10)], "p2": [(True, 10)], "p3": [(False, 10)]})
    # New in another order, without p0, with p4 and p5 that base never answered.
    new = _problems("gsm8k", {
        "p5": [(True, 5)], "p3": [(True, 5)], "p2": [(True, 5)], "p1": [(False, 5)], "p4": [(True, 5)],
    })  # fmt: skip
    res = compare_runs(_write_run(tmp_path / "b", base), _write_run(tmp_path / "n", new))
    r = res["benchmarks"]["gsm8k"]
    assert (r["n_problems"], r["only_in_base"], r["only_in_new"]) == (3, 1, 2)
    # Paired p1, p2, p3: base (T, T, F) -> 2/3, new (F, T, T) -> 2/3; differences -1, 0, +1.
    assert r["base"]["accuracy"] == pytest.approx(2 / 3) and r["new"]["accuracy"] == pytest.approx(2 / 3)
    assert r["accuracy_delta"] == pytest.approx(0.0)
    # Sample sd 1, half-width 1.96 / sqrt(3) = 1.13: the bounds are clipped to [-1, 1].
    assert r["accuracy_delta_ci95"] == [-1.0, 1.0]
    assert r["base"]["n_samples"] == 3 and r["new"]["n_samples"] == 3
    assert any("1 only in base, 2 only in new" in w for w in res["warnings"])
    assert "| gsm8k | 3 | 1/1 | 1/2 |" in format_comparison(res)


def test_benchmark_in_one_run_only_is_skipped(tmp_path):
    base = _problems("gsm8k", {"p0": [(True, 10)]}) + _problems("math500", {"m0": [(True, 10)]})
    new = _problems("gsm8k", {"p0": [(True, 5)]}) + _problems("aime24", {"a0": [(True, 10)]})
    new += _problems("math500", {"other": [(True, 10)]})
    res = compare_runs(_write_run(tmp_path / "b", base), _write_run(tmp_path / "n", new))
    assert list(res["benchmarks"]) == ["gsm8k"]
    assert set(res["skipped"]) == {"math500", "aime24"}
    assert res["skipped"]["aime24"].startswith("only in new")
    assert "no problem id in common" in res["skipped"]["math500"]
    table = format_comparison(res)
    assert "Skipped aime24: only in new" in table and "Skipped math500: no problem id in common" in table


def test_only_in_base_reason(tmp_path):
    base = _problems("gsm8k", {"p0": [(True, 10)]}) + _problems("math500", {"m0": [(True, 10)]})
    new = _problems("gsm8k", {"p0": [(True, 5)]})
    res = compare_runs(_write_run(tmp_path / "b", base), _write_run(tmp_path / "n", new))
    assert res["skipped"] == {"math500": f"only in base ({tmp_path / 'b'})"}


def test_single_problem_delta_ci_is_nan_and_written_as_null(tmp_path):
    base = _problems("gsm8k", {"p0": [(True, 10)]})
    new = _problems("gsm8k", {"p0": [(True, 5)]})
    res = compare_runs(_write_run(tmp_path / "b", base), _write_run(tmp_path / "n", new))
    assert all(math.isnan(v) for v in res["benchmarks"]["gsm8k"]["accuracy_delta_ci95"])
    paths = write_comparison(tmp_path / "out", res)
    saved = json.loads(paths["json"].read_text())
    assert saved["benchmarks"]["gsm8k"]["accuracy_delta_ci95"] == [None, None]


# --- gold run (no token counts) ------------------------------------------------------------------


def test_null_tokens_leave_token_fields_empty(tmp_path):
    base = _problems("gsm8k", {"p0": [(True, 10)], "p1": [(False, 20)]})
    gold = _problems("gsm8k", {"p0": [(True, None)], "p1": [(True, None)]})
    res = compare_runs(_write_run(tmp_path / "b", base), _write_run(tmp_path / "gold", gold, "gold", GOLD_SETTINGS))
    r = res["benchmarks"]["gsm8k"]
    assert r["base"]["mean_tokens"] == 15 and r["new"]["mean_tokens"] is None
    assert r["token_reduction"] is None and r["aes"] is None
    assert r["new"]["accuracy"] == 1.0 and r["accuracy_delta"] == pytest.approx(0.5)
    assert res["warnings"] == []  # all null and settings unlike: expected of the grader check, not warned
    assert "| 15.0 | n/a | n/a | n/a |" in format_comparison(res)
    paths = write_comparison(tmp_path / "out", res)
    saved = json.loads(paths["json"].read_text())
    assert saved["benchmarks"]["gsm8k"]["aes"] is None
    assert paths["plot"].stat().st_size > 0


def test_partly_null_tokens_warn(tmp_path):
    base = _problems("gsm8k", {"p0": [(True, 10)], "p1": [(False, None)]})
    new = _problems("gsm8k", {"p0": [(True, 10)], "p1": [(False, 10)]})
    res = compare_runs(_write_run(tmp_path / "b", base), _write_run(tmp_path / "n", new))
    assert res["benchmarks"]["gsm8k"]["base"]["mean_tokens"] is None
    assert any("1 of 2 samples have no token count" in w for w in res["warnings"])


# --- reading folders -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "tail",
    [b'{"benchmark": "gsm8k", "id": "p9", "sam', b'{"benchmark": "gsm8k", "response": "caf\xc3'],
    ids=["torn-json", "torn-utf8"],
)
def test_torn_last_line_is_skipped_with_a_warning(tmp_path, caplog, tail):
    samples = _problems("gsm8k", {"p0": [(True, 10)], "p1": [(False, 20)]})
    folder = _write_run(tmp_path / "b", samples, tail=tail)
    with caplog.at_level(logging.WARNING, logger="mpdistill.evaluation.compare"):
        run = load_eval_dir(folder)
    assert len(run["samples"]) == 2
    assert len(run["warnings"]) == 1 and "line 3" in run["warnings"][0]
    assert "line 3 is incomplete" in caplog.text
    res = compare_runs(folder, _write_run(tmp_path / "n", samples))
    assert res["benchmarks"]["gsm8k"]["n_problems"] == 2
    assert any(w.startswith("base:") and "last line 3" in w for w in res["warnings"])


def test_corrupt_middle_line_names_file_and_line(tmp_path):
    folder = _write_run(tmp_path / "b", _problems("gsm8k", {"p0": [(True, 10)], "p1": [(False, 20)]}))
    lines = (folder / "samples.jsonl").read_text().splitlines()
    (folder / "samples.jsonl").write_text("\n".join([lines[0], "{not json", lines[1]]) + "\n")
    with pytest.raises(CompareError, match=r"samples\.jsonl:2"):
        load_eval_dir(folder)


def test_bad_record_fields_name_the_line(tmp_path):
    rec = _sample("gsm8k", "p0", True, 10)
    del rec["correct"]
    folder = _write_run(tmp_path / "b", [_sample("gsm8k", "p1", True, 10), rec])
    with pytest.raises(CompareError, match=r"line 2: missing field\(s\) correct"):
        load_eval_dir(folder)


def test_repeated_sample_keeps_the_first_with_a_warning(tmp_path):
    samples = [_sample("gsm8k", "p0", True, 10), _sample("gsm8k", "p0", False, 10), _sample("gsm8k", "p0", True, 10, 1)]
    run = load_eval_dir(_write_run(tmp_path / "b", samples))
    assert [(s["sample"], s["correct"]) for s in run["samples"]] == [(0, True), (1, True)]
    (warning,) = run["warnings"]
    assert "1 repeated (benchmark, id, sample) record(s) skipped" in warning and "line 2" in warning


def test_unfinished_run_reads_settings_from_eval_config(tmp_path, caplog):
    folder = _write_run(tmp_path / "b", [_sample("gsm8k", "p0", True, 10)], model="qwen")
    (folder / "summary.json").unlink()
    (folder / "eval_config.json").write_text(json.dumps(dict(SETTINGS, model="qwen")))
    with caplog.at_level(logging.WARNING, logger="mpdistill.evaluation.compare"):
        run = load_eval_dir(folder)
    assert run["model"] == "qwen" and run["settings"]["temperature"] == 0.6
    assert len(run["warnings"]) == 1 and "eval_config.json" in run["warnings"][0]
    assert "no summary.json" in caplog.text


def test_missing_folder_or_file(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(CompareError, match="nowhere"):
        load_eval_dir(missing)
    folder = _write_run(tmp_path / "b", [_sample("gsm8k", "p0", True, 10)])
    (folder / "summary.json").unlink()
    with pytest.raises(CompareError, match=r"summary\.json"):
        compare_runs(folder, folder)
    (folder / "samples.jsonl").unlink()
    with pytest.raises(CompareError, match=r"samples\.jsonl"):
        load_eval_dir(folder)
    (folder / "samples.jsonl").write_text("\n")
    (folder / "summary.json").write_text("{}")
    with pytest.raises(CompareError, match="no samples"):
        load_eval_dir(folder)
    with pytest.raises(ValueError):  # CompareError is a ValueError, for callers that catch those
        load_eval_dir(missing)


def test_load_eval_dir_returns_model_and_settings(tmp_path):
    folder = _write_run(tmp_path / "b", [_sample("gsm8k", "p0", True, 10)], model="qwen")
    run = load_eval_dir(folder)
    assert run["model"] == "qwen" and run["settings"]["temperature"] == 0.6
    assert run["samples"][0]["id"] == "p0" and run["warnings"] == []


# --- settings ------------------------------------------------------------------------------------


def test_different_sampling_settings_warn(tmp_path):
    samples = _problems("gsm8k", {"p0": [(True, 10)]})
    base = _write_run(tmp_path / "b", samples, "a", settings=dict(SETTINGS, seed=1, backend="vllm", batch_size=1024))
    new = _write_run(tmp_path / "n", samples, "b", settings=dict(
        SETTINGS, temperature=1.0, max_new_tokens=512, thinking=False, prompt_template="x" * 100, limit=50, n_samples=4,
    ))  # fmt: skip
    (warning,) = compare_runs(base, new)["warnings"]
    assert "not like for like" in warning
    assert "temperature: 0.6 (base) vs 1.0 (new)" in warning and "max_new_tokens: 256 (base) vs 512 (new)" in warning
    assert "thinking: null (base) vs false (new)" in warning
    assert f'prompt_template: "{{problem}}" (base) vs "{"x" * 56}... (new)' in warning
    for same_enough in ("model", "seed", "backend", "batch_size", "limit", "n_samples"):
        assert same_enough not in warning
    assert compare_runs(base, _write_run(tmp_path / "same", samples, "c"))["warnings"] == []


# --- reports -------------------------------------------------------------------------------------


def test_markdown_lists_every_benchmark_with_n(tmp_path):
    base = _problems("gsm8k", {"p0": [(True, 100)], "p1": [(False, 100)]})
    base += _problems("math500", {"m0": [(True, 200)], "m1": [(True, 200)], "m2": [(False, 200)]})
    new = _problems("gsm8k", {"p0": [(True, 50)], "p1": [(True, 50)]})
    new += _problems("math500", {"m0": [(True, 100)], "m1": [(False, 100)], "m2": [(False, 100)]})
    res = compare_runs(_write_run(tmp_path / "b", base), _write_run(tmp_path / "n", new))
    table = format_comparison(res)
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    assert rows[0].startswith("| benchmark | n |")
    assert rows[1].startswith("| gsm8k | 2 | 1/1 | 0/0 | 50.0 [")
    assert rows[2].startswith("| math500 | 3 | 1/1 | 0/0 | 66.7 [")
    assert "| +50.0 [" in rows[1] and "| 100.0 | 50.0 | +50.0% |" in rows[1]
    assert "Wilson" in table and "AES =" in table and "paired" in table


def test_write_comparison_files(tmp_path):
    res = compare_runs(*_simple_pair(tmp_path))
    paths = write_comparison(tmp_path / "report", res)
    assert set(paths) == {"json", "markdown", "plot"}
    assert [p.name for p in paths.values()] == ["compare.json", "compare.md", "compare.png"]
    saved = json.loads(paths["json"].read_text(encoding="utf-8"))
    assert saved["benchmarks"]["gsm8k"]["token_reduction"] == pytest.approx(0.4)
    md = paths["markdown"].read_text(encoding="utf-8")
    assert "base-model" in md and "new-model" in md and "| gsm8k | 4 |" in md
    assert paths["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in (tmp_path / "report").iterdir()) == ["compare.json", "compare.md", "compare.png"]


def test_plot_comparison_writes_a_png(tmp_path):
    res = compare_runs(*_simple_pair(tmp_path))
    plot_comparison(res, tmp_path / "plot.png")
    data = (tmp_path / "plot.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
