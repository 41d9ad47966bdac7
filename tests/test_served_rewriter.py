"""The served rewriter against a real HTTP server on loopback (no mocked client)."""

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from mpdistill.config import ConfigError, recipe_from_dict
from mpdistill.served_rewriter import OpenAIRewriter, check_endpoint

KEY = "sk-test-5ecret-value"


class Server:
    """A loopback OpenAI-compatible server whose answers are scripted per test.

    ``respond(server, n, path, body)`` returns ``(status, headers, payload)``; ``n`` counts requests
    to the completion routes from 0. Every request is recorded with its headers and JSON body.
    """

    def __init__(self, respond):
        self.respond = respond
        self.requests = []
        self.lock = threading.Lock()
        self.active = self.max_active = 0
        self.release = threading.Event()  # set at teardown so stalled handlers end
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _answer(self, status, headers, payload):
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                if self.path == "/v1/models":
                    self._answer(200, {}, {"object": "list", "data": [{"id": "rewriter"}]})
                else:
                    self._answer(404, {}, {"error": {"message": "no route"}})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with outer.lock:
                    n = len(outer.requests)
                    outer.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                    outer.active += 1
                    outer.max_active = max(outer.max_active, outer.active)
                try:
                    status, headers, payload = outer.respond(outer, n, self.path, body)
                finally:
                    with outer.lock:
                        outer.active -= 1
                try:
                    self._answer(status, headers, payload)
                except OSError:
                    pass  # the client gave up (timeout)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def serve():
    servers = []

    def start(respond):
        servers.append(Server(respond))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def ok(text="A:3", finish="stop", chat=True):
    choice = {"index": 0, "finish_reason": finish}
    choice.update({"message": {"role": "assistant", "content": text}} if chat else {"text": text})
    return 200, {}, {"id": "x", "choices": [choice]}


def echo(server, n, path, body):
    """Answers with what it was asked, so each output can be matched to its prompt."""
    chat = path.endswith("/chat/completions")
    prompt = body["messages"][0]["content"] if chat else body["prompt"]
    finish = "length" if body["max_tokens"] == 7 else "stop"
    return ok(f" {prompt}|{body['max_tokens']} ", finish, chat)


def rewriter(server, **kw):
    kw = {"timeout_s": 1.0, "max_retries": 2, "backoff_s": 0.01, "deadline_s": 10.0, "seed": 0, **kw}
    return OpenAIRewriter(server.url, "rewriter", **kw)


def dead_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once it is closed


@pytest.mark.parametrize("chat", [True, False])
def test_rewrites_in_order_with_budgets_as_max_tokens(serve, chat):
    server = serve(echo)
    rw = rewriter(server, chat=chat, temperature=0.3, top_p=0.8, top_k=20)
    outs = rw.rewrite(["p0", "p1", "p2"], max_new_tokens=[5, 7, 9])
    assert [o.text for o in outs] == ["p0|5", "p1|7", "p2|9"]
    assert [o.truncated for o in outs] == [False, True, False]
    assert all(o.error is None for o in outs)
    route = "/v1/chat/completions" if chat else "/v1/completions"
    assert {r["path"] for r in server.requests} == {route}
    body = server.requests[0]["body"]
    assert body["model"] == "rewriter" and body["temperature"] == 0.3 and body["top_p"] == 0.8 and body["top_k"] == 20
    if chat:
        assert [m["role"] for m in body["messages"]] == ["user"]
    assert "Authorization" not in server.requests[0]["headers"]
    assert rw.stats == {"requests": 3, "retries": 0, "ok": 3, "failures": {}}


def test_default_cap_and_zero_budget(serve):
    server = serve(echo)
    rw = rewriter(server, max_tokens=11)
    assert rw.rewrite(["a"])[0].text == "a|11"
    zero = rw.rewrite(["b"], max_new_tokens=[0])[0]
    assert zero.text == "" and zero.truncated and zero.error is None
    assert len(server.requests) == 1 and rw.rewrite([]) == []


