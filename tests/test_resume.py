"""Kill and resume: a run killed with SIGKILL and resumed ends exactly where an uninterrupted one does."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from trl.trainer.utils import RepeatSampler

from mpdistill.trainers.checkpoints import (
    STAGING,
    EpochOrderSampler,
    ResumeError,
    latest_checkpoint,
    rewind_rollout_log,
)
from mpdistill.run.resume import check_resumable, prepare_resume
from mpdistill.run.recipe import dump_recipe, load_recipe
from mpdistill.run.pipeline import train

MPDISTILL = str(Path(sys.executable).with_name("mpdistill"))
# One thread, so the killed, resumed and uninterrupted runs do the same float arithmetic.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
# The demo's recipe (embedded student and teacher: real rewrites, so the rewriter's random stream
# is exercised) made small: 16 problems in batches of 4, so six steps cross an epoch boundary at step 4.
EMBEDDED_RECIPE = Path(__file__).resolve().parents[1] / "mpdistill" / "recipes" / "embedded.yaml"
RECIPE = {
    "data": {"n_train": 16},
    "training": {"steps": 6, "batch_size": 4, "logging_steps": 1, "save_steps": 2},
    "rewrite": {"on_policy_fraction": 0.5},
}


def _recipe(**training):
    overrides = json.loads(json.dumps(RECIPE))
    overrides["training"].update(training)
    return load_recipe(EMBEDDED_RECIPE, overrides)


def _write_recipe(path: Path, **training) -> Path:
    path.write_text(dump_recipe(_recipe(**training)), encoding="utf-8")
    return path


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([MPDISTILL, *args], env=ENV, capture_output=True, text=True, timeout=600)


def _killed_run(recipe: Path, out: Path, after_lines: int) -> None:
    """Start a training run and SIGKILL it once its rollout log has ``after_lines`` lines."""
    proc = subprocess.Popen([MPDISTILL, "train", str(recipe), "--out", str(out)], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = out / "rollouts.jsonl"
    deadline = time.monotonic() + 600
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if log.exists() and log.read_bytes().count(b"\n") >= after_lines:
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.005)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "model" / "model.safetensors"))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("uninterrupted")
    recipe = _write_recipe(root / "recipe.yaml")
    done = _run("train", str(recipe), "--out", str(root / "whole"))
    assert done.returncode == 0, done.stderr[-2000:]
    return recipe, root / "whole"


# 24 records in all (6 steps of 4), an epoch every 4 steps, a checkpoint every 2. Killed once step 3's
# records are on disk, the run resumes from checkpoint-2, in the middle of the first epoch; killed in
# step 5, from checkpoint-4, at the epoch boundary.
@pytest.mark.parametrize("after, checkpoint", [(13, "checkpoint-2"), (21, "checkpoint-4")],
                         ids=["mid_epoch", "epoch_boundary"])
def test_kill_9_then_resume_loses_and_duplicates_nothing_and_matches_an_uninterrupted_run(
        tmp_path, uninterrupted, after, checkpoint):
    recipe, whole = uninterrupted
    killed = tmp_path / "killed"
    _killed_run(recipe, killed, after)
    # Whatever the kill left, add the two worst cases: a torn last log line and a half-written checkpoint.
    with (killed / "rollouts.jsonl").open("a") as f:
        f.write('{"step": 5, "index": 0, "prompt": "Q:1+')
    (killed / "trainer" / STAGING / "checkpoint-99").mkdir(parents=True, exist_ok=True)
    (killed / "trainer" / STAGING / "checkpoint-99" / "model.safetensors").write_bytes(b"\0" * 100)

    resumed = _run("train", "--resume", "--out", str(killed))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "incomplete (interrupted write)" in resumed.stderr
    assert "removed a checkpoint that was being written" in resumed.stderr
    assert f"from {checkpoint} (step {checkpoint.split('-')[1]})" in resumed.stderr
    assert not (killed / "trainer" / STAGING).exists()

    whole_log = [json.loads(line) for line in (whole / "rollouts.jsonl").read_text().splitlines()]
    resumed_log = [json.loads(line) for line in (killed / "rollouts.jsonl").read_text().splitlines()]
    keys = [(r["step"], r["index"]) for r in resumed_log]
    assert len(keys) == len(set(keys)) == 24, "a rollout record was lost or duplicated"
    # Same records, same order: the resumed run drew the same prompts, samples, rewrites and mixing.
    assert resumed_log == whole_log
    assert {r["trained_on"] for r in whole_log} >= {"rewrite", "student"}
    # Same weights, to float32 precision on CPU (bit-identical when measured: max |diff| = 0.0).
    a, b = _weights(whole), _weights(killed)
    assert a.keys() == b.keys()
    diff = max((a[k] - b[k]).abs().max().item() for k in a)
    assert diff <= 1e-6, f"resumed weights differ from the uninterrupted run's by {diff}"
    log = [json.loads(line) for line in (killed / "train_log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log if "loss" in e] == list(range(1, 7))  # the killed part's logs are kept


def test_resume_without_a_checkpoint_restarts_and_keeps_nothing_stale(tmp_path):
    recipe = _write_recipe(tmp_path / "recipe.yaml", steps=2, save_steps=None)
    run = tmp_path / "run"
    _killed_run(recipe, run, 1)
    resumed = _run("train", str(recipe), "--resume", "--out", str(run))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "no checkpoint yet" in resumed.stderr
    records = [json.loads(line) for line in (run / "rollouts.jsonl").read_text().splitlines()]
    assert sorted((r["step"], r["index"]) for r in records) == [(s, i) for s in range(2) for i in range(4)]


def test_resuming_from_the_last_checkpoint_trains_no_extra_step(tmp_path):
    """A run killed while saving its final model has every step in its last checkpoint: resuming
    saves the model of that checkpoint; it must not train (or log) a step past training.steps."""
    import shutil

    recipe = _recipe(steps=2, save_steps=2)
    run = tmp_path / "run"
    train(recipe, run)
    rollouts = (run / "rollouts.jsonl").read_text()
    final = load_file(run / "model" / "model.safetensors")
    shutil.rmtree(run / "model")
    train(recipe, run, resume=True)
    assert (run / "rollouts.jsonl").read_text() == rollouts
    resumed = load_file(run / "model" / "model.safetensors")
    assert resumed.keys() == final.keys() and all(torch.equal(final[k], resumed[k]) for k in final)
    assert json.loads((run / "train_log.jsonl").read_text().splitlines()[-1])["step"] == 2


def test_a_run_folder_from_before_recipes_resolved_their_paths_still_resumes(tmp_path, monkeypatch):
    """Older runs saved recipe.yaml with paths as given, relative to where they started: they are
    read from the current folder there, not from the run folder."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "d.jsonl").write_text("".join(json.dumps({"problem": f"Q:{i}+1\n", "answer": "1"}) + "\n"
                                              for i in range(8)))
    (tmp_path / "r.yaml").write_text("task: chain\ndata: {train: d.jsonl}\ntraining: {steps: 2, batch_size: 4}\n")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "recipe.yaml").write_text((tmp_path / "r.yaml").read_text())  # as older runs wrote it
    check_resumable(load_recipe(tmp_path / "r.yaml"), tmp_path / "run")  # no "changed" data.train


