"""What the report's CSV files must hold, recomputed from raw record dicts with plain Python (statistics module),
without segbench.report: the tests compare these with what `build_report` wrote.

Only for studies with one row per backbone (one head, one config, one record per backbone/source/seed): the oracle
refuses anything else rather than guess how rows are labelled.
"""
from __future__ import annotations

import csv
import json
import math
import statistics
from pathlib import Path

import pytest

MEAN_UNSEEN = "mean (unseen)"


def raw_records(study: Path) -> list[dict]:
    recs = [json.loads(p.read_text()) for p in sorted(Path(study).glob("cells/*/record.json"))]
    keys = [(r["source"], r["backbone"], r["seed"]) for r in recs]
    assert len(set(keys)) == len(keys) and len({r["head"] for r in recs}) <= 1, "oracle: one record per row and seed"
    return recs


def mean_std_n(values) -> tuple:
    """Mean, sample std (None for one value: it has none) and count, undefined values (None/NaN) left out."""
    vals = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    if not vals:
        return (None, None, 0)
    return (statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else None, len(vals))


def _miou(recs, source, backbone, target) -> dict:
    """seed -> mIoU of `backbone` trained on `source`, tested on `target`."""
    return {r["seed"]: r["results"][target]["miou"] for r in recs
            if (r["source"], r["backbone"]) == (source, backbone) and target in r["results"]}


def expected_dg(recs: list[dict]) -> dict:
    """(source, backbone, column) -> (mean, std, n); the unseen mean is averaged per seed over every unseen target
    first, over the seeds that scored them all, then aggregated over those seeds."""
    out = {}
    for source in {r["source"] for r in recs}:
        mine = [r for r in recs if r["source"] == source]
        targets = {t for r in mine for t in r["results"]}
        unseen = sorted(targets - {source})
        for backbone in {r["backbone"] for r in mine}:
            for t in targets:
                out[(source, backbone, t)] = mean_std_n(_miou(mine, source, backbone, t).values())
            if len(unseen) > 1:
                by_target = [_miou(mine, source, backbone, t) for t in unseen]
                seeds = set.intersection(*(set(d) for d in by_target))
                out[(source, backbone, MEAN_UNSEEN)] = mean_std_n(
                    statistics.fmean(d[s] for d in by_target) for s in seeds)
    return out


def expected_per_class(recs: list[dict]) -> dict:
    """(source, target, backbone, class) -> (mean, std, n) for every class defined somewhere in that train/test
    pair, plus the pair's mIoU under class "mIoU"."""
    out = {}
    for source, target in {(r["source"], t) for r in recs for t in r["results"]}:
        mine = [r for r in recs if r["source"] == source and target in r["results"]]
        ious = [r["results"][target].get("per_class_iou") or {} for r in mine]
        classes = {c for d in ious for c, v in d.items() if v is not None}
        for backbone in {r["backbone"] for r in mine}:
            results = [r["results"][target] for r in mine if r["backbone"] == backbone]
            for c in classes:
                out[(source, target, backbone, c)] = mean_std_n((m.get("per_class_iou") or {}).get(c)
                                                                for m in results)
            out[(source, target, backbone, "mIoU")] = mean_std_n(m["miou"] for m in results)
    return out


def expected_per_seed(recs: list[dict]) -> dict:
    """(cell_id, target) -> the fields per_seed.csv lists for that measurement."""
    return {(r["cell_id"], t): {"backbone": r["backbone"], "head": r["head"], "source": r["source"],
                                "seed": r["seed"], "miou": m["miou"], "pixel_acc": m["pixel_acc"]}
            for r in recs for t, m in r["results"].items()}


def read_stats(path: Path, key_fields: list[str], mean_field: str) -> dict:
    """A report CSV -> {key: (mean, std, n)}, empty cells as None; a key written twice is an error."""
    out = {}
    for row in csv.DictReader(Path(path).open()):
        key = tuple(row[k] for k in key_fields)
        assert key not in out, f"{path.name}: {key} written twice"
        out[key] = (float(row[mean_field]) if row[mean_field] else None,
                    float(row["std"]) if row["std"] else None, int(row["n"]))
    return out


def assert_stats_equal(produced: dict, expected: dict, tol: float = 0.006) -> None:
    """Same keys, same n, mean and std equal up to the CSV's 2-decimal rounding."""
    assert sorted(produced) == sorted(expected)
    for key, (mean, std, n) in expected.items():
        got = produced[key]
        assert got[2] == n, (key, got, expected[key])
        if n == 0:
            assert got[:2] == (None, None), key
        else:
            assert got[0] == pytest.approx(mean, abs=tol), (key, got, expected[key])
            assert got[1] == (None if std is None else pytest.approx(std, abs=tol)), (key, got, expected[key])
