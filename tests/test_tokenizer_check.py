"""A model folder saved without its tokenizer is refused by name, not loaded as a one-token tokenizer.

transformers 5 builds a tokenizer from the model type alone when a folder has no tokenizer files
(Qwen: one token, and every text encodes to nothing), so training and sampling would fail later
with a misleading message. Paths are relative to a temporary working directory so the console
never wraps a message."""

import json
import shutil
from pathlib import Path

import pytest
from transformers import AutoConfig
from typer.testing import CliRunner

from mpdistill.cli import app
from mpdistill.errors import ConfigError
from mpdistill.models.loading import load_model, load_tokenizer, resolve_model

runner = CliRunner()
NO_FILES = r"model '\./bare': its folder has no tokenizer files \(tokenizer\.json, tokenizer_config\.json, .*\): " \
           r"save the tokenizer with the model \(tokenizer\.save_pretrained\(folder\)\) or copy it from the base model"


@pytest.fixture
def here(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def bare(here) -> Path:
    """The embedded student's weights and config, without its tokenizer."""
    student = Path(resolve_model("embedded:student"))
    folder = here / "bare"
    folder.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(student / name, folder / name)
    return folder


def one_line(output: str) -> str:
    return " ".join(output.split())


def test_folder_without_tokenizer_files_is_refused(bare):
    with pytest.raises(ConfigError, match=NO_FILES):
        load_tokenizer("./bare")
    with pytest.raises(ConfigError, match=NO_FILES):
        load_model("./bare")


def test_config_only_folder_names_the_missing_files(here):
    """A model type transformers cannot build a tokenizer for fails by the missing files, not its own ValueError."""
    AutoConfig.for_model("llama").save_pretrained(here / "bare")
    with pytest.raises(ConfigError, match=NO_FILES):
        load_tokenizer("./bare")


def test_eval_refuses_a_folder_without_tokenizer(bare):
    result = runner.invoke(app, ["eval", "--model", "./bare", "--benchmarks", "gsm8k", "--limit", "1",
                                 "--out", "out"])
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit) and "Traceback" not in result.output  # no crash
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.output
    assert "model './bare': its folder has no tokenizer files" in one_line(result.output)
    assert not (bare.parent / "out" / "samples.jsonl").exists()


def test_rewrite_refuses_a_teacher_without_tokenizer(bare):
    (bare.parent / "in.jsonl").write_text(json.dumps({"problem": "Q:1+2\n", "trace": "A:3"}) + "\n", encoding="utf-8")
    result = runner.invoke(app, ["rewrite", "--input", "in.jsonl", "--out", "out.jsonl", "--teacher", "./bare",
                                 "--task", "chain"])
    assert result.exit_code == 2, result.output
    assert "model './bare': its folder has no tokenizer files" in one_line(result.output)
    assert not (bare.parent / "out.jsonl").exists()


def test_saved_with_its_tokenizer_loads_and_without_it_is_refused(here):
    model, tok = load_model("embedded:student")
    folder = here / "saved"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    loaded = load_tokenizer("./saved")
    assert len(loaded) == len(tok) == model.config.vocab_size
    assert loaded("Q:1+2", add_special_tokens=False)["input_ids"] == tok("Q:1+2", add_special_tokens=False)["input_ids"]
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (folder / name).unlink()
    with pytest.raises(ConfigError, match="its folder has no tokenizer files"):
        load_tokenizer("./saved")


def test_tokenizer_of_another_model_is_refused(here):
    """Tokenizer files present, but far fewer tokens than the model's vocabulary: not this model's."""
    student = Path(resolve_model("embedded:student"))
    folder = here / "mixed"
    folder.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(student / name, folder / name)
    config = json.loads((student / "config.json").read_text(encoding="utf-8"))
    (folder / "config.json").write_text(json.dumps({**config, "vocab_size": 151936}), encoding="utf-8")
    with pytest.raises(ConfigError, match=r"the tokenizer of '\./mixed' has 35 tokens but the model's config\.json "
                                          r"has vocab_size 151936"):
        load_tokenizer("./mixed")
