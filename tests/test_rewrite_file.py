"""``mpdistill rewrite``: a file of traces rewritten with the training prompt, length budget and
verification, resumably, by the local embedded teacher or by a served rewriter on loopback.
Paths are relative to a temporary working directory so the console never wraps a message."""

import json
import random

import pytest
from loopback import JSONHandler, LoopbackServer
from transformers import AutoTokenizer
from typer.testing import CliRunner

from mpdistill.models import loading as models
from mpdistill.rewriting import rewrite as rewrite_mod
from mpdistill.cli import app
from mpdistill.models.worlds import embedded_dir
from mpdistill.evaluation.stats import wilson_interval
from mpdistill.rewriting.rewrite import REASONS, RewriteSettings, length_budget
from mpdistill.rollout import GenerationSettings
from mpdistill.tasks import chain
from mpdistill.tasks.problems import chain_problems

runner = CliRunner()
TEMPLATE = "{problem}rewrite:\n{trace}\nshort:\n"
FIELDS = {"index", "problem", "trace", "answer", "rewrite", "accepted", "reason", "trace_tokens", "rewrite_tokens",
          "route_kept"}


@pytest.fixture
def here(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(scope="module")
def tok():
    return AutoTokenizer.from_pretrained(embedded_dir() / "teacher")


def chain_rows() -> list[dict]:
    """Verbose traces of 8 held-out problems; row 6 is already concise, row 7 has no final answer."""
    rng = random.Random(0)
    rows = []
    for k, r in enumerate(chain_problems(8, seed=0, split="validation")):
        p = chain.ChainProblem.parse(r["problem"])
        trace = chain.concise_trace(p, "L") if k == 6 else chain.verbose_trace(p, rng.choice(chain.ROUTES), rng)
        if k == 7:
            trace = trace.rsplit("\n", 1)[0]  # drop the A:<digit> line
        rows.append({"problem": r["problem"], "trace": trace, "answer": r["answer"]})
    return rows


def write_rows(path, rows) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def read_out(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def count(tok, text: str) -> int:
    return len(tok(text, add_special_tokens=False)["input_ids"]) + 1  # with the end-of-sequence token


def summary_of(output: str) -> dict:
    line = next(line for line in output.splitlines() if line.startswith("summary: "))
    return json.loads(line[len("summary: "):])


LOCAL = ["--teacher", "embedded:teacher", "--task", "chain", "--prompt-template", TEMPLATE, "--no-chat-template",
         "--temperature", "1.0", "--top-k", "0", "--top-p", "1.0", "--seed", "3"]


def run_local(out: str, batch_size: int = 3, extra=()) -> dict:
    result = runner.invoke(app, ["rewrite", "--input", "in.jsonl", "--out", out, "--batch-size", str(batch_size),
                                 *LOCAL, *extra])
    assert result.exit_code == 0, result.output
    return summary_of(result.output)


def check_summary(summary: dict, records: list[dict]) -> None:
    n, accepted = len(records), [r for r in records if r["accepted"]]
    assert summary["n"] == n
    assert summary["accepted"] == len(accepted)
    assert summary["accept_rate"] == pytest.approx(len(accepted) / n)
    assert summary["accept_ci95"] == pytest.approx(list(wilson_interval(len(accepted), n)))
    assert summary["mean_trace_tokens"] == pytest.approx(sum(r["trace_tokens"] for r in records) / n)
    if accepted:
        kept = sum(r["rewrite_tokens"] for r in accepted)
        assert summary["mean_rewrite_tokens_accepted"] == pytest.approx(kept / len(accepted))
        assert summary["compression"] == pytest.approx(kept / sum(r["trace_tokens"] for r in accepted))
    rejected = {}
    for r in records:
        if not r["accepted"]:
            rejected[r["reason"]] = rejected.get(r["reason"], 0) + 1
    assert summary["rejected"] == rejected


# -- the local teacher ---------------------------------------------------------------------------


def test_local_teacher_rewrites_every_row(here, tok):
    rows = chain_rows()
    write_rows(here / "in.jsonl", rows)
    summary = run_local("out.jsonl")
    records = read_out(here / "out.jsonl")
    assert [r["index"] for r in records] == list(range(len(rows)))
    settings = RewriteSettings(prompt_template=TEMPLATE, generation=GenerationSettings(max_new_tokens=512))
    for row, r in zip(rows, records):
        assert set(r) == FIELDS
        assert (r["problem"], r["trace"], r["answer"]) == (row["problem"], row["trace"], row["answer"])
        assert r["reason"] in REASONS and r["reason"] != "on_policy"
        assert r["accepted"] == (r["reason"] == "accepted")
        assert r["trace_tokens"] == count(tok, row["trace"])
        if r["rewrite"] is not None:
            assert r["rewrite_tokens"] == (count(tok, r["rewrite"]) if r["rewrite"] else 0)
            # The rewrite stops at its length budget; a longer one could never pass.
            assert r["rewrite_tokens"] <= length_budget(r["trace_tokens"], settings) + 1
        if r["accepted"]:
            assert r["rewrite_tokens"] <= 0.9 * r["trace_tokens"]
            assert chain.extract_answer(r["rewrite"]) == chain.extract_answer(row["trace"]) == row["answer"]
    assert records[7]["reason"] == "student_unparsed" and records[7]["rewrite"] is None
    assert records[7]["rewrite_tokens"] is None
    assert not records[6]["accepted"]  # a concise trace cannot be made 10% shorter
    assert summary["accepted"] >= 4  # the embedded teacher was trained for exactly this
    assert summary["generated"] == 8 and summary["resumed"] == 0
    check_summary(summary, records)


def test_resume_regenerates_only_what_is_missing(here, monkeypatch):
    write_rows(here / "in.jsonl", chain_rows())
    whole = run_local("whole.jsonl")
    reference = (here / "whole.jsonl").read_bytes()
    lines = reference.splitlines(keepends=True)

    calls = []
    original = rewrite_mod.TransformersRewriter.rewrite

    def counted(self, prompts, max_new_tokens=None):
        calls.append([p.split("rewrite:")[0] for p in prompts])
        return original(self, prompts, max_new_tokens)

    monkeypatch.setattr(rewrite_mod.TransformersRewriter, "rewrite", counted)
    problems = [r["problem"] for r in chain_rows()]

    # 1.5 lines: row 0 is kept, row 1 is torn; chunk 0 (rows 0-2) is drawn again with its seed.
    (here / "torn.jsonl").write_bytes(lines[0] + lines[1][: len(lines[1]) // 2])
    again = run_local("torn.jsonl")
    assert (here / "torn.jsonl").read_bytes() == reference
    assert again["resumed"] == 1 and again["generated"] == 7
    assert {k: v for k, v in again.items() if k not in ("resumed", "generated")} == \
        {k: v for k, v in whole.items() if k not in ("resumed", "generated")}
    assert [sorted(c) for c in calls] == [sorted(problems[0:3]), sorted(problems[3:6]), sorted(problems[6:7])]

    # Chunk 0 complete and chunk 1 torn: chunk 0 is not rewritten again.
    calls.clear()
    (here / "torn2.jsonl").write_bytes(b"".join(lines[:4]) + lines[4][:10])
    run_local("torn2.jsonl")
    assert (here / "torn2.jsonl").read_bytes() == reference
    assert [sorted(c) for c in calls] == [sorted(problems[3:6]), sorted(problems[6:7])]

    # Nothing left to do: no model is loaded at all.
    calls.clear()
    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("model loaded"))
    done = run_local("whole.jsonl")
    assert done["resumed"] == 8 and calls == []
    assert (here / "whole.jsonl").read_bytes() == reference


# -- a served rewriter on loopback ---------------------------------------------------------------


class Server:
    """An OpenAI-compatible loopback server: ``answer(body)`` gives (status, JSON payload) per request."""

    def __init__(self, answer):
        self.requests = []
        outer = self

        class Handler(JSONHandler):
            def do_GET(self):
                self.send_json(200, {"object": "list", "data": [{"id": "rewriter"}]})

            def do_POST(self):
                body = json.loads(self.body())
                outer.requests.append({"path": self.path, "body": body, "auth": self.headers.get("Authorization")})
                self.send_json(*answer(body))

        self.server = LoopbackServer(Handler)
        self.url = self.server.url("/v1")

    def close(self):
        self.server.close()


@pytest.fixture
def serve():
    servers = []

    def start(answer):
        servers.append(Server(answer))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def served_args(server, out: str = "out.jsonl", tokenizer: bool = True) -> list[str]:
    args = ["rewrite", "--input", "in.jsonl", "--out", out, "--backend", "openai", "--base-url", server.url,
            "--model", "rewriter", "--task", "chain", "--prompt-template", TEMPLATE, "--chat-template",
            "--max-retries", "0", "--batch-size", "4"]
    return args + (["--tokenizer", str(embedded_dir() / "teacher")] if tokenizer else [])


def concise_answer(body):
    """The concise trace of the prompt's problem; problem 2 gets a different final answer."""
    prompt = body["messages"][0]["content"]
    problem = chain.ChainProblem.parse(prompt.split("rewrite:")[0])
    text = chain.concise_trace(problem, "L")
    if problem.prompt == chain_rows()[2]["problem"]:
        text = text.rsplit("A:", 1)[0] + f"A:{(problem.value + 1) % 10}"
    return 200, {"choices": [{"message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]}


def test_served_rewriter(here, serve, tok, monkeypatch):
    rows = chain_rows()
    write_rows(here / "in.jsonl", rows)
    server = serve(concise_answer)
    monkeypatch.setenv("REWRITE_KEY", "sk-loopback")
    result = runner.invoke(app, served_args(server) + ["--api-key-env", "REWRITE_KEY"])
    assert result.exit_code == 0, result.output
    records = read_out(here / "out.jsonl")
    reasons = [r["reason"] for r in records]
    assert reasons == ["accepted", "accepted", "answer_changed", "accepted", "accepted", "accepted",
                       "not_shorter", "student_unparsed"]
    settings = RewriteSettings(prompt_template=TEMPLATE, generation=GenerationSettings(max_new_tokens=512))
    # One request per row with a final answer, each with the row's length budget and the same prompt.
    preflight, *requests = server.requests  # a one-token request of the run's shape comes first
    assert preflight["body"]["max_tokens"] == 1 and preflight["body"]["chat_template_kwargs"] == {"enable_thinking": False}
    by_prompt = {q["body"]["messages"][0]["content"]: q for q in requests}
    assert len(requests) == 7 and len(by_prompt) == 7
    for row, r in zip(rows[:7], records):
        q = by_prompt[settings.render(row["problem"], row["trace"])]
        assert q["path"] == "/v1/chat/completions" and q["auth"] == "Bearer sk-loopback"
        assert q["body"]["max_tokens"] == length_budget(count(tok, row["trace"]), settings)
        assert r["rewrite_tokens"] == count(tok, r["rewrite"])
    check_summary(summary_of(result.output), records)
    assert "sk-loopback" not in result.output


def test_served_rewriter_failures_are_recorded_and_redone_by_a_rerun(here, serve):
    """A server that failed every request: each row is written as backend_error (the file accounts for every
    row), the command says so in one error line and exits 2; the same command against a healthy server asks
    for those rows again and replaces their records, one record per row."""
    write_rows(here / "in.jsonl", chain_rows()[:5])
    server = serve(lambda body: (500, {"error": {"message": "boom"}}))
    result = runner.invoke(app, served_args(server))
    assert result.exit_code == 2, result.output
    records = read_out(here / "out.jsonl")
    assert len(records) == 5
    assert all(r["reason"] == "backend_error" and not r["accepted"] for r in records)
    assert all(r["rewrite"] == "" and r["rewrite_tokens"] == 0 for r in records)
    summary = summary_of(result.output)
    assert summary["rejected"] == {"backend_error": 5} and summary["backend_failures"] == {"http_5xx": 5}
    assert len(server.requests) == 1 + 5  # the one-token check first (a 5xx there is left to the retries)
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert errors == ["error: 5 of 5 rows got no rewrite from the backend (http_5xx 5); they are kept as "
                      "backend_error and asked again by the same command"]
    healthy = serve(concise_answer)
    result = runner.invoke(app, served_args(healthy))
    assert result.exit_code == 0, result.output
    records = read_out(here / "out.jsonl")
    assert sorted(r["index"] for r in records) == list(range(5))  # one record per row
    assert "backend_error" not in {r["reason"] for r in records}
    summary = summary_of(result.output)
    assert (summary["retried"], summary["failed"], summary["resumed"]) == (5, 0, 0)
    assert len(healthy.requests) == 1 + 5


def test_some_failed_rows_are_a_warning_and_only_they_are_redone(here, serve):
    write_rows(here / "in.jsonl", chain_rows()[:4])

    def flaky(body):  # the second row's request fails, the others are answered
        prompt = body["messages"][0]["content"]
        if prompt.startswith(chain_rows()[1]["problem"]):
            return 500, {"error": {"message": "boom"}}
        return concise_answer(body)

    server = serve(flaky)
    result = runner.invoke(app, served_args(server))
    assert result.exit_code == 0, result.output
    assert [line for line in result.output.splitlines() if line.startswith("warning:")] == [
        "warning: 1 of 4 rows got no rewrite from the backend (http_5xx 1); they are kept as backend_error and asked "
        "again by the same command"]
    first = read_out(here / "out.jsonl")
    assert [r["reason"] == "backend_error" for r in first] == [False, True, False, False]
    def only_the_failed_row(body):  # any other row asked again would now be recorded as a failure
        prompt = body["messages"][0]["content"]
        if prompt.startswith(chain_rows()[1]["problem"]) or "rewrite:" not in prompt:
            return concise_answer(body)
        return 500, {"error": {"message": "this row was answered already"}}

    healthy = serve(only_the_failed_row)
    result = runner.invoke(app, served_args(healthy))
    assert result.exit_code == 0, result.output
    # The failed row's chunk is asked again whole, so its seed draws as before (1 server check + 4 rows)...
    assert len(healthy.requests) == 1 + 4
    again = sorted(read_out(here / "out.jsonl"), key=lambda r: r["index"])  # the redone row is appended
    assert [r["index"] for r in again] == [0, 1, 2, 3] and again[1]["reason"] != "backend_error"
    # ...but only its record is replaced: the answered rows keep theirs, not this server's refusals.
    assert [again[i] for i in (0, 2, 3)] == [first[i] for i in (0, 2, 3)]


def test_served_rewriter_needs_a_tokenizer(here, serve):
    write_rows(here / "in.jsonl", chain_rows()[:2])
    server = serve(concise_answer)
    result = runner.invoke(app, served_args(server, tokenizer=False))
    assert result.exit_code == 2
    assert "--tokenizer" in result.output and "count" in result.output
    assert server.requests == [] and not (here / "out.jsonl").exists()


def test_unreachable_server_fails_before_loading(here, monkeypatch):
    write_rows(here / "in.jsonl", chain_rows()[:2])
    server = Server(concise_answer)
    url = server.url
    server.close()
    args = ["rewrite", "--input", "in.jsonl", "--out", "out.jsonl", "--backend", "openai", "--base-url", url,
            "--model", "rewriter", "--tokenizer", "no-such-dir"]
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    message = " ".join(result.output.split())
    assert "--base-url 'http://127.0.0.1:" in message and "cannot reach the rewrite server" in message


def test_api_key_variable_must_be_set(here, serve, monkeypatch):
    write_rows(here / "in.jsonl", chain_rows()[:2])
    server = serve(concise_answer)
    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)
    result = runner.invoke(app, served_args(server) + ["--api-key-env", "NO_SUCH_KEY_VAR"])
    assert result.exit_code == 2
    message = " ".join(result.output.split())
    assert "--api-key-env names the environment variable 'NO_SUCH_KEY_VAR', which is not set" in message
    assert server.requests == []


# -- bad input -----------------------------------------------------------------------------------


@pytest.fixture
def no_model(monkeypatch):
    """Every input error is found before any model is loaded."""
    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("model loaded"))


def fails(args: list[str]) -> str:
    result = runner.invoke(app, ["rewrite", "--input", "in.jsonl", *args])
    assert result.exit_code == 2, result.output
    return " ".join(result.output.split())


def test_bad_input_names_file_line_and_field(here, no_model):
    rows = chain_rows()[:3]
    good = [json.dumps(r) for r in rows]
    local = ["--out", "out.jsonl", "--teacher", "embedded:teacher", "--task", "chain"]

    (here / "in.jsonl").write_text(good[0] + "\n\n" + '{"problem": "Q:1+2\\n", "trace": ' + "\n", encoding="utf-8")
    assert "in.jsonl:3: not valid JSON (" in fails(local)

    (here / "in.jsonl").write_text(good[0] + "\n" + json.dumps({"problem": "Q:1+2\n"}) + "\n", encoding="utf-8")
    assert "in.jsonl:2: field 'trace' is missing" in fails(local)

    (here / "in.jsonl").write_text(json.dumps({"problem": "", "trace": "x"}) + "\n", encoding="utf-8")
    assert "in.jsonl:1: field 'problem' is not a non-empty string" in fails(local)

    (here / "in.jsonl").write_text("[1, 2]\n", encoding="utf-8")
    assert "in.jsonl:1: expected a JSON object" in fails(local)

    no_gold = [{k: v for k, v in r.items() if k != "answer"} for r in rows]
    write_rows(here / "in.jsonl", [rows[0]] + no_gold[1:])
    assert "in.jsonl:2: field 'answer' is missing, and --require-gold needs it" in fails(local + ["--require-gold"])

    assert not (here / "out.jsonl").exists()


def test_output_of_another_input_is_refused(here, no_model):
    rows = chain_rows()
    write_rows(here / "in.jsonl", rows[:3])
    local = ["--out", "out.jsonl", "--teacher", "embedded:teacher", "--task", "chain"]
    record = {"index": 1, "problem": rows[5]["problem"], "trace": rows[1]["trace"], "answer": None, "rewrite": None,
              "accepted": False, "reason": "student_unparsed", "trace_tokens": 3, "rewrite_tokens": None}
    (here / "out.jsonl").write_text(json.dumps(record) + "\n", encoding="utf-8")
    message = fails(local)
    assert "out.jsonl:1: the problem of row 1 differs from this input's" in message and "use a new --out" in message

    record.update(index=3, problem=rows[3]["problem"])
    (here / "out.jsonl").write_text(json.dumps(record) + "\n", encoding="utf-8")
    message = fails(local)
    assert "out.jsonl:1: index 3 is not a row of this input (3 rows)" in message and "use a new --out" in message

    (here / "out.jsonl").write_text("not json\n" + json.dumps(record) + "\n", encoding="utf-8")
    assert "out.jsonl:1: not a valid JSON record" in fails(local)


def test_bad_options(here, no_model):
    write_rows(here / "in.jsonl", chain_rows()[:2])
    assert "--teacher is required with --backend transformers" in fails(["--out", "o.jsonl"])
    assert "--backend must be one of transformers, vllm, openai" in fails(["--out", "o.jsonl", "--backend", "sglang"])
    assert "--teacher is required with --backend vllm" in fails(["--out", "o.jsonl", "--backend", "vllm"])
    assert "--base-url is required" in fails(["--out", "o.jsonl", "--backend", "openai", "--tokenizer", "x"])
    assert "--prompt-template must contain one of {trace}" in fails(
        ["--out", "o.jsonl", "--teacher", "t", "--prompt-template", "{problem}"])
    assert "--max-ratio: 1.5: Input should be less than or equal to 1" in fails(
        ["--out", "o.jsonl", "--teacher", "t", "--max-ratio", "1.5"])
    assert "--batch-size: 0: Input should be greater than 0" in fails(["--out", "o.jsonl", "--teacher", "t", "--batch-size", "0"])
    assert "--task must be one of chain, math" in fails(["--out", "o.jsonl", "--teacher", "t", "--task", "code"])
    assert "no such file" in " ".join(runner.invoke(app, ["rewrite", "--input", "nope.jsonl", "--out", "o.jsonl",
                                                          "--teacher", "t"]).output.split())


# -- resuming with other settings ----------------------------------------------------------------


def test_resume_with_other_settings_is_refused(here, monkeypatch):
    write_rows(here / "in.jsonl", chain_rows()[:4])
    run_local("out.jsonl", batch_size=2)
    saved = json.loads((here / "out.jsonl.settings.json").read_text(encoding="utf-8"))
    assert saved["max_ratio"] == 0.9 and saved["teacher"] == "embedded:teacher" and saved["input"]["rows"] == 4
    (here / "out.jsonl").write_bytes(b"".join((here / "out.jsonl").read_bytes().splitlines(keepends=True)[:1]))
    partial = (here / "out.jsonl").read_bytes()
    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("model loaded"))

    def refused(*extra: str) -> str:
        result = runner.invoke(app, ["rewrite", "--input", "in.jsonl", "--out", "out.jsonl", "--batch-size", "2",
                                     *LOCAL, *extra])
        assert result.exit_code == 2, result.output
        assert [line for line in result.output.splitlines() if line.startswith("error:")], result.output
        assert (here / "out.jsonl").read_bytes() == partial
        return " ".join(result.output.split())

    message = refused("--max-ratio", "0.3")
    assert "out.jsonl was written with other settings (--max-ratio: 0.9 -> 0.3)" in message
    assert "use a new --out (or delete out.jsonl and out.jsonl.settings.json to start over)" in message
    message = refused("--max-ratio", "0.3", "--teacher", "embedded:student", "--require-gold")
    assert "(--teacher: 'embedded:teacher' -> 'embedded:student'; --max-ratio: 0.9 -> 0.3; " \
           "--require-gold: off -> on)" in message

    # The same problems and traces with another answer: the input's rows changed.
    rows = chain_rows()[:4]
    rows[3]["answer"] = "0" if rows[3]["answer"] != "0" else "1"
    write_rows(here / "in.jsonl", rows)
    assert "(--input: in.jsonl (4 rows, sha256 " in refused()


def test_resume_with_another_batch_size(here):
    write_rows(here / "in.jsonl", chain_rows()[:4])
    run_local("out.jsonl", batch_size=2)
    settings = (here / "out.jsonl.settings.json").read_bytes()
    lines = (here / "out.jsonl").read_bytes().splitlines(keepends=True)
    (here / "out.jsonl").write_bytes(lines[0])
    again = run_local("out.jsonl", batch_size=3)
    assert again["resumed"] == 1 and again["generated"] == 3
    records = read_out(here / "out.jsonl")
    assert [r["index"] for r in records] == [0, 1, 2, 3] and (here / "out.jsonl").read_bytes().startswith(lines[0])
    assert (here / "out.jsonl.settings.json").read_bytes() == settings


def test_output_without_settings_resumes_with_a_warning(here, caplog):
    """An output written before settings were kept cannot be checked; it is resumed, saying so."""
    write_rows(here / "in.jsonl", chain_rows()[:4])
    run_local("out.jsonl", batch_size=2)
    (here / "out.jsonl.settings.json").unlink()
    lines = (here / "out.jsonl").read_bytes().splitlines(keepends=True)
    (here / "out.jsonl").write_bytes(lines[0])
    with caplog.at_level("WARNING", logger="mpdistill.rewriting.offline"):
        again = run_local("out.jsonl", batch_size=2, extra=["--max-ratio", "0.3"])
    assert again["resumed"] == 1 and again["generated"] == 3
    assert "out.jsonl was written without out.jsonl.settings.json, so the settings of its records could not be " \
           "compared" in caplog.text
