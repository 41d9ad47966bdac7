"""``mpdistill view`` without a browser: reading run and evaluation folders (a live run's torn last
line included), the errors that name a file and line, the comparison's flips, which texts go on
the page, the embedded data and the command. The page itself is tested in test_view_browser.py."""

from __future__ import annotations

import html
import json
import re
from collections import Counter

import pytest
from typer.testing import CliRunner
from view_folders import (FLIP_COUNTS, PAIRED, STEPS, eval_samples, jsonl, rollout_records, train_log_entries, write_eval,
                          write_run)

from mpdistill.cli import app
from mpdistill.evaluation.stats import wilson_interval_mean
from mpdistill.view import build_page, write_view
from mpdistill.view.flips import BOTH_RIGHT, BOTH_WRONG, RIGHT_TO_WRONG, WRONG_TO_RIGHT, compare_problems, flip_kind
from mpdistill.view.load import MISSING, Evaluation, Run, ViewError, read_path
from mpdistill.view.sampling import choose_texts
from mpdistill.view.sections import eval_section, run_section, run_status

runner = CliRunner()


def page_data(page: str) -> dict:
    """The JSON a built page carries."""
    (text,) = re.findall(r'<script type="application/json" id="page-data">(.*?)</script>', page, re.S)
    return json.loads(text)


# ---------------------------------------------------------------------------------------------
# Reading a run.


def test_a_run_folder_is_read_into_columns_and_per_step_entries(tmp_path):
    records = rollout_records()
    run = read_path(write_run(tmp_path / "run", records))
    assert isinstance(run, Run) and run.warnings == []
    assert run_status(run) == "finished: the student is saved in model/"
    r = run.rollouts
    assert len(r) == len(records) and r.torn_line is None
    assert r.line == list(range(1, len(records) + 1))
    assert r.step == [x["step"] for x in records]
    assert [r.reasons[code] for code in r.reason] == [x["reason"] for x in records]
    assert r.accepted == [int(x["accepted"]) for x in records]
    assert r.rewrite_tokens == [MISSING if x["rewrite_tokens"] is None else x["rewrite_tokens"] for x in records]
    assert r.teacher_tokens == [MISSING] * len(records)
    assert r.correct == [int(x["student_correct"]) for x in records]
    assert [e["step"] for e in run.log] == list(range(1, STEPS + 1))
    assert run.log_summary["train_runtime"] == 9.0
    assert run.recipe == {"method": "mpd", "task": "math", "student": "s", "teacher": "t", "training.steps": STEPS,
                          "training.batch_size": 16}


def test_older_rollouts_without_answer_fields_and_off_policy_kd_records_are_read(tmp_path):
    folder = tmp_path / "kd"
    folder.mkdir()
    kd = {"step": 0, "index": 0, "prompt": [{"role": "user", "content": "2+2?"}], "student": None, "rewrite": None,
          "teacher": "4", "accepted": True, "reason": "accepted", "student_tokens": None, "rewrite_tokens": None,
          "teacher_tokens": 3, "trained_on": "teacher", "route_kept": None, "process": 0}
    (folder / "rollouts.jsonl").write_bytes(jsonl([kd, {**kd, "index": 1, "accepted": False, "reason": "wrong_answer",
                                                       "trained_on": "dropped"}]))
    section = run_section(read_path(folder), "kd", max_texts=10)
    rollouts = section["rollouts"]
    assert rollouts["columns"]["teacher_tokens"] == [3, 3]
    assert rollouts["columns"]["correct"] == [MISSING, MISSING]
    assert rollouts["accuracy"] == {"steps": [], "graded": [], "correct": []}
    assert rollouts["trained_on_names"] == ["teacher", "dropped"]
    assert rollouts["texts"][0]["teacher"] == "4" and rollouts["texts"][0]["gold"] is None
    assert rollouts["prompts"] == ["[user]\n2+2?"]
    assert section["log"] is None and section["status"] == "no training step logged yet"


@pytest.mark.parametrize("method, teacher", [("opd", "t"), ("grpo_length", None),
                                             ("self_distill", "s (frozen, asked to be concise)")])