def test_empty_completion_is_text_not_error(serve):
    server = serve(lambda s, n, p, b: ok("   "))
    out = rewriter(server).rewrite(["x"])[0]
    assert out.text == "" and out.error is None


def test_server_error_then_success_is_retried(serve):
    server = serve(lambda s, n, p, b: (500, {}, {"error": "boom"}) if n < 2 else ok("fine"))
    rw = rewriter(server, max_retries=2)
    out = rw.rewrite(["x"])[0]
    assert out.text == "fine" and out.error is None
    assert rw.stats["requests"] == 3 and rw.stats["retries"] == 2 and rw.stats["failures"] == {}


def test_persistent_server_error_becomes_an_error_output(serve):
    server = serve(lambda s, n, p, b: (503, {}, {"error": "down"}))
    rw = rewriter(server, max_retries=2)
    outs = rw.rewrite(["x", "y"])
    assert [o.error for o in outs] == ["HTTP 503 after 3 tries"] * 2 and all(o.text == "" for o in outs)
    assert len(server.requests) == 6
    assert rw.stats["failures"] == {"http_5xx": 2} and rw.stats["retries"] == 4 and rw.stats["ok"] == 0


def test_rate_limit_honours_retry_after(serve):
    server = serve(lambda s, n, p, b: (429, {"Retry-After": "0"}, {"error": "slow down"}) if n == 0 else ok("done"))
    rw = rewriter(server, backoff_s=5.0)  # Retry-After: 0 replaces the long backoff
    start = time.monotonic()
    out = rw.rewrite(["x"])[0]
    assert out.text == "done" and time.monotonic() - start < 2.0
    assert rw.stats["retries"] == 1


def test_retry_after_past_the_deadline_gives_up_at_once(serve):
    server = serve(lambda s, n, p, b: (429, {"Retry-After": "30"}, {}))
    start = time.monotonic()
    out = rewriter(server, deadline_s=2.0).rewrite(["x"])[0]
    assert time.monotonic() - start < 1.5
    assert out.error.startswith("HTTP 429 after 1 try") and "deadline" in out.error


def test_client_errors_are_not_retried(serve):
    server = serve(lambda s, n, p, b: (400, {}, {"error": {"message": "max_tokens is too large"}}))
    rw = rewriter(server)
    out = rw.rewrite(["x"])[0]
    assert out.error == "HTTP 400 (not retried): max_tokens is too large"
    assert len(server.requests) == 1 and rw.stats["failures"] == {"http_4xx": 1}


@pytest.mark.parametrize(
    "payload, error",
    [
        (b"{not json", "bad response: body is not JSON"),
        ({"choices": []}, "bad response: no choices[0].message.content"),
        ({"choices": [{"text": "wrong route"}]}, "bad response: no choices[0].message.content"),
        ({"choices": [{"message": {"content": 3}}]}, "bad response: choices[0].message.content is not a string"),
    ],
)
def test_malformed_responses_are_errors(serve, payload, error):
    server = serve(lambda s, n, p, b: (200, {}, payload))
    rw = rewriter(server)
    out = rw.rewrite(["x"])[0]
    assert out.error == error and out.text == ""
    assert len(server.requests) == 1 and rw.stats["failures"] == {"bad_response": 1}


def test_missing_text_on_the_completions_route(serve):
    server = serve(lambda s, n, p, b: (200, {}, {"choices": [{"message": {"content": "chat shape"}}]}))
    assert rewriter(server, chat=False).rewrite(["x"])[0].error == "bad response: no choices[0].text"


def test_stalled_server_times_out_and_is_retried(serve):
    def stall(server, n, path, body):
        server.release.wait(5)
        return ok()

    server = serve(stall)
    rw = rewriter(server, timeout_s=0.2, max_retries=1)
    start = time.monotonic()
    out = rw.rewrite(["x"])[0]
    assert time.monotonic() - start < 1.5
    assert out.error == "timeout (0.2 s) after 2 tries"
    assert rw.stats["requests"] == 2 and rw.stats["retries"] == 1 and rw.stats["failures"] == {"timeout": 1}


