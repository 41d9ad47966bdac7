"""Security: keys only from the environment and never written anywhere; no code runs from a checkpoint
unless asked for; nothing listens on a network port."""

import ast
import json
import logging
import re
from pathlib import Path

import pytest
import torch
from loopback import JSONHandler, LoopbackServer

from mpdistill.errors import ConfigError
from mpdistill.run.recipe import load_recipe
from mpdistill.models.loading import load_model, load_tokenizer
from mpdistill.run.pipeline import train
from mpdistill.rewriting.offline import RewriteFileError, RewriteFileSpec, rewrite_file

KEY = "sk-test-4f9c2e1b7a0d-do-not-log"
ENV = "MPDISTILL_TEST_REWRITER_KEY"
EMBEDDED_RECIPE = Path(__file__).resolve().parents[1] / "mpdistill" / "recipes" / "embedded.yaml"
PACKAGE = Path(__file__).resolve().parents[1] / "mpdistill"


class KeyedServer:
    """An OpenAI-compatible loopback server that demands the key, answers every rewrite with a fixed
    text, and (``leaky``) puts the key it received into its error answers, as a careless proxy might."""

    def __init__(self, leaky=False):
        self.requests = 0
        self.authorized = 0
        server = self

        class Handler(JSONHandler):
            def do_GET(self):  # /models, for the endpoint check
                self.send_json(200, {"data": [{"id": "teacher"}]})

            def do_POST(self):
                self.body()
                server.requests += 1
                auth = self.headers.get("Authorization", "")
                if auth != f"Bearer {KEY}" or leaky:
                    self.send_json(401, {"error": {"message": f"bad credentials: {auth}"}})
                    return
                server.authorized += 1
                self.send_json(200, {"choices": [{"text": "A:0", "finish_reason": "stop"}]})

        self.loopback = LoopbackServer(Handler)
        self.url = self.loopback.url("/v1")

    def close(self):
        self.loopback.close()


@pytest.fixture
def keyed_server(request):
    servers = []

    def start(leaky=False):
        servers.append(KeyedServer(leaky))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def _files_containing(root: Path, secret: str) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]


@pytest.mark.parametrize("leaky", [False, True], ids=["server-accepts", "server-echoes-the-key"])
def test_a_training_run_writes_the_key_nowhere(keyed_server, tmp_path, monkeypatch, caplog, capfd, leaky):
    server = keyed_server(leaky)
    monkeypatch.setenv(ENV, KEY)
    recipe = load_recipe(EMBEDDED_RECIPE, {
        "data": {"n_train": 8},
        "training": {"steps": 2, "batch_size": 4, "logging_steps": 1, "save_steps": 1},
        "rewrite": {"backend": "openai", "base_url": server.url, "model": "teacher", "api_key_env": ENV,
                    "max_retries": 0, "use_chat_template": False},
    })
    run = tmp_path / "run"
    if leaky:  # the server refuses the key, quoting it: the run's first request finds out, before anything loads
        with caplog.at_level(logging.DEBUG), pytest.raises(ConfigError) as err:
            train(recipe, run)
        assert "the server refused a rewrite request (HTTP 401" in str(err.value) and KEY not in str(err.value)
        assert server.requests == 1 and not run.exists()
        out, err_text = capfd.readouterr()
        assert KEY not in out + err_text + caplog.text
        return
    with caplog.at_level(logging.DEBUG):
        train(recipe, run)
    assert server.requests > 0 and server.authorized > 0  # the key was used...
    written = sorted(p.relative_to(run).as_posix() for p in run.rglob("*") if p.is_file())
    assert "recipe.yaml" in written and "rollouts.jsonl" in written and any("checkpoint-2" in w for w in written)
    assert _files_containing(run, KEY) == []  # ...and is in no file the run wrote
    out, err = capfd.readouterr()
    assert KEY not in out + err + caplog.text
    assert f"api_key_env: {ENV}" in (run / "recipe.yaml").read_text()  # only the variable's name is kept


def test_mpdistill_rewrite_writes_the_key_nowhere(keyed_server, tmp_path, monkeypatch, capfd):
    server = keyed_server(leaky=True)
    monkeypatch.setenv(ENV, KEY)
    traces = tmp_path / "traces.jsonl"
    traces.write_text(json.dumps({"problem": "1+1?", "trace": "1+1 is 2. Check: 2. \\boxed{2}"}) + "\n")
    out = tmp_path / "rewrites.jsonl"
    spec = RewriteFileSpec(backend="openai", base_url=server.url, model="teacher", api_key_env=ENV,
                           tokenizer=str(Path(__file__).parent / "fixtures" / "qwen3"), max_retries=0)
    with pytest.raises(RewriteFileError) as err:  # the one-token request before any row refuses the key
        rewrite_file(traces, out, spec)
    assert "HTTP 401" in str(err.value) and KEY not in str(err.value)
    assert server.requests == 1 and not out.exists()
    assert _files_containing(tmp_path, KEY) == []
    assert KEY not in "".join(capfd.readouterr())


