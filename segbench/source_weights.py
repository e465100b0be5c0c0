"""`train.source_weights` in one place: how often each part of a multi-source spec (`gta5+synthia->...`) is drawn.

Its field in config.py declares the default (null: each part in proportion to its size) and the form of a value (a
mapping {source: weight > 0}, or a list of weights > 0 in the spec's source order). Here: which parts a study's value
must name (`source_weight_problems`, before any work), what one cell keeps of it, which is part of its id
(`cell_source_weights`), and one weight per part for the training stream (`weights_per_part`; data/sampler.py
MultiSourceStreamSampler says how a stream follows them). Weights are relative. Nothing here imports torch: the plan
and the study's validation use it.
"""
from __future__ import annotations

from typing import Any, Sequence

from .spec import is_multi_source, source_parts


def cell_source_weights(setting: Any, source: str) -> Any:
    """What one cell of `source` keeps of the setting: a single source None (an unrelated setting never changes its
    id); a union {part: weight} for its parts (a list is in spec order; a mapping may name the parts of several
    unions), so equal weights written either way are one id. A value that does not fit the union stays as given, for
    the study's validation to name."""
    if setting is None or not is_multi_source(source):
        return None
    parts = source_parts(source)
    if isinstance(setting, dict):
        mine = {p: setting[p] for p in parts if p in setting}
        return mine if len(mine) == len(parts) else setting
    return dict(zip(parts, setting)) if len(setting) == len(parts) else setting


def weights_per_part(names: Sequence[str], sizes: Sequence[int], setting: Any) -> list[float]:
    """One weight per part, in the parts' order (not normalised), of a setting the study's validation passed: None ->
    the sizes (the union drawn uniformly); a mapping -> each part's; a list -> as given."""
    if setting is None:
        return [float(n) for n in sizes]
    return [float(w) for w in ([setting[n] for n in names] if isinstance(setting, dict) else setting)]


def _fit_problem(setting: Any, parts: Sequence[str]) -> str | None:
    """Why a mapping or list does not give each part of one union its weight, or None."""
    if isinstance(setting, dict):
        missing = [n for n in parts if n not in setting]
        extra = [n for n in setting if n not in parts]
        if not (missing or extra):
            return None
        return (f"train.source_weights={setting!r}: "
                + "; ".join(([f"no weight for {', '.join(missing)}"] if missing else [])
                            + ([f"{', '.join(extra)} not among the sources"] if extra else []))
                + f"; expected a weight for each of {', '.join(parts)}")
    if len(setting) != len(parts):
        return (f"train.source_weights={list(setting)!r}: {len(setting)} weight(s) for {len(parts)} sources "
                f"({', '.join(parts)}); expected one per source, in that order")
    return None


def source_weight_problems(setting: Any, sources: Sequence[str]) -> list[str]:
    """What is wrong with `train.source_weights` for a study's sources, checked before any work (validation.py): a
    weight for a source no spec trains on, a union without a weight for each part, a list of the wrong length. The
    form of the value and each weight are its rule's (config.py)."""
    if not isinstance(setting, (dict, list, tuple)):
        return []  # null, or a value its rule already refuses
    unions = [s for s in dict.fromkeys(sources) if is_multi_source(s)]
    if not unions:
        return [f"train.source_weights={setting!r}: weighs the sources of a multi-source spec (A+B->TARGET), and "
                "this study has none; set it to null"]
    problems = []
    if isinstance(setting, dict):
        named = {p for u in unions for p in source_parts(u)}
        extra = [k for k in setting if k not in named]
        if extra:
            problems.append(f"train.source_weights: {', '.join(map(repr, extra))} is not a source of "
                            f"{', '.join(unions)}")
    for union in unions:
        parts = source_parts(union)
        mine = {p: setting[p] for p in parts if p in setting} if isinstance(setting, dict) else setting
        problem = _fit_problem(mine, parts)
        if problem:
            problems.append(f"{problem} (spec source {union})")
    return problems
