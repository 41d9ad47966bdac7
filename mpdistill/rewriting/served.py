"""A rewriter served over HTTP by any OpenAI-compatible server (``vllm serve``, SGLang).

The rewriter may be a different, larger model than the local teacher: it only writes the
rewrites, while the local teacher still scores the divergence the student is trained on.

A request that fails for good never raises: its prompt comes back as
``RewriteOutput(text="", error="<short reason>")``, which :func:`mpdistill.rewriting.rewrite.verify`
rejects as ``backend_error`` so the mixing rule falls back to the student's own trajectory.

Only the standard library is used (``urllib.request``, ``concurrent.futures``, ``json``).
"""

from __future__ import annotations

import concurrent.futures
import http.client
import json
import os
import random
import threading
import time
import urllib.error
import urllib.request
from typing import Sequence

from mpdistill.errors import ConfigError
from mpdistill.rewriting.rewrite import RewriteOutput

# Request fields set from the recipe's own keys (``rewrite.extra_body`` may add others, not these).
REQUEST_FIELDS = ("model", "messages", "prompt", "max_tokens", "temperature", "top_p", "top_k", "seed",
                  "chat_template_kwargs",
                  # and those that would change what comes back or how long it may be
                  "stream", "n", "best_of", "stop", "max_completion_tokens", "echo", "logprobs")

# Failure kinds, as counted in ``OpenAIRewriter.stats["failures"]``.
RETRIED = ("timeout", "connection", "http_5xx", "http_429")
FAILURE_KINDS = RETRIED + ("http_4xx", "bad_response", "too_large", "deadline", "internal")
# How much of an answer is read: a response to max_tokens = B holds at most B tokens of text, each at
# most a few dozen bytes in JSON (\uXXXX escapes), plus the envelope. A server that sends more ignores
# max_tokens (or streams for ever): its answer is abandoned, not held in memory.
ENVELOPE_BYTES = 1 << 20
BYTES_PER_TOKEN = 256
MODELS_LIST_BYTES = 16 << 20


def answer_cap(max_tokens: int) -> int:
    """The most bytes an answer to a request of ``max_tokens`` may take."""
    return ENVELOPE_BYTES + BYTES_PER_TOKEN * max(0, max_tokens)


def read_api_key(api_key_env: str | None) -> str | None:
    """The API key from the environment variable *named* ``api_key_env`` (None: no key)."""
    if api_key_env is None:
        return None
    key = os.environ.get(api_key_env)
    if not key:
        raise ConfigError(
            f"rewrite.api_key_env names the environment variable {api_key_env!r}, which is not set; "
            f"export {api_key_env}=... before running, or drop rewrite.api_key_env if the server needs no key"
        )
    return key