def test_a_recipe_cannot_hold_a_key(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(f"rewrite:\n  backend: openai\n  base_url: http://127.0.0.1:1/v1\n  model: t\n  api_key: {KEY}\n")
    with pytest.raises(ConfigError, match="api_key is not accepted") as err:
        load_recipe(path)
    assert KEY not in str(err.value)


def _tiny_checkpoint(tiny_pair, folder: Path) -> Path:
    """The tiny student's config and tokenizer, with its weights saved as a pickle (pytorch_model.bin)."""
    folder.mkdir()
    for f in (tiny_pair / "student").iterdir():
        if f.suffix != ".safetensors":
            (folder / f.name).write_bytes(f.read_bytes())
    model, _ = load_model(str(tiny_pair / "student"))
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    return folder


def test_pickled_weights_are_refused_unless_opted_in(tiny_pair, tmp_path):
    folder = _tiny_checkpoint(tiny_pair, tmp_path / "pickled")
    with pytest.raises(ConfigError, match=r"only pickled weights \(pytorch_model.bin\).*allow_pickle_checkpoints"):
        load_model(str(folder))
    model, _ = load_model(str(folder), allow_pickle=True)
    reference, _ = load_model(str(tiny_pair / "student"))
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), reference.state_dict().values()))


def test_model_code_never_runs_unless_opted_in(tiny_pair, tmp_path):
    folder = tmp_path / "custom"
    folder.mkdir()
    for f in (tiny_pair / "student").iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    marker = tmp_path / "code-ran"
    (folder / "configuration_custom.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n"
        "from transformers import PretrainedConfig\nclass CustomConfig(PretrainedConfig):\n    model_type = 'custom'\n"
    )
    config = json.loads((folder / "config.json").read_text())
    config.update({"model_type": "custom", "auto_map": {"AutoConfig": "configuration_custom.CustomConfig"}})
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match=r"model .* needs its own Python code.*trust_remote_code: true"):
        load_model(str(folder))
    # The same for a tokenizer that ships code.
    (folder / "tokenization_custom.py").write_text(f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n")
    tok_config = json.loads((folder / "tokenizer_config.json").read_text())
    tok_config["auto_map"] = {"AutoTokenizer": ["tokenization_custom.CustomTokenizer", None]}
    tok_config.pop("tokenizer_class", None)  # only the shipped code could build it
    (folder / "tokenizer_config.json").write_text(json.dumps(tok_config))
    with pytest.raises(ConfigError, match=r"the tokenizer of .* needs its own Python code"):
        load_tokenizer(str(folder))
    assert not marker.exists()


# The servers the package has, each on 127.0.0.1 only: the bench's loopback rewrite server.
LOOPBACK_SERVERS = {"mpdistill/experiments/bench/served.py"}


def test_the_package_opens_no_listening_socket():
    """mpdistill is a client only (of a rewrite server); nothing in it binds or serves a port but the
    bench's loopback rewrite server, which binds 127.0.0.1 and nothing else.

    If a server is ever added, this test fails until it binds 127.0.0.1 by default and is listed here.
    """
    serving = {"bind", "listen", "serve_forever", "create_server", "start_server", "HTTPServer",
               "ThreadingHTTPServer", "TCPServer", "run_simple", "uvicorn"}
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        if str(path.relative_to(PACKAGE.parent)) in LOOPBACK_SERVERS:
            hosts = set(re.findall(r"\(\s*\"([^\"]*)\"\s*,\s*options\.port\s*\)", text))
            assert hosts == {"127.0.0.1"} and "0.0.0.0" not in text, (path, hosts)
            continue
        for node in ast.walk(ast.parse(text)):
            name = node.attr if isinstance(node, ast.Attribute) else node.id if isinstance(node, ast.Name) else None
            if name in serving:
                found.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: {name}")
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                modules = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) else [])
                found += [f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: import {m}" for m in modules
                          if m and m.split(".")[0] in ("socketserver", "uvicorn", "fastapi", "flask", "aiohttp")]
    assert found == []


def test_the_bench_rewrite_server_listens_on_loopback_only():
    import psutil

    from mpdistill.experiments.bench.served import ServedRewriter

    with ServedRewriter() as server:
        assert server.url.startswith("http://127.0.0.1:")
        listening = [c.laddr for c in psutil.Process(server.process.pid).net_connections(kind="inet")
                     if c.status == psutil.CONN_LISTEN]
        assert [a.ip for a in listening] == ["127.0.0.1"], listening