"""The two shipped embedded worlds have the properties docs/EMBEDDED.md claims, measured here on held-out
validation problems by greedy decoding (the study's headline), and every command takes the world as a choice."""

import json
import random

import pytest
from typer.testing import CliRunner

from mpdistill.cli import app
from mpdistill.models.worlds import WORLDS
from mpdistill.models.loading import load_model
from mpdistill.rollout import GenerationSettings, generate_texts
from mpdistill.tasks import chain
from mpdistill.tasks.problems import chain_problems

N = 200


def greedy(name: str, suffix: str = "") -> dict:
    model, tok = load_model(name)
    problems = chain_problems(N, 0, split="validation")
    ids = [tok(p["prompt"] + suffix, add_special_tokens=False)["input_ids"] for p in problems]
    gens = generate_texts(model, tok, ids, GenerationSettings(max_new_tokens=256, temperature=0.0, batch_size=N))
    return {"accuracy": sum(chain.is_correct(g.text, p["answer"]) for g, p in zip(gens, problems)) / N,
            "tokens": sum(len(g.token_ids) for g in gens) / N}


@pytest.fixture(scope="module")
def verbose_world():
    w = WORLDS["verbose-teacher"]
    return {role: greedy(w.model_name(role)) for role in ("student", "teacher")}


def test_the_verbose_teacher_is_about_as_long_as_the_student_and_clearly_more_accurate(verbose_world):
    student, teacher = verbose_world["student"], verbose_world["teacher"]
    assert 0.55 <= student["accuracy"] <= 0.80, student  # nothing saturates
    assert teacher["accuracy"] >= student["accuracy"] + 0.10, (student, teacher)
    assert teacher["tokens"] >= 0.8 * student["tokens"], (student, teacher)


def test_in_the_verbose_world_concision_is_what_the_teacher_does_when_asked(verbose_world):
    w = WORLDS["verbose-teacher"]
    plain, asked = verbose_world["teacher"], greedy(w.model_name("teacher"), chain.CONCISE_INSTRUCTION)
    assert asked["tokens"] < 0.5 * plain["tokens"] and asked["accuracy"] >= 0.8
    model, tok = load_model(w.model_name("teacher"))
    problem = chain.ChainProblem.parse("Q:7+3-5+9-2")
    trace = chain.verbose_trace(problem, "P", random.Random(0), chain.VERBOSE)
    gens = generate_texts(model, tok, [chain.rewrite_prompt(problem.prompt, trace)],
                          GenerationSettings(max_new_tokens=128, temperature=0.0, batch_size=1))
    assert gens[0].text == chain.concise_trace(problem, "P")  # along the trace's own route (P), not its own (L)


def test_the_concise_teacher_world_is_the_one_the_first_study_measured():
    w = WORLDS["concise-teacher"]
    student, teacher = greedy(w.model_name("student")), greedy(w.model_name("teacher"))
    assert teacher["tokens"] < 0.5 * student["tokens"]  # imitating this teacher compresses


@pytest.mark.parametrize("command", [["demo", "--quick"], ["study", "--quick", "--methods", "mpd,opd"]])
def test_demo_and_study_take_the_world_and_name_it(tmp_path, command):
    out = tmp_path / "run"
    result = CliRunner().invoke(app, [*command, "--world", "verbose-teacher", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "world=verbose-teacher" in result.output
    if command[0] == "demo":
        assert json.loads((out / "results.json").read_text())["world"] == "verbose-teacher"
        assert "World: verbose-teacher" in (out / "results.md").read_text()
        recipe = (out / "runs" / "mpd" / "recipe.yaml").read_text()
    else:
        assert json.loads((out / "study.json").read_text())["world"]["name"] == "verbose-teacher"
        assert "### verbose-teacher: evaluation by greedy decoding" in (out / "study.md").read_text()
        recipe = next((out / "runs" / "mpd").rglob("recipe.yaml")).read_text()
    assert "embedded:verbose-teacher/student" in recipe and "embedded:verbose-teacher/teacher" in recipe
