"""A rewriter backend, a method and a task, each added through its one registry (CONTRIBUTING.md)
and then used by a recipe, ``mpdistill train`` and the Python API without touching anything else."""

import json

import pytest

from mpdistill import MPDConfig, MPDTrainer, get_task, register_backend, register_method, register_task
from mpdistill.run.recipe import recipe_from_dict
from mpdistill.trainers.methods import METHODS, Method
from mpdistill.rewriting.rewrite import RewriteOutput
from mpdistill.rewriting.backends import BACKENDS, RewriterBackend
from mpdistill.tasks import TASKS, Task, chain
from mpdistill.trainers.opd import OPDTrainer


@pytest.fixture
def registries():
    """Registries as they were before the test (a toy entry must not leak into other tests)."""
    saved = dict(BACKENDS), dict(METHODS), dict(TASKS)
    yield
    for registry, before in zip((BACKENDS, METHODS, TASKS), saved):
        registry.clear()
        registry.update(before)


def _recipe(tiny_pair, **top):
    return {
        "student": str(tiny_pair / "student"), "teacher": str(tiny_pair / "teacher"), "task": "chain",
        "data": {"n_train": 8},
        "training": {"steps": 1, "batch_size": 4, "max_completion_length": 16, "logging_steps": 1},
        "rewrite": {"prompt_template": chain.REWRITE_PROMPT, "use_chat_template": False, "max_new_tokens": 16},
        **top,
    }


class AnswerOnly:
    """A toy rewriter: the student's final answer alone (the trace read out of the chain layout)."""

    def __init__(self, seed):
        self.seed, self.calls = seed, 0

    def rewrite(self, prompts, max_new_tokens=None):
        self.calls += 1
        traces = [p.partition("rewrite:\n")[2].rsplit("\nshort:\n", 1)[0] for p in prompts]
        return [RewriteOutput(f"A:{chain.extract_answer(t)}") for t in traces]


def test_a_rewriter_backend_is_one_registration(registries, tiny_pair, tmp_path):
    from mpdistill.cli import app
    from typer.testing import CliRunner

    made = []
    register_backend(RewriterBackend(
        "answer_only", make=lambda config, teacher, seed: lambda s: made.append(AnswerOnly(s)) or made[-1],
        describe=lambda config, teacher: "the student's answer alone"))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(json.dumps(_recipe(tiny_pair, rewrite={**_recipe(tiny_pair)["rewrite"], "backend": "answer_only"})))

    runner = CliRunner()
    plan = runner.invoke(app, ["train", str(recipe), "--dry-run"])
    assert "rewrites: the student's answer alone" in plan.output, plan.output
    result = runner.invoke(app, ["train", str(recipe), "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (tmp_path / "run" / "rollouts.jsonl").read_text().splitlines()]
    # Every rewrite came from the toy backend (the tiny random teacher never writes exactly "A:<digit>").
    assert made and made[0].calls == 1 and made[0].seed == 0
    assert all(r["rewrite"] == f"A:{chain.extract_answer(r['student'])}" for r in rows if r["reason"] != "student_unparsed")


def test_a_method_is_one_registration(registries, tiny_pair, tmp_path):
    from mpdistill.run.pipeline import train

    built = []

    class CountingOPD(OPDTrainer):
        """OPD that remembers it was built (a stand-in for a new method's trainer)."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            built.append(self)

    register_method(Method("counting_opd", CountingOPD))
    recipe = recipe_from_dict(_recipe(tiny_pair, method="counting_opd"))
    model_dir = train(recipe, tmp_path / "run")
    assert len(built) == 1 and built[0].state.global_step == 1
    assert (model_dir / "model.safetensors").is_file()
    assert json.loads((model_dir / "mpdistill.json").read_text())["method"] == "counting_opd"


def test_a_task_is_one_registration(registries, tiny_pair, tmp_path):
    """A task whose answers are never readable: MPD's verification says so for every sample."""
    register_task("unreadable", lambda: Task(name="unreadable", extract_answer=lambda text: None,
                                             answers_match=lambda a, b: a == b, rewrite_prompt=chain.REWRITE_PROMPT,
                                             rewrite_chat=False, make_problems=get_task("chain").make_problems))
    from datasets import Dataset

    task = get_task("unreadable")
    args = MPDConfig(str(tmp_path / "run"), task="unreadable", max_steps=1, per_device_train_batch_size=4,
                     max_completion_length=16, rewrite_max_new_tokens=16, report_to="none", save_strategy="no",
                     gradient_checkpointing=False)
    trainer = MPDTrainer(model=str(tiny_pair / "student"), teacher_model=str(tiny_pair / "teacher"), args=args,
                         train_dataset=Dataset.from_list(task.problems(8, seed=1)))
    trainer.train()
    rows = [json.loads(line) for line in (tmp_path / "run" / "rollouts.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and {r["reason"] for r in rows} == {"student_unparsed"}
    with pytest.raises(ValueError, match="unknown task 'nope'"):
        MPDConfig(str(tmp_path / "other"), task="nope")


def test_the_command_loads_extensions_other_packages_declare(tmp_path, tiny_pair):
    """An installed package's ``mpdistill.plugins`` entry point registers a backend the command then uses."""
    import subprocess
    import sys

    site = tmp_path / "site"
    (site / "toy_plugin").mkdir(parents=True)
    (site / "toy_plugin" / "__init__.py").write_text(
        "from mpdistill import register_backend\n"
        "from mpdistill.rewriting.backends import RewriterBackend\n"
        "register_backend(RewriterBackend('echo', make=lambda c, t, s: None, describe=lambda c, t: 'echoes the trace'))\n")
    info = site / "toy_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[mpdistill.plugins]\necho = toy_plugin\n")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(json.dumps(_recipe(tiny_pair, rewrite={**_recipe(tiny_pair)["rewrite"], "backend": "echo"})))

    def dry_run(env_path):
        import os

        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(env_path), os.environ.get("PYTHONPATH", "")])}
        return subprocess.run([sys.executable, "-m", "mpdistill.cli", "train", str(recipe), "--dry-run"],
                              capture_output=True, text=True, env=env)

    result = dry_run(site)
    assert result.returncode == 0, result.stderr
    assert "rewrites: echoes the trace" in result.stdout
    # Without the package the backend is unknown, and said so in one line.
    missing = dry_run(tmp_path / "nowhere")
    assert missing.returncode == 2 and "rewrite.backend: unknown rewriter backend" in missing.stderr
    # A plugin that fails to import is named, with its package.
    (site / "toy_plugin" / "__init__.py").write_text("raise ImportError('needs units>=2')\n")
    broken = dry_run(site)
    assert broken.returncode == 2
    assert broken.stderr.strip() == ("error: plugin 'echo' (toy_plugin, from toy-plugin) failed to load: "
                                     "ImportError: needs units>=2")