def test_whole_call_ends_by_the_deadline(serve):
    def stall(server, n, path, body):
        server.release.wait(5)
        return ok()

    server = serve(stall)
    # Without the deadline: 6 prompts, 2 at a time, 4 tries of 0.4 s each -> about 5 s.
    rw = rewriter(server, timeout_s=0.4, max_retries=3, max_concurrency=2, deadline_s=0.7)
    start = time.monotonic()
    outs = rw.rewrite([f"p{i}" for i in range(6)])
    assert time.monotonic() - start < 0.7 + 0.3
    assert all(o.error and o.text == "" for o in outs)
    assert any("deadline" in o.error for o in outs)
    assert sum(rw.stats["failures"].values()) == 6


def test_connection_refused_is_an_error_not_an_exception():
    rw = OpenAIRewriter(f"http://127.0.0.1:{dead_port()}/v1", "m", max_retries=1, backoff_s=0.01, timeout_s=0.5)
    out = rw.rewrite(["x"])[0]
    assert out.error.startswith("connection failed (") and out.error.endswith("after 2 tries")
    assert rw.stats["failures"] == {"connection": 1}


def test_concurrency_is_bounded(serve):
    def slow(server, n, path, body):
        time.sleep(0.05)
        return echo(server, n, path, body)

    server = serve(slow)
    outs = rewriter(server, max_concurrency=3).rewrite([f"p{i}" for i in range(12)], max_new_tokens=[4] * 12)
    assert [o.text for o in outs] == [f"p{i}|4" for i in range(12)]
    assert 2 <= server.max_active <= 3


def test_api_key_comes_from_the_environment_and_is_never_shown(serve, monkeypatch):
    monkeypatch.setenv("MPD_TEST_KEY", KEY)
    server = serve(lambda s, n, p, b: (500, {}, {"error": f"echo {KEY}"}) if n == 0 else
                   (400, {}, {"error": {"message": f"bad key {KEY}"}}))
    rw = rewriter(server, api_key_env="MPD_TEST_KEY", max_retries=1)
    out = rw.rewrite(["x"])[0]
    assert server.requests[0]["headers"]["Authorization"] == f"Bearer {KEY}"
    assert out.error == "HTTP 400 (not retried): bad key ***"
    for shown in (repr(rw), str(rw), json.dumps(rw.stats), out.error):
        assert KEY not in shown
    assert "$MPD_TEST_KEY" in repr(rw)


def test_unset_api_key_variable_is_a_config_error(monkeypatch):
    monkeypatch.delenv("MPD_TEST_KEY", raising=False)
    with pytest.raises(ConfigError, match="MPD_TEST_KEY.*not set"):
        OpenAIRewriter("http://127.0.0.1:1/v1", "m", api_key_env="MPD_TEST_KEY")


def test_check_endpoint(serve):
    server = serve(echo)
    check_endpoint(server.url, 1.0, model="rewriter")
    with pytest.raises(ConfigError, match="serves rewriter, not rewrite.model 'other'"):
        check_endpoint(server.url, 1.0, model="other")
    with pytest.raises(ConfigError, match="HTTP 404.*/v1"):
        check_endpoint(server.url[: -len("/v1")] + "/nope", 1.0)
    url = f"http://127.0.0.1:{dead_port()}/v1"
    with pytest.raises(ConfigError) as err:
        check_endpoint(url, 0.5)
    message = str(err.value)
    assert "\n" not in message and url in message and "cannot reach the rewrite server" in message
    assert "rewrite.base_url" in message and "vllm serve" in message


# -- recipe ------------------------------------------------------------------------------------


