"""One writer per output: a second train / eval / rewrite / demo / study on an output another process is
writing is refused in one line naming that process, and a holder killed with SIGKILL leaves no hold behind."""

import json
import os
import signal
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from mpdistill.cli import app
from mpdistill.utils.run_lock import FOLDER_LOCK, OutputInUse, OutputLock

HOLD = """
import sys, time
from mpdistill.utils.run_lock import OutputLock
OutputLock(sys.argv[1], is_file=sys.argv[2] == "file").acquire()
print("held", flush=True)
time.sleep(120)
"""


@pytest.fixture
def holder():
    """Another process holding an output (a folder or a file) until it is killed."""
    procs = []

    def hold(target, kind="folder"):
        proc = subprocess.Popen([sys.executable, "-c", HOLD, str(target), kind], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "held"
        procs.append(proc)
        return proc

    yield hold
    for proc in procs:
        proc.kill()
        proc.wait()


def errors(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("error:")]


@pytest.mark.parametrize("args, target, kind", [
    (["train", "embedded", "--out", "{t}", "--set", "training.steps=1"], "run", "folder"),
    (["eval", "--model", "embedded:student", "--benchmarks", "chain", "--limit", "4", "--out", "{t}"], "ev", "folder"),
    (["demo", "--quick", "--out", "{t}"], "demo", "folder"),
    (["study", "--quick", "--methods", "mpd,opd", "--out", "{t}"], "study", "folder"),
])
def test_a_second_writer_is_refused_naming_the_first(tmp_path, holder, args, target, kind):
    path = tmp_path / target
    proc = holder(path, kind)
    result = CliRunner().invoke(app, [a.replace("{t}", str(path)) for a in args], env={"COLUMNS": "400"})
    assert result.exit_code == 2, result.output
    [line] = errors(result.output)
    assert f"another process is writing it (process {proc.pid} on " in line and "use another --out" in line
    assert sorted(p.name for p in path.iterdir()) == [FOLDER_LOCK]  # nothing of the refused run was written


def test_a_second_rewrite_on_one_output_file_is_refused(tmp_path, holder):
    rows = tmp_path / "in.jsonl"
    rows.write_text(json.dumps({"problem": "Q:1+2\n", "trace": "1+2=3\nA:3"}) + "\n")
    out = tmp_path / "out.jsonl"
    proc = holder(out, "file")
    result = CliRunner().invoke(app, ["rewrite", "--input", str(rows), "--out", str(out), "--teacher",
                                      "embedded:teacher", "--task", "chain"], env={"COLUMNS": "400"})
    assert result.exit_code == 2, result.output
    assert f"process {proc.pid} on" in errors(result.output)[0] and not out.exists()


def test_a_killed_holder_leaves_no_hold(tmp_path, holder):
    path = tmp_path / "run"
    proc = holder(path)
    with pytest.raises(OutputInUse):
        OutputLock(path).acquire()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    lock = OutputLock(path).acquire()  # the kernel released the dead process's hold
    lock.release()


def test_two_trainings_started_together_on_one_folder_one_is_refused(tmp_path):
    """The race the hold is for: both start at once; exactly one trains, the other says who holds the folder."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "400"}
    cmd = [sys.executable, "-m", "mpdistill.cli", "train", "embedded", "--out", str(tmp_path / "run"),
           "--set", "training.steps=2", "--set", "training.batch_size=4", "--set", "data.n_train=8"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 2], outs
    refused = next(err for p, (_, err) in zip(procs, outs) if p.returncode == 2)
    # Refused while the other trains, or (on a slow start) after it finished: never both writing.
    assert "another process is writing it (process" in refused or "already holds a run" in refused, refused
    rows = [json.loads(line) for line in (tmp_path / "run" / "rollouts.jsonl").read_text().splitlines()]
    assert len({(r["step"], r["index"]) for r in rows}) == len(rows) == 8  # each (step, index) once


def test_a_run_that_ends_leaves_no_lock_file(tmp_path):
    lock = OutputLock(tmp_path / "run").acquire()
    (tmp_path / "run" / "model").mkdir()
    lock.release()
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["model"]
    OutputLock(tmp_path / "fresh").acquire().release()  # nothing was written: no folder is left
    assert not (tmp_path / "fresh").exists()
    OutputLock(tmp_path / "out.jsonl", is_file=True).acquire().release()
    assert list(tmp_path.iterdir()) == [tmp_path / "run"]
