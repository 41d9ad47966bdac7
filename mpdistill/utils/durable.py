"""Writing run files so that a crash at any moment leaves either the old file or the new one.

Two kinds of file come out of a run:

* **Whole files** (results, summaries, recipes, model folders, checkpoints) are written under a
  temporary name in the same folder, flushed to disk, then renamed into place: a reader never
  sees a half-written file under the final name.
* **Logs** (``rollouts.jsonl``, ``samples.jsonl``, rewrite outputs) are appended one JSON line per
  record and flushed after each batch. Only the line in flight when a process dies can be torn;
  :func:`read_jsonl_log` finds it and :func:`cut_torn_tail` removes it before appending again.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable

from mpdistill.errors import MPDistillError

log = logging.getLogger(__name__)


class LogError(MPDistillError, ValueError):
    """A JSONL log that cannot be read back; the message names the file and line."""


def fsync_dir(path: Path) -> None:
    """Make a rename inside ``path`` durable (the folder entry itself is flushed)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # not every filesystem lets a folder be opened; the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _read_umask() -> int:
    """The process's umask, read without changing it where the kernel says it (Linux), else by setting
    and restoring it once, at import, before any thread of this package writes."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


UMASK = _read_umask()
FILE_MODE = 0o666 & ~UMASK  # what open() gives a new file: temporary files are made private (0600) instead


def honour_umask(path: Path) -> None:
    """Give a file written through a private temporary file (ours, or one a library made) the mode a
    plain new file would have, so teammates on a shared machine can read what a run wrote."""
    try:
        if os.stat(path).st_mode & 0o777 != FILE_MODE:
            os.chmod(path, FILE_MODE)
    except OSError:  # a filesystem without Unix modes: nothing to honour
        pass


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def atomic_write(path: Path, write: Callable[[Path], Any]) -> None:
    """Let ``write`` fill a temporary file next to ``path``, then move it into place atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Same folder, so os.replace is a rename on one filesystem; same suffix, so writers that
    # infer the format from the name (matplotlib) still do the right thing.
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f".tmp{path.suffix}")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        honour_umask(tmp)
        _fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_text(path: Path, text: str) -> None:
    """:func:`atomic_write` for a text file (UTF-8)."""
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_jsonl(path: Path, records: Iterable[dict]) -> None:
    """A whole JSONL file, atomically (for logs that are rewritten, not appended)."""
    write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def fsync_tree(root: Path) -> None:
    """Flush every file and folder under ``root`` to disk (before it is renamed into place), each file
    with the mode the umask gives (libraries save weights through private temporary files)."""
    for folder, _, files in os.walk(root):
        for name in files:
            honour_umask(Path(folder) / name)
            _fsync_file(Path(folder) / name)
        fsync_dir(Path(folder))


def replace_dir(src: Path, target: Path) -> None:
    """Move the finished folder ``src`` to ``target``, replacing what was there.

    ``src`` is flushed first and the old folder is renamed aside rather than deleted in place, so
    ``target`` is only ever the old complete folder, the new complete one, or (between the two
    renames) absent: never a mix, never half-deleted.
    """
    src, target = Path(src), Path(target)
    fsync_tree(src)
    target.parent.mkdir(parents=True, exist_ok=True)
    old = target.with_name(f".{target.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        os.replace(target, old)
    os.replace(src, target)
    fsync_dir(target.parent)
    shutil.rmtree(old, ignore_errors=True)


def append_jsonl(path: Path, records: Iterable[dict]) -> None:
    """Append records as JSON lines and flush them to disk before returning."""
    lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    if not lines:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as f:
        f.write(lines)
        f.flush()
        os.fsync(f.fileno())


def read_jsonl_log(path: Path) -> tuple[list[tuple[int, dict]], int | None]:
    """``(line number, record)`` of a JSONL log, and the byte offset of a torn last line, if any.

    Only the last line may be broken (the write in flight when a run was killed); it is reported
    and left out. A bad line anywhere else is a :class:`LogError` that names it. The file is only read.
    """
    if not path.exists():
        return [], None
    lines = path.read_bytes().split(b"\n")
    if lines and not lines[-1]:
        lines.pop()  # the file ends with a newline: nothing after it
    records = []
    offset = 0  # byte offset where the current line starts
    for lineno, line in enumerate(lines, 1):
        try:
            record = json.loads(line) if line.strip() else None
        except ValueError:
            if lineno == len(lines):
                log.warning("%s: line %d is incomplete (interrupted write); it is dropped", path, lineno)
                return records, offset
            raise LogError(f"{path}:{lineno}: not a valid JSON record; fix or remove that line to resume") from None
        if record is not None:
            if not isinstance(record, dict):
                raise LogError(f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}")
            records.append((lineno, record))
        offset += len(line) + 1
    return records, None


def cut_torn_tail(path: Path, torn_at: int | None) -> None:
    """Make ``path`` end with a complete line, so appending can continue."""
    if torn_at is not None:
        with path.open("r+b") as f:
            f.truncate(torn_at)
            os.fsync(f.fileno())
    elif path.exists() and path.stat().st_size:
        with path.open("rb+") as f:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":  # a complete last record without its newline
                f.write(b"\n")
                os.fsync(f.fileno())


def changed_settings(saved: dict, wanted: dict, keys=None, *, name=str, shown=None, same=None) -> list[str]:
    """``name(key): old -> new`` for each of ``keys`` (default: every key of either) that a resumed
    run would change from the settings its files were written with.

    Train, eval and rewrite all refuse such a resume with these lines: continuing would mix records
    of two settings in one file. ``shown(key, value)`` writes a value (default: ``repr``);
    ``same(key, old, new)`` compares where plain equality does not fit.
    """
    keys = sorted(saved.keys() | wanted.keys()) if keys is None else keys
    shown = shown or (lambda key, value: repr(value))
    same = same or (lambda key, old, new: old == new)
    return [f"{name(k)}: {shown(k, saved.get(k))} -> {shown(k, wanted.get(k))}"
            for k in keys if not same(k, saved.get(k), wanted.get(k))]
