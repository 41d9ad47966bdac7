"""One writer per output: a run folder (``train``, ``eval``, ``study``, ``demo``) or an output file
(``rewrite``) is held by the process writing it, and a second process is refused in one line that
names the holder.

The hold is an advisory ``flock`` on a small file (``.mpdistill.lock`` in a folder, ``<file>.lock``
beside a file) that records who holds it. The kernel releases it when the holder exits, however it
exits, so a killed run never leaves a stale hold behind (only the small file, which the next holder
takes over); a run that ends removes the file.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from mpdistill.errors import ConfigError

FOLDER_LOCK = ".mpdistill.lock"


class OutputInUse(ConfigError):
    """Another process is writing the same output."""


def lock_path(target: str | Path, *, is_file: bool = False) -> Path:
    """Where the hold on ``target`` is kept: inside a folder, or beside a file."""
    target = Path(target)
    return target.with_name(target.name + ".lock") if is_file else target / FOLDER_LOCK


class OutputLock:
    """The hold on one output; :meth:`acquire` raises :class:`OutputInUse` naming the holder."""

    def __init__(self, target: str | Path, *, is_file: bool = False, option: str = "--out") -> None:
        self.target, self.option = Path(target), option
        self.path, self.is_file = lock_path(target, is_file=is_file), is_file
        self._fd: int | None = None
        self._made_folder = False

    def acquire(self) -> "OutputLock":
        import fcntl

        from mpdistill.utils.paths import check_output_dir, check_output_file

        # A place that cannot be written is named as such, not found out by the lock's own file.
        (check_output_file(self.target, self.option) if self.is_file else check_output_dir(self.target, self.option))
        self._made_folder = not self.is_file and not self.path.parent.exists()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Held read-only (an flock needs no write access), so the hold never keeps a file open for
        # writing: that would stop the file system being remounted, and a run told so.
        fd = os.open(self.path, os.O_RDONLY | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = _read_holder(fd)
            os.close(fd)
            raise OutputInUse(f"{self.option} {self.target}: another process is writing it ({holder}); wait for it to "
                              f"finish or stop it, or use another {self.option}") from None
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                "command": " ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv))[:300]}
        self._fd = fd
        with open(self.path, "w", encoding="utf-8") as f:  # another open file: closing it keeps the flock
            f.write(json.dumps(info) + "\n")
        return self

    def release(self) -> None:
        """End the hold and remove its file; and the folder, if this hold made it and nothing else was
        written into it (a run refused before it wrote anything leaves no folder)."""
        if self._fd is None:
            return
        self.path.unlink(missing_ok=True)
        folder = self.path.parent
        if not self.is_file and self._made_folder and not any(folder.iterdir()):
            folder.rmdir()
        os.close(self._fd)  # closing the descriptor ends the flock
        self._fd = None


def _read_holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (OSError, ValueError):
        info = {}
    if not info:
        return "holder unknown"
    return (f"process {info.get('pid', '?')} on {info.get('host', '?')}, started {info.get('started', '?')}: "
            f"{info.get('command', '?')}")


@contextmanager
def holding(target: str | Path, *, is_file: bool = False, option: str = "--out", enabled: bool = True) -> Iterator[None]:
    """Hold ``target`` for the block (``enabled=False``: a process that is not the writer, under a launcher)."""
    lock = OutputLock(target, is_file=is_file, option=option).acquire() if enabled else None
    try:
        yield
    finally:
        if lock is not None:
            lock.release()
