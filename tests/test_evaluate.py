"""Statistics and report tests for mpdistill.evaluation.stats, against values computed by hand."""

from __future__ import annotations

import json
import math

import pytest

from mpdistill.evaluation.stats import (
    aes,
    build_results,
    format_table,
    paired_delta_ci,
    summarize,
    wilson_interval,
    write_report,
)


def _records(correct: list[bool], tokens: list[int], prompts: list[str] | None = None) -> list[dict]:
    recs = [{"correct": c, "tokens": t} for c, t in zip(correct, tokens)]
    if prompts is not None:
        for r, p in zip(recs, prompts):
            r["prompt"] = p
    return recs


# --- intervals -----------------------------------------------------------------------------------


def test_wilson_known_value():
    lo, hi = wilson_interval(8, 10)
    assert lo == pytest.approx(0.4902, abs=1e-3)
    assert hi == pytest.approx(0.9433, abs=1e-3)


def test_wilson_extremes_stay_in_unit_interval():
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and 0.0 < hi < 0.35  # 0/10 -> upper ~0.278
    lo, hi = wilson_interval(10, 10)
    assert hi == 1.0 and 0.65 < lo < 1.0


@pytest.mark.parametrize("successes, n", [(0, 0), (3, 2), (-1, 5)])
def test_wilson_rejects_bad_counts(successes, n):
    with pytest.raises(ValueError):
        wilson_interval(successes, n)


def test_paired_delta_ci_by_hand():
    # Differences 0, 0, 1, 0: mean 0.25, sample sd 0.5, se 0.25 -> 0.25 +- 1.96 * 0.25.
    delta, lo, hi = paired_delta_ci([True, True, False, False], [True, True, True, False])
    assert delta == pytest.approx(0.25)
    assert lo == pytest.approx(0.25 - 0.49)
    assert hi == pytest.approx(0.25 + 0.49)


def test_paired_delta_ci_of_token_counts_is_not_clipped():
    # Differences -10, -6, -8, -8: mean -8, sd 1.633, se 0.8165; an accuracy's [-1, 1] must not clip it.
    delta, lo, hi = paired_delta_ci([50, 40, 45, 44], [40, 34, 37, 36], bounds=None)
    assert delta == pytest.approx(-8.0)
    se = (8 / 3) ** 0.5 / 2
    assert (lo, hi) == (pytest.approx(-8 - 1.96 * se), pytest.approx(-8 + 1.96 * se))
    assert paired_delta_ci([50, 40, 45, 44], [40, 34, 37, 36])[1] == -1.0  # clipped, as for accuracies


def test_paired_delta_ci_length_mismatch_names_both_lengths():
    with pytest.raises(ValueError, match=r"3.*2"):
        paired_delta_ci([True, False, True], [True, False])


# --- AES -----------------------------------------------------------------------------------------


def test_aes_accuracy_gain():
    # dL = (1000 - 600) / 1000 = 0.4, dA = (0.84 - 0.8) / 0.8 = 0.05 -> 0.4 + 3 * 0.05.
    assert aes(0.84, 600, 0.8, 1000) == pytest.approx(0.55)


def test_aes_accuracy_loss_is_penalised_by_gamma():
    # dL = 0.5, dA = (0.76 - 0.8) / 0.8 = -0.05 -> 0.5 - 5 * 0.05.
    assert aes(0.76, 500, 0.8, 1000) == pytest.approx(0.25)


def test_aes_undefined_for_zero_base():
    assert math.isnan(aes(0.5, 100, 0.0, 1000))
    assert math.isnan(aes(0.5, 100, 0.5, 0))


# --- summaries and results -----------------------------------------------------------------------


def test_summarize():
    recs = _records([True, False, True, True], [10, 20, 30, 100])
    recs[3]["truncated"] = True
    s = summarize(recs)
    assert s["n"] == 4
    assert s["accuracy"] == 0.75
    assert s["accuracy_ci95"] == pytest.approx(list(wilson_interval(3, 4)))
    assert s["mean_tokens"] == 40.0
    assert s["median_tokens"] == 25.0
    assert s["truncation_rate"] == 0.25


