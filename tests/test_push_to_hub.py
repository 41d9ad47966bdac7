"""push_to_hub through the trainer's own machinery, against a loopback HTTP server standing in for the
Hugging Face Hub (tests/stand_in_hub.py)."""

import json
import os
import subprocess
import sys

import pytest
import yaml
from safetensors.torch import load as load_safetensors
from safetensors.torch import load_file
from stand_in_hub import REPO, StandInHub, hub_env, start_hub


@pytest.fixture
def hub():
    server = start_hub()
    yield server
    server.close()


def _train(tmp_path, hub, tiny_pair):
    recipe = {"method": "mpd", "student": str(tiny_pair / "student"), "teacher": str(tiny_pair / "teacher"),
              "task": "chain", "data": {"n_train": 8},
              "training": {"steps": 2, "batch_size": 4, "max_completion_length": 12, "logging_steps": 1,
                           "push_to_hub": True, "hub_model_id": REPO},
              "rewrite": {"max_new_tokens": 12}}
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    env = {**os.environ, **hub_env(hub), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "mpdistill.cli", "train", "recipe.yaml", "--out", "run"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


def test_push_to_hub_uploads_the_trained_weights_with_their_card(tmp_path, hub, tiny_pair):
    result = _train(tmp_path, hub, tiny_pair)
    assert result.returncode == 0, result.stderr
    assert len(StandInHub.commits) == 1
    files = StandInHub.commits[0]
    assert {"README.md", "mpdistill.json", "config.json", "model.safetensors", "tokenizer.json"} <= set(files)
    pushed, saved = load_safetensors(files["model.safetensors"]), load_file(tmp_path / "run" / "model" / "model.safetensors")
    assert pushed.keys() == saved.keys() and all((pushed[k] == saved[k]).all() for k in saved)
    # The folder as saved: its card, and the record mpdistill eval reads (task, prompt, budget).
    local = tmp_path / "run" / "model"
    assert files["README.md"] == (local / "README.md").read_bytes()
    assert files["mpdistill.json"] == (local / "mpdistill.json").read_bytes()
    card = files["README.md"].decode()
    assert "after 2 optimizer steps of **MPD**" in card and str(tmp_path) not in card
    assert json.loads(files["mpdistill.json"])["task"] == "chain"
    assert not {"rollouts.jsonl", "train_log.jsonl", "recipe.yaml"} & set(files)  # the run's logs stay local


def test_a_repository_that_cannot_be_created_stops_the_run_before_training(tmp_path, hub, tiny_pair):
    StandInHub.refuse = "/api/repos/create"
    result = _train(tmp_path, hub, tiny_pair)
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(f"error: push_to_hub: cannot create the Hub repository {REPO}")
    assert "403" in errors[0] and errors[0].endswith("or turn push_to_hub off")  # the Hub's reason, on the one line
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run" / "rollouts.jsonl").exists() and not (tmp_path / "run" / "recipe.yaml").exists()


def test_a_failed_push_keeps_the_saved_model_and_says_how_to_push_again(tmp_path, hub, tiny_pair):
    StandInHub.refuse = "/commit/"
    result = _train(tmp_path, hub, tiny_pair)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(f"error: the model is saved in run/model, but pushing it to {REPO} failed")
    assert errors[0].endswith(f"`hf upload {REPO} run/model`")
    assert (tmp_path / "run" / "model" / "model.safetensors").exists()
