"""A named set of extensions (tasks, rewriter backends, methods): each kind has one, and recipes,
configs and commands look names up in it, so adding one is a single ``register`` call."""

from __future__ import annotations

from typing import Generic, TypeVar

from mpdistill.errors import ConfigError

T = TypeVar("T")


class Registry(dict, Generic[T]):
    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind  # "task", "rewriter backend", "method": as messages name it

    def register(self, name: str, entry: T, *, replace: bool = False) -> T:
        if name in self and not replace:
            raise ValueError(f"{self.kind} {name!r} is already registered (replace=True to replace it)")
        self[name] = entry
        return entry

    def known(self) -> str:
        return ", ".join(self)

    def check(self, name: str) -> str:
        """``name``, or a ValueError listing the known names (a settings check's message)."""
        if name not in self:
            raise ValueError(f"unknown {self.kind}; known: {self.known()}")
        return name

    def lookup(self, name: str) -> T:
        if name not in self:
            raise ConfigError(f"unknown {self.kind} {name!r}; known: {self.known()}")
        return self[name]
