"""Registries: the one place each kind of component (carrier, detector, defence, student method) is
listed. Config choices and CLI choices are read from them, so a new component is one new file that
registers itself, in the package (its component package imports every module in it) or in a plugin
(a module named by a ``sublim.plugins`` entry point)."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Iterable, Iterator
from importlib.metadata import entry_points
from typing import Generic, TypeVar

from sublim.core.errors import SublimError

T = TypeVar("T")


class Registry(Generic[T]):
    """Named components of one kind, in registration order."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def add(self, name: str, item: T, *, replace: bool = False) -> T:
        if name in self._items and not replace:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._items[name] = item
        return item

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator form of :meth:`add`."""
        return lambda item: self.add(name, item)

    def remove(self, name: str) -> None:
        self._items.pop(name, None)

    def get(self, name: str, where: str = "") -> T:
        """The component, or a one-line error naming the choices."""
        if name not in self._items:
            at = f"{where}: " if where else ""
            raise SublimError(f"{at}unknown {self.kind} {name!r}: choose one of {', '.join(self._items)}")
        return self._items[name]

    def names(self) -> list[str]:
        return list(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)


def import_components(package: str, path: Iterable[str]) -> None:
    """Import every module of a component package (each registers itself on import), so that a new
    component is one new file; the shipped ones are imported by name first, which fixes their order."""
    for info in pkgutil.iter_modules(list(path)):
        if not info.name.startswith("_"):
            importlib.import_module(f"{package}.{info.name}")


_PLUGINS_LOADED = {"done": False}


def load_plugins(group: str = "sublim.plugins") -> list[str]:
    """Import every module named by an entry point of ``group``; importing registers its components."""
    if _PLUGINS_LOADED["done"]:
        return []
    _PLUGINS_LOADED["done"] = True
    loaded = []
    for ep in entry_points(group=group):
        try:
            ep.load()
        except Exception as exc:  # a broken plugin is named, never a traceback
            raise SublimError(f"plugin {ep.name!r} ({ep.value}) failed to load: {exc}; fix or uninstall it") from None
        loaded.append(ep.name)
    return loaded
