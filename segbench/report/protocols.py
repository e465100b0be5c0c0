"""Protocol cards in the report: a record's `protocol` block (protocol_card.py), its short hash, what two cards
differ in, and the lines that show them: a footer under table.md and dg.md, and a section of report.md that prints
each distinct card once.

A number is only comparable with another measured under the same card. Records of one table cell (row, source,
target) are averaged over seeds only when their cards agree on everything that concerns that target
(`target_protocol_key`); otherwise records.scores splits the row and the footer names the fields that differ.
"""
from __future__ import annotations

import hashlib
import json
from collections import defaultdict

import yaml

from ..labels import CLASS_NAMES
from ..protocol_card import with_resolved_output_stride

HASH_CHARS = 8


def card_of(record: dict) -> dict | None:
    """The record's card; one written before cards stated the head's default output stride gets it here, so it
    matches the cards written since (protocol_card.with_resolved_output_stride)."""
    card = record.get("protocol")
    if not (isinstance(card, dict) and card):
        return None
    model = card.get("model")
    if isinstance(model, dict):
        resolved = with_resolved_output_stride(model, record.get("head"), record.get("backbone"))
        if resolved is not model:
            card = {**card, "model": resolved}
    return card


def card_hash(card: dict | None) -> str:
    """The card's short name: a hash of its JSON (keys sorted); "" for a record without a card."""
    if not card:
        return ""
    return hashlib.sha1(json.dumps(card, sort_keys=True, default=str).encode()).hexdigest()[:HASH_CHARS]


def target_protocol_key(card: dict | None, target: str) -> str:
    """What one target's number was measured under: the card without the other targets' entries ("" without a
    card), so a record scored on one more target still averages with the others on the targets they share."""
    if not card:
        return ""
    return card_hash({**{k: v for k, v in card.items() if k != "targets"},
                      "target": (card.get("targets") or {}).get(target)})


