"""The recipes and accelerate configs shipped inside the package, found by name.

A recipe's name is its file's without ``.yaml``: ``embedded`` is ``mpdistill/recipes/embedded.yaml``.
An accelerate config's starts with ``accelerate/``: ``accelerate/single_gpu``. ``mpdistill recipes``
lists them, prints one's path and copies one out to edit. Shipped recipes name their models and
data only as ``embedded:`` names and Hub ids, so they run the same from wherever they are.
"""

from __future__ import annotations

import re
from pathlib import Path

from mpdistill.errors import MPDistillError

HERE = Path(__file__).resolve().parent
FILE_SUFFIXES = (".yaml", ".yml")


class RecipeNotFound(MPDistillError, LookupError):
    """A name that is neither a file nor a shipped recipe (or accelerate config)."""


def recipe_names() -> list[str]:
    return sorted(p.stem for p in HERE.glob("*.yaml"))


def accelerate_names() -> list[str]:
    return sorted(f"accelerate/{p.stem}" for p in (HERE / "accelerate").glob("*.yaml"))


def names() -> list[str]:
    return recipe_names() + accelerate_names()


def shipped_path(name: str) -> Path:
    """The file of a shipped recipe or accelerate config."""
    if name not in names():
        raise RecipeNotFound(f"no shipped recipe or accelerate config is named {name!r}; "
                             f"shipped: {', '.join(names())}")
    return HERE / f"{name}.yaml"


def recipe_file(arg: str | Path) -> Path:
    """What a recipe argument names: a file if it is one or ends in .yaml/.yml, else a shipped recipe."""
    text = str(arg)
    if Path(text).is_file() or text.lower().endswith(FILE_SUFFIXES):
        return Path(text)
    if text in recipe_names():
        return HERE / f"{text}.yaml"
    raise RecipeNotFound(f"{text!r} is neither a recipe file nor a shipped recipe; shipped recipes: "
                         f"{', '.join(recipe_names())} (`mpdistill recipes` lists them)")


def description(name: str) -> str:
    """The file's first comment line, up to its first ``: `` or ``. ``."""
    for line in shipped_path(name).read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            return re.split(r"[:.] ", line.lstrip("#").strip(), maxsplit=1)[0]
        if line.strip():
            break
    return ""
