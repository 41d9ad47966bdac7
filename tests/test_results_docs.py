"""The shipped study files are what docs/RESULTS.md and the README say they are: the verbose-teacher world has
the regime it claims, every arm the issue of controls asked for ran, no choice at a grid's end goes unflagged,
and each greedy row printed in RESULTS.md matches its study.json to the digit."""

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STUDIES = ROOT / "docs" / "assets" / "study"


def study(world: str) -> dict:
    return json.loads((STUDIES / world / "study.json").read_text())


def test_the_verbose_teacher_study_is_in_the_regime_it_claims():
    s = study("verbose-teacher")
    rows = {r["model"]: r for r in s["tables"]["0"]}
    assert rows["teacher"]["mean_tokens"]["mean"] >= 0.8 * rows["base"]["mean_tokens"]["mean"]
    assert rows["base"]["accuracy"]["mean"] <= 0.80
    assert rows["teacher"]["accuracy"]["mean"] >= rows["base"]["accuracy"]["mean"] + 0.10
    assert {"opd_mixed", "grpo_length", "grpo_length_ungated", "mpd_drop", "mpd_concise_teacher",
            "self_distill_refresh"} <= set(s["plan"]["arms"])
    assert s["plan"]["seeds"] == [0, 1, 2] and s["plan"]["temperatures"] == [0.0, 0.6, 1.0] and not s["plan"]["quick"]


@pytest.mark.parametrize("world", ["verbose-teacher", "concise-teacher"])
def test_every_choice_at_a_grids_end_is_flagged(world):
    s = study(world)
    for arm, t in s["tuning"].items():
        chosen = t["chosen"]
        for dim, where in t["position"].items():
            ladder = s["plan"]["ladders"][dim]["ladder"]
            line = {g["setting"][dim] for g in t["tried"] if all(g["setting"][o] == chosen[o] for o in chosen if o != dim)}
            at_end = chosen[dim] in (min(line), max(line))
            assert (where != "interior") == at_end, (arm, dim)
            if at_end:  # flagged, and the ladder could not go further that way
                assert dim in t["flagged"] and chosen[dim] in (ladder[0], ladder[-1]), (arm, dim)


@pytest.mark.parametrize("world", ["verbose-teacher", "concise-teacher"])
def test_results_md_prints_the_studys_greedy_numbers(world):
    s = study(world)
    text = (ROOT / "docs" / "RESULTS.md").read_text()
    section = text.split(f"## The {world} world", 1)[1].split("\n## ", 1)[0]
    table = section.split("### Greedy decoding (the headline)", 1)[1]
    labels = {a: d["label"] for a, d in s["plan"]["arm_definitions"].items()}
    labels.update(base="base student", teacher="teacher")
    for row in s["tables"]["0"]:
        label = labels[row["model"]] + (" †" if row["model"] in s["tuning"] and s["tuning"][row["model"]]["flagged"] else "")
        line = next(line for line in table.splitlines() if re.match(rf"\| \**{re.escape(label)}\** \|", line))
        assert f"{100 * row['accuracy']['mean']:.1f}" in line and f"{row['mean_tokens']['mean']:.1f}" in line, line
        lo, hi = row["accuracy_ci95"]
        assert f"[{100 * lo:.1f}, {100 * hi:.1f}]" in line, line