def test_eval_of_a_task_without_default_benchmarks_asks_for_them(registries, tmp_path):
    from mpdistill.evaluation.folder import EvalError
    from mpdistill.evaluation.settings import EvalSpec

    register_task("units", lambda: Task(name="units", extract_answer=lambda t: None, answers_match=lambda a, b: a == b))
    with pytest.raises(EvalError, match="the units task has no default benchmarks: name them with --benchmarks"):
        EvalSpec(model="embedded:student", task="units").resolved()


def test_a_package_adds_a_task_a_backend_and_a_method_without_touching_mpdistill(tmp_path, tiny_pair):
    """tests/fixtures/extension_plugin: one module each, declared through the entry point; the command
    then trains with the package's method, on its task, with its rewriter."""
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    site = tmp_path / "site"
    shutil.copytree(Path(__file__).parent / "fixtures" / "extension_plugin" / "digits_plugin", site / "digits_plugin")
    info = site / "digits_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: digits-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[mpdistill.plugins]\ndigits = digits_plugin\n")
    # The embedded student writes traces with readable answers, which the package's rewriter then cuts.
    recipe = _recipe(tiny_pair, method="mpd_plugin", task="digits", student="embedded:student",
                     teacher="embedded:teacher")
    recipe["training"] = {**recipe["training"], "max_completion_length": 192}
    recipe["rewrite"] = {**recipe["rewrite"], "backend": "answer_only"}
    (tmp_path / "recipe.yaml").write_text(json.dumps(recipe))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-m", "mpdistill", "train", str(tmp_path / "recipe.yaml"), "--out",
                          str(tmp_path / "run")], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    record = json.loads((tmp_path / "run" / "model" / "mpdistill.json").read_text())
    assert (record["method"], record["task"]) == ("mpd_plugin", "digits")
    assert "MPD (digits plugin)" in (tmp_path / "run" / "model" / "README.md").read_text()
    rows = [json.loads(line) for line in (tmp_path / "run" / "rollouts.jsonl").read_text().splitlines()]
    accepted = [r for r in rows if r["reason"] == "accepted"]
    assert accepted and all(r["rewrite"] == f"A:{chain.extract_answer(r['student'])}" for r in accepted)
