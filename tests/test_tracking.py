"""Metrics reach the trainer's trackers (report_to) and train_log.jsonl at every logging step."""

import json

import pytest

from mpdistill.run.recipe import recipe_from_dict
from mpdistill.run.pipeline import build_trainer, load_model, train, training_problems
from mpdistill.tasks import chain


def _recipe(tiny_pair, **training):
    return recipe_from_dict({
        "method": "mpd",
        "student": str(tiny_pair / "student"),
        "teacher": str(tiny_pair / "teacher"),
        "data": {"n_train": 16},
        "training": {"steps": 3, "batch_size": 4, "max_completion_length": 16, "logging_steps": 1, **training},
        "rewrite": {"prompt_template": chain.REWRITE_TEMPLATE.replace("{prompt}", "{problem}"),
                    "use_chat_template": False, "max_new_tokens": 16},
    })


def test_tensorboard_gets_every_mpd_metric_at_each_logging_step(tiny_pair, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    train(_recipe(tiny_pair, report_to=["tensorboard"]), run)
    event_files = list((run / "trainer").rglob("events.out.tfevents.*"))
    assert len(event_files) == 1, event_files
    events = EventAccumulator(str(event_files[0].parent))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert [e.step for e in events.Scalars("train/mpd/acceptance_rate")] == [1, 2, 3]
    logged = json.loads((run / "train_log.jsonl").read_text().splitlines()[0])
    mpd_keys = {k for k in logged if k.startswith("mpd/")}
    assert {"mpd/acceptance_rate", "mpd/student_tokens", "mpd/trained_tokens"} <= mpd_keys
    assert {f"train/{k}" for k in mpd_keys} <= tags, sorted({f"train/{k}" for k in mpd_keys} - tags)
    assert "train/loss" in tags  # TRL's and transformers' own beside MPD's


def test_train_log_holds_each_step_as_soon_as_it_is_logged(tiny_pair, tmp_path):
    from transformers import TrainerCallback

    recipe = _recipe(tiny_pair)
    student, tok = load_model(recipe.student)
    teacher, _ = load_model(recipe.teacher)
    trainer = build_trainer(recipe, student, teacher, tok, training_problems(recipe), tmp_path)
    path = tmp_path / "train_log.jsonl"
    seen = []

    class ReadsTheFile(TrainerCallback):  # runs after the trainer's own callbacks: what a live viewer reads
        def on_log(self, args, state, control, logs=None, **kwargs):
            seen.append([json.loads(line)["step"] for line in path.read_text().splitlines()])

    trainer.add_callback(ReadsTheFile())
    trainer.train()
    assert seen[:3] == [[1], [1, 2], [1, 2, 3]]
    assert [json.loads(line) for line in path.read_text().splitlines()] == trainer.state.log_history


def _wandb_records(path):
    """The records of an offline W&B run file (``run-ID.wandb``): a LevelDB-style log of 32 KiB blocks
    after a 7-byte header, each record one or more chunks (full, or first/middle/last) behind a
    7-byte chunk header (checksum, little-endian length, kind), holding wandb's own protobuf Record."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B", "not a W&B run file"
    pos, block, pending = 7, 32768, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a chunk header is padding
            pos += block - pos % block
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # full, or last
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record
            pending = b""


def test_weights_and_biases_offline_gets_every_mpd_metric_at_each_logging_step(tiny_pair, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")  # no network: the run is written locally, to sync later
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = tmp_path / "run"
    import wandb

    try:
        train(_recipe(tiny_pair, report_to=["wandb"], run_name="mpd-offline"), run)
    finally:
        wandb.finish()  # transformers leaves the run open: a process ending closes it, a test does it here
    files = list(tmp_path.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(files) == 1, files
    history = []
    for record in _wandb_records(files[0]):
        if record.WhichOneof("record_type") == "history":
            history.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                            for item in record.history.item})
    logged = [h for h in history if "train/mpd/acceptance_rate" in h]
    assert [h["train/global_step"] for h in logged] == [1, 2, 3]
    mpd_keys = {k for k in json.loads((run / "train_log.jsonl").read_text().splitlines()[0]) if k.startswith("mpd/")}
    assert all({f"train/{k}" for k in mpd_keys} <= set(h) for h in logged)


def test_a_non_finite_value_is_written_as_null_so_every_line_is_json(tmp_path):
    from types import SimpleNamespace

    from mpdistill.trainers.train_log import TrainLogFile

    path = tmp_path / "train_log.jsonl"
    state = SimpleNamespace(is_world_process_zero=True, log_history=[])
    callback = TrainLogFile(path)
    callback.on_train_begin(None, state, None)
    state.log_history.append({"loss": float("nan"), "grad_norm": float("inf"), "step": 1})
    callback.on_log(None, state, None)
    assert [json.loads(line, parse_constant=pytest.fail) for line in path.read_text().splitlines()] == [
        {"loss": None, "grad_norm": None, "step": 1}]


def test_with_log_completions_each_logging_step_sends_the_rollout_table(tiny_pair, tmp_path):
    """TensorBoard gets, at each logging step, a table of the samples that step trained on: the trace,
    the rewrite, the verdict and its reason, the tokens; the same samples as rollouts.jsonl."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    train(_recipe(tiny_pair, report_to=["tensorboard"], log_completions=True), run)
    events = EventAccumulator(str(next((run / "trainer").rglob("events.out.tfevents.*")).parent))
    events.Reload()
    tables = events.Tensors("rollouts/text_summary")
    assert [t.step for t in tables] == [1, 2, 3]
    rollouts = [json.loads(line) for line in (run / "rollouts.jsonl").read_text().splitlines()]
    for table in tables:
        lines = table.tensor_proto.string_val[0].decode().splitlines()
        header = [c.strip() for c in lines[0].strip("|").split("|")]
        assert header[:8] == ["step", "prompt", "student", "rewrite", "teacher", "accepted", "reason", "student_tokens"]
        rows = [[c.strip() for c in line.strip("| ").split(" | ")] for line in lines[2:]]
        logged = [r for r in rollouts if r["step"] == table.step - 1]  # rollouts.jsonl: steps finished before
        assert len(rows) == len(logged) == 4
        assert [row[0] for row in rows] == [str(table.step)] * 4
        assert [row[header.index("reason")] for row in rows] == [r["reason"] for r in logged]
        assert [row[header.index("student_tokens")] for row in rows] == [str(r["student_tokens"]) for r in logged]


def test_a_run_is_named_after_its_method_and_folder(tiny_pair, tmp_path):
    from mpdistill.run.pipeline import training_arguments

    assert training_arguments(_recipe(tiny_pair), tmp_path / "mpd-seed0").run_name == "mpd-mpd-seed0"
    assert training_arguments(_recipe(tiny_pair, run_name="mine"), tmp_path / "x").run_name == "mine"
