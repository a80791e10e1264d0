"""A tiny plug-in registry, one per family (extractors, indexes, hashers...).

Modelled on timm's ``register_model`` / ``create_model``: a component registers a
factory under a name, and callers create it by name with keyword arguments.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from cbir.errors import UnknownComponent

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to factories that build a ``T``."""

    def __init__(self, family: str):
        self.family = family
        self._factories: dict[str, Callable[..., T]] = {}

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator: ``@REGISTRY.register("exact")`` on a class or factory function."""

        def deco(factory: Callable[..., T]) -> Callable[..., T]:
            if name in self._factories:
                raise ValueError(f"{self.family} {name!r} is registered twice")
            self._factories[name] = factory
            return factory

        return deco

    def create(self, name: str, **kwargs) -> T:
        """Build the component called ``name``; unknown names list the known ones."""
        try:
            factory = self._factories[name]
        except KeyError:
            known = ", ".join(sorted(self._factories)) or "(none)"
            raise UnknownComponent(f"unknown {self.family} {name!r}; choose one of: {known}") from None
        return factory(**kwargs)

    def get(self, name: str) -> Callable[..., T]:
        if name not in self._factories:
            self.create(name)  # raises UnknownComponent with the list of names
        return self._factories[name]

    def names(self) -> list[str]:
        return sorted(self._factories)

    def __contains__(self, name: str) -> bool:
        return name in self._factories
