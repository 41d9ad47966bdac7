"""The README's Python example, run as written (the embedded models, 10 MPD steps on the CPU), and
the contract of ``MPDConfig`` / ``MPDTrainer`` a TRL user relies on."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mpdistill import MPDConfig

ROOT = Path(__file__).resolve().parents[1]


def readme_python() -> str:
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(encoding="utf-8"), re.S)
    assert len(blocks) == 1, "the README has one Python example"
    return blocks[0]


def test_the_readme_example_runs_as_written(tmp_path):
    script = tmp_path / "example.py"
    script.write_text(readme_python(), encoding="utf-8")
    result = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "runs" / "api-mpd"
    assert (run / "model.safetensors").is_file() and (run / "tokenizer.json").is_file()
    # mpdistill eval reads how the saved model is prompted and graded from its folder.
    assert json.loads((run / "mpdistill.json").read_text())["task"] == "chain"
    rows = [json.loads(line) for line in (run / "rollouts.jsonl").read_text().splitlines()]
    assert len(rows) == 10 * 16
    # The embedded teacher rewrote: most samples train on an accepted, shorter rewrite.
    accepted = [r for r in rows if r["accepted"]]
    assert len(accepted) > len(rows) / 2
    assert all(r["rewrite_tokens"] < r["student_tokens"] for r in accepted)


def test_a_recipe_and_the_config_fill_in_the_same_task_defaults(tmp_path):
    """The chain task's rewrite layout (plain text) whether the run comes from a recipe, MPDConfig or
    mpdistill rewrite; the math task's default instruction through the chat template."""
    from mpdistill.run.recipe import recipe_from_dict
    from mpdistill.run.pipeline import training_arguments
    from mpdistill.rewriting.rewrite import rewrite_settings_from
    from mpdistill.rewriting.offline import RewriteFileSpec

    for task, data in (("chain", {}), ("math", {"data": {"train": "x.jsonl"}, "student": "s", "teacher": "t"})):
        recipe = recipe_from_dict({"task": task, **data})
        from_recipe = training_arguments(recipe, tmp_path).rewrite_settings()
        from_config = MPDConfig(str(tmp_path), task=task).rewrite_settings()
        spec = RewriteFileSpec(teacher="t", task=task)
        from_options = rewrite_settings_from(spec.check())
        for settings in (from_recipe, from_options):
            assert (settings.prompt_template, settings.use_chat_template) == \
                   (from_config.prompt_template, from_config.use_chat_template), task
    assert not MPDConfig(str(tmp_path), task="chain").rewrite_settings().use_chat_template


def test_rewrite_settings_are_checked_once_by_the_recipes_rules(tmp_path):
    with pytest.raises(ValueError, match="rewrite_max_ratio: Input should be less than or equal to 1"):
        MPDConfig(str(tmp_path), rewrite_max_ratio=1.5)
    with pytest.raises(ValueError, match="rewrite_base_url is required when rewrite_backend is 'openai'"):
        MPDConfig(str(tmp_path), rewrite_backend="openai")
    with pytest.raises(ValueError, match="unknown rewriter backend"):
        MPDConfig(str(tmp_path), rewrite_backend="carrier-pigeon")


def test_the_task_fills_in_the_rewrite_prompt(tmp_path):
    from mpdistill.tasks.prompts import DEFAULT_REWRITE_PROMPT
    from mpdistill.tasks import chain

    chain_settings = MPDConfig(str(tmp_path), task="chain").rewrite_settings()
    assert chain_settings.prompt_template == chain.REWRITE_PROMPT and not chain_settings.use_chat_template
    math_settings = MPDConfig(str(tmp_path)).rewrite_settings()
    assert math_settings.prompt_template == DEFAULT_REWRITE_PROMPT and math_settings.use_chat_template
    named = MPDConfig(str(tmp_path), rewrite_prompt_template="thinking").rewrite_settings()
    assert named.prompt_template.startswith("Below is a problem") and named.rewrites_thinking


def test_hf_argument_parser_reads_the_config():
    from transformers import HfArgumentParser

    (args,) = HfArgumentParser(MPDConfig).parse_args_into_dataclasses(
        ["--output_dir", "out", "--task", "chain", "--rewrite_max_ratio", "0.5", "--report_to", "none"])
    assert args.task == "chain" and args.rewrite_max_ratio == 0.5 and args.rollouts_path() == "out/rollouts.jsonl"


def test_a_plain_distillation_config_is_refused_with_what_to_use(tiny_pair, tmp_path):
    from trl import DistillationConfig

    from mpdistill import MPDTrainer

    with pytest.raises(TypeError, match="takes an mpdistill.MPDConfig"):
        MPDTrainer(model=str(tiny_pair / "student"), teacher_model=str(tiny_pair / "teacher"),
                   args=DistillationConfig(str(tmp_path), use_cpu=True, bf16=False))


@pytest.mark.parametrize("rows, settings, said", [
    ([{"question": "Q:1+2\n", "answer": "3"}] * 4, {}, "train_dataset has no 'prompt' field (its fields: question, answer)"),
    ([{"prompt": "Q:1+2\n", "answer": "3"}, {"prompt": "", "answer": "3"}], {}, "train_dataset row 1: 'prompt' is empty"),
    ([{"prompt": "Q:1+2\n"}] * 4, {"rewrite_require_gold": True},
     "train_dataset has no 'answer' field, which rewrite_require_gold needs"),
    ([{"prompt": "Q:1+2\n", "answer": "3"}, {"prompt": "Q:1+3\n", "answer": None}], {"rewrite_require_gold": True},
     "train_dataset row 1: 'answer' is missing, and rewrite_require_gold needs a gold answer"),
    ([], {}, "train_dataset is empty"),
])
def test_the_python_api_checks_its_rows_before_any_model_loads(tmp_path, monkeypatch, rows, settings, said):
    from datasets import Dataset

    from mpdistill import MPDTrainer
    from mpdistill.models import loading as models
    from mpdistill.errors import ConfigError

    monkeypatch.setattr(models, "load_tokenizer", lambda *a, **k: pytest.fail("a model loaded before the rows were checked"))
    args = MPDConfig(output_dir=str(tmp_path / "run"), task="chain", max_steps=1, report_to="none", **settings)
    with pytest.raises(ConfigError, match=re.escape(said)):
        MPDTrainer(model="embedded:student", teacher_model="embedded:teacher", args=args,
                   train_dataset=Dataset.from_list(rows) if rows else Dataset.from_dict({"prompt": []}))


def test_grpo_needs_a_gold_answer_in_every_row(tmp_path):
    from datasets import Dataset

    from mpdistill import LengthPenaltyGRPOTrainer
    from mpdistill.errors import ConfigError

    args = MPDConfig(output_dir=str(tmp_path / "run"), task="chain", max_steps=1, report_to="none",
                     per_device_train_batch_size=8)
    with pytest.raises(ConfigError, match="no 'answer' field, which grpo_length"):
        LengthPenaltyGRPOTrainer(model="embedded:student", args=args,
                                 train_dataset=Dataset.from_list([{"prompt": "Q:1+2\n"}] * 8))
