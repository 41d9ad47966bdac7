"""A full disk or a folder turned read-only mid-run, on a real file system: a small tmpfs, filled by the run
itself or remounted read-only while it runs. Each command says so in one error line naming what is kept and
how to go on, leaves nothing half-written where a resume would read it, and goes on once there is room.

Mounting needs root (CI runs as root); elsewhere these tests are skipped, and ``test_a_refused_write...`` below
covers the message path without a mount."""

import json
import subprocess

import pytest
from typer.testing import CliRunner

from mpdistill.cli import app
from mpdistill.errors import storage_failure

runner = CliRunner()


@pytest.fixture
def tmpfs(tmp_path):
    """``mount(size)`` mounts a tmpfs of that size at a fresh folder; ``remount(options)`` changes it."""
    mounted = []

    def mount(size: str):
        where = tmp_path / f"fs{len(mounted)}"
        where.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True)
        if done.returncode:
            pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip()}); needs root")
        mounted.append(where)
        return where

    def remount(where, options: str):
        subprocess.run(["mount", "-o", f"remount,{options}", str(where)], check=True)

    yield mount, remount
    for where in mounted:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def errors(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("error:")]


TRAIN = ["train", "embedded", "--set", "training.steps=4", "--set", "training.save_steps=2", "--set",
         "training.batch_size=4", "--set", "data.n_train=16", "--set", "training.logging_steps=1"]


def test_train_on_a_disk_that_fills_keeps_its_checkpoint_and_resumes(tmpfs):
    mount, remount = tmpfs
    disk = mount("5500k")  # room for one checkpoint (weights and optimizer, about 4 MB) and the logs
    run = disk / "run"
    result = runner.invoke(app, [*TRAIN, "--out", str(run)], env={"COLUMNS": "400"})
    assert result.exit_code == 2, result.output
    [line] = errors(result.output)
    # The device is full; torch's own writer words it as a short write.
    assert ("no space left on the device" in line or "a full or read-only disk" in line) and "checkpoint-2" in line
    assert f"mpdistill train --resume --out {run}" in line
    assert not (run / "trainer" / ".partial").exists() and not (run / ".model.partial").exists()
    remount(disk, "size=64m")  # room again
    result = runner.invoke(app, ["train", "--resume", "--out", str(run)], env={"COLUMNS": "400"})
    assert result.exit_code == 0, result.output
    rows = [json.loads(x) for x in (run / "rollouts.jsonl").read_text().splitlines()]
    assert sorted((r["step"], r["index"]) for r in rows) == [(s, i) for s in range(4) for i in range(4)]
    assert (run / "model" / "model.safetensors").is_file()


def test_train_on_a_folder_made_read_only_mid_run_says_so_in_one_line(tmpfs, monkeypatch):
    from transformers import TrainerCallback

    from mpdistill.run import pipeline

    mount, remount = tmpfs
    disk = mount("64m")
    build = pipeline.build_trainer

    class ReadOnlyAfterStep3(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 3:
                remount(disk, "ro")

    def build_and_break(*args, **kwargs):
        trainer = build(*args, **kwargs)
        trainer.add_callback(ReadOnlyAfterStep3())
        return trainer

    monkeypatch.setattr(pipeline, "build_trainer", build_and_break)
    run = disk / "run"
    result = runner.invoke(app, [*TRAIN, "--out", str(run)], env={"COLUMNS": "400"})
    assert result.exit_code == 2, result.output
    [line] = errors(result.output)
    assert "the file system is read-only" in line and "checkpoint-2" in line and "--resume" in line
    assert "Traceback" not in result.output


def test_eval_on_a_disk_that_fills_goes_on_to_the_same_samples(tmpfs, tmp_path):
    mount, remount = tmpfs
    disk = mount("48k")
    args = ["eval", "--model", "embedded:student", "--benchmarks", "chain", "--limit", "300", "--batch-size", "50"]
    result = runner.invoke(app, [*args, "--out", str(disk / "ev")], env={"COLUMNS": "400"})
    assert result.exit_code == 2, result.output
    [line] = errors(result.output)
    assert "no space left on the device" in line and "run the same command again" in line
    remount(disk, "size=64m")
    result = runner.invoke(app, [*args, "--out", str(disk / "ev")])
    assert result.exit_code == 0, result.output
    # The same samples as one uninterrupted run on a disk with room.
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "whole")])
    assert result.exit_code == 0, result.output

    def samples(folder):
        return sorted(json.dumps(json.loads(x), sort_keys=True) for x in (folder / "samples.jsonl").read_text().splitlines())

    assert samples(disk / "ev") == samples(tmp_path / "whole")


def test_rewrite_on_a_disk_that_fills_keeps_its_chunks(tmpfs, tmp_path):
    from mpdistill.tasks import chain
    from mpdistill.tasks.problems import chain_problems

    mount, remount = tmpfs
    disk = mount("8k")
    rows = []
    for i, r in enumerate(chain_problems(24, 0, split="validation")):
        p = chain.ChainProblem.parse(r["problem"])
        rows.append({"problem": r["problem"], "trace": chain.verbose_trace(p, "L", __import__("random").Random(i))})
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = ["rewrite", "--input", str(tmp_path / "in.jsonl"), "--out", str(disk / "out.jsonl"), "--teacher",
            "embedded:teacher", "--task", "chain", "--batch-size", "3"]
    result = runner.invoke(app, args, env={"COLUMNS": "400"})
    assert result.exit_code == 2, result.output
    [line] = errors(result.output)
    assert "no space left on the device" in line and "Finished chunks are kept" in line
    remount(disk, "size=64m")
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    out = [json.loads(x) for x in (disk / "out.jsonl").read_text().splitlines()]
    assert sorted(r["index"] for r in out) == list(range(24))


@pytest.mark.parametrize("err, said", [
    (OSError(28, "No space left on device", "/data/run/rollouts.jsonl"),
     "cannot write /data/run/rollouts.jsonl: no space left on the device"),
    (OSError(30, "Read-only file system", "/data/x"), "cannot write /data/x: the file system is read-only"),
    (RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed"),
     "cannot write: the write failed (a full or read-only disk) (RuntimeError)"),
    (ValueError("bad value"), None),
    (OSError(2, "No such file or directory", "/x"), None),
])
def test_a_refused_write_is_told_apart_from_other_errors(err, said):
    assert storage_failure(err) == said
    wrapped = RuntimeError("saving failed")
    wrapped.__cause__ = err
    assert storage_failure(wrapped) == said  # found where a library wrapped it
