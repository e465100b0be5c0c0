"""Model-selection rules: which point of a training run a table reports, decided when the report is built.

One training run under `eval.every` (engine/train.py) scores every target each N iterations; its record's `curves`
hold those points ({target: [[iteration, miou], ...]}, the last at the final iteration). DomainBed made the rule an
explicit part of every reported number (Gulrajani & Lopez-Paz, "In Search of Lost Domain Generalization", ICLR 2021;
facebookresearch/DomainBed domainbed/model_selection.py: IIDAccuracySelectionMethod, OracleSelectionMethod); here:

- last: the weights at the end of training (record["results"]): what every table shows by default.
- source-val: the iteration whose in-domain score is best (the source's held-out split, `eval.split`; for a union of
  sources the mean over its parts; ties go to the earliest iteration), and every target's mIoU at that iteration.
  DomainBed's training-domain validation over the checkpoints of one run (its Query.argmax is Python's max: the first,
  i.e. earliest, step on ties).
- oracle: per target, the best mIoU over its own curve. It selects on the test set itself: an upper bound on what any
  rule could pick, never a result, and never averaged with the other rules' numbers (selection.md shows it beside
  them, labelled). It is NOT DomainBed's OracleSelectionMethod (test-domain validation), which keeps the last
  checkpoint (no early stopping) and uses a held-out part of the test domain only to choose hyperparameters, reporting
  the other part; this rule picks the iteration on the very numbers it reports, so it is at least the `last` number.

A selected record carries its rule in its protocol card (`checkpoint`), so rows under different rules never average.
"""
from __future__ import annotations

import math
from dataclasses import replace

from ..io import csv_text, markdown_table
from ..protocol_card import CHECKPOINT_RULE
from ..record import RecordError
from ..spec import source_parts
from .records import Score, ordered_pairs, ordered_rows, scores, scores_by_cell
from .stats import DEFAULT_STAT, Agg, csv_fields, stat_phrase

LAST, SOURCE_VAL, ORACLE = CHECKPOINT_RULE, "source-val", "oracle"
RULES = (LAST, SOURCE_VAL, ORACLE)
ALL = "all"  # `--select all`: the three side by side (selection.md)
RULE_WORDS = {
    LAST: "the weights at the end of training",
    SOURCE_VAL: "the iteration with the best in-domain (source validation) mIoU, earliest on ties; every target "
                "scored at that iteration",
    ORACLE: "per target, the best mIoU over its own curve: an UPPER BOUND that selects on the test set, not a result",
}


class SelectionError(RecordError):
    """A record a selection rule cannot be applied to (no curves); the message names the cell and the fix."""


def check_rule(rule: str, allow_all: bool = False) -> str:
    choices = RULES + ((ALL,) if allow_all else ())
    if rule not in choices:
        raise ValueError(f"unknown model-selection rule {rule!r}: one of {', '.join(choices)}")
    return rule


def _where(record: dict) -> str:
    return str(record.get("_dir") or record.get("cell_id") or "a record")


def _curves(record: dict, rule: str) -> dict[str, list]:
    curves = record.get("curves")
    if not curves:
        raise SelectionError(
            f"{_where(record)}: --select {rule} needs the mIoU curves that training records under eval.every, and "
            "this cell has none. Curves come from training, so the cell is trained again: remove its directory and "
            "rerun the study with --set eval.every=N (e.g. N = train.ckpt_every; eval.every is not part of the cell "
            "id, so a finished cell is otherwise skipped), or use --select last")
    missing = [t for t in record.get("results", {}) if t not in curves]
    if missing:
        raise SelectionError(
            f"{_where(record)}: target(s) {', '.join(missing)} have no curve for --select {rule} (scored after "
            "training: added to the study later, or rescored under other eval settings); retrain the cell with "
            "--set eval.every=N, or use --select last")
    return curves


def _best(points: list[tuple[int, float]]) -> tuple[int, float]:
    """(iteration, value) of the highest value, the earliest on ties; NaN values never win."""
    defined = [(int(it), float(v)) for it, v in points if not math.isnan(float(v))]
    if not defined:
        return (int(points[0][0]), math.nan) if points else (-1, math.nan)
    top = max(v for _, v in defined)
    return min(it for it, v in defined if v == top), top


def source_val_iteration(record: dict) -> tuple[int, float]:
    """(iteration, in-domain mIoU) that source-val picks: the mean over the source's parts, at the iterations every
    part was scored at; the earliest iteration on ties."""
    curves = _curves(record, SOURCE_VAL)
    parts = source_parts(record["source"])
    absent = [p for p in parts if p not in curves]
    if absent:
        raise SelectionError(f"{_where(record)}: no in-domain curve for {', '.join(absent)}; source-val needs the "
                             "source's held-out split scored during training (rerun with --set eval.every=N)")
    by_part = [{int(it): float(v) for it, v in curves[p]} for p in parts]
    shared = sorted(set.intersection(*(set(c) for c in by_part)))
    return _best([(it, sum(c[it] for c in by_part) / len(parts)) for it in shared])


