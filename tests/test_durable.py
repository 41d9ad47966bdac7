"""Durable outputs: an interrupted write never leaves a file that loads but is wrong."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from mpdistill.utils.durable import (
    LogError,
    append_jsonl,
    atomic_write,
    cut_torn_tail,
    read_jsonl_log,
    replace_dir,
    write_text,
)


def test_a_write_that_fails_midway_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "results.json"
    write_text(path, '{"accuracy": 0.9}\n')

    def half_then_crash(tmp):
        tmp.write_text('{"accuracy": 0.')
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, half_then_crash)
    assert json.loads(path.read_text()) == {"accuracy": 0.9}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]


def test_sigkill_during_rewrites_never_leaves_a_partial_file(tmp_path):
    """A child process rewrites a 2 MB JSON file in a loop and is killed at 20 points; every time the
    file on disk parses and is one of the complete versions."""
    path = tmp_path / "summary.json"
    script = textwrap.dedent(f"""
        import json, sys
        from mpdistill.utils.durable import write_text
        path = {str(path)!r}
        i = 0
        while True:
            write_text(__import__("pathlib").Path(path), json.dumps({{"version": i, "pad": "x" * 2_000_000}}))
            if i == 0:
                print("ready", flush=True)
            i += 1
    """)
    for attempt in range(20):
        proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(0.01 * (attempt % 7))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        record = json.loads(path.read_text())
        assert len(record["pad"]) == 2_000_000 and isinstance(record["version"], int)
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "summary.json"]
    assert all(name.startswith(".summary.json.") for name in leftovers)  # never under the final name


def test_replace_dir_swaps_a_whole_folder(tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    (target / "weights").write_text("old")
    new = tmp_path / "model.partial"
    new.mkdir()
    (new / "weights").write_text("new")
    replace_dir(new, target)
    assert (target / "weights").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_jsonl_log_round_trip_torn_tail_and_corrupt_middle(tmp_path, caplog):
    path = tmp_path / "log.jsonl"
    append_jsonl(path, [{"a": 1}, {"a": "é"}])
    with path.open("a") as f:
        f.write('{"a": 3')  # the write in flight when the process died
    records, torn_at = read_jsonl_log(path)
    assert [r for _, r in records] == [{"a": 1}, {"a": "é"}] and torn_at is not None
    assert "incomplete" in caplog.text
    cut_torn_tail(path, torn_at)
    append_jsonl(path, [{"a": 4}])
    assert [r["a"] for _, r in read_jsonl_log(path)[0]] == [1, "é", 4]

    path.write_text('{"a": 1}\n[1, 2]\n{"a": 3}\n')
    with pytest.raises(LogError, match=r"log.jsonl:2: expected a JSON object, got list"):
        read_jsonl_log(path)
    path.write_text('{"a": 1}\n{"a": \n{"a": 3}\n')
    with pytest.raises(LogError, match=r"log.jsonl:2: not a valid JSON record"):
        read_jsonl_log(path)
    assert os.path.getsize(path) > 0  # reading never changes the file


def test_a_runs_files_have_the_mode_the_umask_gives(tmp_path):
    """Weights, card, record, recipe and logs are readable by whom the umask says (0640 under 027), not only
    by their owner (0600): libraries and the atomic writer save through private temporary files."""
    import stat

    run = tmp_path / "run"
    code = ("import os, sys; os.umask(0o027); from mpdistill.cli import main; sys.argv = ['mpdistill', 'train', "
            f"'embedded', '--out', {str(run)!r}, '--set', 'training.steps=1', '--set', 'training.batch_size=4', "
            "'--set', 'data.n_train=4']; main()")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    files = [p for p in run.rglob("*") if p.is_file()]
    names = {p.name for p in files}
    assert {"model.safetensors", "README.md", "mpdistill.json", "recipe.yaml", "train_log.jsonl", "rollouts.jsonl"} <= names
    modes = {str(p.relative_to(run)): oct(stat.S_IMODE(p.stat().st_mode)) for p in files}
    assert set(modes.values()) == {"0o640"}, modes