def test_recipe_keys_and_validation():
    r = recipe_from_dict({"rewrite": {"backend": "openai", "base_url": "http://h:8000/v1", "model": "big",
                                      "api_key_env": "K", "max_concurrency": 4, "deadline_s": 30}}).rewrite
    assert (r.backend, r.base_url, r.model, r.api_key_env, r.max_concurrency, r.timeout_s, r.max_retries,
            r.deadline_s) == ("openai", "http://h:8000/v1", "big", "K", 4, 60.0, 3, 30.0)
    assert recipe_from_dict({}).rewrite.backend == "transformers"
    with pytest.raises(ConfigError, match="rewrite.base_url is required"):
        recipe_from_dict({"rewrite": {"backend": "openai", "model": "big"}})
    with pytest.raises(ConfigError, match="rewrite.model is required"):
        recipe_from_dict({"rewrite": {"backend": "openai", "base_url": "http://h/v1"}})
    with pytest.raises(ConfigError, match="api_key_env") as err:
        recipe_from_dict({"rewrite": {"api_key": KEY}})
    assert KEY not in str(err.value)
    with pytest.raises(ConfigError, match="rewrite.backend"):
        recipe_from_dict({"rewrite": {"backend": "vllm"}})


# -- training ----------------------------------------------------------------------------------


def test_mpd_step_with_a_failing_server_trains_on_the_student(serve, tiny_pair, tmp_path, monkeypatch):
    from trl import DistillationTrainer

    from mpdistill.pipeline import build_trainer, check_rewrite_server, load_model, training_problems
    from mpdistill.tasks import chain

    server = serve(lambda s, n, p, b: (500, {}, {"error": "down"}))
    recipe = recipe_from_dict({
        "method": "mpd",
        "student": str(tiny_pair / "student"),
        "teacher": str(tiny_pair / "teacher"),
        "data": {"n_train": 8},
        "training": {"steps": 1, "batch_size": 4, "max_completion_length": 16, "logging_steps": 1},
        "rewrite": {"prompt_template": chain.REWRITE_TEMPLATE.replace("{prompt}", "{problem}"),
                    "use_chat_template": False, "max_new_tokens": 16, "backend": "openai",
                    "base_url": server.url, "model": "rewriter", "timeout_s": 0.5, "max_retries": 1,
                    "deadline_s": 5},
    })
    check_rewrite_server(recipe)  # /models answers, so the check passes
    student, tok = load_model(recipe.student)
    teacher, _ = load_model(recipe.teacher)
    trainer = build_trainer(recipe, student, teacher, tok, training_problems(recipe), tmp_path)
    assert isinstance(trainer.rewriter, OpenAIRewriter) and not trainer.rewriter.chat
    assert trainer.teacher_model is not None

    original = DistillationTrainer._generate

    def with_answers(self, prompts):  # every completion has an answer, so each one is sent for a rewrite
        prompt_ids, completion_ids, *rest = original(self, prompts)
        ids = trainer._tokenizer("so the answer is 3\nA:3", add_special_tokens=False)["input_ids"]
        return (prompt_ids, [ids + [trainer._tokenizer.eos_token_id] for _ in completion_ids], *rest)

    monkeypatch.setattr(DistillationTrainer, "_generate", with_answers)
    trainer.train()
    rows = [json.loads(line) for line in (tmp_path / "rollouts.jsonl").read_text().splitlines()]
    assert len(rows) == 4
    assert all(r["reason"] == "backend_error" and r["trained_on"] == "student" and not r["accepted"] for r in rows)
    assert all(r["path"] == "/v1/completions" for r in server.requests) and len(server.requests) == 8
    logged = [h for h in trainer.state.log_history if "mpd/reject/backend_error" in h]
    assert logged and logged[0]["mpd/reject/backend_error"] == 1.0 and logged[0]["mpd/trained_on_student"] == 1.0
    assert trainer.rewriter.stats["failures"] == {"http_5xx": 4}


def test_train_checks_the_server_before_loading_models(tiny_pair, tmp_path):
    from mpdistill.pipeline import train

    recipe = recipe_from_dict({
        "student": str(tmp_path / "no-student"),  # never reached: the server check comes first
        "rewrite": {"backend": "openai", "base_url": f"http://127.0.0.1:{dead_port()}/v1", "model": "m",
                    "timeout_s": 0.5},
    })
    with pytest.raises(ConfigError, match="cannot reach the rewrite server"):
        train(recipe, tmp_path / "run")
    assert not (tmp_path / "run").exists()
