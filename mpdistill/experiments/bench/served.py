"""A loopback rewrite server of controlled latency, for ``mpdistill bench --served-latency``.

It speaks the OpenAI completions API as ``vllm serve`` does (``/v1/models``, ``/v1/completions``,
``/v1/chat/completions``) and answers each request after ``delay_s`` seconds, counted from when
the request arrived, so that concurrent requests overlap as they do on a server with its own
hardware. Its answer is the one the embedded teacher was trained to write for the chain task: the
concise solution along the student's own route (:func:`mpdistill.tasks.chain.concise_trace`),
computed in microseconds, so that it takes no CPU from the trainer beside it. A prompt it cannot
read comes back unchanged (the trainer rejects it as not shorter).

Run in its own process: ``python -m mpdistill.experiments.bench.served`` prints ``listening PORT`` on its
first line; ``POST /control {"delay_s": S}`` sets the delay.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from mpdistill.tasks import chain

_REWRITE_RE = re.compile(r"^(Q:[^\n]*\n)rewrite:\n(.*)\nshort:\n$", re.S)


def teacher_answer(prompt: str) -> str:
    """The embedded teacher's rewrite of a chain rewrite prompt (``{problem}rewrite:\\n{trace}\\nshort:\\n``)."""
    m = _REWRITE_RE.match(prompt)
    if not m:
        return prompt
    try:
        problem = chain.ChainProblem.parse(m.group(1))
    except ValueError:
        return prompt
    route = chain.route_of(m.group(2), problem) or "L"
    return chain.concise_trace(problem, route)


class JSONHandler(BaseHTTPRequestHandler):
    """A request handler that answers JSON and logs nothing (the tests' loopback servers use it too)."""

    def log_message(self, *args) -> None:
        pass

    def body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def send_json(self, status: int, payload) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class _Handler(JSONHandler):
    server: "_Server"

    def do_GET(self) -> None:  # noqa: N802 - the http.server hook
        if self.path.rstrip("/").endswith("/models"):
            self.send_json(200, {"object": "list", "data": [{"id": "rewriter", "object": "model"}]})
        else:
            self.send_json(404, {"error": {"message": "not found"}})

    def do_POST(self) -> None:  # noqa: N802
        arrived = time.monotonic()
        body = json.loads(self.body() or b"{}")
        if self.path == "/control":
            self.server.delay_s = float(body["delay_s"])
            self.send_json(200, {"delay_s": self.server.delay_s})
            return
        chat = self.path.endswith("/chat/completions")
        prompt = body["messages"][-1]["content"] if chat else body.get("prompt", "")
        text = teacher_answer(prompt)
        time.sleep(max(0.0, arrived + self.server.delay_s - time.monotonic()))
        choice = {"index": 0, "finish_reason": "stop"}
        choice.update({"message": {"role": "assistant", "content": text}} if chat else {"text": text})
        self.send_json(200, {"object": "chat.completion" if chat else "text_completion", "choices": [choice]})


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # a step's requests arrive at once: a short backlog would drop connections (1 s retries)
    delay_s = 0.0


class ServedRewriter:
    """The loopback server in a process of its own; ``url`` is its OpenAI API root."""

    def __init__(self, delay_s: float = 0.0) -> None:
        # At normal priority: it takes 10-30 ms of CPU per 32 requests from the cores the trainer shares
        # with it; at the lowest it was starved while the trainer computed and answered late (at 0.25x,
        # the overlapped step's wait doubled), which is further from a server on hardware of its own.
        self.process = subprocess.Popen([sys.executable, "-m", "mpdistill.experiments.bench.served"], stdout=subprocess.PIPE,
                                        text=True)
        line = self.process.stdout.readline().split()
        if len(line) != 2 or line[0] != "listening":
            self.close()
            raise RuntimeError("the loopback rewrite server did not start")
        self.url = f"http://127.0.0.1:{line[1]}/v1"
        self.set_delay(delay_s)

    def set_delay(self, delay_s: float) -> None:
        import urllib.request

        request = urllib.request.Request(self.url.removesuffix("/v1") + "/control", method="POST",
                                         data=json.dumps({"delay_s": delay_s}).encode())
        with urllib.request.urlopen(request, timeout=10) as resp:
            resp.read()

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(10)

    def __enter__(self) -> "ServedRewriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def main(argv: list[str] | None = None) -> None:
    args = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args.add_argument("--port", type=int, default=0)
    args.add_argument("--delay-s", type=float, default=0.0)
    options = args.parse_args(argv)
    server = _Server(("127.0.0.1", options.port), _Handler)
    server.delay_s = options.delay_s
    print(f"listening {server.server_address[1]}", flush=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
