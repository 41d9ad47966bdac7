"""The served rewriter against a real HTTP server on loopback (no mocked client)."""

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from mpdistill.errors import ConfigError
from mpdistill.run.recipe import recipe_from_dict
from mpdistill.rewriting.served import OpenAIRewriter, check_endpoint

KEY = "sk-test-5ecret-value"


class Trickle:
    """A payload the server sends one byte every ``every`` seconds (until close)."""

    def __init__(self, payload, every):
        self.data = json.dumps(payload).encode()
        self.every = every


class Server:
    """A loopback OpenAI-compatible server whose answers are scripted per test.

    ``respond(server, n, path, body)`` returns ``(status, headers, payload)``; ``n`` counts requests
    to the completion routes from 0. Every request is recorded with its headers and JSON body.
    A status of ``None`` hangs up without answering; a :class:`Trickle` payload is sent slowly. :meth:`close` may be called mid-test (the port
    then refuses connections) and again at teardown; it releases stalled handlers and joins every
    thread the server started, each join bounded.
    """

    def __init__(self, respond):
        self.respond = respond
        self.requests = []
        self.lock = threading.Lock()
        self.active = self.max_active = 0
        self.release = threading.Event()  # set at close so stalled handlers end
        self.handlers = []  # the threads that answered completion requests
        self.sent = 0  # bytes of an endless answer written
        self.closed = False
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _answer(self, status, headers, payload):
                if isinstance(payload, Endless):  # no length: the body goes on until the client hangs up
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.end_headers()
                    self.wfile.write(b'{"choices": [{"text": "')
                    chunk = b"x" * 65536
                    while not outer.release.is_set():
                        self.wfile.write(chunk)
                        with outer.lock:
                            outer.sent += len(chunk)
                    return
                trickle = payload if isinstance(payload, Trickle) else None
                data = trickle.data if trickle else payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if trickle is None:
                    self.wfile.write(data)
                    return
                for i in range(len(data)):
                    self.wfile.write(data[i : i + 1])
                    self.wfile.flush()
                    if outer.release.wait(trickle.every):
                        return

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
                    outer.handlers.append(threading.current_thread())
                    outer.active += 1
                    outer.max_active = max(outer.max_active, outer.active)
                try:
                    status, headers, payload = outer.respond(outer, n, self.path, body)
                finally:
                    with outer.lock:
                        outer.active -= 1
                if status is None:
                    self.close_connection = True  # hang up: the client sees the connection drop
                    return
                try:
                    self._answer(status, headers, payload)
                except OSError:
                    pass  # the client gave up (timeout)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self):
        """Stop serving; returns the server's threads still alive after a bounded join (none, normally)."""
        if not self.closed:
            self.closed = True
            self.release.set()
            self.httpd.shutdown()  # serve_forever polls every 0.05 s, so this returns at once
            self.httpd.server_close()  # the listening socket is closed: new connections are refused
        with self.lock:
            threads = [self.thread, *self.handlers]
        deadline = time.monotonic() + 5
        for t in threads:
            t.join(timeout=max(0.0, deadline - time.monotonic()))
        return [t for t in threads if t.is_alive()]


@pytest.fixture
def serve():
    servers = []

    def start(respond):
        servers.append(Server(respond))
        return servers[-1]

    yield start
    left = [t for s in servers for t in s.close()]
    assert not left, f"server threads still running after close: {left}"


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


def rewrite_threads():
    return {t for t in threading.enumerate() if t.name.startswith("rewrite")}


def wait_for(condition, timeout_s):
    end = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() >= end:
            return False
        time.sleep(0.02)
    return True


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