def _run_dir(tmp_path: Path, **training) -> tuple[Path, object]:
    recipe = _recipe(**training)
    run = tmp_path / "run"
    run.mkdir()
    (run / "recipe.yaml").write_text(dump_recipe(recipe), encoding="utf-8")
    return run, recipe


def test_resume_refuses_a_different_recipe_and_names_each_difference(tmp_path):
    run, recipe = _run_dir(tmp_path)
    changed = recipe.model_copy(update={"seed": 3, "training": recipe.training.model_copy(update={"learning_rate": 1e-3})})
    with pytest.raises(ResumeError, match=r"seed: 0 -> 3.*training.learning_rate: 0.0003 -> 0.001"):
        check_resumable(changed, run)
    # Keys that only decide how the run is operated may change.
    longer = recipe.model_copy(update={"training": recipe.training.model_copy(update={"steps": 10, "save_steps": 5})})
    check_resumable(longer, run)
    # So may the mix monitor's floors: a run a floor stopped can go on with a lower one.
    lower = recipe.model_copy(update={"rewrite": recipe.rewrite.model_copy(update={"min_parsed_fraction": 0.1})})
    check_resumable(lower, run)


def test_resume_refuses_a_finished_run_and_a_folder_that_is_not_a_run(tmp_path):
    run, recipe = _run_dir(tmp_path)
    (run / "model").mkdir()
    with pytest.raises(ResumeError, match="already finished"):
        prepare_resume(recipe, run)
    with pytest.raises(ResumeError, match="no recipe.yaml"):
        check_resumable(recipe, tmp_path / "elsewhere")