def test_a_run_that_never_rewrites_shows_its_samples_as_sampled_and_its_own_teacher(tmp_path, method, teacher):
    folder = tmp_path / method
    folder.mkdir()
    (folder / "recipe.yaml").write_text(f"method: {method}\ntask: chain\nstudent: s\nteacher: t\n"
                                        "rewrite:\n  max_ratio: 0.9\n")
    record = {"step": 0, "index": 0, "prompt": "Q:1+2\n", "gold": "3", "student_answer": "3", "student_correct": True,
              "student": "so 1+2=3\nA:3", "student_tokens": 9, "trained_on": "student", "process": 0}
    (folder / "rollouts.jsonl").write_bytes(jsonl([record, {**record, "index": 1}]))
    run = read_path(folder)
    section = run_section(run, method, max_texts=10)
    assert section["rollouts"]["reasons"] == ["as_sampled"]
    assert section["rollouts"]["columns"]["accepted"] == [0, 0]
    assert run.recipe.get("teacher") == teacher and "rewrite.max_ratio" not in run.recipe
    assert 'reason === "as_sampled"' in build_page([folder], max_texts=10)  # drawn as "no rewrite", not "rejected"


def test_the_torn_last_lines_of_a_live_run_are_left_out(tmp_path, caplog):
    records = rollout_records()
    folder = write_run(tmp_path / "live", records, finished=False)
    with (folder / "rollouts.jsonl").open("ab") as f:
        f.write(b'{"step": 8, "index": 0, "prompt": "Q: half writ')
    # Still training: no end-of-training summary yet, and the next entry half written.
    (folder / "train_log.jsonl").write_bytes(jsonl(train_log_entries(records)[:-1]) + b'{"loss": 0.1, "st')
    with caplog.at_level("WARNING"):
        run = read_path(folder)
    assert len(run.rollouts) == len(records)
    assert run.rollouts.torn_line == len(records) + 1
    assert len(run.log) == STEPS
    assert any(f"line {len(records) + 1}" in w for w in run.warnings)
    assert any("train_log.jsonl" in w for w in run.warnings)
    assert "rollouts.jsonl: line" in caplog.text
    section = page_data(build_page([folder], max_texts=20))["sections"][0]
    assert section["rollouts"]["n"] == len(records)
    assert section["status"] == f"running, or stopped: last logged step {STEPS} of {STEPS}"


def test_a_torn_multibyte_character_on_the_last_line_is_tolerated(tmp_path):
    folder = write_run(tmp_path / "live", rollout_records()[:3], finished=False)
    with (folder / "rollouts.jsonl").open("ab") as f:
        f.write('{"step": 1, "student": "é'.encode()[:-1])
    assert len(read_path(folder).rollouts) == 3


def test_a_malformed_middle_line_names_the_file_and_line(tmp_path):
    records = rollout_records()[:5]
    folder = write_run(tmp_path / "run", records)
    lines = jsonl(records).split(b"\n")
    lines[2] = b'{"step": 0, "index": oops}'
    (folder / "rollouts.jsonl").write_bytes(b"\n".join(lines))
    with pytest.raises(ViewError, match=rf"^{re.escape(str(folder / 'rollouts.jsonl'))}, line 3: not a valid JSON record"):
        read_path(folder)


@pytest.mark.parametrize("change, message", [
    ({"step": "3"}, r"line 2: 'step' must be a non-negative integer, got '3'"),
    ({"accepted": "yes"}, r"line 2: 'accepted' must be true or false or null, got 'yes'"),
    ({"rewrite_tokens": -4}, r"line 2: 'rewrite_tokens' must be a non-negative integer or null, got -4"),
])
def test_a_record_with_a_wrong_field_names_the_line(tmp_path, change, message):
    records = rollout_records()[:3]
    folder = write_run(tmp_path / "run", records)
    records[1].update(change)
    (folder / "rollouts.jsonl").write_bytes(jsonl(records))
    with pytest.raises(ViewError, match=message):
        read_path(folder)