def test_a_trickled_answer_cannot_hold_a_thread_past_the_deadline(serve):
    # Each byte comes well within timeout_s, so only the deadline can end the read.
    server = serve(lambda s, n, p, b: (200, {}, Trickle(ok("x" * 200)[2], every=0.05)))
    before = rewrite_threads()
    rw = rewriter(server, timeout_s=0.5, max_retries=3, deadline_s=0.6)
    start = time.monotonic()
    out = rw.rewrite(["x"])[0]
    assert time.monotonic() - start < 0.6 + 0.3
    assert out.text == "" and "deadline" in out.error and rw.stats["failures"] == {"deadline": 1}
    assert wait_for(lambda: not rewrite_threads() - before, 1.0), "a rewrite thread is still reading"
    assert len(server.requests) == 1


class Endless:
    """An answer that never ends (a server ignoring max_tokens, streaming for ever)."""


@pytest.mark.parametrize("payload", [Endless(), ok("x" * (3 << 20))[2]])
def test_an_answer_longer_than_max_tokens_allows_is_abandoned_not_buffered(serve, payload):
    server = serve(lambda s, n, p, b: (200, {}, payload))
    rw = rewriter(server, max_retries=2, deadline_s=20.0)
    out = rw.rewrite(["x"], max_new_tokens=[16])[0]
    assert out.text == "" and "more than max_tokens allows" in out.error
    assert rw.stats["failures"] == {"too_large": 1} and len(server.requests) == 1  # the same again would not help
    from mpdistill.rewriting.served import answer_cap

    assert answer_cap(16) < 3 << 20  # the 3 MiB answer is valid JSON past the cap: read whole it would have parsed
    if isinstance(payload, Endless):
        assert server.sent < 64 << 20  # the server was cut off, not read to the end


def test_connection_refused_is_an_error_not_an_exception():
    rw = OpenAIRewriter(f"http://127.0.0.1:{dead_port()}/v1", "m", max_retries=1, backoff_s=0.01, timeout_s=0.5)
    out = rw.rewrite(["x"])[0]
    assert out.error.startswith("connection failed (") and out.error.endswith("after 2 tries")
    assert rw.stats["failures"] == {"connection": 1}


def test_dropped_connection_is_retried(serve):
    server = serve(lambda s, n, p, b: (None, {}, None) if n == 0 else ok("back"))
    rw = rewriter(server, max_retries=1)
    out = rw.rewrite(["x"])[0]
    assert out.text == "back" and out.error is None
    assert rw.stats == {"requests": 2, "retries": 1, "ok": 1, "failures": {}}
    hang_up = serve(lambda s, n, p, b: (None, {}, None))
    rw = rewriter(hang_up, max_retries=1)
    out = rw.rewrite(["x"])[0]
    assert out.error.startswith("connection failed (") and out.error.endswith("after 2 tries")
    assert len(hang_up.requests) == 2 and rw.stats["failures"] == {"connection": 1}


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
        recipe_from_dict({"rewrite": {"backend": "sglang"}})


# -- training ----------------------------------------------------------------------------------


STUDENT_TEXT = "so the answer is 3\nA:3"  # every student completion has an answer, so each is sent for a rewrite
REWRITE_TEXT = "A:3"  # shorter, same answer: accepted


