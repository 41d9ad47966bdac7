"""Every vLLM path of mpdistill against a real engine and a real server: vLLM's CPU build.

- ``mpdistill eval --backend vllm`` against ``--backend transformers``, greedy, on the same model;
- the in-process vLLM rewriter: ``mpdistill rewrite --backend vllm`` and MPD with ``rewrite.backend: vllm``;
- the served rewriter against a real vLLM OpenAI server: MPD with ``rewrite.backend: openai`` while the
  server is killed mid-run, and the chat route with the real Qwen3 template;
- student rollouts through TRL's ``use_vllm`` (colocate), following the student's weights;
- the checks that refuse, in one line, what this engine cannot serve;
- ``mpdistill demo --quick --rewrite-backend vllm`` and ``mpdistill bench --rollout-throughput``.
"""

from __future__ import annotations

import json
import sys
import threading
import time
import urllib.request
from collections import Counter, defaultdict

import pytest
from helpers import ROOT, embedded_recipe, read_jsonl, run_cli, subprocess_env, vllm_server

pytestmark = pytest.mark.vllm

CHAIN_REWRITE = "{problem}rewrite:\n{trace}\nshort:\n"


# -- checks before anything loads ---------------------------------------------------------------------


def test_what_the_cpu_build_cannot_serve_is_one_line_before_loading(tmp_path):
    # The embedded student's heads are 24 wide: vLLM's CPU attention has no kernel for that size.
    colocate = embedded_recipe(tmp_path / "colocate.yaml", training={"vllm": {"mode": "colocate"}})
    proc = run_cli("train", colocate, "--out", tmp_path / "run", check=False)
    text = " ".join(proc.stderr.split())  # errors and warnings: one line each, on stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1, proc.stdout + proc.stderr
    assert "training.vllm: the student 'embedded:student' has attention heads of size 24, which vLLM's CPU " \
           "attention does not support (it supports 32, 64," in text
    assert not (tmp_path / "run").exists()
    # A dry run here plans for other machines: this machine's devices give a warning, not an error.
    proc = run_cli("train", colocate, "--dry-run", check=False)
    assert proc.returncode == 0 and "warning: training.vllm: the student 'embedded:student' has attention heads " \
           "of size 24" in " ".join(proc.stderr.split()), proc.stdout + proc.stderr
    # Server mode: TRL's weight sync to the server is NCCL, between CUDA devices only.
    server = embedded_recipe(tmp_path / "server.yaml",
                             training={"vllm": {"mode": "server", "server_base_url": "http://127.0.0.1:9"}})
    proc = run_cli("train", server, "--out", tmp_path / "run", check=False)
    assert proc.returncode == 2 and "training.vllm.mode server: TRL sends the student's new weights to the vLLM " \
           "server over NCCL, which needs a CUDA GPU" in " ".join(proc.stderr.split())
    # The embedded teacher (heads 32 wide) is served by the CPU build: a vLLM rewriter plans cleanly.
    rewriter = embedded_recipe(tmp_path / "rewriter.yaml", rewrite={"backend": "vllm"})
    proc = run_cli("train", rewriter, "--dry-run", check=False)
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("warning:")]
    assert proc.returncode == 0 and not warnings, proc.stdout + proc.stderr
    assert "rewrites: in-process vLLM engine: embedded:teacher" in proc.stdout


# -- evaluation ------------------------------------------------------------------------------------------


def test_eval_on_vllm_agrees_with_transformers_greedy(tiny_qwen3_vllm, tmp_path, report):
    common = ["--model", tiny_qwen3_vllm, "--benchmarks", "gsm8k", "--limit", "40", "--max-new-tokens", "32",
              "--temperature", "0", "--no-thinking", "--seed", "0"]
    run_cli("eval", *common, "--backend", "transformers", "--out", tmp_path / "hf")
    run_cli("eval", *common, "--backend", "vllm", "--out", tmp_path / "vllm")
    hf = {r["id"]: r for r in read_jsonl(tmp_path / "hf" / "samples.jsonl")}
    vl = {r["id"]: r for r in read_jsonl(tmp_path / "vllm" / "samples.jsonl")}
    assert hf.keys() == vl.keys() and len(hf) == 40
    same = sum(hf[k]["response"] == vl[k]["response"] and hf[k]["tokens"] == vl[k]["tokens"] for k in hf)
    report(f"eval greedy, tiny random Qwen3 (fp32, real tokenizer), 40 GSM8K prompts x 32 tokens: "
           f"{same}/40 responses identical on vLLM and transformers")
    assert same >= 36, f"only {same}/40 greedy responses agree"
    summary = json.loads((tmp_path / "vllm" / "summary.json").read_text())
    assert summary["settings"]["backend"] == "vllm" and summary["benchmarks"]["gsm8k"]["n_problems"] == 40


