"""The overlapped MPD step (rewrite.overlap): rewrites requested as traces end, micro-batches trained
as their rewrites arrive; the same training as the serial step with a deterministic server."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from mpdistill.experiments.bench.served import ServedRewriter, teacher_answer
from mpdistill.errors import ConfigError
from mpdistill.run.recipe import load_recipe, recipe_from_dict
from mpdistill.trainers.overlap import FinishWatcher, finish_order, micro_batch_inputs, pad_prompts, watching_generate
from mpdistill.tasks import chain


@pytest.fixture(scope="module")
def server():
    with ServedRewriter() as s:
        yield s


def _run(run_dir: Path, url: str, *, overlap: bool, steps: int = 3, delay_hook=None, **rewrite):
    from mpdistill.experiments.demo import RECIPE
    from mpdistill.models.loading import load_model
    from mpdistill.run.pipeline import build_trainer, training_problems

    recipe = load_recipe(RECIPE, {
        "data": {"n_train": 64},
        "training": {"steps": steps, "batch_size": 4, "gradient_accumulation_steps": 2, "max_completion_length": 128,
                     "logging_steps": 1},
        "rewrite": {"backend": "openai", "base_url": url, "model": "rewriter", "overlap": overlap, **rewrite},
    })
    student, tok = load_model(recipe.student)
    teacher, _ = load_model(recipe.teacher)
    trainer = build_trainer(recipe, student, teacher, tok, training_problems(recipe), run_dir)
    if delay_hook:
        delay_hook(trainer)
    trainer.train()
    return trainer


def test_overlapped_steps_train_as_the_serial_steps_do(server, tmp_path):
    """Same seed, deterministic server: the same rollouts, rewrites, verdicts and rollout log line for
    line, and the same weights up to float rounding (micro-batches grouped and padded otherwise)."""
    server.set_delay(0.0)

    def log_completions(trainer):  # TRL's completion log: a serial step writes it in _generate_and_score_completions
        trainer.log_completions, trainer.num_completions_to_print = True, 0
        Path(trainer.args.output_dir, "completions").mkdir(parents=True)  # where TRL writes them at each log

    serial = _run(tmp_path / "serial", server.url, overlap=False, delay_hook=log_completions)
    overlapped = _run(tmp_path / "overlap", server.url, overlap=True, delay_hook=log_completions)
    a = (tmp_path / "serial" / "rollouts.jsonl").read_text().splitlines()
    b = (tmp_path / "overlap" / "rollouts.jsonl").read_text().splitlines()
    assert len(a) == 3 * 8 and a == b
    rows = [json.loads(line) for line in a]
    assert sum(r["accepted"] for r in rows) >= 4  # rewrites were trained on, not only the students' traces
    # Adam divides each update by the gradient's running scale, so a near-zero gradient's rounding can
    # move its weight by a few 1e-6 (seen: 1 element of 9,216 in one matrix, 4e-6 apart), against
    # about 1e-3 that training moved the weights.
    start = _initial_student().parameters()
    pairs = list(zip(serial.model.parameters(), overlapped.model.parameters(), start, strict=True))
    apart = max((p - q).abs().max().item() for p, q, _ in pairs)
    moved = max((p - w).abs().max().item() for p, _, w in pairs)
    assert moved > 5e-4 and apart < 0.02 * moved, (apart, moved)
    # The gradients before clipping (the logged norm): what rescale_gradients makes of the provisional divisor.
    norms = [[h["grad_norm"] for h in t.state.log_history if "grad_norm" in h] for t in (serial, overlapped)]
    assert len(norms[0]) == 3
    torch.testing.assert_close(torch.tensor(norms[1]), torch.tensor(norms[0]), rtol=1e-4, atol=0)
    losses = [[h["loss"] for h in t.state.log_history if "loss" in h] for t in (serial, overlapped)]
    assert len(losses[0]) == 3
    torch.testing.assert_close(torch.tensor(losses[1]), torch.tensor(losses[0]), rtol=1e-4, atol=1e-6)
    logged = [h for h in overlapped.state.log_history if "mpd/acceptance_rate" in h]
    assert [h["mpd/acceptance_rate"] for h in logged] == \
        [h["mpd/acceptance_rate"] for h in serial.state.log_history if "mpd/acceptance_rate" in h]
    assert all("mpd/rewrite_wait_s" in h for h in logged)
    assert list(overlapped._logs["completion"]) == list(serial._logs["completion"]) and len(serial._logs["completion"]) == 8
    assert list(overlapped._logs["prompt"]) == list(serial._logs["prompt"])


def _initial_student():
    from mpdistill.models.loading import load_model

    return load_model("embedded:student")[0]


def test_traces_are_sent_while_the_student_is_still_writing(server, tmp_path):
    """Each trace's request leaves as it ends, before the batch's generate returns, and the first
    micro-batch is handed to the loss before the last rewrite has arrived."""
    server.set_delay(0.3)
    events: list[tuple[str, float]] = []
    arrived: list[float] = []

    def hook(trainer):
        submit, rollout, micro_batch = trainer.rewriter.submit, trainer._generate_single_turn, trainer._micro_batch

        def timed_submit(*args, **kwargs):
            events.append(("sent", time.perf_counter()))
            pending = submit(*args, **kwargs)
            pending.request.add_done_callback(lambda _: arrived.append(time.perf_counter()))
            return pending

        def timed_rollout(*args, **kwargs):
            out = rollout(*args, **kwargs)
            events.append(("rollout_end", time.perf_counter()))
            return out

        def timed_micro_batch(k):
            out = micro_batch(k)
            events.append(("micro_batch", time.perf_counter()))
            return out

        trainer.rewriter.submit, trainer._generate_single_turn = timed_submit, timed_rollout
        trainer._micro_batch = timed_micro_batch

    try:
        _run(tmp_path, server.url, overlap=True, steps=1, delay_hook=hook)
    finally:
        server.set_delay(0.0)
    kinds = [k for k, _ in events]
    end = kinds.index("rollout_end")
    assert "sent" in kinds[:end], kinds  # some traces ended early and were sent during the rollout
    handed = [t for k, t in events if k == "micro_batch"]
    assert len(handed) == 2 and len(arrived) == kinds.count("sent") >= 2
    assert handed[0] < max(arrived)  # micro-batch 0 trained while later rewrites were still on their way


def test_a_stalled_server_holds_an_overlapped_step_no_longer_than_its_deadline(server, tmp_path):
    """Each request sent mid-rollout has its own deadline: past it the sample trains on the student's
    trace (backend_error), and the step goes on."""
    server.set_delay(30.0)
    try:
        started = time.monotonic()
        trainer = _run(tmp_path, server.url, overlap=True, steps=1, deadline_s=1.0, timeout_s=20.0, max_retries=0)
        took = time.monotonic() - started
    finally:
        server.set_delay(0.0)
    rows = [json.loads(line) for line in (tmp_path / "rollouts.jsonl").read_text().splitlines()]
    asked = [r for r in rows if r["reason"] not in ("student_unparsed", "on_policy")]
    assert len(rows) == 8 and asked and all(r["reason"] == "backend_error" and r["trained_on"] == "student" for r in asked)
    assert took < 15  # not the server's 30 s
    # Each try's socket timeout is cut to what is left of the deadline, so a request ends as "timeout" or
    # "deadline" depending on which the clock reaches first.
    failures = trainer.rewriter.stats["failures"]
    assert set(failures) <= {"deadline", "timeout"} and sum(failures.values()) == len(asked)


def test_waiting_on_a_request_ends_at_its_deadline():
    """The step's wait on a request never outlasts the request's deadline, even if the request itself
    does not end (a connection that hangs below the socket timeouts)."""
    import concurrent.futures

    from mpdistill.rewriting.served import OpenAIRewriter, PendingRewrite

    rewriter = OpenAIRewriter("http://127.0.0.1:9/v1", "m", deadline_s=0.3)
    never: concurrent.futures.Future = concurrent.futures.Future()
    started = time.monotonic()
    out = PendingRewrite(rewriter, never, time.monotonic() + 0.3).result()
    assert 0.25 < time.monotonic() - started < 2
    assert out.error and "deadline" in out.error and rewriter.stats["failures"] == {"deadline": 1}
    assert PendingRewrite(rewriter, never, 0).result().error  # a second wait: counted again, never blocks


def test_finish_watcher_reports_each_row_as_it_ends():
    from mpdistill.models.loading import load_model

    model, tok = load_model("embedded:student")
    prompts = [chain.sample_problem(__import__("random").Random(i)).prompt for i in range(6)]
    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    seen: list[tuple[int, list[int]]] = []
    watcher = FinishWatcher([tok.eos_token_id], lambda row, ids: seen.append((row, ids)))
    torch.manual_seed(0)
    with watching_generate(model, watcher):
        out = model.generate(**enc, max_new_tokens=200, do_sample=True, pad_token_id=tok.pad_token_id)
    assert "generate" not in vars(model)  # the class's method again
    completions = out[:, enc["input_ids"].shape[1]:].tolist()
    expected = {}
    for row, ids in enumerate(completions):
        if tok.eos_token_id in ids:
            expected[row] = ids[: ids.index(tok.eos_token_id) + 1]
    assert dict(seen) == expected and len(seen) == len(expected) >= 4
    lengths = [len(ids) for _, ids in seen]
    assert lengths == sorted(lengths)  # reported in the order the rows ended
    assert finish_order([len(expected[r]) for r in sorted(expected)]) == sorted(
        range(len(expected)), key=lambda i: (len(expected[sorted(expected)[i]]), i))


def test_micro_batches_are_laid_out_as_trls_batches(tmp_path):
    """What the overlapped step hands TRL's loss is what TRL's own padding makes of the same rows."""
    from trl import DistillationTrainer

    from mpdistill.models.loading import load_model
    from mpdistill.run.pipeline import build_trainer, training_problems

    recipe = recipe_from_dict({"task": "chain", "student": "embedded:student", "teacher": "embedded:teacher",
                               "data": {"n_train": 4}, "training": {"steps": 1, "batch_size": 4}})
    student, tok = load_model(recipe.student)
    teacher, _ = load_model(recipe.teacher)
    trainer = build_trainer(recipe.model_copy(update={"method": "opd"}), student, teacher, tok,
                            training_problems(recipe), tmp_path)
    prompts = [[5, 6, 7], [8, 9], [10], [11, 12, 13, 14]]
    completions = [[20, 21, 2], [22], [23, 24, 25, 26, 2], [27, 28]]
    keep = [[1] * 3, [0], [1] * 5, [1] * 2]
    trainer._generate = lambda p: (prompts, completions, keep, None, None)
    theirs = DistillationTrainer._generate_and_score_completions(trainer, [{"prompt": "x"}] * 4)
    layout = dict(pad_token_id=tok.pad_token_id, pad_to_multiple_of=trainer.pad_to_multiple_of,
                  device=trainer.accelerator.device)
    ours = micro_batch_inputs(*pad_prompts(prompts, **layout), completions, keep, theirs["num_items_in_batch"], **layout)
    assert set(ours) == set(theirs)
    for key in ours:
        assert torch.equal(torch.as_tensor(ours[key]), torch.as_tensor(theirs[key])), key


def test_overlap_needs_a_served_rewriter():
    with pytest.raises(ConfigError, match="rewrite.overlap needs rewrite.backend: openai"):
        recipe_from_dict({"rewrite": {"overlap": True}})
    assert recipe_from_dict({"rewrite": {"overlap": True, "backend": "openai", "base_url": "http://h/v1",
                                         "model": "m"}}).rewrite.overlap


def test_the_loopback_server_answers_as_the_embedded_teacher_writes():
    problem = chain.ChainProblem.parse("Q:7+3-5+9\n")
    trace = chain.verbose_trace(problem, "P", __import__("random").Random(1))
    answer = teacher_answer(chain.rewrite_prompt(problem.prompt, trace))
    assert answer == chain.concise_trace(problem, "P")
    assert chain.route_kept(trace, answer) and chain.extract_answer(answer) == problem.answer
    assert teacher_answer("not a rewrite prompt") == "not a rewrite prompt"
