"""One small name -> factory registry, shared by datasets, backbones, heads and launchers.

Names are the single source of truth: listings, CLI choices and error messages all read them from here.
"""
from __future__ import annotations

import fnmatch
from contextlib import contextmanager
from typing import Callable, Iterator, TypeVar

T = TypeVar("T")


class Registry:
    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Callable] = {}

    def register(self, name: str | None = None, *, override: bool = False) -> Callable[[T], T]:
        """Decorator: `@REG.register("name")` (or bare name taken from `__name__`)."""

        def wrap(obj: T) -> T:
            key = name or obj.__name__  # type: ignore[attr-defined]
            if key in self._entries and not override and self._entries[key] is not obj:
                raise KeyError(f"{self.kind} {key!r} is already registered; pass override=True to replace it")
            self._entries[key] = obj
            return obj

        return wrap

    def add(self, name: str, obj: Callable, *, override: bool = False) -> None:
        self.register(name, override=override)(obj)

    def get(self, name: str) -> Callable:
        try:
            return self._entries[name]
        except KeyError:
            valid = ", ".join(self.names()) or "(none registered)"
            raise KeyError(f"unknown {self.kind} {name!r}; valid names: {valid}") from None

    def names(self, pattern: str = "*") -> list[str]:
        return sorted(n for n in self._entries if fnmatch.fnmatchcase(n, pattern))

    def expand(self, patterns: list[str]) -> list[str]:
        """Names and globs (`resnet50*`) -> registered names, in the order given, no duplicates; an unknown name or a
        glob that matches nothing fails with the valid names."""
        out: list[str] = []
        for pattern in patterns:
            if any(ch in pattern for ch in "*?["):
                matches = self.names(pattern)
                if not matches:
                    raise KeyError(f"no {self.kind} matches {pattern!r}; valid names: {', '.join(self.names())}")
            else:
                self.get(pattern)  # raises with the valid names
                matches = [pattern]
            out += [m for m in matches if m not in out]
        return out

    @contextmanager
    def scoped(self) -> Iterator["Registry"]:
        """Registrations made inside the block are undone when it ends (tests; plug-ins tried once)."""
        saved = dict(self._entries)
        try:
            yield self
        finally:
            self._entries.clear()
            self._entries.update(saved)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"