# -- the in-process vLLM rewriter --------------------------------------------------------------------------


def test_rewrite_file_on_an_in_process_engine(chain_traces, tmp_path, report):
    out = tmp_path / "rewrites.jsonl"
    run_cli("rewrite", "--input", chain_traces, "--out", out, "--backend", "vllm", "--teacher", "embedded:teacher",
            "--task", "chain", "--no-chat-template", "--prompt-template", CHAIN_REWRITE, "--max-new-tokens", "96",
            "--temperature", "0.6", "--top-p", "1", "--top-k", "0")
    rows = read_jsonl(out)
    reasons = Counter(r["reason"] for r in rows)
    report(f"mpdistill rewrite --backend vllm, embedded teacher, 48 student traces: {dict(reasons)}")
    assert len(rows) == 48 and reasons["accepted"] >= 24, reasons
    from mpdistill.tasks.chain import extract_answer

    for r in rows:
        if r["accepted"]:
            assert r["rewrite_tokens"] <= 0.9 * r["trace_tokens"]
            assert extract_answer(r["rewrite"]) == extract_answer(r["trace"])


def test_mpd_with_rewrites_from_an_in_process_engine(tmp_path, report):
    recipe = embedded_recipe(tmp_path / "recipe.yaml", training={"steps": 3, "batch_size": 16, "logging_steps": 1},
                             data={"n_train": 64}, rewrite={"backend": "vllm"})
    run_cli("train", recipe, "--out", tmp_path / "run")
    rows = read_jsonl(tmp_path / "run" / "rollouts.jsonl")
    reasons = Counter(r["reason"] for r in rows)
    report(f"MPD, rewrite.backend vllm, 3 steps x 16: {dict(reasons)}")
    assert len(rows) == 48 and reasons["accepted"] >= 16, reasons
    assert all(r["trained_on"] == "rewrite" for r in rows if r["accepted"])
    assert (tmp_path / "run" / "model" / "model.safetensors").exists()


# -- the served rewriter against a real vLLM server ------------------------------------------------------


def test_mpd_against_a_real_vllm_server_that_is_killed_mid_run(tmp_path, report):
    from mpdistill.models.worlds import embedded_dir

    steps, batch = 8, 8
    with vllm_server(embedded_dir() / "teacher", "teacher", tmp_path / "server.log") as server:
        recipe = embedded_recipe(
            tmp_path / "recipe.yaml", training={"steps": steps, "batch_size": batch, "logging_steps": 1},
            data={"n_train": 128},
            rewrite={"backend": "openai", "base_url": server.base_url, "model": "teacher", "timeout_s": 10,
                     "max_retries": 1, "deadline_s": 30})
        rollouts = tmp_path / "run" / "rollouts.jsonl"
        killed_after: list[int] = []

        def kill_after_step_2():
            end = time.monotonic() + 900
            while time.monotonic() < end:
                steps_done = {r["step"] for r in read_jsonl(rollouts)} if rollouts.exists() else set()
                if 2 in steps_done:  # step 2's rewrites are back: the next step finds no server
                    server.kill()
                    killed_after.append(max(steps_done))
                    return
                time.sleep(0.1)

        watcher = threading.Thread(target=kill_after_step_2, daemon=True)
        watcher.start()
        run_cli("train", recipe, "--out", tmp_path / "run", timeout=1200)
        watcher.join(5)
    assert killed_after, "the server was never killed"
    rows = read_jsonl(rollouts)
    by_step = defaultdict(list)
    for r in rows:
        by_step[r["step"]].append(r)
    # Nothing lost: every step holds its whole batch once, and the run saved its student.
    assert sorted(by_step) == list(range(steps)) and all(len(v) == batch for v in by_step.values())
    assert sorted(r["index"] for r in by_step[0]) == list(range(batch))
    assert (tmp_path / "run" / "model" / "model.safetensors").exists()
    before = [r for s in range(killed_after[0] + 1) for r in by_step[s]]
    after = [r for s in range(killed_after[0] + 2, steps) for r in by_step[s]]
    assert sum(r["accepted"] for r in before) >= len(before) // 3, Counter(r["reason"] for r in before)
    # After the kill: each sample that asked for a rewrite fell back to the student's own trace.
    asked = [r for r in after if r["reason"] not in ("student_unparsed", "on_policy")]
    assert asked and all(r["reason"] == "backend_error" and r["trained_on"] == "student" for r in asked)
    log = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert any(e.get("mpd/reject/backend_error", 0) > 0 for e in log)
    report(f"served rewriter, killed after step {killed_after[0]}: before {Counter(r['reason'] for r in before)}, "
           f"after {Counter(r['reason'] for r in after)}")


