"""Name -> object registries for everything chosen by name (backbones, heads, blocks, losses).

A registry refuses duplicate names, so two modules can never silently shadow each other, and it is
only ever filled by decorators at import time of the module that defines the entry.
"""
from __future__ import annotations

from typing import Any, Callable, Iterator, TypeVar

T = TypeVar("T")


class Registry:
    """A named mapping from string keys to registered objects."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, Any] = {}

    def register(self, name: str | None = None) -> Callable[[T], T]:
        """Decorator: register the decorated object under ``name`` (default: its ``__name__``)."""

        def deco(obj: T) -> T:
            key = name or obj.__name__  # type: ignore[attr-defined]
            if key in self._items:
                raise KeyError(f"{self.kind} '{key}' is already registered ({self._items[key]!r})")
            self._items[key] = obj
            return obj

        return deco

    def get(self, name: str) -> Any:
        """Return the object registered under ``name``; unknown names list the valid choices."""
        try:
            return self._items[name]
        except KeyError:
            raise KeyError(f"unknown {self.kind} '{name}'; choose from: {', '.join(sorted(self._items))}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))

    def __len__(self) -> int:
        return len(self._items)

    def names(self) -> list[str]:
        """Sorted registered names."""
        return sorted(self._items)