def test_a_malformed_train_log_line_names_the_file_and_line(tmp_path):
    folder = write_run(tmp_path / "run")
    log = (folder / "train_log.jsonl").read_bytes().split(b"\n")
    log[1] = b"not json"
    (folder / "train_log.jsonl").write_bytes(b"\n".join(log))
    with pytest.raises(ViewError, match=rf"^{re.escape(str(folder / 'train_log.jsonl'))}:2: not a valid JSON record"):
        read_path(folder)


def test_a_path_that_is_neither_kind_of_folder_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ViewError, match=r"empty: neither a training run folder .* nor an evaluation"):
        read_path(tmp_path / "empty")
    with pytest.raises(ViewError, match=r"missing: no such file or folder"):
        read_path(tmp_path / "missing")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ViewError, match=r"notes.txt: neither"):
        read_path(tmp_path / "notes.txt")


# ---------------------------------------------------------------------------------------------
# Reading an evaluation.


def test_an_eval_folder_and_a_bare_samples_file_are_read_alike(tmp_path):
    samples = eval_samples(0)
    folder = read_path(write_eval(tmp_path / "base", samples, model="base-model"))
    bare_path = tmp_path / "base.jsonl"
    bare_path.write_bytes(jsonl(samples))
    bare = read_path(bare_path)
    assert isinstance(folder, Evaluation) and isinstance(bare, Evaluation)
    assert folder.model == "base-model" and bare.model is None
    assert folder.samples == bare.samples and len(bare.samples) == len(samples)


def test_an_eval_section_has_every_sample_and_per_benchmark_accuracy_with_its_interval(tmp_path):
    samples = eval_samples(1)
    section = eval_section(read_path(write_eval(tmp_path / "new", samples)), "new", max_texts=100)
    assert section["n"] == len(samples) and section["benchmark_names"] == ["gsm8k", "math500"]
    assert section["columns"]["correct"] == [int(s["correct"]) for s in samples]
    assert section["texts"] == [s["response"] for s in samples]
    gsm8k, math500 = section["benchmarks"]
    scores = [sum(new) / len(new) for (bench, _), (_, new) in PAIRED.items() if bench == "math500"]
    assert math500["problems"] == 3 and math500["samples"] == 6
    assert math500["accuracy"] == pytest.approx(sum(scores) / 3)
    assert math500["ci95"] == pytest.approx(list(wilson_interval_mean(scores)))
    assert gsm8k["mean_tokens"] == 60 and gsm8k["median_tokens"] == 60 and gsm8k["truncated"] == 0


def test_a_torn_last_line_of_a_samples_file_is_left_out(tmp_path):
    path = tmp_path / "live.jsonl"
    path.write_bytes(jsonl(eval_samples(0)) + b'{"benchmark": "gsm8k", "id": "9", "resp')
    evaluation = read_path(path)
    assert len(evaluation.samples) == len(eval_samples(0))
    assert any("incomplete last line" in w for w in evaluation.warnings)


def test_a_malformed_middle_line_of_a_samples_file_names_the_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    lines = jsonl(eval_samples(0)).split(b"\n")
    lines[3] = b"{oops"
    path.write_bytes(b"\n".join(lines))
    with pytest.raises(ViewError, match=rf"{re.escape(str(path))}:4: not a valid JSON record"):
        read_path(path)


# ---------------------------------------------------------------------------------------------
# The comparison.


@pytest.mark.parametrize("base, new, kind", [
    (1.0, 0.0, RIGHT_TO_WRONG), (0.0, 1.0, WRONG_TO_RIGHT), (1.0, 1.0, BOTH_RIGHT), (0.0, 0.0, BOTH_WRONG),
    (1.0, 0.5, RIGHT_TO_WRONG),  # half right is not right: a majority is needed
    (0.5, 2 / 3, WRONG_TO_RIGHT), (0.75, 0.6, BOTH_RIGHT), (0.5, 0.25, BOTH_WRONG),
])
def test_flip_kind_is_a_change_of_the_majority(base, new, kind):
    assert flip_kind(base, new) == kind