def flatten(value, prefix: str = "") -> dict[str, str]:
    """{"train.crop": "[768, 768]", ...}: every leaf of a card under its dotted key."""
    if isinstance(value, dict):
        out: dict[str, str] = {}
        for key, sub in value.items():
            out.update(flatten(sub, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: json.dumps(value, sort_keys=True, default=str)}


def differences(a: dict, b: dict) -> list[str]:
    """The dotted keys where two cards differ (a key one of them lacks counts), in order."""
    fa, fb = flatten(a), flatten(b)
    return sorted(k for k in fa.keys() | fb.keys() if fa.get(k) != fb.get(k))


def unscored_in(card: dict, other: dict) -> list[str]:
    """Targets `other` names a scoring protocol for and `card` does not: scores its records lack, not a protocol."""
    mine, theirs = card.get("targets") or {}, other.get("targets") or {}
    return [t for t in theirs if t not in mine] if isinstance(mine, dict) and isinstance(theirs, dict) else []


def difference_line(rows: str, a: tuple[str, dict], b: tuple[str, dict]) -> str:
    """The footer's line on two cards (hash, card) of one source: the fields they differ in. A target that one card
    scores and the other does not yet (a seed still running, a target added later) is a missing score, said so,
    not a protocol difference."""
    (hash_a, card_a), (hash_b, card_b) = a, b
    unscored = {hash_a: unscored_in(card_a, card_b), hash_b: unscored_in(card_b, card_a)}
    missing = "; ".join(f"{t} not scored yet by the records of card {h}" for h, ts in unscored.items() for t in ts)
    skipped = tuple(f"targets.{t}." for ts in unscored.values() for t in ts)
    diff = [k for k in differences(card_a, card_b) if not (k + ".").startswith(skipped)]
    if missing and not diff:
        return f"{rows} differ only in a missing score: {missing}; their protocols agree otherwise."
    return (f"{rows} differ in protocol: {', '.join(diff) or 'nothing recorded'}; seeds are averaged only where the "
            "cards agree on the target." + (f" Also {missing}." if missing else ""))


def _rows_by_card(items) -> dict[str, dict[str, list[str]]]:
    """source -> card hash -> rows (first-seen order)."""
    out: dict = defaultdict(dict)
    for s in items:
        rows = out[s.source].setdefault(s.card, [])
        if s.row not in rows:
            rows.append(s.row)
    return out


def footer(items, cards: dict[str, dict], printed_in: str = "report.md") -> str:
    """Lines under a table: which card each source's numbers were measured under (`printed_in` prints every card),
    which rows differ in protocol and in what, and how many records carry no card. Empty when none carries one."""
    by_source = _rows_by_card(items)
    if not any(h for hashes in by_source.values() for h in hashes):
        return ""
    named = [f"{h} (train {source})" for source, hashes in by_source.items() for h in hashes if h]
    lines = [f"Protocol card{'s' if len(named) > 1 else ''}: {', '.join(named)}; {printed_in} prints each card in full."]
    for source, hashes in by_source.items():
        carded = [h for h in hashes if h]
        for other in carded[1:]:
            lines.append(difference_line(f"Rows {', '.join(hashes[carded[0]])} and {', '.join(hashes[other])} "
                                         f"(train {source})", (carded[0], cards.get(carded[0], {})),
                                         (other, cards.get(other, {}))))
        if "" in hashes and carded:
            lines.append(f"Rows {', '.join(hashes[''])} (train {source}) include records without a protocol card "
                         "(scored before cards were recorded).")
    lines += caveats(by_source, cards)
    return "\n".join(lines) + "\n"


def caveats(by_source: dict[str, dict[str, list[str]]], cards: dict[str, dict]) -> list[str]:
    """What a card records that changes what a number means, said under the table: a target scored without files
    that lack their image or label (`eval.missing_pairs: skip`), an in-domain score taken on training images
    (`train.allow_eval_split`)."""
    lines = []
    for source, hashes in by_source.items():
        for h, rows in hashes.items():
            card = cards.get(h) or {}
            for target, entry in (card.get("targets") or {}).items():
                if isinstance(entry, dict) and entry.get("missing_pairs"):
                    lines.append(f"Rows {', '.join(rows)} (train {source}): test {target} was scored without "
                                 f"{entry['missing_pairs']} file(s) that lack their image or label "
                                 f"(eval.missing_pairs=skip; `segbench data check {target}` lists them).")
            parts = card.get("in_domain_on_training_images")
            if parts:
                lines.append(f"Rows {', '.join(rows)} (train {source}): test {', '.join(parts)} is scored on images "
                             f"the model was trained on (train.split {card.get('split')!r} shares them with the eval "
                             "split; train.allow_eval_split).")
    return lines


#: the order a card is printed in (a record stores its keys sorted): what was trained on, how, how it was scored
PRINT_ORDER = ("sources", "split", "in_domain_on_training_images", "resolution", "source_weights", "training_classes",
               "global_batch", "iterations", "train", "model", "eval", "targets", "checkpoint")


def readable_card(card: dict) -> dict:
    """The card as printed: in PRINT_ORDER (unknown keys last), subsets of classes by name."""
    out = json.loads(json.dumps(card, default=str))
    out = {**{k: out[k] for k in PRINT_ORDER if k in out}, **{k: v for k, v in out.items() if k not in PRINT_ORDER}}
    for entry in (out.get("targets") or {}).values():
        if isinstance(entry, dict) and isinstance(entry.get("classes"), list):
            entry["classes"] = [CLASS_NAMES[c] if 0 <= c < len(CLASS_NAMES) else c for c in entry["classes"]]
    if isinstance(out.get("training_classes"), list):
        out["training_classes"] = [CLASS_NAMES[c] for c in out["training_classes"]]
    return out


def cards_section(items, cards: dict[str, dict]) -> str:
    """Every distinct card once, with the rows measured under it (report.md)."""
    by_card: dict[str, list[str]] = defaultdict(list)
    for source, hashes in _rows_by_card(items).items():
        for h, rows in hashes.items():
            if h:
                by_card[h].append(f"train {source}: {', '.join(rows)}")
    if not by_card:
        return ""
    parts = []
    for h, where in by_card.items():
        text = yaml.safe_dump(readable_card(cards[h]), sort_keys=False, default_flow_style=None, width=110)
        parts.append(f"### card {h}\n\n{'; '.join(where)}\n\n```yaml\n{text}```\n")
    return "\n".join(parts)