def _selected_results(record: dict, rule: str) -> dict[str, dict]:
    curves = _curves(record, rule)
    if rule == ORACLE:
        return {t: dict(zip(("iteration", "miou"), _best(points))) for t, points in curves.items()}
    iteration, _ = source_val_iteration(record)
    out = {}
    for target, points in curves.items():
        at = {int(it): float(v) for it, v in points}
        if iteration not in at:
            raise SelectionError(f"{_where(record)}: {target} was not scored at iteration {iteration}, the one "
                                 f"source-val picked; every target needs the same eval.every points")
        out[target] = {"iteration": iteration, "miou": at[iteration]}
    return out


def select(records: list[dict], rule: str) -> list[dict]:
    """The records as `rule` reports them: `last` returns them as they are; the others replace each record's
    results by {target: {miou, iteration}} from its curves (no per-class IoU or pixel accuracy: curves keep mIoU
    only) and name the rule in its protocol card. Raises SelectionError for a record without curves."""
    if check_rule(rule) == LAST:
        return records
    out = []
    for record in records:
        chosen = dict(record, results=_selected_results(record, rule))
        if isinstance(record.get("protocol"), dict):
            chosen["protocol"] = {**record["protocol"], "checkpoint": rule}
        out.append(chosen)
    return out


def rule_scores(selected: list[dict], rule: str) -> list[Score]:
    """records.scores of records `select` returned for `rule`, each row labelled with the rule unless it is `last`,
    so a figure, a CSV or a LaTeX table of oracle numbers says so wherever it travels."""
    items = scores(selected)
    return items if rule == LAST else [replace(s, row=f"{s.row} ({rule})") for s in items]


def rule_note(rule: str) -> str:
    """The line a table shows above and below itself under a rule other than `last` ("" for last)."""
    if rule == LAST:
        return ""
    return f"**Model selection: {rule}** ({RULE_WORDS[rule]}).\n"


# --- selection.md: the three rules side by side ------------------------------------------------------------------

def comparison_tables(records: list[dict], stat: str = DEFAULT_STAT) -> tuple[str, str]:
    """(markdown, csv): per source, row and target, each rule's mean ± `stat` over seeds with n, and the gaps of last
    and source-val to oracle (per-seed differences, then aggregated as the tables aggregate seeds)."""
    for record in records:  # a cell without curves is named under the rule the user gave
        _curves(record, ALL)
    last = scores(records)
    by_rule = {rule: {(s.cell_id, s.target): s.miou for s in scores(select(records, rule))} for rule in RULES}
    cells = scores_by_cell(last)
    gaps = ((LAST, ORACLE), (SOURCE_VAL, ORACLE))
    md_parts, csv_rows, n_all = [], [], 0
    for source in sorted({s.source for s in last}):
        mine = [s for s in last if s.source == source]
        body = []
        for row in ordered_rows(mine):
            for _, target in ordered_pairs(mine):
                seeds = cells.get((row, source, target), {})
                if not seeds:
                    continue
                keys = [(s.cell_id, target) for s in seeds.values()]
                aggs = [Agg.of(by_rule[r][k] for k in keys) for r in RULES]
                aggs += [Agg.of(by_rule[a][k] - by_rule[b][k] for k in keys) for a, b in gaps]
                n = max(a.n for a in aggs)
                n_all = max(n_all, n)
                body.append([row, target, *(a.md(stat, n_expected=n) for a in aggs), str(n)])
                csv_rows.append([source, row, target, *(v for a in aggs for v in a.csv(stat))])
        md_parts.append(f"### trained on {source}\n\n" + markdown_table(
            ["backbone", "target", *RULES, f"{LAST} − {ORACLE}", f"{SOURCE_VAL} − {ORACLE}", "n"], body))
    if not md_parts:
        return "(no results yet)\n", ""
    spread = stat_phrase(stat, n_all) if n_all > 1 else "one seed"
    note = (f"\nmIoU (%), {spread}; one training run per seed serves all three rules. "
            + "; ".join(f"{rule}: {words}" for rule, words in RULE_WORDS.items())
            + ". A gap is the per-seed difference to oracle (<= 0): what the rule leaves on the table.\n")
    header = ["source", "backbone", "target"]
    header += [f"{rule} {k}" for rule in RULES for k in ("mIoU", *csv_fields(stat))]
    header += [f"{a}-{b} {k}" for a, b in gaps for k in ("diff", *csv_fields(stat))]
    return "\n".join(md_parts) + note, csv_text(header, csv_rows)
