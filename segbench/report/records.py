"""Records (read by `record.load_records`) -> flat scores, one per (cell, target). Nothing here trains or loads a model.

Rows of every table are named by backbone (plus ` + method` when a study has domain-generalization methods, with the
options that differ between records of one method; plus head when a study has several heads, plus the config keys that
differ between records when a directory mixes runs of different settings, plus `[protocol HASH]` when records of one
row were scored on a target under different protocol cards), so no two configs or protocols are ever averaged
together as if they were seeds.
"""
from __future__ import annotations

import json
import math
import sys
from collections import defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..cells import DONE
from ..config import ERM, identity_view
from ..record import record_method
from ..spec import is_in_domain
from .protocols import card_hash, card_of, target_protocol_key


@dataclass(frozen=True)
class Score:
    row: str
    source: str
    target: str
    seed: int
    miou: float
    pixel_acc: float
    per_class: dict = field(hash=False, compare=False)
    cell_id: str = ""
    head: str = ""
    backbone: str = ""
    method: str = ""  # the DG method, when the study has any ("" for a study of plain training only)
    position: int = 0  # where the study named this target (UNNAMED where the record names no such target)
    card: str = ""  # hash of the record's protocol card ("" for a record without one)


#: Score.position of a target its record does not name (a record written before records listed their targets names
#: none): after every named one, so such a record cannot pull its targets ahead of the study's order
UNNAMED = sys.maxsize


def count_done(records: list[dict]) -> int:
    return sum((Path(r["_dir"]) / DONE).is_file() for r in records if "_dir" in r)


def _flat(prefix: str, value, out: dict) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flat(f"{prefix}.{k}" if prefix else k, v, out)
    else:
        out[prefix] = json.dumps(value)


def training_config(rec: dict) -> dict:
    """The record's settings that decide its weights, flattened (`train.iters` -> "3")."""
    cfg = rec.get("config", {})
    out: dict = {}
    _flat("model", identity_view("model", cfg.get("model", {})), out)
    _flat("train", identity_view("train", cfg.get("train", {})), out)
    return out


def method_of(rec: dict) -> str:
    """The record's DG method (records from before methods existed were plain training)."""
    return record_method(rec)["name"]


def _options_and_revision(rec: dict) -> dict:
    """The record's method options with its revision (1 when unrecorded), which tells the method's code apart."""
    method = record_method(rec)
    return {**method["options"], "revision": method["revision"]}


def shown_method(records: list[dict]) -> list[str]:
    """Per record, the method its row names: every record's when any is not plain training, else none. Options
    that differ between records of one method follow its name (`iw(weight=0)`), and so does the revision of a
    method whose records come from before and after a fix (`iw(revision=2)`), so two settings or two versions of
    a method are two rows, never one row's seeds."""
    methods = [method_of(r) for r in records]
    if all(m == ERM for m in methods):
        return [""] * len(records)
    options = [_options_and_revision(r) for r in records]
    varying: dict[str, list[str]] = {}
    for name in set(methods):
        mine = [o for m, o in zip(methods, options) if m == name]
        keys = sorted({k for o in mine for k in o})
        varying[name] = [k for k in keys if len({json.dumps(o.get(k), sort_keys=True) for o in mine}) > 1]
    return [m + (f"({', '.join(f'{k}={json.dumps(o.get(k))}' for k in varying[m])})" if varying[m] else "")
            for m, o in zip(methods, options)]


def row_labels(records: list[dict]) -> list[str]:
    """One label per record: backbone, `+ method` when the study has methods, `+ head` if heads vary,
    `[key=value ...]` for config keys that vary."""
    heads = {r["head"] for r in records}
    configs = [training_config(r) for r in records]
    keys = sorted({k for c in configs for k in c})
    varying = [k for k in keys if len({c.get(k) for c in configs}) > 1]
    labels = []
    for rec, cfg, method in zip(records, configs, shown_method(records)):
        label = rec["backbone"] + (f" + {method}" if method else "")
        if len(heads) > 1:
            label += f" + {rec['head']}"
        if varying:
            label += " [" + ", ".join(f"{k.split('.', 1)[1]}={json.loads(cfg[k]) if k in cfg else '-'}"
                                      for k in varying) + "]"
        labels.append(label)
    return labels


def _number(x) -> float:
    return math.nan if x is None else float(x)


def target_position(rec: dict, target: str) -> int:
    """Score.position: where the record's study named `target` (UNNAMED where it does not)."""
    named = list(rec.get("targets") or [])
    return named.index(target) if target in named else UNNAMED


def scores(records: list[dict]) -> list[Score]:
    """One Score per evaluated target of every record (NaN where the metric is missing)."""
    out, keys = [], []
    for rec, row, method in zip(records, row_labels(records), shown_method(records)):
        card = card_of(rec)
        for target, m in rec.get("results", {}).items():
            per_class = {name: _number(v) for name, v in (m.get("per_class_iou") or {}).items()}
            out.append(Score(row=row, source=rec["source"], target=target, seed=int(rec["seed"]),
                             miou=_number(m.get("miou")), pixel_acc=_number(m.get("pixel_acc")), per_class=per_class,
                             cell_id=rec.get("cell_id", ""), head=rec.get("head", ""), backbone=rec["backbone"],
                             method=method,
                             position=target_position(rec, target), card=card_hash(card)))
            keys.append(target_protocol_key(card, target))
    return split_by_protocol(out, keys)


def split_by_protocol(items: list[Score], keys: list[str]) -> list[Score]:
    """Scores of one table cell (row, source, target) measured under different protocols (`keys`, per target; ""
    for a record without a card, which joins any) get `[protocol HASH]` on their row, so they are never averaged."""
    seen: dict[tuple, set] = defaultdict(set)
    for s, key in zip(items, keys):
        if key:
            seen[(s.row, s.source, s.target)].add(key)
    return [replace(s, row=f"{s.row} [protocol {s.card or 'none'}]") if len(seen[(s.row, s.source, s.target)]) > 1
            else s for s in items]


def ordered_rows(items: list[Score]) -> list[str]:
    """Rows in first-seen order (records are sorted by directory, so by source, backbone, head, seed), except that a
    backbone's plain-training row (`+ erm`, the baseline of its methods) comes before its method rows."""
    rows = list(dict.fromkeys(s.row for s in items))
    backbone = {s.row: s.backbone for s in items}
    for row in [r for r in rows if any(s.row == r and s.method == ERM for s in items)]:
        rows.remove(row)
        first = next((i for i, r in enumerate(rows) if backbone[r] == backbone[row]), len(rows))
        rows.insert(min(first, len(rows)), row)
    return rows


def ordered_pairs(items: list[Score]) -> list[tuple[str, str]]:
    """(source, target) columns: by source, the in-domain column first, then targets in the order the study named
    them (`sim->photo,fog,night`: photo, fog, night); targets no record names come last, by name. A multi-source
    `a+b` has one in-domain column per part."""
    position: dict[tuple[str, str], int] = {}
    for s in items:
        position[(s.source, s.target)] = min(position.get((s.source, s.target), s.position), s.position)
    return sorted(position, key=lambda c: (c[0], not is_in_domain(*c), position[c], c[1]))


def scores_by_cell(items: list[Score]) -> dict[tuple[str, str, str], dict[int, Score]]:
    """(row, source, target) -> seed -> Score: what every table and figure aggregates over."""
    out: dict = defaultdict(dict)
    for s in items:
        out[(s.row, s.source, s.target)][s.seed] = s
    return out