def test_a_new_run_in_an_interrupted_run_folder_points_to_resume(tmp_path):
    from mpdistill.errors import ConfigError

    run, recipe = _run_dir(tmp_path)
    with pytest.raises(ConfigError, match="add --resume"):
        train(recipe, run)


def test_rewind_rollout_log(tmp_path, caplog):
    path = tmp_path / "rollouts.jsonl"
    lines = [json.dumps({"step": s, "index": i}) for s in range(4) for i in range(2)]
    path.write_text("\n".join(lines) + '\n{"step": 4, "ind')
    assert rewind_rollout_log(path, 2) == (4, 4)
    assert [json.loads(x)["step"] for x in path.read_text().splitlines()] == [0, 0, 1, 1]
    assert "incomplete" in caplog.text
    path.write_text(lines[0] + "\nnot json\n" + lines[1] + "\n")
    with pytest.raises(ResumeError, match=r"rollouts.jsonl:2: not a valid JSON record"):
        rewind_rollout_log(path, 1)
    assert path.read_text().startswith(lines[0])  # nothing already written is lost
    assert rewind_rollout_log(tmp_path / "absent.jsonl", 3) == (0, 0)


def test_latest_checkpoint_ignores_staged_and_incomplete_folders(tmp_path):
    for name, complete in (("checkpoint-2", True), ("checkpoint-10", True), ("checkpoint-12", False)):
        (tmp_path / name).mkdir()
        if complete:
            (tmp_path / name / "trainer_state.json").write_text("{}")
    (tmp_path / STAGING / "checkpoint-14").mkdir(parents=True)
    (tmp_path / STAGING / "checkpoint-14" / "trainer_state.json").write_text("{}")
    assert latest_checkpoint(tmp_path).name == "checkpoint-10"  # numeric, not lexical, order
    assert latest_checkpoint(tmp_path / "none") is None


def test_epoch_order_is_a_function_of_the_epoch_alone():
    data = list(range(12))
    reference = RepeatSampler(data, mini_repeat_count=1, batch_size=4, seed=7)
    uninterrupted = [list(reference) for _ in range(3)]  # RepeatSampler: one stream across epochs
    assert uninterrupted[0] != uninterrupted[2]
    wrapped = EpochOrderSampler(RepeatSampler(data, mini_repeat_count=1, batch_size=4, seed=7))
    for epoch in range(3):
        wrapped.set_epoch(epoch)
        assert list(wrapped) == uninterrupted[epoch]
        assert list(wrapped) == uninterrupted[epoch]  # iterating twice within an epoch changes nothing
    resumed = EpochOrderSampler(RepeatSampler(data, mini_repeat_count=1, batch_size=4, seed=7))
    resumed.set_epoch(2)  # a fresh process resuming in epoch 2
    assert list(resumed) == uninterrupted[2]
    assert len(resumed) == len(reference)


