"""Paths a command is given: which names are local paths (not Hugging Face Hub ids), and where a
command will write, checked before any model loads and by ``--dry-run``.

A folder that is a file, a parent that is a file, or a place the user cannot write is found by
trying it (creating and removing an empty file), not by reading permission bits: those say
nothing for root, read-only mounts or network file systems.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from mpdistill.errors import ConfigError

# What the package ships beside its code: the embedded worlds, benchmark sets, model configs.
ASSETS = Path(__file__).resolve().parents[1] / "assets"
DATA_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")
EMBEDDED_PREFIX = "embedded:"  # the shipped models and problems: embedded:student, embedded:teacher, embedded:chain
# What a training run writes beside its model (mpdistill train --out, MPDConfig's output_dir).
ROLLOUTS = "rollouts.jsonl"
TRAIN_LOG = "train_log.jsonl"


def looks_local(name: str, *, data_file: bool = False) -> bool:
    """Whether a model or dataset name is a local path rather than a Hugging Face Hub id: a Hub id is
    "org/name" at most, so more slashes, a leading ``.``, ``/`` or ``~``, an existing path or (data)
    a data file's suffix mean a local one."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or Path(name).expanduser().exists() \
        or (data_file and name.lower().endswith(DATA_SUFFIXES))


class OutputPathError(ConfigError):
    """An output path that cannot be written; the message names the option and the path."""


def check_output_dir(path: str | Path, option: str = "--out") -> None:
    """``path`` is, or can become, a folder this process can write in."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise OutputPathError(f"{option} {path}: is a file; give a folder (it is created if missing)")
    _check_writable(path if path.is_dir() else _existing_ancestor(path, option), path, option)


def check_output_file(path: str | Path, option: str) -> None:
    """``path`` is, or can become, a file this process can write (its folder is created if missing)."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise OutputPathError(f"{option} {path}: is a folder; give a file name")
    parent = path.parent
    _check_writable(parent if parent.is_dir() else _existing_ancestor(parent, option, target=path), path, option)


def _existing_ancestor(path: Path, option: str, target: Path | None = None) -> Path:
    """The nearest folder above ``path`` that exists (the root does); an existing file on the way is an error."""
    parent = next(p for p in (path, *path.absolute().parents) if p.exists())
    if not parent.is_dir():
        raise OutputPathError(f"{option} {target or path}: {parent} is a file, so no folder can be made there")
    return parent


def _check_writable(folder: Path, target: Path, option: str) -> None:
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".mpdistill-write-check-")
    except OSError as err:
        raise OutputPathError(f"{option} {target}: cannot write in {folder} ({err.strerror or err})") from None
    os.close(fd)
    os.unlink(probe)