class Run:
    """A short MPD run on the tiny pair whose rewriter is a loopback server.

    ``trained`` holds, per step, the completions the loss ran on and their keep masks (what
    ``MPDTrainer._generate`` handed back to TRL); ``rewrite_s`` the wall time of each rewrite call.
    """

    def __init__(self, tiny_pair, run_dir, monkeypatch, url, *, steps=1, batch_size=4, on_reject="student",
                 backoff_s=None, **rewrite):
        from trl import DistillationTrainer

        from mpdistill.run.pipeline import build_trainer, load_model, training_problems
        from mpdistill.tasks import chain
        from mpdistill.trainers.mpd import MPDTrainer

        self.recipe = recipe_from_dict({
            "method": "mpd",
            "student": str(tiny_pair / "student"),
            "teacher": str(tiny_pair / "teacher"),
            "data": {"n_train": 8},
            "training": {"steps": steps, "batch_size": batch_size, "max_completion_length": 16, "logging_steps": 1},
            "rewrite": {"prompt_template": chain.REWRITE_TEMPLATE.replace("{prompt}", "{problem}"),
                        "use_chat_template": False, "max_new_tokens": 16, "backend": "openai",
                        "base_url": url, "model": "rewriter", "on_reject": on_reject, **rewrite},
        })
        self.run_dir = run_dir
        student, tok = load_model(self.recipe.student)
        teacher, _ = load_model(self.recipe.teacher)
        self.trainer = trainer = build_trainer(self.recipe, student, teacher, tok, training_problems(self.recipe), run_dir)
        self.rewriter = trainer.rewriter
        if backoff_s is not None:  # not a recipe key: the recipe's default backoff would only slow the tests
            self.rewriter.backoff_s = backoff_s
        self.student_ids = tok(STUDENT_TEXT, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        self.rewrite_ids = tok(REWRITE_TEXT, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]

        original = DistillationTrainer._generate
        student_ids = self.student_ids

        def with_answers(self, prompts):
            prompt_ids, completion_ids, *rest = original(self, prompts)
            return (prompt_ids, [list(student_ids) for _ in completion_ids], *rest)

        monkeypatch.setattr(DistillationTrainer, "_generate", with_answers)

        self.trained = []

        def recording(prompts):
            out = MPDTrainer._generate(trainer, prompts)
            self.trained.append((out[1], out[2]))
            return out

        trainer._generate = recording

        self.rewrite_s = []
        inner = self.rewriter.rewrite

        def timed(prompts, max_new_tokens=None):
            start = time.monotonic()
            try:
                return inner(prompts, max_new_tokens)
            finally:
                self.rewrite_s.append(time.monotonic() - start)

        self.rewriter.rewrite = timed

    def train(self, timeout_s=60.0):
        """Train in a worker thread, so that a hang fails the test after ``timeout_s`` instead of hanging it."""
        errors = []

        def target():
            try:
                self.trainer.train()
            except BaseException as err:  # noqa: BLE001 - re-raised in the test's thread
                errors.append(err)

        worker = threading.Thread(target=target, name="mpd-train", daemon=True)
        worker.start()
        worker.join(timeout_s)
        assert not worker.is_alive(), f"training still running after {timeout_s:g} s"
        if errors:
            raise errors[0]
        return self

    @property
    def rows(self):
        return [json.loads(line) for line in (self.run_dir / "rollouts.jsonl").read_text().splitlines()]

    @property
    def logged(self):
        """One dict of MPD metrics per logged training step."""
        return [h for h in self.trainer.state.log_history if "mpd/acceptance_rate" in h]




def test_mpd_step_with_a_failing_server_trains_on_the_student(serve, tiny_pair, tmp_path, monkeypatch):
    from mpdistill.run.checks import check_generation_backends

    server = serve(lambda s, n, p, b: (500, {}, {"error": "down"}))
    run = Run(tiny_pair, tmp_path, monkeypatch, server.url, timeout_s=0.5, max_retries=1, deadline_s=5)
    check_generation_backends(run.recipe)  # /models answers, so the check passes
    assert isinstance(run.rewriter, OpenAIRewriter) and not run.rewriter.chat
    assert run.trainer.teacher_model is not None
    run.train()
    rows = run.rows
    assert len(rows) == 4
    assert all(r["reason"] == "backend_error" and r["trained_on"] == "student" and not r["accepted"] for r in rows)
    # First the one-token request of the pre-load check (a 5xx there is left to the run's retries),
    # then two tries for each of the four rewrites.
    assert all(r["path"] == "/v1/completions" for r in server.requests) and len(server.requests) == 1 + 8
    assert server.requests[0]["body"]["max_tokens"] == 1
    logged = run.logged
    assert logged and logged[0]["mpd/reject/backend_error"] == 1.0 and logged[0]["mpd/trained_on_student"] == 1.0
    assert run.rewriter.stats["failures"] == {"http_5xx": 4}
    assert run.trained == [([run.student_ids] * 4, [[1] * len(run.student_ids)] * 4)]


def test_connection_refused_mid_run_trains_on_the_student(serve, tiny_pair, tmp_path, monkeypatch):
    from transformers import TrainerCallback

    server = serve(lambda s, n, p, b: ok(REWRITE_TEXT, chat=False))
    run = Run(tiny_pair, tmp_path, monkeypatch, server.url, steps=3, batch_size=2, timeout_s=0.5, max_retries=1,
              deadline_s=5, backoff_s=0.01)

    class StopServerAfterFirstStep(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 1:
                assert server.close() == []

    run.trainer.add_callback(StopServerAfterFirstStep())
    run.train()  # no exception escapes
    assert server.closed and len(server.requests) == 2  # only the first step reached the server
    rows = run.rows
    assert [r["step"] for r in rows] == [0, 0, 1, 1, 2, 2]
    assert all(r["reason"] == "accepted" and r["trained_on"] == "rewrite" for r in rows[:2])
    assert all(r["reason"] == "backend_error" and r["trained_on"] == "student" and r["rewrite"] == ""
               for r in rows[2:])
    assert [h["mpd/reject/backend_error"] for h in run.logged] == [0.0, 1.0, 1.0]
    assert [h["mpd/trained_on_student"] for h in run.logged] == [0.0, 1.0, 1.0]
    assert [h["mpd/acceptance_rate"] for h in run.logged] == [1.0, 0.0, 0.0]
    assert [ids for ids, _ in run.trained] == [[run.rewrite_ids] * 2, [run.student_ids] * 2, [run.student_ids] * 2]
    # 2 prompts answered; 4 refused twice each (1 try + 1 retry), refusals counted per prompt.
    assert run.rewriter.stats == {"requests": 10, "retries": 4, "ok": 2, "failures": {"connection": 4}}


@pytest.mark.parametrize("on_reject, trained_on", [("student", "student"), ("drop", "dropped")])
def test_empty_rewrites_are_rejected_as_empty_without_retries(serve, tiny_pair, tmp_path, monkeypatch,
                                                               on_reject, trained_on):
    server = serve(lambda s, n, p, b: ok("", chat=False))
    run = Run(tiny_pair, tmp_path, monkeypatch, server.url, on_reject=on_reject, timeout_s=0.5, max_retries=3,
              deadline_s=5).train()
    assert len(server.requests) == 4  # one request per sample: an empty answer is not retried
    assert run.rewriter.stats == {"requests": 4, "retries": 0, "ok": 4, "failures": {}}
    rows = run.rows
    assert all(r["reason"] == "empty" and r["trained_on"] == trained_on and r["rewrite"] == "" for r in rows)
    (logged,) = run.logged
    assert logged["mpd/reject/empty"] == 1.0 and logged["mpd/reject/backend_error"] == 0.0
    assert logged[f"mpd/trained_on_{trained_on}"] == 1.0 and logged["mpd/acceptance_rate"] == 0.0
    keep = 1 if on_reject == "student" else 0
    assert run.trained == [([run.student_ids] * 4, [[keep] * len(run.student_ids)] * 4)]


def test_a_stalled_server_never_holds_training_past_the_deadline(serve, tiny_pair, tmp_path, monkeypatch):
    def stall(server, n, path, body):
        server.release.wait(60)  # until close(): far past any timeout
        return ok(REWRITE_TEXT, chat=False)

    server = serve(stall)
    before = rewrite_threads()
    run = Run(tiny_pair, tmp_path, monkeypatch, server.url, timeout_s=0.3, max_retries=5, deadline_s=1.0)
    run.train(timeout_s=1.0 + 5.0)
    (rewrite_s,) = run.rewrite_s
    assert 0.3 <= rewrite_s < 1.0 + 2.0
    rows = run.rows
    assert len(rows) == 4 and all(r["reason"] == "backend_error" and r["trained_on"] == "student" for r in rows)
    assert run.logged[0]["mpd/reject/backend_error"] == 1.0
    stats = run.rewriter.stats
    assert stats["ok"] == 0 and sum(stats["failures"].values()) == 4
    assert set(stats["failures"]) <= {"timeout", "deadline"}
    assert 4 <= len(server.requests) <= 4 * (1 + 5) and len(server.requests) == stats["requests"]
    # The rewriter's own threads end by the deadline, while the server still stalls.
    assert wait_for(lambda: not rewrite_threads() - before, 2.0), "a rewrite thread outlived the deadline"


def test_server_error_then_success_in_a_training_step_is_accepted(serve, tiny_pair, tmp_path, monkeypatch):
    server = serve(lambda s, n, p, b: (503, {}, {"error": "warming up"}) if n == 0 else ok(REWRITE_TEXT, chat=False))
    run = Run(tiny_pair, tmp_path, monkeypatch, server.url, timeout_s=0.5, max_retries=2, deadline_s=5,
              backoff_s=0.01).train()
    rows = run.rows
    assert len(rows) == 4 and all(r["reason"] == "accepted" and r["trained_on"] == "rewrite" for r in rows)
    (logged,) = run.logged
    assert logged["mpd/acceptance_rate"] == 1.0 and logged["mpd/reject/backend_error"] == 0.0
    assert run.trained == [([run.rewrite_ids] * 4, [[1] * len(run.rewrite_ids)] * 4)]
    assert len(server.requests) == 5  # the retry is visible only in the statistics and the step's log
    assert run.rewriter.stats == {"requests": 5, "retries": 1, "ok": 4, "failures": {}}
    assert logged["mpd/rewriter/requests"] == 5.0 and logged["mpd/rewriter/retries"] == 1.0


def test_train_checks_the_server_before_loading_models(tiny_pair, tmp_path):
    from mpdistill.run.pipeline import train

    recipe = recipe_from_dict({
        "student": str(tmp_path / "no-student"),  # never reached: the server check comes first
        "rewrite": {"backend": "openai", "base_url": f"http://127.0.0.1:{dead_port()}/v1", "model": "m",
                    "timeout_s": 0.5},
    })
    with pytest.raises(ConfigError, match="cannot reach the rewrite server"):
        train(recipe, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_server_that_refuses_the_runs_request_shape_is_one_line_before_loading(serve, tiny_pair, tmp_path,
                                                                                 monkeypatch):
    """A strict server refusing chat_template_kwargs would fail every rewrite of the run (each one
    falling back to the student's trace): the pre-load check sends one request of the run's shape."""
    from mpdistill.run.checks import check_generation_backends

    server = serve(lambda s, n, p, b: (400, {}, {"error": {"message": "Unrecognized request argument supplied: "
                                                                       "chat_template_kwargs"}}))
    run = Run(tiny_pair, tmp_path, monkeypatch, server.url, use_chat_template=True)
    with pytest.raises(ConfigError) as err:
        check_generation_backends(run.recipe)
    message = str(err.value)
    assert "the server refused a rewrite request (HTTP 400 (not retried): Unrecognized request argument" in message
    assert "rewrite.send_chat_template_kwargs: false" in message
    (request,) = server.requests
    assert request["body"]["max_tokens"] == 1 and request["body"]["chat_template_kwargs"] == {"enable_thinking": False}
    # Told not to send the switch, the same server is asked without it.
    quiet = run.recipe.model_copy(update={"rewrite": run.recipe.rewrite.model_copy(
        update={"send_chat_template_kwargs": False})})
    from mpdistill.rewriting.backends import served_rewriter

    assert "chat_template_kwargs" not in served_rewriter(quiet.rewrite, quiet.seed)._body("x", 5)
