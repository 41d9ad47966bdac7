"""One source of settings: a recipe is the trainers' MPDConfig, any TrainingArguments field can be
written under training:, and `mpdistill train --set KEY=VALUE` overrides a key for one run and is
recorded in that run's recipe.yaml."""

import subprocess
import sys
from pathlib import Path

import yaml
from typer.testing import CliRunner

from mpdistill.cli import app
from mpdistill.run.recipe import load_recipe, recipe_from_dict
from mpdistill.run.pipeline import training_arguments
from mpdistill.tasks import chain

runner = CliRunner()


def _write(tmp_path, tiny_pair, **training) -> Path:
    recipe = {
        "student": str(tiny_pair / "student"), "teacher": str(tiny_pair / "teacher"), "data": {"n_train": 8},
        "training": {"steps": 1, "batch_size": 4, "max_completion_length": 16, "logging_steps": 1, **training},
        "rewrite": {"prompt_template": chain.REWRITE_PROMPT, "use_chat_template": False, "max_new_tokens": 16},
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_any_training_argument_reaches_the_trainer(tmp_path):
    recipe = recipe_from_dict({"training": {"weight_decay": 0.1, "optim": "adamw_torch", "adam_beta2": 0.95,
                                            "lr_scheduler_kwargs": {"power": 2.0}}})
    args = training_arguments(recipe, tmp_path)
    assert (args.weight_decay, args.optim, args.adam_beta2) == (0.1, "adamw_torch", 0.95)
    # MPD's settings come from the same recipe, as MPDConfig fields.
    assert args.rewrite_max_ratio == recipe.rewrite.max_ratio and args.task == "chain"
    assert args.rollouts_file == str(tmp_path / "rollouts.jsonl")
    # Written back where they were written: a saved recipe reloads to the same settings.
    again = recipe_from_dict(yaml.safe_load(yaml.safe_dump(recipe.model_dump())))
    assert again == recipe and "weight_decay" in recipe.model_dump()["training"]


def test_a_field_set_in_other_words_is_refused_with_the_key_to_use(tmp_path):
    from mpdistill.errors import ConfigError

    for key, value, hint in (("max_steps", 3, "training.steps"), ("per_device_train_batch_size", 2, "training.batch_size"),
                             ("output_dir", "x", "mpdistill train --out"), ("seed", 1, "the recipe's seed"),
                             ("vllm_mode", "server", "training.vllm")):
        try:
            recipe_from_dict({"training": {key: value}})
        except ConfigError as err:
            assert f"{key} is set by {hint}" in str(err)
        else:
            raise AssertionError(f"training.{key} was accepted")


def test_a_value_transformers_refuses_is_named(tmp_path):
    from mpdistill.errors import ConfigError

    try:
        training_arguments(recipe_from_dict({"training": {"optim": "no-such-optimizer"}}), tmp_path)
    except ConfigError as err:
        assert str(err).startswith("training: transformers refuses these settings") and "no-such-optimizer" in str(err)
    else:
        raise AssertionError("accepted")


def test_set_overrides_a_run_and_is_recorded(tmp_path, tiny_pair):
    path = _write(tmp_path, tiny_pair)
    sets = ["--set", "training.learning_rate=1e-4", "--set", "training.weight_decay=0.05", "--set", "rewrite.max_ratio=0.8"]
    plan = runner.invoke(app, ["train", str(path), "--dry-run", *sets])
    assert plan.exit_code == 0, plan.output
    result = runner.invoke(app, ["train", str(path), "--out", str(tmp_path / "run"), *sets])
    assert result.exit_code == 0, result.output
    saved = load_recipe(tmp_path / "run" / "recipe.yaml")
    assert saved.training.learning_rate == 1e-4 and saved.rewrite.max_ratio == 0.8
    assert saved.training.trl_args == {"weight_decay": 0.05}
    # The file itself is untouched.
    assert load_recipe(path).training.learning_rate != 1e-4


def test_set_mistakes_are_one_line_naming_the_key(tmp_path, tiny_pair):
    path = _write(tmp_path, tiny_pair)
    for item, expected in (("training.stpes=3", "training.stpes: unknown key"),
                           ("training.learning_rate=fast", "training.learning_rate: Input should be a valid number"),
                           ("learning_rate", "--set 'learning_rate': write KEY=VALUE"),
                           ("training.max_steps=3", "max_steps is set by training.steps")):
        result = subprocess.run([sys.executable, "-m", "mpdistill.cli", "train", str(path), "--dry-run", "--set", item],
                                capture_output=True, text=True)
        assert result.returncode == 2, (item, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], (item, lines)


def test_trl_args_is_not_a_recipe_key():
    from mpdistill.errors import ConfigError

    # Its contents are checked as if written under training: directly.
    for value, message in (({"max_steps": 3}, "max_steps is set by training.steps"),
                           ({"nonsense": 1}, "training.nonsense: unknown key"), (3, "trl_args is not a recipe key")):
        try:
            recipe_from_dict({"training": {"trl_args": value}})
        except ConfigError as err:
            assert message in str(err), (value, str(err))
        else:
            raise AssertionError(f"trl_args {value!r} was accepted")
    # A recipe changed in place is checked again, its TrainingArguments fields kept.
    recipe = recipe_from_dict({"training": {"weight_decay": 0.1}})
    recipe.training.steps = 7
    assert recipe.training.trl_args == {"weight_decay": 0.1}


def test_set_switches_on_a_section_the_file_leaves_null(tmp_path, tiny_pair):
    path = _write(tmp_path, tiny_pair, lora=None, vllm=None)
    recipe = load_recipe(path, {"training": {"lora": {"r": 8}}})
    assert recipe.training.lora is not None and recipe.training.lora.r == 8


def test_a_value_transformers_refuses_stops_train_before_anything_is_written(tmp_path, tiny_pair):
    path = _write(tmp_path, tiny_pair, optim="not_an_optimizer")
    result = subprocess.run([sys.executable, "-m", "mpdistill.cli", "train", str(path), "--out", str(tmp_path / "run")],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "not_an_optimizer" in result.stderr, result.stderr
    assert not (tmp_path / "run").exists()


def test_operational_fields_may_change_on_resume():
    from mpdistill.run.resume import RESUMABLE_CHANGES, recipe_changes

    saved = recipe_from_dict({"training": {"report_to": "none"}})
    given = recipe_from_dict({"training": {"report_to": "tensorboard", "weight_decay": 0.1}})
    assert recipe_changes(saved, given, RESUMABLE_CHANGES) == ["training.weight_decay: None -> 0.1"]
