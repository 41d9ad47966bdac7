"""push_to_hub through the trainer's own machinery, against a loopback HTTP server standing in for the
Hugging Face Hub (the API calls huggingface_hub makes to create a repository and commit files)."""

import base64
import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import yaml
from safetensors.torch import load as load_safetensors
from safetensors.torch import load_file

REPO = "me/mpd-chain"


class StandInHub(BaseHTTPRequestHandler):
    """Answers repository creation, pre-upload and commit as the Hub does; records committed files.
    ``refuse``: the path fragment answered with 403 (a token without write access)."""

    refuse: str | None = None
    commits: list[dict] = []

    def _reply(self, status: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.refuse and self.refuse in self.path:
            return self._reply(403, {"error": "You don't have the rights to create a model under this namespace"})
        if self.path == "/api/repos/create":
            request = json.loads(body)
            return self._reply(200, {"url": f"http://{self.headers['Host']}/{request['organization']}/{request['name']}"})
        if "/preupload/" in self.path:
            files = json.loads(body)["files"]
            return self._reply(200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                               for f in files]})
        if self.path.startswith(f"/api/models/{REPO}/commit/"):
            lines = [json.loads(line) for line in body.decode().splitlines()]
            self.commits.append({line["value"]["path"]: base64.b64decode(line["value"]["content"])
                                 for line in lines if line["key"] == "file"})
            return self._reply(200, {"commitUrl": f"http://{self.headers['Host']}/{REPO}/commit/1",
                                     "commitOid": "0" * 40, "pullRequestUrl": None})
        return self._reply(200, {})  # YAML validation of the card

    def do_GET(self):
        self._reply(200, {})

    def do_HEAD(self):  # telemetry
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def hub():
    StandInHub.refuse, StandInHub.commits = None, []
    server = ThreadingHTTPServer(("127.0.0.1", 0), StandInHub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()


def _train(tmp_path, hub, tiny_pair):
    recipe = {"method": "mpd", "student": str(tiny_pair / "student"), "teacher": str(tiny_pair / "teacher"),
              "task": "chain", "data": {"n_train": 8},
              "training": {"steps": 2, "batch_size": 4, "max_completion_length": 12, "logging_steps": 1,
                           "push_to_hub": True, "hub_model_id": REPO},
              "rewrite": {"max_new_tokens": 12}}
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    env = {**os.environ, "HF_HUB_OFFLINE": "0", "HF_ENDPOINT": f"http://127.0.0.1:{hub.server_port}",
           "HF_TOKEN": "hf_stand_in", "HF_HUB_DISABLE_TELEMETRY": "1", "OMP_NUM_THREADS": "1"}
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
    assert f"error: push_to_hub: cannot create the Hub repository {REPO}" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run" / "rollouts.jsonl").exists() and not (tmp_path / "run" / "recipe.yaml").exists()


def test_a_failed_push_keeps_the_saved_model_and_says_how_to_push_again(tmp_path, hub, tiny_pair):
    StandInHub.refuse = "/commit/"
    result = _train(tmp_path, hub, tiny_pair)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"the model is saved in run/model, but pushing it to {REPO} failed" in result.stderr
    assert f"`hf upload {REPO} run/model`" in result.stderr
    assert (tmp_path / "run" / "model" / "model.safetensors").exists()
