"""Two training processes on one CPU machine, launched as the README says: torchrun, and accelerate
with the shipped accelerate/cpu_2proc config (``make test-multiprocess``; the default suite skips them).

The data makes processes unequal: three rows in four are chains too long for the student to finish
within its completion budget, so their traces have no answer and ask for no rewrite. At some step
one process has nothing to rewrite while the other does; the local teacher's generate calls must
still be as many on both (with its weights sharded, ZeRO-3 or FSDP, a process that makes fewer
leaves the others waiting for ever).
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import pytest
import yaml

from mpdistill.recipes import shipped_path

pytestmark = pytest.mark.multiprocess

ROOT = Path(__file__).resolve().parents[1]
PROCESSES, BATCH, STEPS = 2, 4, 4
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
       "PYTHONUNBUFFERED": "1"}


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_command(how: str, recipe: Path, out: Path, *extra: str) -> list[str]:
    train = ["-m", "mpdistill.cli", "train", str(recipe), "--out", str(out), *extra]
    if how == "torchrun":
        return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(PROCESSES),
                "--master_port", str(_port()), *train]
    config = shipped_path("accelerate/cpu_2proc") if how == "accelerate" else Path(how)
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config),
            "--main_process_port", str(_port()), *train]


def launch(how: str, recipe: Path, out: Path, *extra: str, timeout: float = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run(launch_command(how, recipe, out, *extra), capture_output=True, text=True,
                          timeout=timeout, env=ENV, cwd=ROOT)
    assert proc.returncode == 0, f"{how} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return proc


@pytest.fixture(scope="module")
def recipe(tmp_path_factory) -> Path:
    from mpdistill.tasks.problems import chain_problems

    root = tmp_path_factory.mktemp("multiprocess")
    rng = random.Random(5)
    rows = []
    for i, problem in enumerate(chain_problems(16, 11)):
        rows.append({"problem": problem["prompt"], "answer": problem["answer"]})
        for _ in range(3):  # a 20-term chain: the student's trace is cut before its answer
            terms = [str(rng.randrange(10)) for _ in range(20)]
            rows.append({"problem": "Q:" + terms[0] + "".join(rng.choice("+-") + t for t in terms[1:]) + "\n",
                         "answer": "0"})
    (root / "problems.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = yaml.safe_load(shipped_path("embedded").read_text())
    data["task"] = "chain"
    data["data"] = {"train": str(root / "problems.jsonl"), "n_train": len(rows)}
    data["training"].update(steps=STEPS, batch_size=BATCH, max_completion_length=120, logging_steps=1)
    path = root / "recipe.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def kill_tree(pid: int) -> None:
    """SIGKILL a launcher and every process under it (torchrun's workers have sessions of their own),
    as a lost node or an out-of-memory kill would."""
    import psutil

    root = psutil.Process(pid)
    for p in [*root.children(recursive=True), root]:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass


def rollouts(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "rollouts.jsonl").read_text().splitlines()]


def steps_logged(out: Path) -> set[int]:
    """Steps in a rollout log that is being written: a line still in flight is not read."""
    path = out / "rollouts.jsonl"
    if not path.exists():
        return set()
    text = path.read_text()
    return {json.loads(line)["step"] for line in text[: text.rfind("\n") + 1].splitlines()}


def check_steps(out: Path, steps: int = STEPS) -> dict[int, list[dict]]:
    """Every step's rollout log holds every process's samples once; the records, by step."""
    by_step = defaultdict(list)
    for r in rollouts(out):
        by_step[r["step"]].append(r)
    assert sorted(by_step) == list(range(steps))
    for step, records in by_step.items():
        assert Counter(r["process"] for r in records) == {p: BATCH for p in range(PROCESSES)}, step
        assert sorted(r["index"] for r in records) == list(range(PROCESSES * BATCH)), step
    return by_step


def check_run(out: Path, steps: int = STEPS) -> dict:
    """Every step's log holds every process's samples once; the teacher's calls were in step."""
    rows = [r for records in check_steps(out, steps).values() for r in records]
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    calls = [(e["mpd/rewriter/generate_calls_min"], e["mpd/rewriter/generate_calls_max"])
             for e in log if "mpd/rewriter/generate_calls_min" in e]
    assert len(calls) == steps and all(lo == hi >= 1 for lo, hi in calls), calls
    assert (out / "model" / "model.safetensors").exists() and (out / "recipe.yaml").exists()
    asked = defaultdict(int)  # rewrites asked for, per (step, process)
    for r in rows:
        asked[r["step"], r["process"]] += r["reason"] not in ("student_unparsed", "on_policy")
    return asked


def test_ten_torchrun_launches_in_a_row_all_finish(recipe, tmp_path):
    for attempt in range(10):
        out = tmp_path / f"run{attempt}"
        proc = launch("torchrun", recipe, out)
        assert proc.stdout.count("saved mpd student") == 1, proc.stdout  # one line, not one per process
        asked = check_run(out)
        if attempt == 0:
            # The case that hangs a sharded teacher without padding: one process has nothing to rewrite
            # while the other has something, and both made the same generate calls.
            assert any(asked[s, p] == 0 and asked[s, 1 - p] > 0 for s in range(STEPS) for p in (0, 1)), dict(asked)


def test_accelerate_with_the_shipped_cpu_config_runs_two_processes(recipe, tmp_path):
    proc = launch("accelerate", recipe, tmp_path / "run")
    assert proc.stdout.count("saved mpd student") == 1
    check_run(tmp_path / "run")


def test_an_fsdp_launch_on_cpu_says_it_runs_as_ddp(recipe, tmp_path):
    """accelerate turns FSDP on for accelerator devices only: on a CPU the run is DDP, and says so."""
    config = tmp_path / "fsdp2.yaml"
    data = yaml.safe_load(shipped_path("accelerate/fsdp2_8gpu").read_text())
    data.update(num_processes=PROCESSES, mixed_precision="no")
    data["fsdp_config"]["fsdp_cpu_ram_efficient_loading"] = False
    config.write_text(yaml.safe_dump(data))
    proc = launch(str(config), recipe, tmp_path / "run")
    text = " ".join(proc.stderr.split())
    assert text.count("the launch asks for FSDP, but accelerate shards models with FSDP on GPUs only") == 1
    check_run(tmp_path / "run")


def test_two_processes_killed_mid_run_resume_to_the_uninterrupted_run(recipe, tmp_path):
    steps = 6
    data = yaml.safe_load(recipe.read_text())
    data["training"].update(steps=steps, save_steps=2)
    checkpointed = tmp_path / "recipe.yaml"
    checkpointed.write_text(yaml.safe_dump(data, sort_keys=False))
    launch("torchrun", checkpointed, tmp_path / "whole")

    killed = tmp_path / "killed"
    proc = subprocess.Popen(launch_command("torchrun", checkpointed, killed), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=ENV, cwd=ROOT)
    try:
        end = time.monotonic() + 600
        while time.monotonic() < end and proc.poll() is None:
            # Killed once step 3 has begun: after the step-2 checkpoint, mid-epoch, with a step to redo.
            if any(step >= 3 for step in steps_logged(killed)):
                kill_tree(proc.pid)
                break
            time.sleep(0.05)
        proc.wait(60)
    finally:
        if proc.poll() is None:
            kill_tree(proc.pid)
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (killed / "model").exists()
    launch("torchrun", checkpointed, killed, "--resume")
    check_run(killed, steps)
    # The resumed run draws what the uninterrupted one drew: the same traces, rewrites and verdicts.
    key = lambda r: (r["step"], r["index"])  # noqa: E731
    fields = ("student", "rewrite", "reason", "trained_on", "process")
    whole = {key(r): [r[f] for f in fields] for r in rollouts(tmp_path / "whole")}
    again = {key(r): [r[f] for f in fields] for r in rollouts(killed)}
    assert again == whole


def test_a_mistake_under_torchrun_is_said_once(recipe, tmp_path):
    """Every process makes the same checks; the main one reports what they all found, once."""
    data = yaml.safe_load(recipe.read_text())
    data["training"]["batch_size"] = 64  # 64 problems; one step of 2 processes takes 128
    bad = tmp_path / "big.yaml"
    bad.write_text(yaml.safe_dump(data, sort_keys=False))
    proc = subprocess.run(launch_command("torchrun", bad, tmp_path / "run"), capture_output=True, text=True,
                          timeout=600, env=ENV, cwd=ROOT)
    assert proc.returncode != 0
    errors = [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "one step takes 128 (training.batch_size 64 x" in errors[0], proc.stderr[-3000:]
    assert not (tmp_path / "run").exists()


def test_a_hub_repository_that_cannot_be_created_stops_both_processes_with_one_line(recipe, tmp_path):
    """transformers creates the repository on the main process only; the other must stop too (not wait
    at its first collective) and the error is said once."""
    from stand_in_hub import REPO, StandInHub, hub_env, start_hub

    data = yaml.safe_load(recipe.read_text())
    data["training"].update(push_to_hub=True, hub_model_id=REPO)
    pushing = tmp_path / "push.yaml"
    pushing.write_text(yaml.safe_dump(data, sort_keys=False))
    hub = start_hub()
    StandInHub.refuse = "/api/repos/create"
    try:
        proc = subprocess.run(launch_command("torchrun", pushing, tmp_path / "run"), capture_output=True, text=True,
                              timeout=300, env={**ENV, **hub_env(hub)}, cwd=ROOT)
    finally:
        hub.close()
    assert proc.returncode != 0
    errors = [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"push_to_hub: cannot create the Hub repository {REPO}" in errors[0], proc.stderr[-3000:]
    assert "403" in errors[0]
    # The other process stopped on the shared error, not by crashing on the main one's closed connection
    # (torchrun still reports a failed worker in its own words, as for any error).
    assert "[rank1]: Traceback" not in proc.stderr and "Connection closed by peer" not in proc.stderr, proc.stderr[-3000:]
    assert not (tmp_path / "run" / "rollouts.jsonl").exists()


def test_overlapped_steps_under_torchrun_train_as_serial_steps_do(recipe, tmp_path):
    """Two processes with a served rewriter, two micro-batches each per step: the overlapped step draws,
    sends and trains on what the serial one does (the processes asking for unequal numbers of
    rewrites), and the two models end up equal up to float rounding."""
    from safetensors.torch import load_file

    from mpdistill.experiments.bench.served import ServedRewriter

    data = yaml.safe_load(recipe.read_text())
    data["training"]["gradient_accumulation_steps"] = 2
    runs = {}
    with ServedRewriter(delay_s=0.05) as server:
        for overlap in (False, True):
            data["rewrite"].update(backend="openai", base_url=server.url, model="rewriter", overlap=overlap)
            path = tmp_path / f"overlap-{overlap}.yaml"
            path.write_text(yaml.safe_dump(data, sort_keys=False))
            out = runs[overlap] = tmp_path / f"run-{overlap}"
            launch("torchrun", path, out)
    fields = ("step", "index", "process", "student", "rewrite", "reason", "trained_on")
    serial, overlapped = ([[r[f] for f in fields] for r in rollouts(runs[o])] for o in (False, True))
    assert len(serial) == STEPS * PROCESSES * BATCH * 2 and overlapped == serial
    assert sum(r[5] == "accepted" for r in serial) >= 4
    asked = Counter((r[0], r[2]) for r in serial if r[5] not in ("student_unparsed", "on_policy"))
    assert any(asked[s, 0] != asked[s, 1] for s in range(STEPS)), dict(asked)  # the processes wait unequally
    from mpdistill.models.loading import load_model

    start = dict(load_model("embedded:student")[0].state_dict())
    # The gradients before clipping, gathered over both processes: what the rescale makes of the divisor.
    norms = [[e["grad_norm"] for e in map(json.loads, (runs[o] / "train_log.jsonl").read_text().splitlines())
              if "grad_norm" in e] for o in (False, True)]
    assert len(norms[0]) == STEPS and norms[1] == pytest.approx(norms[0], rel=1e-4)
    a, b = (load_file(runs[o] / "model" / "model.safetensors") for o in (False, True))
    apart = max((a[k] - b[k]).abs().max().item() for k in a)
    moved = max((a[k] - start[k]).abs().max().item() for k in a)
    assert moved > 5e-4 and apart < 0.02 * moved, (apart, moved)


@pytest.mark.parametrize("method, extra", [("self_distill", ()), ("grpo_length", ("training.num_generations=4",))])
def test_the_competitor_baselines_train_under_torchrun(recipe, tmp_path, method, extra):
    """Self-distillation and GRPO with a length penalty on two processes: every step logs both
    processes' samples once, and the student is saved."""
    sets = [arg for value in (f"method={method}", *extra) for arg in ("--set", value)]
    launch("torchrun", recipe, tmp_path / "run", *sets)
    for records in check_steps(tmp_path / "run").values():
        assert all(r["trained_on"] == "student" and r["student_tokens"] > 0 for r in records)
    log = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert len([e for e in log if "loss" in e]) == STEPS
    if method == "grpo_length":  # the two processes measured the same reference length
        assert len({e["length/reference_tokens"] for e in log if "length/reference_tokens" in e}) == 1
    assert (tmp_path / "run" / "model" / "model.safetensors").exists()
