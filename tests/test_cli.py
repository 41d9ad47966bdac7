"""The command line: a bad recipe or model fails with exit code 2 and a message naming the problem,
before any model is trained. Paths are kept short (relative to a temporary working directory) so
the console never wraps a message."""

import pytest
from typer.testing import CliRunner

from mpdistill.cli import app

runner = CliRunner()


@pytest.fixture
def here(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def fails(args: list[str]) -> str:
    """Run the CLI, require exit code 2 (a clear error, nothing trained), return what it printed."""
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    return result.output


def recipe_text(student: str = "embedded:student", teacher: str = "embedded:teacher", extra: str = "") -> str:
    return (
        f"method: mpd\nstudent: {student}\nteacher: {teacher}\n"
        "data:\n  n_train: 4\ntraining:\n  steps: 1\n  batch_size: 2\n" + extra
    )


def test_help_lists_the_commands():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("demo", "train", "bootstrap", "recipes"):
        assert command in result.output
    assert "Mixed-Policy Distillation" in result.output


def test_version_and_python_dash_m():
    import subprocess
    import sys

    import torch
    import transformers
    import trl

    from mpdistill import __version__

    proc = subprocess.run([sys.executable, "-m", "mpdistill", "--version"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == (f"mpdistill {__version__} (TRL {trl.__version__}, Transformers {transformers.__version__}, "
                           f"PyTorch {torch.__version__})\n")


@pytest.mark.parametrize("command, option", [("train", "--out"), ("demo", "--recipe"), ("bootstrap", "--only"),
                                             ("recipes", "copy")])
def test_each_command_has_help(command, option):
    result = runner.invoke(app, [command, "--help"])
    assert result.exit_code == 0
    assert option in result.output


def test_train_unknown_key_exits_2_naming_it(here):
    (here / "r.yaml").write_text(recipe_text(extra="  stpes: 3\n"))
    output = fails(["train", "r.yaml", "--out", "run"])
    assert "error: r.yaml: training.stpes: unknown key" in output
    assert not (here / "run").exists()


def test_train_wrong_type_exits_2(here):
    (here / "r.yaml").write_text(recipe_text(extra="rewrite:\n  on_reject: maybe\n"))
    output = fails(["train", "r.yaml", "--out", "run"])
    assert "rewrite.on_reject" in output and "'maybe'" in output


def test_train_missing_recipe_exits_2(here):
    output = fails(["train", "nope.yaml", "--out", "run"])
    assert "recipe not found: nope.yaml" in output


def test_train_missing_teacher_folder_exits_2_naming_it(here, tiny_pair):
    (here / "r.yaml").write_text(recipe_text(student=str(tiny_pair / "student"), teacher="./no-teacher"))
    output = fails(["train", "r.yaml", "--out", "run"])
    # Relative paths in a recipe are read from the recipe's folder (here the working directory too).
    assert f"error: teacher: model '{here / 'no-teacher'}': no such folder {here / 'no-teacher'}" in output
    assert "Loading weights" not in output  # refused before the student loads
    assert not (here / "run").exists()


def test_train_missing_student_folder_exits_2_naming_it(here, tiny_pair):
    (here / "r.yaml").write_text(recipe_text(student="./no-student", teacher=str(tiny_pair / "teacher")))
    output = fails(["train", "r.yaml", "--out", "run"])
    assert "error: student: model " in output and "no-student': no such folder" in output


def test_train_bad_data_file_exits_2_with_file_and_line(here):
    (here / "d.jsonl").write_text('{"problem": "a", "answer": "1"}\n{"problem": \n')
    (here / "r.yaml").write_text("task: chain\n" + recipe_text(extra="").replace("  n_train: 4\n",
                                                                                   "  n_train: 4\n  train: d.jsonl\n"))
    output = fails(["train", "r.yaml", "--out", "run"])
    assert f"error: {here / 'd.jsonl'}:2: not valid JSON" in output
    assert not (here / "run").exists()


def test_train_unknown_embedded_model_exits_2(here):
    (here / "r.yaml").write_text(recipe_text(student="embedded:pupil"))
    output = fails(["train", "r.yaml", "--out", "run"])
    assert "unknown embedded model 'embedded:pupil'" in output


def test_demo_recipe_with_bad_key_exits_2(here):
    (here / "r.yaml").write_text(recipe_text(extra="  stpes: 3\n"))
    output = fails(["demo", "--recipe", "r.yaml", "--out", "demo"])
    assert "error: r.yaml: training.stpes: unknown key" in output
    assert not (here / "demo").exists()


def test_demo_quick_with_bad_key_exits_2(here):
    # --quick and --seed go through the override path of load_recipe.
    (here / "r.yaml").write_text(recipe_text(extra="evaluation:\n  n: 3\n"))
    output = fails(["demo", "--quick", "--seed", "3", "--recipe", "r.yaml", "--out", "demo"])
    assert "r.yaml: evaluation: unknown key" in output


def test_demo_missing_recipe_exits_2(here):
    output = fails(["demo", "--recipe", "missing.yaml", "--out", "demo"])
    assert "recipe not found: missing.yaml" in output


def test_demo_quick_with_a_list_recipe_exits_2(here):
    (here / "r.yaml").write_text("- mpd\n- opd\n")
    output = fails(["demo", "--quick", "--recipe", "r.yaml", "--out", "demo"])
    assert "expected a mapping at the top level" in output


def test_error_messages_are_printed_verbatim(here):
    folder = here / "[old]"
    folder.mkdir()
    (folder / "r.yaml").write_text("methd: mpd\n")
    output = fails(["train", "[old]/r.yaml", "--out", "run"])
    assert "[old]/r.yaml: methd: unknown key" in output


def test_bootstrap_rejects_an_unknown_stage_before_any_work(here):
    output = fails(["bootstrap", "--out", "models", "--only", "studnet"])
    assert "--only must be one of student, teacher; got 'studnet'" in output
    assert not (here / "models").exists()


def test_bootstrap_requires_out():
    result = runner.invoke(app, ["bootstrap"])
    assert result.exit_code == 2
    assert "--out" in result.output