def test_a_checkpoint_carries_the_mixing_and_rewriter_random_streams(tiny_pair, tmp_path):
    from mpdistill.run.pipeline import build_trainer, load_model, training_problems

    recipe = _recipe(steps=1, save_steps=1).model_copy(
        update={"student": str(tiny_pair / "student"), "teacher": str(tiny_pair / "teacher")}
    )
    student, tok = load_model(recipe.student)
    teacher, _ = load_model(recipe.teacher)
    rows = training_problems(recipe)

    def fresh(run):
        return build_trainer(recipe, student, teacher, tok, rows, tmp_path / run)

    trainer = fresh("a")
    for _ in range(5):  # as if five steps had drawn from both streams
        trainer._mix_rng.random()
        trainer.rewriter.rng.randrange(2**31)
    trainer.create_optimizer_and_scheduler(num_training_steps=1)
    trainer._save_checkpoint(trainer.model, trial=None)
    checkpoint = latest_checkpoint(tmp_path / "a" / "trainer")
    assert checkpoint is not None and not (tmp_path / "a" / "trainer" / STAGING).exists()
    expected = (trainer._mix_rng.random(), trainer.rewriter.rng.randrange(2**31))

    resumed = fresh("b")
    assert (resumed._mix_rng.random(), resumed.rewriter.rng.randrange(2**31)) != expected
    resumed = fresh("c")
    resumed._load_rng_state(str(checkpoint))
    assert (resumed._mix_rng.random(), resumed.rewriter.rng.randrange(2**31)) == expected


def test_a_checkpoint_interrupted_mid_write_never_appears_under_its_final_name(tiny_pair, tmp_path, monkeypatch):
    from mpdistill.run.pipeline import build_trainer, load_model, training_problems

    recipe = _recipe(steps=1, save_steps=1).model_copy(
        update={"student": str(tiny_pair / "student"), "teacher": str(tiny_pair / "teacher")}
    )
    student, tok = load_model(recipe.student)
    teacher, _ = load_model(recipe.teacher)
    trainer = build_trainer(recipe, student, teacher, tok, training_problems(recipe), tmp_path)
    trainer.create_optimizer_and_scheduler(num_training_steps=1)

    def crash(*args, **kwargs):  # dies after the weights are written, before the optimizer state
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "_save_optimizer_and_scheduler", crash)
    with pytest.raises(KeyboardInterrupt):
        trainer._save_checkpoint(trainer.model, trial=None)
    trainer_dir = tmp_path / "trainer"
    # The half-written checkpoint is removed as the exception passes (after a SIGKILL nothing runs: the next
    # resume removes it, see the kill tests above); it never had its final name.
    assert not (trainer_dir / STAGING).exists()
    assert latest_checkpoint(trainer_dir) is None
    assert not (trainer_dir / "checkpoint-0").exists()


@pytest.fixture(scope="module")
def stopped(tmp_path_factory) -> tuple[Path, object]:
    """A run that saved checkpoints at steps 2 and 4 and was stopped before its model (model/ removed)."""
    import shutil

    recipe = _recipe(steps=4, save_steps=2, save_total_limit=2)
    run = tmp_path_factory.mktemp("stopped") / "run"
    train(recipe, run)
    shutil.rmtree(run / "model")
    return run, recipe


def _copy(stopped, tmp_path) -> Path:
    import shutil

    shutil.copytree(stopped[0], tmp_path / "run")
    return tmp_path / "run"


def test_a_hand_edited_recipe_cannot_resume_under_rules_its_checkpoint_was_not_trained_under(stopped, tmp_path):
    """recipe.yaml edited after the run started (max_ratio 0.9 -> 0.5): the checkpoint keeps the recipe it
    was trained under, and resuming with the run's own (edited) recipe is refused, naming the key."""
    run = _copy(stopped, tmp_path)
    text = (run / "recipe.yaml").read_text()
    (run / "recipe.yaml").write_text(text.replace("max_ratio: 0.9", "max_ratio: 0.5"))
    result = _run("train", "--resume", "--out", str(run))
    assert result.returncode == 2
    [line] = [x for x in result.stderr.splitlines() if x.startswith("error:")]
    assert "checkpoint-4 was trained under other settings" in line and "rewrite.max_ratio: 0.9 -> 0.5" in line
    assert not (run / "model").exists()