def test_overlapped_steps_against_a_real_vllm_server(tmp_path, report):
    """rewrite.overlap against the real server: every sample is rewritten, verified and logged once, a
    third or more accepted. The serial run beside it samples the same step-0 traces; how many of the
    server's greedy rewrites of them match is reported (a server batching requests otherwise may
    round otherwise), not asserted."""
    from mpdistill.models.worlds import embedded_dir

    steps, batch = 3, 4
    runs = {}
    with vllm_server(embedded_dir() / "teacher", "teacher", tmp_path / "server.log") as server:
        for overlap in (False, True):
            recipe = embedded_recipe(
                tmp_path / f"recipe-{overlap}.yaml", data={"n_train": 64},
                training={"steps": steps, "batch_size": batch, "gradient_accumulation_steps": 2, "logging_steps": 1},
                rewrite={"backend": "openai", "base_url": server.base_url, "model": "teacher", "temperature": 0.0,
                         "overlap": overlap})
            runs[overlap] = tmp_path / f"run-{overlap}"
            run_cli("train", recipe, "--out", runs[overlap], timeout=900)
    serial, overlapped = (read_jsonl(runs[o] / "rollouts.jsonl") for o in (False, True))
    assert len(overlapped) == steps * batch * 2 and sorted((r["step"], r["index"]) for r in overlapped) == \
        [(s, i) for s in range(steps) for i in range(batch * 2)]
    assert sum(r["accepted"] for r in overlapped) >= len(overlapped) // 3, Counter(r["reason"] for r in overlapped)
    # Step 0 samples from the same weights: the same traces, sent to the same greedy server.
    first = [(a["student"], b["student"]) for a, b in zip(serial, overlapped) if a["step"] == 0]
    assert all(a == b for a, b in first)
    same = sum(a["rewrite"] == b["rewrite"] for a, b in zip(serial, overlapped) if a["step"] == 0)
    log = [json.loads(line) for line in (runs[True] / "train_log.jsonl").read_text().splitlines()]
    waits = [e["mpd/rewrite_wait_s"] for e in log if "mpd/rewrite_wait_s" in e]
    assert len(waits) == steps
    report(f"overlapped against a real vLLM server: {Counter(r['reason'] for r in overlapped)}; step 0 rewrites "
           f"equal to the serial run's: {same} of {len(first)}; waits per step {[round(w, 3) for w in waits]} s")


