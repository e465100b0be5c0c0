"""One small name -> factory registry, shared by datasets, backbones, heads and launchers.

Names are the single source of truth: listings, CLI choices and error messages all read them from here.
"""
from __future__ import annotations

import fnmatch
import importlib.metadata
import types
import warnings
from contextlib import contextmanager
from typing import Callable, Iterator, TypeVar

T = TypeVar("T")

_LOADED_ENTRY_POINTS: set[str] = set()  # "group:name=value" of every entry point imported so far


class Registry:
    def __init__(self, kind: str, hint: str = "", name_problem: Callable[[str], str | None] | None = None):
        self.kind = kind
        self.hint = hint  # appended to an unknown name's message: where names from outside the package come from
        #: why a name cannot be registered (None: it can); datasets name directories, so they take plain names only
        self.name_problem = name_problem
        self._entries: dict[str, Callable] = {}

    def listing(self) -> str:
        """The registered names, then the hint: what an unknown name's message lists."""
        return ", ".join(self.names()) + (f"; {self.hint}" if self.hint else "")

    def register(self, name: str | None = None, *, override: bool = False) -> Callable[[T], T]:
        """Decorator: `@REG.register("name")` (or bare name taken from `__name__`)."""

        def wrap(obj: T) -> T:
            key = name or obj.__name__  # type: ignore[attr-defined]
            problem = self.name_problem(key) if self.name_problem else None
            if problem:
                raise ValueError(f"cannot register {self.kind} {key!r}: {problem}")
            if key in self._entries and not override and self._entries[key] is not obj:
                taken = self._entries[key]
                by = f"{getattr(taken, '__module__', '?')}.{getattr(taken, '__qualname__', type(taken).__name__)}"
                raise KeyError(f"{self.kind} {key!r} is already registered (by {by}); register it under another name, "
                               "or pass override=True to replace it")
            self._entries[key] = obj
            return obj

        return wrap

    def add(self, name: str, obj: Callable, *, override: bool = False) -> None:
        self.register(name, override=override)(obj)

    def get(self, name: str) -> Callable:
        try:
            return self._entries[name]
        except KeyError:
            valid = self.listing() if self._entries else "(none registered)"
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
                    raise KeyError(f"no {self.kind} matches {pattern!r}; valid names: {self.listing()}")
            else:
                self.get(pattern)  # raises with the valid names
                matches = [pattern]
            out += [m for m in matches if m not in out]
        return out

    def load_entry_points(self, group: str, base: type, warning: type[Warning] = UserWarning) -> list[str]:
        """Import every entry point of `group` once: a subclass of `base` (registered under the entry point's name) or
        a module that registers its entries on import. A broken plug-in warns instead of failing: its import error
        must not take segbench down. Returns the names loaded by this call."""
        loaded = []
        for ep in importlib.metadata.entry_points(group=group):
            key = f"{group}:{ep.name}={ep.value}"
            if key in _LOADED_ENTRY_POINTS:
                continue
            _LOADED_ENTRY_POINTS.add(key)
            where = f"{self.kind} plug-in {ep.name!r} ({ep.value}" + (f", from {ep.dist.name}" if ep.dist else "") + ")"
            try:
                obj = ep.load()
            except Exception as e:  # noqa: BLE001
                warnings.warn(f"{where} failed to load: {type(e).__name__}: {e}; it is unavailable", warning)
                continue
            if isinstance(obj, type) and issubclass(obj, base):
                problem = self.name_problem(ep.name) if self.name_problem else None
                if problem:
                    warnings.warn(f"{where}: {problem}; skipped (rename the entry point)", warning)
                    continue
                if ep.name in self and self.get(ep.name) is not obj:
                    warnings.warn(f"{where}: the name is already taken by {self.get(ep.name)!r}; skipped", warning)
                    continue
                self.add(ep.name, obj)
            elif not isinstance(obj, types.ModuleType):
                warnings.warn(f"{where} is a {type(obj).__name__}; expected a {base.__name__} subclass or a module",
                              warning)
                continue
            loaded.append(ep.name)
        return loaded

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