@pytest.mark.parametrize("damage, said", [
    (lambda c: (c / "optimizer.pt").unlink(), "optimizer.pt is missing"),
    (lambda c: (c / "model.safetensors").unlink(), "holds no weights"),
    (lambda c: os.truncate(c / "model.safetensors", (c / "model.safetensors").stat().st_size // 2), "is cut short"),
])
def test_a_damaged_newest_checkpoint_is_passed_over_for_the_whole_one_before_it(stopped, tmp_path, damage, said):
    run = _copy(stopped, tmp_path)
    damage(run / "trainer" / "checkpoint-4")
    result = _run("train", "--resume", "--out", str(run))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "not resumed from checkpoint-4: " in result.stderr and said in result.stderr
    assert "going on from checkpoint-2" in result.stderr
    rows = [json.loads(x) for x in (run / "rollouts.jsonl").read_text().splitlines()]
    assert sorted((r["step"], r["index"]) for r in rows) == [(s, i) for s in range(4) for i in range(4)]
    assert (run / "model" / "model.safetensors").is_file()


def test_a_run_whose_checkpoints_are_all_damaged_is_refused_in_one_line(stopped, tmp_path):
    run = _copy(stopped, tmp_path)
    for name in ("checkpoint-2", "checkpoint-4"):
        (run / "trainer" / name / "optimizer.pt").unlink()
    result = _run("train", "--resume", "--out", str(run))
    assert result.returncode == 2
    [line] = [x for x in result.stderr.splitlines() if x.startswith("error:")]
    assert "no checkpoint to resume from (checkpoint-4: optimizer.pt is missing" in line and "Traceback" not in result.stderr


def test_a_rollout_log_cut_short_of_its_checkpoint_is_said_when_resuming(stopped, tmp_path):
    run = _copy(stopped, tmp_path)
    rows = (run / "rollouts.jsonl").read_text().splitlines()
    (run / "rollouts.jsonl").write_text("\n".join(rows[:4]) + "\n")  # only step 0 left
    result = _run("train", "--resume", "--out", str(run))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "lacks the samples of step(s) 1-3, which checkpoint-4 trained" in result.stderr


def test_the_python_api_resumes_from_the_newest_whole_checkpoint_and_rewinds_the_log(stopped, tmp_path):
    """trainer.train(resume_from_checkpoint=True): the damaged newest checkpoint is passed over, the rollout
    log is cut back to the checkpoint used, and every (step, index) ends in it once."""
    from mpdistill.models.loading import load_model
    from mpdistill.run.pipeline import build_trainer, training_problems, training_arguments

    run = _copy(stopped, tmp_path)
    (run / "trainer" / "checkpoint-4" / "scheduler.pt").unlink()
    recipe = stopped[1]
    student, tok = load_model(recipe.student)
    teacher, _ = load_model(recipe.teacher)
    trainer = build_trainer(recipe, student, teacher, tok, training_problems(recipe), run,
                            args=training_arguments(recipe, run))
    trainer.train(resume_from_checkpoint=True)
    rows = [json.loads(x) for x in (run / "rollouts.jsonl").read_text().splitlines()]
    assert sorted((r["step"], r["index"]) for r in rows) == [(s, i) for s in range(4) for i in range(4)]
    with pytest.raises(RuntimeError, match="already called on this trainer"):
        trainer.train()
    (run / "trainer" / "checkpoint-4" / "scheduler.pt").unlink()  # the run saved it again: damaged once more
    with pytest.raises(ResumeError, match="cannot resume from .*checkpoint-4: scheduler.pt is missing"):
        build_trainer(recipe, student, teacher, tok, training_problems(recipe), run,
                      args=training_arguments(recipe, run)).train(resume_from_checkpoint=str(run / "trainer" / "checkpoint-4"))