def test_chat_route_against_a_real_vllm_server_with_the_qwen3_template(tiny_qwen3_vllm, tmp_path, report):
    problems = tmp_path / "traces.jsonl"
    traces = ["We add 12 and 30. 12 + 30 = 42. Let me check: 42 - 30 = 12. Yes. The answer is \\boxed{42}.",
              "<think>\nFirst 5 times 6 is 30, then 30 + 4 = 34. Check: 34 - 4 = 30.\n</think>\n\n\\boxed{34}"]
    problems.write_text("".join(json.dumps({"problem": q, "trace": t}) + "\n"
                                for q, t in zip(["What is 12 + 30?", "What is 5*6+4?"], traces)))
    with vllm_server(tiny_qwen3_vllm, "tiny-qwen3", tmp_path / "server.log") as server:
        # The request shape the served rewriter sends (chat_template_kwargs) is read by the server's
        # template: with thinking off, the prompt it renders ends in an empty think block.
        body = {"model": "tiny-qwen3", "messages": [{"role": "user", "content": "Rewrite this."}],
                "chat_template_kwargs": {"enable_thinking": False}}
        request = urllib.request.Request(server.base_url.removesuffix("/v1") + "/tokenize",
                                         data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as resp:
            tokens = json.loads(resp.read())["tokens"]
        from transformers import AutoTokenizer

        rendered = AutoTokenizer.from_pretrained(tiny_qwen3_vllm).decode(tokens)
        assert rendered.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n"), rendered
        out = tmp_path / "rewrites.jsonl"
        run_cli("rewrite", "--input", problems, "--out", out, "--backend", "openai", "--base-url", server.base_url,
                "--model", "tiny-qwen3", "--tokenizer", tiny_qwen3_vllm, "--max-new-tokens", "24")
    rows = read_jsonl(out)
    # A random model writes no answer, so nothing need be accepted; but every request was answered.
    assert len(rows) == 2 and all(r["reason"] not in ("backend_error", None) for r in rows), rows
    report(f"chat route, tiny Qwen3 on a vLLM server: verdicts {[r['reason'] for r in rows]}")


# -- student rollouts through TRL's use_vllm ------------------------------------------------------------------


def test_student_rollouts_from_trls_colocated_engine_follow_the_students_weights(tmp_path, report):
    """The embedded student cannot run here (its head size, refused above); a random student of the
    same tokenizer with heads 32 wide takes its place, distilled from the embedded teacher. Its input
    and output embeddings are tied, as Qwen3-1.7B's are. On vLLM's CPU build TRL's own weight push
    cannot refresh the engine (the build repacks its linear weights and drops the loaded ones); the
    trainer refreshes it through vLLM's in-place reload (rollout/vllm.py), checked here by what the
    engine computes."""
    import subprocess

    from mpdistill.models import worlds as embedded

    tok = embedded.build_tokenizer()
    student = tmp_path / "student"
    embedded.make_model(embedded.ModelShape(64, 128, 2, 2, 1, 32), tok, 0).save_pretrained(student)
    tok.save_pretrained(student)
    out = tmp_path / "probe.json"
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "real_engine" / "colocate_probe.py"), str(out),
                           str(student)], capture_output=True, text=True, timeout=900, env=subprocess_env(), cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-6000:]
    seen = json.loads(out.read_text())
    probes = seen["probes"]
    assert seen["steps"] == 3 and seen["rollouts"] == 12 and [p["step"] for p in probes] == [0, 1, 2]
    # The engine scores as the student does now (up to its bf16 copy: about 3e-3 in a log-probability,
    # against 0.5 and more that a step moves them), not as the student of the step before.
    for p in probes:
        assert p["engine_vs_student_now"] < 1e-2, probes
    for p in probes[1:]:
        assert p["student_moved"] > 0.05 and p["engine_vs_student_before"] > 10 * p["engine_vs_student_now"], probes
    report(f"TRL colocate on vLLM's CPU build ({seen['engine_dtype']}): " + "; ".join(
        f"step {p['step']}: engine-student {p['engine_vs_student_now']:.1e}, student moved {p['student_moved']:.1e} "
        "(max |log-prob| difference)"
        for p in probes))


# -- the demo and the bench ------------------------------------------------------------------------------------


def test_quick_demo_takes_its_rewrites_from_a_vllm_engine(tmp_path, report):
    run_cli("demo", "--quick", "--rewrite-backend", "vllm", "--out", tmp_path / "demo", timeout=1500)
    results = json.loads((tmp_path / "demo" / "results.json").read_text())
    assert results["recipe"]["rewrite"]["backend"] == "vllm"
    rows = read_jsonl(tmp_path / "demo" / "runs" / "mpd" / "rollouts.jsonl")
    accepted = sum(r["accepted"] for r in rows)
    assert accepted > 0, Counter(r["reason"] for r in rows)
    report(f"demo --quick --rewrite-backend vllm: {accepted}/{len(rows)} MPD rewrites accepted")


def test_bench_reports_rollout_throughput_on_both_backends(tmp_path, report):
    out = tmp_path / "bench.json"
    proc = run_cli("bench", "--no-steps", "--rollout-throughput", "--quick", "--json", out)
    r = json.loads(out.read_text())["rollouts"]
    assert r["vllm_device"] == "cpu" and r["n_prompts"] == 64 and r["repeats"] == 2
    for name in ("transformers", "vllm"):
        assert r[name]["tokens_per_second"] > 0 and all(x["tokens"] > 0 for x in r[name]["rounds"])
    assert "vLLM / transformers" in proc.stdout
    report(f"rollout tokens/s (embedded teacher, 64 prompts): transformers {r['transformers']['tokens_per_second']:.0f}, "
           f"vLLM {r['vllm']['tokens_per_second']:.0f}")