def test_problems_are_paired_counted_and_listed_flips_first(tmp_path):
    base = eval_samples(0) + [{**eval_samples(0)[0], "id": "only-base"}]
    new = eval_samples(1) + [{**eval_samples(1)[0], "id": "only-new"}, {**eval_samples(1)[0], "id": "also-new"}]
    result = compare_problems(base, new)
    assert result["counts"] == FLIP_COUNTS
    assert (result["only_in_base"], result["only_in_new"]) == (1, 2)
    kinds = [p["kind"] for p in result["problems"]]
    assert kinds == sorted(kinds, key=[RIGHT_TO_WRONG, WRONG_TO_RIGHT, BOTH_RIGHT, BOTH_WRONG].index)
    a = next(p for p in result["problems"] if p["id"] == "a")
    assert (a["base_score"], a["new_score"], a["base_tokens"], a["new_tokens"]) == (1.0, 0.5, 105, 65)
    assert [base[i]["sample"] for i in a["base_samples"]] == [0, 1]


# ---------------------------------------------------------------------------------------------
# Which texts go on the page.


def test_choose_texts_is_reproducible_capped_and_covers_every_stratum():
    strata = ["common"] * 900 + ["rare"] * 5 + ["middle"] * 95
    chosen = choose_texts(strata, 60)
    assert chosen == choose_texts(strata, 60) and len(chosen) == 60 == len(set(chosen))
    per = Counter(strata[i] for i in chosen)
    assert per == {"rare": 5, "middle": 27, "common": 28}  # the rare ones all, the rest shared equally
    common = [i for i in chosen if strata[i] == "common"]
    assert min(common) < 100 and max(common) > 800  # spread over the whole file
    assert choose_texts(strata, 5000) == list(range(1000))
    assert choose_texts(strata, 0) == []


def test_choose_texts_takes_first_the_samples_asked_for_when_they_fit():
    strata = ["a"] * 50 + ["b"] * 50
    chosen = choose_texts(strata, 20, first=range(90, 100))
    assert set(range(90, 100)) <= set(chosen) and len(chosen) == 20
    too_many = choose_texts(strata, 20, first=range(0, 30))
    assert len(too_many) == 20 and Counter(strata[i] for i in too_many) == {"a": 10, "b": 10}


def test_a_run_page_carries_capped_texts_with_the_last_step_reproducibly(tmp_path):
    records = rollout_records()
    folder = write_run(tmp_path / "run", records)
    first, again = (page_data(build_page([folder], max_texts=30))["sections"][0]["rollouts"] for _ in range(2))
    assert first == again
    column = first["columns"]["text"]
    with_text = [i for i, t in enumerate(column) if t != MISSING]
    assert len(with_text) == len(first["texts"]) == 30
    assert sorted(column[i] for i in with_text) == list(range(30))
    last_step = [i for i, r in enumerate(records) if r["step"] == STEPS - 1]
    assert set(last_step) <= set(with_text)
    for i in with_text:
        text = first["texts"][column[i]]
        assert text["student"] == records[i]["student"] and first["prompts"][text["prompt"]] == records[i]["prompt"]
        assert text["gold"] == records[i]["gold"] and text["answer"] == records[i]["student_answer"]


def test_flipped_problems_texts_come_first_in_a_comparison(tmp_path):
    base = write_eval(tmp_path / "base", eval_samples(0))
    new = write_eval(tmp_path / "new", eval_samples(1))
    sections = page_data(build_page([base, new], max_texts=8))["sections"]
    assert [s["kind"] for s in sections] == ["eval", "eval", "comparison"]
    flipped = {("gsm8k", "1"), ("gsm8k", "2"), ("gsm8k", "4"), ("math500", "a"), ("math500", "b")}  # 7 samples a side
    for section in sections[:2]:
        columns = section["columns"]
        with_text = {i for i, t in enumerate(columns["text"]) if t != MISSING}
        samples_of_flips = {i for i in range(section["n"])
                            if (section["benchmark_names"][columns["benchmark"][i]], columns["id"][i]) in flipped}
        assert len(with_text) == 8 and len(samples_of_flips) == 7 and samples_of_flips <= with_text
    comparison = sections[2]
    assert comparison["counts"] == FLIP_COUNTS and (comparison["base"], comparison["new"]) == (0, 1)


# ---------------------------------------------------------------------------------------------
# The page and the command.


