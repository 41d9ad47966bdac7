"""What every command shares: the Typer app, the options several commands take, and how a command
ends on a problem the user can fix (one ``error:`` line, exit code 2)."""

from __future__ import annotations

import functools
import os
from typing import Callable

import typer

from mpdistill.errors import MPDistillError


# Plain click help: rich's help cuts long option names at the terminal's width (80 when piped);
# a traceback is only ever a bug, shown as Python writes it.
app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None, pretty_exceptions_enable=False,
                  context_settings={"max_content_width": 120},
                  help="Mixed-Policy Distillation for reasoning compression.")


def _print_version(value: bool) -> None:
    if value:
        from mpdistill.models.card import framework_versions

        (_, version), *libraries = framework_versions()
        print(f"mpdistill {version} ({', '.join(f'{name} {v}' for name, v in libraries)})")
        raise typer.Exit()


@app.callback()
def _options(version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                          help="Print the version of mpdistill and of the libraries it runs on.")) -> None:
    """Mixed-Policy Distillation for reasoning compression."""


# Both run code from the checkpoint when a model loads: off unless asked for (see models.loading.load_model).
ALLOW_PICKLE = typer.Option(False, "--allow-pickle-checkpoints",
                            help="Also load .bin/.pt weights (pickle can run code); default safetensors only.")
TRUST_REMOTE_CODE = typer.Option(False, "--trust-remote-code", help="Run Python code shipped with the model; read it first.")


WORLD = typer.Option("concise-teacher", "--world", help="The embedded world: concise-teacher (the teacher natively "
                     "3x shorter than the student) or verbose-teacher (about as long, more accurate; docs/EMBEDDED.md).")


def checked_world(name: str) -> str:
    from mpdistill.models.worlds import WORLDS

    if name not in WORLDS:
        fail(f"--world must be one of {', '.join(WORLDS)}; got {name!r}")
    return name


def fail(message: str, *, shared: bool = False) -> None:
    """One ``error:`` line, exit code 2. Under a launcher, an error every process shares (the main
    process decided it, see mpdistill/utils/processes.py) is said once, by the main process; one raised
    on another process alone is said by that process, naming it."""
    from mpdistill.utils.console import error

    if os.environ.get("RANK", "0") == "0" or not shared:
        for line in message.splitlines() or [message]:  # several problems found at once: one line each
            error(line)
    raise typer.Exit(code=2)


def one_line_errors(command: Callable) -> Callable:
    """A command whose :class:`~mpdistill.errors.MPDistillError` (a setting, a dataset, a run folder, a
    halt: anything the user can fix) is said as one ``error:`` line; other exceptions stay bugs."""

    @functools.wraps(command)
    def run(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except MPDistillError as err:
            fail(str(err), shared=err.shared_by_main_process)

    return run


def interrupted(saved: str) -> None:
    """Ctrl-C: what is on disk and how to go on, then exit 130 (the shell's code for SIGINT)."""
    from mpdistill.utils.console import warn

    if os.environ.get("RANK", "0") == "0":
        warn(f"interrupted. {saved}")
    raise typer.Exit(code=130)


def storage_failed(err: BaseException, kept: Callable[[], str]) -> None:
    """A write the storage refused (full disk, quota, read-only): one ``error:`` line saying what is kept
    (``kept()``, which may read the output folder, so only then) and how to go on. Any other exception
    is re-raised as it is: an error the code already said in its own words (an MPDistillError, such as
    an output folder checked before anything ran) goes to :func:`one_line_errors` unchanged."""
    from mpdistill.errors import storage_failure

    said = None if isinstance(err, MPDistillError) else storage_failure(err)
    if said is None:
        raise err
    fail(f"{said}. {kept()}")
