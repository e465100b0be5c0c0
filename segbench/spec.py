"""Study specs: `A->B`, `A->B,C`, `A<->B`, and the shell-safe `A:B` (no quoting needed)."""
from __future__ import annotations

import re
from dataclasses import dataclass


class SpecError(ValueError):
    """A spec that cannot be parsed; the message shows the grammar and the quoting trap."""


GRAMMAR = ("  'SOURCE->TARGET[,TARGET...]'   train on SOURCE, test on SOURCE and every TARGET\n"
           "  'A<->B'                        both directions\n"
           "  SOURCE:TARGET[,TARGET...]      same as ->, but needs no quotes in a shell")

_NAME = re.compile(r"^[A-Za-z0-9_.@+-]*[A-Za-z0-9_.@+]$")


@dataclass(frozen=True)
class Transfer:
    source: str
    targets: tuple[str, ...]


def _names(text: str, spec: str) -> list[str]:
    names = [n.strip() for n in text.split(",")]
    for n in names:
        if not n or not _NAME.match(n):
            raise SpecError(f"bad dataset name {n!r} in spec {spec!r}; expected:\n{GRAMMAR}")
    return names


def parse_spec(spec: str) -> list[Transfer]:
    s = spec.strip()
    if s.endswith("-") and "->" not in s and "<->" not in s:
        raise SpecError(
            f"spec {spec!r} ends in '-': the shell most likely read '>' as a redirect, so the target went into a file "
            f"(check for a stray file named after your target, e.g. 'cityscapes', and delete it).\n"
            f"Quote the spec: python -m segbench.run '{s}>TARGET', or use the shell-safe form {s[:-1]}:TARGET"
        )
    if "<->" in s:
        left, _, right = s.partition("<->")
        a, b = _names(left, spec), _names(right, spec)
        if len(a) != 1 or len(b) != 1:
            raise SpecError(f"'<->' takes exactly one dataset on each side, got {spec!r}; expected:\n{GRAMMAR}")
        return [Transfer(a[0], (b[0],)), Transfer(b[0], (a[0],))]
    for arrow in ("->", ":"):
        if arrow in s:
            left, _, right = s.partition(arrow)
            src = _names(left, spec)
            if len(src) != 1:
                raise SpecError(f"one source per spec, got {left!r} in {spec!r}; write one spec per source")
            return [Transfer(src[0], tuple(_names(right, spec)))]
    raise SpecError(f"spec {spec!r} has no arrow; expected:\n{GRAMMAR}")


def parse_specs(specs: list[str]) -> list[Transfer]:
    """Several specs; transfers with the same source are merged (targets in order, no duplicates)."""
    merged: dict[str, list[str]] = {}
    for spec in specs:
        for t in parse_spec(spec):
            targets = merged.setdefault(t.source, [])
            targets += [x for x in t.targets if x not in targets and x != t.source]
    return [Transfer(src, tuple(tg)) for src, tg in merged.items()]
