"""Study specs: `A->B`, `A->B,C`, `A<->B`, the shell-safe `A:B` (no quoting needed), and multi-source `A+B->C`; and
the notations inside a dataset name, owned here alone: `A+B` (a union), `NAME@WxH` (a prepared copy) and, for a scored
target, `NAME~PROTOCOL` (a second view of it under another evaluation protocol).

A `+`-joined source (`gta5+synthia`) trains one model on the union of its parts; each part is then scored in-domain
(its own eval split), the targets cross-domain. `+` joins sources only: a target or a `<->` side is one dataset.
`gta5@1280x720` reads the resized copy of gta5 that `segbench data prepare gta5 --size 1280x720` wrote.
"""
from __future__ import annotations

import re
from dataclasses import dataclass


class SpecError(ValueError):
    """A spec that cannot be parsed; the message shows the grammar and the quoting trap."""


GRAMMAR = ("  'SOURCE->TARGET[,TARGET...]'   train on SOURCE, test on SOURCE and every TARGET\n"
           "  'A<->B'                        both directions\n"
           "  SOURCE:TARGET[,TARGET...]      same as ->, but needs no quotes in a shell\n"
           "  'A+B->TARGET[,TARGET...]'      one model trained on A and B together (train.source_weights)")

#: joins the parts of a multi-source name
JOIN = "+"
#: separates a dataset name from the size of its prepared copy (`gta5@1280x720`)
PREPARED = "@"
#: separates a scored dataset from the evaluation protocol of a second view of it (`cityscapes~native`: the same
#: images and labels scored under another geometry, `eval.geometries`)
VIEW = "~"

#: what a dataset name may be, for every way one is given (a YAML file's `name`, the registry, a spec): a plain token,
#: since it names a directory under the data root and under each cell (preds/NAME), so `.`, `..`, `/` and the
#: characters of the spec grammar (`+ @ , : >`) cannot be part of it
DATASET_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?")
DATASET_NAME_RULE = ("a dataset name starts with a letter or digit and continues with letters, digits, '_', '-' or "
                     "'.' (not ending in '-' or '.'), e.g. my_city-2")
_SIZE = re.compile(r"[A-Za-z0-9]+")


def dataset_name_problem(name) -> str | None:
    """Why `name` cannot be a dataset name (DATASET_NAME_RULE), or None when it can."""
    if isinstance(name, str) and DATASET_NAME.fullmatch(name):
        return None
    return f"{name!r} is not a valid dataset name: {DATASET_NAME_RULE}"


@dataclass(frozen=True)
class Transfer:
    source: str
    targets: tuple[str, ...]


def source_parts(source: str) -> tuple[str, ...]:
    """The datasets a source trains on: `gta5+synthia` -> ("gta5", "synthia"); a plain name -> (name,)."""
    return tuple(source.split(JOIN))


def is_multi_source(source: str) -> bool:
    return len(source_parts(source)) > 1


def prepared_parts(name: str) -> tuple[str, str]:
    """A dataset name as (the dataset it reads, the size of its prepared copy as written): `gta5@1280x720` ->
    ("gta5", "1280x720"); a plain name -> (name, "")."""
    dataset, _, size = name.partition(PREPARED)
    return dataset, size


def is_prepared(name: str) -> bool:
    """Whether `name` names a prepared copy (`NAME@WxH`) rather than a registered dataset."""
    return PREPARED in name


def prepared_copy(dataset: str, size: str) -> str:
    """The name of `dataset`'s prepared copy at `size` (WxH as written): ("gta5", "1280x720") -> `gta5@1280x720`."""
    return f"{dataset}{PREPARED}{size}"


def scoring_view(target: str) -> tuple[str, str | None]:
    """`cityscapes~native` -> ("cityscapes", "native"); a plain target -> (target, None)."""
    base, sep, protocol = target.partition(VIEW)
    return base, (protocol if sep else None)


def view_name(target: str, protocol: str) -> str:
    return f"{target}{VIEW}{protocol}"


def is_in_domain(source: str, target: str) -> bool:
    """Whether scoring `target` (or a view of it) measures the training domain: the source itself, or one of its
    parts."""
    target = scoring_view(target)[0]
    return target == source or target in source_parts(source)


def _names(text: str, spec: str) -> list[str]:
    names = [n.strip() for n in text.split(",")]
    for n in names:
        # an empty part of `a++b` is _source's to explain; `NAME@WxH` is a prepared copy of NAME
        for part in [p for p in source_parts(n) if p] or [n]:
            base, size = prepared_parts(part)
            problem = dataset_name_problem(base)
            if problem is None and is_prepared(part) and not _SIZE.fullmatch(size):
                problem = f"{part!r} names a prepared copy as NAME{PREPARED}WxH, e.g. gta5@1280x720"
            if problem:
                raise SpecError(f"bad dataset name in spec {spec!r}: {problem}; expected:\n{GRAMMAR}")
    return names


def _source(name: str, spec: str) -> str:
    parts = source_parts(name)
    if len(parts) > 1 and (any(not p for p in parts) or len(set(parts)) != len(parts)):
        raise SpecError(f"bad multi-source name {name!r} in spec {spec!r}: join distinct dataset names with a single "
                        f"'{JOIN}', e.g. gta5+synthia->cityscapes")
    return name


def _plain(names: list[str], spec: str, where: str) -> list[str]:
    joined = [n for n in names if JOIN in n]
    if joined:
        raise SpecError(f"{joined[0]!r} in spec {spec!r}: '{JOIN}' joins training sources only, and {where} is "
                        f"one dataset; write e.g. 'gta5+synthia->cityscapes,bdd100k'")
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
        a, b = (_plain(_names(side, spec), spec, "each side of '<->'") for side in (left, right))
        if len(a) != 1 or len(b) != 1:
            raise SpecError(f"'<->' takes exactly one dataset on each side, got {spec!r}; expected:\n{GRAMMAR}")
        return [Transfer(a[0], (b[0],)), Transfer(b[0], (a[0],))]
    for arrow in ("->", ":"):
        if arrow in s:
            left, _, right = s.partition(arrow)
            src = _names(left, spec)
            if len(src) != 1:
                raise SpecError(f"one source per spec, got {left!r} in {spec!r}; write one spec per source")
            return [Transfer(_source(src[0], spec), tuple(_plain(_names(right, spec), spec, "a target")))]
    raise SpecError(f"spec {spec!r} has no arrow; expected:\n{GRAMMAR}")


def parse_specs(specs: list[str]) -> list[Transfer]:
    """Several specs; transfers with the same source are merged (targets in order, no duplicates)."""
    merged: dict[str, list[str]] = {}
    for spec in specs:
        for t in parse_spec(spec):
            targets = merged.setdefault(t.source, [])
            targets += [x for x in t.targets if x not in targets and not is_in_domain(t.source, x)]
    return [Transfer(src, tuple(tg)) for src, tg in merged.items()]
