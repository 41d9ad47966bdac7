"""``mpdistill recipes``: the shipped recipes and accelerate configs."""

from __future__ import annotations

from pathlib import Path

import typer

from mpdistill.cli.app import app, fail, one_line_errors
from mpdistill.utils.console import stdout as console


recipes_app = typer.Typer(rich_markup_mode=None, context_settings={"max_content_width": 120})
app.add_typer(recipes_app, name="recipes")


@recipes_app.callback(invoke_without_command=True)
@one_line_errors
def recipes_cmd(ctx: typer.Context) -> None:
    """The shipped recipes and accelerate configs: lists them; `path NAME` prints one's file, `copy NAME` writes a copy to edit."""
    if ctx.invoked_subcommand is not None:
        return
    from mpdistill import recipes as shipped

    width = max(len(name) for name in shipped.names()) + 2
    for title, names in (
        ("recipes (mpdistill train NAME, mpdistill demo --recipe NAME):", shipped.recipe_names()),
        ('accelerate configs (accelerate launch --config_file "$(mpdistill recipes path NAME)" ...):',
         shipped.accelerate_names()),
    ):
        console.print(title)
        for name in names:
            console.print(f"  {name:<{width}}{shipped.description(name)}")
    console.print(f"in {shipped.HERE}; to edit one: mpdistill recipes copy NAME [DEST]")


@recipes_app.command("path")
@one_line_errors
def recipes_path(name: str = typer.Argument(..., help="e.g. embedded or accelerate/single_gpu.")) -> None:
    """Print a shipped file's path: accelerate launch --config_file "$(mpdistill recipes path accelerate/single_gpu)" ..."""
    from mpdistill.recipes import shipped_path

    console.print(str(shipped_path(name)))


@recipes_app.command("copy")
@one_line_errors
def recipes_copy(
    name: str = typer.Argument(..., help="e.g. embedded or accelerate/multinode."),
    dest: Path = typer.Argument(Path("."), help="File, or existing folder, to write (default: the file's own name here)."),
) -> None:
    """Write an editable copy of a shipped recipe or accelerate config; an existing file is never overwritten."""
    from mpdistill.recipes import shipped_path

    source = shipped_path(name)
    target = dest / source.name if dest.is_dir() else dest
    try:
        with target.open("x", encoding="utf-8") as f:
            f.write(source.read_text(encoding="utf-8"))
    except FileExistsError:
        fail(f"{target} already exists; not overwriting it (give another DEST)")
    except OSError as err:
        fail(f"cannot write {target}: {err.strerror or err}")
    console.print(f"wrote {target}")
