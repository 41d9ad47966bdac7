"""Helpers of the real-engine tier: run ``mpdistill`` in a fresh process, a real vLLM server."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def subprocess_env() -> dict:
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1",
               # vLLM's CPU build sizes its KV cache from free RAM unless told; 1 GiB is plenty here.
               VLLM_CPU_KVCACHE_SPACE=os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"))
    return env


def run_cli(*args, timeout: float = 900, check: bool = True, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """``mpdistill ARGS`` in a fresh process; output is kept for the assertion message."""
    proc = subprocess.run([sys.executable, "-m", "mpdistill.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=subprocess_env(), cwd=cwd or ROOT)
    if check and proc.returncode != 0:
        raise AssertionError(f"mpdistill {' '.join(map(str, args))} exited {proc.returncode}\n"
                             f"--- stdout\n{proc.stdout[-6000:]}\n--- stderr\n{proc.stderr[-6000:]}")
    return proc


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class VLLMServer:
    """A real ``vllm.entrypoints.openai.api_server`` on loopback, in its own process group."""

    def __init__(self, model: Path, name: str, log: Path) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.log = log
        # The module entry point: the `vllm` console script looks for a distribution named vllm,
        # and the CPU build's is named vllm-cpu.
        cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model),
               "--served-model-name", name, "--host", "127.0.0.1", "--port", str(self.port), "--enforce-eager",
               "--dtype", "float32", "--gpu-memory-utilization", "0.3", "--seed", "0"]
        self._log_file = open(log, "w")
        self.proc = subprocess.Popen(cmd, stdout=self._log_file, stderr=subprocess.STDOUT, env=subprocess_env(),
                                     start_new_session=True)

    def wait_ready(self, timeout: float = 600) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise AssertionError(f"the vLLM server exited with {self.proc.returncode}:\n{self.log.read_text()[-4000:]}")
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=5):
                    return
            time.sleep(1)
        raise AssertionError(f"the vLLM server did not answer /health in {timeout:.0f} s:\n{self.log.read_text()[-4000:]}")

    def kill(self) -> None:
        """SIGKILL to the whole group (API server and engine core), as a lost node would look."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log_file.close()


@contextlib.contextmanager
def vllm_server(model: Path, name: str, log: Path):
    server = VLLMServer(model, name, log)
    try:
        server.wait_ready()
        yield server
    finally:
        server.close()


def embedded_recipe(path: Path, **sections) -> Path:
    """The shipped embedded recipe with ``sections`` merged in (one level deep), written to ``path``."""
    import yaml

    from mpdistill.recipes import shipped_path

    data = yaml.safe_load(shipped_path("embedded").read_text())
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path
