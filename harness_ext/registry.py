"""A tiny name -> class registry, shared by quantizers and unlearning methods.

Each plugin module registers itself with the registry's decorator where it is defined; the
package imports every module in its folder (:func:`import_submodules`), so adding a plugin is one
new file and no central list.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Callable, Generic, TypeVar

from .errors import MuseQuantError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, *names: str) -> Callable[[T], T]:
        """Class decorator: ``@REGISTRY.register("name", "alias")``."""

        def decorator(obj: T) -> T:
            for name in names:
                if name in self._items and self._items[name] is not obj:
                    raise RuntimeError(f"{self.kind} {name!r} is registered twice "
                                       f"({self._items[name]} and {obj})")
                self._items[name] = obj
            return obj

        return decorator

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise MuseQuantError(
                f"unknown {self.kind} {name!r}",
                f"use one of: {', '.join(sorted(self._items))}",
            ) from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def items(self):
        return sorted(self._items.items())

    def __contains__(self, name: str) -> bool:
        return name in self._items


_imported_packages: set[str] = set()


def import_submodules(package_name: str, package_path) -> None:
    """Import every module of a package (once) so their ``@register`` decorators run."""
    if package_name in _imported_packages:
        return
    _imported_packages.add(package_name)
    for info in pkgutil.iter_modules(package_path):
        if not info.name.startswith("_"):
            importlib.import_module(f"{package_name}.{info.name}")
