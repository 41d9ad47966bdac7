"""Extensions from other installed packages, for the ``mpdistill`` command.

A package that adds a task, a rewriter backend or a method registers it when imported and names
that module as an entry point of the group ``mpdistill.plugins``::

    [project.entry-points."mpdistill.plugins"]
    units = "my_package.mpdistill_plugin"

The command imports every such module before it reads its arguments, so ``task: units`` works in
a recipe and ``--task units`` on the command line. (Python scripts simply import the module.)
"""

from __future__ import annotations

from importlib.metadata import entry_points

from mpdistill.errors import MPDistillError

GROUP = "mpdistill.plugins"


class PluginError(MPDistillError, RuntimeError):
    """A plugin that cannot be loaded; the message names it and its package."""


def load_plugins() -> list[str]:
    """Import every ``mpdistill.plugins`` entry point; returns their names."""
    loaded = []
    for point in entry_points(group=GROUP):
        try:
            point.load()
        except Exception as err:  # noqa: BLE001 - any failure of someone else's code is reported the same way
            package = point.dist.name if point.dist is not None else "an installed package"
            raise PluginError(f"plugin {point.name!r} ({point.value}, from {package}) failed to load: "
                              f"{type(err).__name__}: {err}") from None
        loaded.append(point.name)
    return loaded
