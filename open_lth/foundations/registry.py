"""A registry is a name -> class table that an extension joins with a decorator where
it is defined (timm style). Unknown names fail with the list of what exists."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from open_lth.foundations.errors import UserError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str, plural: str | None = None) -> None:
        self.kind = kind
        self.plural = plural or f"{kind}s"
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(entry: T) -> T:
            if name in self._entries and self._entries[name] is not entry:
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            self._entries[name] = entry
            return entry

        return add

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def unknown(self, name: str) -> UserError:
        known = ", ".join(self.names()) or "(none registered)"
        return UserError(f"unknown {self.kind} '{name}'; known {self.plural}: {known}")

    def get(self, name: str) -> T:
        if name not in self._entries:
            raise self.unknown(name)
        return self._entries[name]


class FamilyRegistry(Registry[T]):
    """For names with parameters (`cifar_resnet_56_32`): each registered family says
    whether it accepts a name through its `is_valid_model_name` static method."""

    def __init__(self, kind: str, examples: Callable[[T], list[str]]) -> None:
        super().__init__(kind)
        self._examples = examples

    def names(self) -> list[str]:
        return [example for entry in self._entries.values() for example in self._examples(entry)]

    def __contains__(self, name: object) -> bool:
        return any(e.is_valid_model_name(name) for e in self._entries.values())

    def get(self, name: str) -> T:
        for entry in self._entries.values():
            if entry.is_valid_model_name(name):
                return entry
        raise self.unknown(name)