def test_text_that_looks_like_html_cannot_break_out_of_the_page_data(tmp_path):
    samples = eval_samples(0)
    samples[0]["response"] = "</script><script>alert('x')</script><!-- \u2028 \ud800"
    path = tmp_path / "odd.jsonl"
    path.write_text(json.dumps(samples[0]) + "\n")  # json.dumps writes the lone surrogate as an escape
    out = write_view([path], tmp_path / "page.html", max_texts=10)
    page = out.read_text(encoding="utf-8")
    assert page.count("</script>") == 2  # the data's and the script's own
    assert page_data(page)["sections"][0]["texts"] == [samples[0]["response"]]


def test_the_page_is_self_contained(tmp_path):
    page = build_page([write_run(tmp_path / "run")], max_texts=5)
    assert not re.search(r"""(src|href)\s*=\s*["'](?!data:)""", page)  # nothing loaded from elsewhere
    assert "@import" not in page and "fetch(" not in page
    title = re.search(r"<title>(.*?)</title>", page).group(1)
    assert html.unescape(title) == "mpdistill view: run"


def test_view_command_writes_the_page_into_the_first_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_run(tmp_path / "run")
    write_eval(tmp_path / "base", eval_samples(0))
    (tmp_path / "new.jsonl").write_bytes(jsonl(eval_samples(1)))
    result = runner.invoke(app, ["view", "run", "base", "new.jsonl"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "wrote run/view.html"
    data = page_data((tmp_path / "run" / "view.html").read_text(encoding="utf-8"))
    assert [(s["kind"], s["label"]) for s in data["sections"]] == [
        ("run", "run"), ("eval", "base"), ("eval", "new.jsonl"), ("comparison", "base → new.jsonl")]
    assert data["max_texts"] == 2000 and data["title"] == "mpdistill view: run, base, new.jsonl"

    result = runner.invoke(app, ["view", "new.jsonl", "--out", "pages/both.html", "--max-texts", "0"])
    assert result.exit_code == 0, result.output
    assert page_data((tmp_path / "pages" / "both.html").read_text(encoding="utf-8"))["sections"][0]["texts"] == []


@pytest.mark.parametrize("args, message", [
    (["view", "nowhere"], "error: nowhere: no such file or folder"),
    (["view", "run", "--max-texts", "-1"], "error: --max-texts must be at least 0, got -1"),
    (["view", "run", "--out", "run"], "error: --out run: is a folder; give a file name"),
])
def test_view_command_errors_are_one_line_with_exit_code_2(tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    write_run(tmp_path / "run")
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and result.output.strip() == message


def test_a_halted_run_says_why_it_stopped_and_shows_its_warnings(tmp_path):
    folder = write_run(tmp_path / "run", finished=False)
    log = (folder / "train_log.jsonl").read_text().splitlines()
    summary = log.pop()  # transformers logs its summary after a halt too
    log += [json.dumps({"step": 3, "mpd/warning": "MPD is mostly falling back here"}),
            json.dumps({"step": 4, "mpd/halt": "training stopped at step 4: rewrite.min_acceptance_rate is 0.2"}),
            summary]
    (folder / "train_log.jsonl").write_text("\n".join(log) + "\n")
    section = run_section(read_path(folder), "run", 100)
    assert section["status"] == "stopped at step 4: training stopped at step 4: rewrite.min_acceptance_rate is 0.2"
    assert section["warnings"][:2] == ["step 3: MPD is mostly falling back here",
                                       "step 4: training stopped at step 4: rewrite.min_acceptance_rate is 0.2"]


def test_a_runs_own_log_file_is_refused_naming_its_folder(tmp_path):
    folder = write_run(tmp_path / "run")
    for name in ("rollouts.jsonl", "train_log.jsonl"):
        with pytest.raises(ViewError, match=rf"{name}: a training run's log; give the run's folder \({re.escape(str(folder))}\)"):
            read_path(folder / name)


def test_recipe_values_yaml_reads_as_dates_are_shown_as_written(tmp_path):
    folder = write_run(tmp_path / "run")
    (folder / "recipe.yaml").write_text("method: mpd\nstudent: 2026-01-02\n")
    data = page_data(build_page([folder], max_texts=10))
    assert data["sections"][0]["recipe"]["student"] == "2026-01-02"
