"""What a user can fix is raised as an :class:`MPDistillError`: one line that names the file, key,
option, row or model to fix. The command line prints it as ``error: ...`` with exit code 2, whichever
command raised it; any other exception is a bug and shows its traceback."""


class MPDistillError(Exception):
    """The base of every error a user can act on (a recipe, a dataset, a run folder, a halt).

    ``shared_by_main_process``: every process of a launch raises it alike (the main process decided it,
    or it follows from numbers all of them gathered), so the command line says it once, from the main
    process; any other is said by the process that raised it."""

    shared_by_main_process: bool = False


class ConfigError(MPDistillError, ValueError):
    """A recipe, option or model that cannot be used; the message names the file and the key."""


def one_line(text: object) -> str:
    """A message from a library (huggingface_hub's span several lines) as one line of an ``error:``."""
    return " ".join(str(text).split())


class HubError(MPDistillError, RuntimeError):
    """The Hugging Face Hub could not be reached or refused a push; the message says what was kept
    locally and how to push it again."""


# What the storage says when it refuses a write, by errno.
_STORAGE_ERRNOS = {"ENOSPC": "no space left on the device", "EDQUOT": "disk quota exceeded",
                   "EROFS": "the file system is read-only", "EACCES": "permission denied", "EPERM": "not permitted",
                   "EFBIG": "file too large"}
# The same refusals as other libraries word them (safetensors' Rust errors, torch's zip writer).
_STORAGE_WORDS = (("No space left on device", "no space left on the device"),
                  ("Read-only file system", "the file system is read-only"),
                  ("Disk quota exceeded", "disk quota exceeded"),
                  ("file write failed", "the write failed (a full or read-only disk)"),
                  # torch's zip writer (torch.save) when a write came up short
                  ("inline_container.cc", "torch's file writer could not write (a full or read-only disk)"))


def storage_failure(err: BaseException) -> str | None:
    """``cannot write PATH: why`` when ``err`` (or what caused it) is the storage refusing a write: a
    full disk, a quota, a read-only or forbidden place; None for any other error."""
    import errno as errno_names

    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno is not None:
            name = errno_names.errorcode.get(err.errno)
            if name in _STORAGE_ERRNOS:
                where = f" {err.filename}" if err.filename else ""
                return f"cannot write{where}: {_STORAGE_ERRNOS[name]}"
        text = str(err)
        for words, why in _STORAGE_WORDS:
            if words in text:
                return f"cannot write: {why} ({type(err).__name__})"
        err = err.__cause__ or err.__context__
    return None