class OpenAIRewriter:
    """:class:`~mpdistill.rewriting.rewrite.Rewriter` backed by an OpenAI-compatible HTTP server.

    ``chat=True`` posts one user message to ``{base_url}/chat/completions`` (the server applies the
    model's chat template, with ``chat_template_kwargs`` when given, e.g. ``{"enable_thinking":
    False}`` so that a Qwen3 teacher writes the rewrite without thinking first); ``chat=False`` posts
    the raw prompt to ``{base_url}/completions``. ``extra_body`` is added to every request.
    Each prompt's ``max_new_tokens`` is sent as that request's ``max_tokens`` (``max_tokens`` when
    none is given); a budget of 0 returns an empty truncated rewrite without a request.

    Up to ``max_concurrency`` requests are in flight at once. ``timeout_s`` bounds connecting and
    each read of one request. A timeout, a connection error, HTTP 5xx or HTTP 429 is retried up to
    ``max_retries`` times (so at most ``1 + max_retries`` tries), waiting
    ``backoff_s * 2**retry`` seconds scaled by a random factor in [0.5, 1.5) (or the 429's
    ``Retry-After`` seconds), never past the deadline. Other 4xx answers, bodies that are not JSON
    and bodies without ``choices[0].message.content`` (``choices[0].text``) are not retried.
    A whole :meth:`rewrite` call returns within ``deadline_s``: requests still outstanding then
    become errors, and an answer still being received is abandoned at the deadline.

    An empty completion is returned as ``text=""`` with no error (``verify`` rejects it as
    ``empty``); ``finish_reason == "length"`` sets ``truncated``.

    ``stats`` counts ``requests`` (HTTP tries), ``retries``, ``ok`` (prompts answered) and
    ``failures`` (prompts that came back as errors, by kind, see ``FAILURE_KINDS``).
    The API key is read once, from the environment variable named ``api_key_env``, and is sent
    only in the ``Authorization`` header; it appears in no repr, statistic or error message.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key_env: str | None = None,
        chat: bool = True,
        temperature: float = 0.6,
        top_p: float = 0.95,
        top_k: int | None = None,
        max_tokens: int = 512,
        max_concurrency: int = 8,
        timeout_s: float = 60.0,
        max_retries: int = 3,
        backoff_s: float = 0.5,
        deadline_s: float = 600.0,
        seed: int | None = None,
        chat_template_kwargs: dict | None = None,
        extra_body: dict | None = None,
    ) -> None:
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be at least 1, got {max_concurrency}")
        if max_retries < 0:
            raise ValueError(f"max_retries must be at least 0, got {max_retries}")
        if timeout_s <= 0 or deadline_s <= 0:
            raise ValueError("timeout_s and deadline_s must be positive")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api_key_env = api_key_env
        self.chat = chat
        self.temperature, self.top_p, self.top_k = temperature, top_p, top_k
        self.max_tokens = max_tokens
        self.chat_template_kwargs = dict(chat_template_kwargs or {})
        self.extra_body = dict(extra_body or {})
        taken = sorted(set(self.extra_body) & set(REQUEST_FIELDS))
        if taken:
            raise ValueError(f"extra_body may not set {taken[0]!r}: it is set from the rewriter's own settings")
        self.max_concurrency = max_concurrency
        self.timeout_s, self.max_retries, self.backoff_s, self.deadline_s = timeout_s, max_retries, backoff_s, deadline_s
        self._url = f"{self.base_url}/chat/completions" if chat else f"{self.base_url}/completions"
        key = read_api_key(api_key_env)
        self._secret = key
        self._headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if key:
            self._headers["Authorization"] = f"Bearer {key}"
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self.stats: dict = {"requests": 0, "retries": 0, "ok": 0, "failures": {}}
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None  # submit()'s, made on first use
        self._closing = threading.Event()

    def __repr__(self) -> str:
        key = f"${self.api_key_env}" if self.api_key_env else "none"
        return (
            f"OpenAIRewriter(base_url={self.base_url!r}, model={self.model!r}, chat={self.chat}, "
            f"api_key={key}, max_concurrency={self.max_concurrency}, timeout_s={self.timeout_s}, "
            f"max_retries={self.max_retries}, deadline_s={self.deadline_s})"
        )

    __str__ = __repr__

    # -- the Rewriter protocol ----------------------------------------------------------------

    def rewrite(self, prompts: Sequence[str], max_new_tokens: Sequence[int] | None = None) -> list[RewriteOutput]:
        prompts = list(prompts)
        budgets = list(max_new_tokens) if max_new_tokens is not None else [self.max_tokens] * len(prompts)
        if len(budgets) != len(prompts):
            raise ValueError(f"{len(budgets)} budgets for {len(prompts)} prompts")
        if not prompts:
            return []
        end = time.monotonic() + self.deadline_s
        stop = threading.Event()
        pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=min(self.max_concurrency, len(prompts)), thread_name_prefix="rewrite"
        )
        try:
            futures = [pool.submit(self._one, p, int(b), end, stop) for p, b in zip(prompts, budgets)]
            concurrent.futures.wait(futures, timeout=max(0.0, end - time.monotonic()))
        finally:
            stop.set()  # requests still running stop retrying; their timeouts already end by the deadline
            pool.shutdown(wait=False, cancel_futures=True)
        return [self._account(f) for f in futures]

    def submit(self, prompt: str, max_new_tokens: int | None = None) -> "PendingRewrite":
        """Send one rewrite request now and return at once: its :class:`PendingRewrite`.

        For a trainer that sends each trace as soon as the student has written it and does other
        work while the answer is on its way. Requests share one pool of ``max_concurrency``
        connections; each has its own deadline, ``deadline_s`` from now, by which
        :meth:`PendingRewrite.result` returns, a failure as an error output as from :meth:`rewrite`.
        """
        budget = self.max_tokens if max_new_tokens is None else int(max_new_tokens)
        end = time.monotonic() + self.deadline_s
        with self._lock:
            if self._pool is None:
                self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=self.max_concurrency,
                                                                   thread_name_prefix="rewrite")
            request = self._pool.submit(self._one, prompt, budget, end, self._closing)
        return PendingRewrite(self, request, end)

    def close(self) -> None:
        """Stop the requests :meth:`submit` left running (they end as deadline errors) and their threads."""
        with self._lock:
            pool, self._pool = self._pool, None
            closing, self._closing = self._closing, threading.Event()
        closing.set()
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)

    def _account(self, f: concurrent.futures.Future) -> RewriteOutput:
        """One request's output, counted in ``stats``."""
        if not f.done() or f.cancelled():
            out, kind = RewriteOutput("", error=f"deadline of {self.deadline_s:g} s reached"), "deadline"
        elif f.exception() is not None:  # a bug, not a server failure: still never fatal to training
            out, kind = RewriteOutput("", error=self._scrub(f"internal error: {type(f.exception()).__name__}")), "internal"
        else:
            out, kind = f.result()
        with self._lock:
            if kind is None:
                self.stats["ok"] += 1
            else:
                self.stats["failures"][kind] = self.stats["failures"].get(kind, 0) + 1
        return out

    def preflight(self, where: str = "rewrite.base_url") -> None:
        """Send one rewrite request of the run's exact shape (one token) before anything loads.

        A server that refuses it (HTTP 4xx: an unknown field such as ``chat_template_kwargs`` or
        ``top_k``, a bad model name) would otherwise fail every rewrite of the run, each falling
        back to the student's trace. Raises :class:`~mpdistill.run.recipe.ConfigError` with the server's
        own message; a timeout or 5xx is left to the run's retries.
        """
        end = time.monotonic() + self.timeout_s
        kind, detail, _, _ = self._attempt(self._payload("Reply with OK.", 1), self.timeout_s, end, threading.Event(),
                                            answer_cap(1))
        if kind == "http_4xx":
            fields = [f for f in ("chat_template_kwargs", "top_k", *self.extra_body) if f in self._body("", 1)]
            bad_request = detail.startswith(("HTTP 400", "HTTP 422"))  # not a key or a route: the request itself
            hint = ("; for a server that does not accept " + ", ".join(fields) + ": rewrite.send_chat_template_kwargs: "
                    "false, rewrite.top_k: 0, or remove the field from rewrite.extra_body") if fields and bad_request else ""
            raise ConfigError(self._scrub(f"{where} {self.base_url!r}: the server refused a rewrite request "
                                          f"({detail}){hint}"))

    # -- one prompt ---------------------------------------------------------------------------

    def _payload(self, prompt: str, budget: int) -> bytes:
        return json.dumps(self._body(prompt, budget)).encode("utf-8")

    def _body(self, prompt: str, budget: int) -> dict:
        body: dict = {**self.extra_body, "model": self.model, "max_tokens": budget, "temperature": self.temperature,
                      "top_p": self.top_p}
        if self.top_k:
            body["top_k"] = self.top_k  # a vLLM / SGLang sampling extension
        if self.chat:
            body["messages"] = [{"role": "user", "content": prompt}]
            if self.chat_template_kwargs:
                body["chat_template_kwargs"] = self.chat_template_kwargs  # read by vLLM and SGLang
        else:
            body["prompt"] = prompt
        return body

    def _one(self, prompt: str, budget: int, end: float, stop: threading.Event) -> tuple[RewriteOutput, str | None]:
        if budget <= 0:
            return RewriteOutput("", truncated=True), None
        body = self._payload(prompt, budget)
        tries = 0
        while True:
            remaining = end - time.monotonic()
            if stop.is_set() or remaining <= 0:
                return self._error(f"deadline of {self.deadline_s:g} s reached after {_tries(tries)}"), "deadline"
            tries += 1
            with self._lock:
                self.stats["requests"] += 1
            kind, detail, retry_after, raw = self._attempt(body, min(self.timeout_s, remaining), end, stop,
                                                           answer_cap(budget))
            if kind is None:
                return self._parse(raw)
            if kind not in RETRIED:
                return self._error(detail), kind
            if tries > self.max_retries:
                return self._error(f"{detail} after {_tries(tries)}"), kind
            if retry_after is not None:
                delay = retry_after
            else:
                with self._lock:
                    delay = self.backoff_s * 2 ** (tries - 1) * (0.5 + self._rng.random())
            remaining = end - time.monotonic()
            if delay >= remaining:
                return self._error(f"{detail} after {_tries(tries)}; deadline of {self.deadline_s:g} s reached"), kind
            with self._lock:
                self.stats["retries"] += 1
            if stop.wait(delay):
                return self._error(f"{detail} after {_tries(tries)}; deadline of {self.deadline_s:g} s reached"), kind

    def _attempt(
        self, body: bytes, timeout: float, end: float, stop: threading.Event, cap: int
    ) -> tuple[str | None, str, float | None, bytes]:
        """One HTTP try: (failure kind or None, short detail, Retry-After seconds, response body).

        ``timeout`` bounds each socket operation, not the whole body: the body is read a chunk at a
        time and abandoned at the deadline, so a server that trickles it cannot hold the thread; and
        abandoned past ``cap`` bytes, so one that ignores ``max_tokens`` cannot fill the memory.
        """
        request = urllib.request.Request(self._url, data=body, headers=self._headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as resp:
                chunks, size = [], 0
                while chunk := resp.read1(65536):
                    if stop.is_set() or time.monotonic() >= end:
                        return "deadline", f"deadline of {self.deadline_s:g} s reached while reading the answer", None, b""
                    size += len(chunk)
                    if size > cap:
                        return ("too_large", f"answer longer than {cap:,} bytes, more than max_tokens allows (the server "
                                "ignores max_tokens); abandoned", None, b"")
                    chunks.append(chunk)
                return None, "", None, b"".join(chunks)
        except urllib.error.HTTPError as err:
            code = err.code
            message = _error_message(err)
            err.close()
            if code == 429:
                return "http_429", "HTTP 429", _retry_after(err.headers.get("Retry-After") if err.headers else None), b""
            if code >= 500:
                return "http_5xx", f"HTTP {code}", None, b""
            return "http_4xx", f"HTTP {code} (not retried){': ' + message if message else ''}", None, b""
        except urllib.error.URLError as err:
            if isinstance(err.reason, TimeoutError):
                return "timeout", f"timeout ({timeout:g} s)", None, b""
            return "connection", f"connection failed ({_reason(err.reason)})", None, b""
        except TimeoutError:
            return "timeout", f"timeout ({timeout:g} s)", None, b""
        except (http.client.HTTPException, OSError) as err:
            return "connection", f"connection failed ({_reason(err)})", None, b""

    def _parse(self, raw: bytes) -> tuple[RewriteOutput, str | None]:
        field = "choices[0].message.content" if self.chat else "choices[0].text"
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            return self._error("bad response: body is not JSON"), "bad_response"
        try:
            choice = data["choices"][0]
            text = choice["message"]["content"] if self.chat else choice["text"]
        except (KeyError, IndexError, TypeError):
            return self._error(f"bad response: no {field}"), "bad_response"
        if text is None:
            text = ""  # e.g. a completion with nothing but reasoning: rejected as empty by verify
        if not isinstance(text, str):
            return self._error(f"bad response: {field} is not a string"), "bad_response"
        truncated = isinstance(choice, dict) and choice.get("finish_reason") == "length"
        return RewriteOutput(text.strip(), truncated=truncated), None

    def _error(self, message: str) -> RewriteOutput:
        return RewriteOutput("", error=self._scrub(message))

    def _scrub(self, message: str) -> str:
        return message.replace(self._secret, "***") if self._secret else message


class PendingRewrite:
    """A rewrite request on its way (:meth:`OpenAIRewriter.submit`)."""

    def __init__(self, rewriter: OpenAIRewriter, request: concurrent.futures.Future, end: float) -> None:
        self.rewriter, self.request, self.end = rewriter, request, end
        self._output: RewriteOutput | None = None

    def result(self) -> RewriteOutput:
        """The rewrite, waiting for it no later than the request's deadline (then an error output);
        counted once in the rewriter's ``stats``."""
        if self._output is None:
            concurrent.futures.wait([self.request], timeout=max(0.0, self.end - time.monotonic()))
            self._output = self.rewriter._account(self.request)
        return self._output


def _tries(n: int) -> str:
    return f"{n} try" if n == 1 else f"{n} tries"


def _reason(reason) -> str:
    text = getattr(reason, "strerror", None) or str(reason) or type(reason).__name__
    return " ".join(str(text).split())[:120]


def _retry_after(value: str | None) -> float | None:
    """``Retry-After`` in seconds (HTTP dates are not honoured: the exponential backoff applies)."""
    try:
        seconds = float(value) if value is not None else None
    except ValueError:
        return None
    return max(0.0, seconds) if seconds is not None else None


def _error_message(err: urllib.error.HTTPError) -> str:
    """The server's own error message from a 4xx body, one line and short."""
    try:
        data = json.loads(err.read(4096))
        msg = data.get("message") or data.get("error", {}).get("message") or ""
    except Exception:  # noqa: BLE001 - any unreadable body just means no message
        return ""
    return " ".join(str(msg).split())[:160]


def check_endpoint(base_url: str, timeout_s: float = 10.0, *, model: str | None = None,
                   api_key_env: str | None = None) -> None:
    """Fail fast, before any model is loaded, when the rewrite server cannot be used.

    GETs ``{base_url}/models``; raises :class:`~mpdistill.run.recipe.ConfigError` with one line saying
    what failed and how to fix it. When ``model`` is given and the server lists its models, the
    model must be among them.
    """
    url = f"{base_url.rstrip('/')}/models"
    key = read_api_key(api_key_env)
    headers = {"Accept": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    where = f"rewrite.base_url {base_url!r}"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout_s) as resp:
            raw = resp.read(MODELS_LIST_BYTES + 1)  # the model list; a server sending more is not read further
    except urllib.error.HTTPError as err:
        err.close()
        if err.code in (401, 403):
            raise ConfigError(
                f"{where}: the server refused the API key (HTTP {err.code}); set the environment variable "
                "named by rewrite.api_key_env to a valid key"
            ) from None
        if err.code == 404:
            raise ConfigError(
                f"{where}: GET {url} gave HTTP 404; base_url must be the OpenAI API root, usually ending in /v1"
            ) from None
        raise ConfigError(f"{where}: GET {url} gave HTTP {err.code}; check the server's log") from None
    except urllib.error.URLError as err:
        what = f"timed out after {timeout_s:g} s" if isinstance(err.reason, TimeoutError) else _reason(err.reason)
        raise ConfigError(
            f"{where}: cannot reach the rewrite server ({what}); start it (e.g. `vllm serve MODEL`) "
            "or fix rewrite.base_url"
        ) from None
    except (TimeoutError, http.client.HTTPException, OSError) as err:
        raise ConfigError(
            f"{where}: cannot reach the rewrite server ({_reason(err)}); start it (e.g. `vllm serve MODEL`) "
            "or fix rewrite.base_url"
        ) from None
    if model is None:
        return
    try:
        served = [m["id"] for m in json.loads(raw)["data"]]
    except Exception:  # noqa: BLE001 - a server that does not list its models is not refused for it
        return
    if served and model not in served:
        shown = ", ".join(served[:5]) + (", ..." if len(served) > 5 else "")
        raise ConfigError(f"{where} serves {shown}, not rewrite.model {model!r}; fix rewrite.model")