def test_summarize_empty_raises():
    with pytest.raises(ValueError):
        summarize([])


def _two_methods() -> dict[str, list[dict]]:
    prompts = ["p0", "p1", "p2", "p3"]
    return {
        "base": _records([True, True, False, False], [100, 100, 100, 100], prompts),
        "short": _records([True, True, True, False], [60, 60, 60, 60], prompts),
    }


def test_build_results_schema_and_values():
    res = build_results(7, _two_methods())
    assert res["seed"] == 7 and res["n_eval"] == 4
    assert res["aes_coefficients"] == {"alpha": 1, "beta": 3, "gamma": 5}
    assert list(res["methods"]) == ["base", "short"]
    expected_keys = {
        "accuracy", "accuracy_ci95", "mean_tokens", "n", "token_reduction_vs_base",
        "accuracy_delta_vs_base", "accuracy_delta_ci95_vs_base", "aes", "median_tokens",
        "truncation_rate",
    }  # fmt: skip
    for m in res["methods"].values():
        assert expected_keys <= set(m)

    base = res["methods"]["base"]
    assert base["token_reduction_vs_base"] == 0
    assert base["accuracy_delta_vs_base"] == 0
    assert base["accuracy_delta_ci95_vs_base"] == [0, 0]
    assert base["aes"] == 0

    short = res["methods"]["short"]
    assert short["accuracy"] == 0.75
    assert short["token_reduction_vs_base"] == pytest.approx(0.4)
    assert short["accuracy_delta_vs_base"] == pytest.approx(0.25)
    assert short["accuracy_delta_ci95_vs_base"] == pytest.approx([0.25 - 0.49, 0.25 + 0.49])
    # dL = 0.4, dA = (0.75 - 0.5) / 0.5 = 0.5 -> 0.4 + 3 * 0.5.
    assert short["aes"] == pytest.approx(1.9)


def test_build_results_rejects_different_n():
    methods = _two_methods()
    methods["short"] = methods["short"][:3]
    with pytest.raises(ValueError, match="same number of problems"):
        build_results(0, methods)


def test_build_results_missing_base_lists_methods():
    methods = _two_methods()
    with pytest.raises(ValueError, match=r"base.*short"):
        build_results(0, {"short": methods["short"], "other": methods["base"]})


def test_build_results_rejects_misaligned_prompts():
    methods = _two_methods()
    methods["short"][2]["prompt"] = "something else"
    with pytest.raises(ValueError, match="index 2"):
        build_results(0, methods)


def test_format_table_rows_and_note():
    table = format_table(build_results(3, _two_methods()))
    lines = table.strip().splitlines()
    assert lines[0].startswith("| method | n |")
    assert lines[2].startswith("| base | 4 | 50.0 [")
    assert lines[3].startswith("| short | 4 | 75.0 [")
    assert "+40.0%" in lines[3] and "+25.0 [" in lines[3] and "1.900" in lines[3]
    assert "Wilson" in lines[-1] and "paired" in lines[-1] and "AES" in lines[-1]


# --- report files --------------------------------------------------------------------------------


def test_write_report(tmp_path):
    results = build_results(11, _two_methods())
    paths = write_report(tmp_path / "report", results)

    assert {p.name for p in paths.values()} == {"results.json", "results.md", "tradeoff.png"}
    assert sorted(p.name for p in (tmp_path / "report").iterdir()) == sorted(
        ["results.json", "results.md", "tradeoff.png"]
    )  # no temporary files left behind
    assert json.loads(paths["json"].read_text()) == results
    markdown = paths["markdown"].read_text()
    assert markdown.startswith("# ") and "| short |" in markdown and "Seed: 11" in markdown
    assert paths["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_write_report_writes_nan_as_null(tmp_path):
    methods = {
        "base": _records([False, False], [10, 10]),
        "other": _records([True, False], [5, 5]),
    }
    paths = write_report(tmp_path, build_results(0, methods))
    assert json.loads(paths["json"].read_text())["methods"]["other"]["aes"] is None
    assert "n/a" in paths["markdown"].read_text()
