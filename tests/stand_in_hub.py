"""A loopback HTTP server standing in for the Hugging Face Hub: it answers the API calls
huggingface_hub makes to create a repository and commit files, and records the committed files.
Point a process at it with ``HF_ENDPOINT=http://127.0.0.1:PORT``."""

from __future__ import annotations

import base64
import json

from loopback import JSONHandler, LoopbackServer

REPO = "me/mpd-chain"


class StandInHub(JSONHandler):
    """Answers repository creation, pre-upload and commit as the Hub does; records committed files.
    ``refuse``: the path fragment answered with 403 (a token without write access)."""

    refuse: str | None = None
    commits: list[dict] = []

    def do_POST(self):
        body = self.body()
        if self.refuse and self.refuse in self.path:
            return self.send_json(403, {"error": "You don't have the rights to create a model under this namespace"})
        if self.path == "/api/repos/create":
            request = json.loads(body)
            return self.send_json(200, {"url": f"http://{self.headers['Host']}/{request['organization']}/{request['name']}"})
        if "/preupload/" in self.path:
            files = json.loads(body)["files"]
            return self.send_json(200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                               for f in files]})
        if self.path.startswith(f"/api/models/{REPO}/commit/"):
            lines = [json.loads(line) for line in body.decode().splitlines()]
            self.commits.append({line["value"]["path"]: base64.b64decode(line["value"]["content"])
                                 for line in lines if line["key"] == "file"})
            return self.send_json(200, {"commitUrl": f"http://{self.headers['Host']}/{REPO}/commit/1",
                                     "commitOid": "0" * 40, "pullRequestUrl": None})
        return self.send_json(200, {})  # YAML validation of the card

    def do_GET(self):
        if self.path.startswith("/api/models/"):  # repository info: none exists until one is committed to
            return self.send_json(404, {"error": "Repository not found"})
        self.send_json(200, {})

    def do_HEAD(self):  # telemetry
        self.send_response(200)
        self.end_headers()


def start_hub() -> LoopbackServer:
    """A fresh stand-in Hub (``close()`` when done)."""
    StandInHub.refuse, StandInHub.commits = None, []
    return LoopbackServer(StandInHub)


def hub_env(server: LoopbackServer) -> dict[str, str]:
    """What a process needs to talk to ``server`` as the Hub."""
    return {"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": server.url(),
            "HF_TOKEN": "hf_stand_in", "HF_HUB_DISABLE_TELEMETRY": "1"}
