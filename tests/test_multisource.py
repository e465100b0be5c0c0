"""Multi-source training (`gta5+synthia->...`): the spec, the cells, the union dataset, the weighted stream, and the
whole study on the miniature trees of every dataset."""
import json
import math
import statistics
import warnings
from collections import Counter
from fractions import Fraction

import numpy as np
import pytest
import torch

import label_tables as lt
import minitrees as mt
from segbench import run
from segbench.cells import plan
from segbench.config import ConfigError, load_config, train_settings
from segbench.data import build_dataset
from segbench.data.adapters import gta5, synthia
from segbench.data.adapters.splitlists import SPLIT_DIR, read_split_list
from segbench.data.base import DatasetWarning
from segbench.data.multisource import MultiSourceDataset, apply_unknown_label_policy_per_source
from segbench.data.sampler import MIN_BLOCK, MultiSourceStreamSampler, SeededStreamSampler, block_quota
from segbench.engine.train import make_loader
from segbench.source_weights import source_weight_problems, weights_per_part
from segbench.spec import SpecError, Transfer, parse_spec, parse_specs
from segbench.validation import validate_study

SPEC = "gta5+synthia->cityscapes,bdd100k,mapillary"


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SEGBENCH_CACHE", str(tmp_path / "cache"))


def write_trees(root, monkeypatch) -> dict:
    """The miniature tree of every dataset the spec names, under `root`; returns image path -> expected trainIds of
    the two sources. GTA5 holds frames 1-24: RobustNet's train split has 1-10, 16, 17 of them, val 22-24. SYNTHIA
    gets split lists of its own in the dataset root (segbench looks there when its splits folder has none)."""
    truth = {**mt.make_gta5(root / "gta5", count=24), **mt.make_synthia(root / "synthia", count=6)}
    lists = root / "synthia" / "split_data"
    lists.mkdir()
    (lists / "synthia_split_train.txt").write_text("".join(f"{k:07d}.png\n" for k in range(4)))
    (lists / "synthia_split_val.txt").write_text("".join(f"{k:07d}.png\n" for k in range(4, 6)))
    monkeypatch.setattr(synthia, "SPLIT_DIR", root / "no-shipped-lists")
    mt.make_cityscapes(root / "cityscapes", n={"train": 1, "val": 2})
    mt.make_bdd100k(root / "bdd100k", n={"train": 1, "val": 2})
    mt.make_mapillary(root / "mapillary", n={"training": 1, "validation": 2})
    return truth


def union(root, split="all", classes=None) -> MultiSourceDataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DatasetWarning)  # frames the RobustNet lists name but the miniature lacks
        return build_dataset("gta5+synthia", split, root=root, classes=classes)


# -- the spec and the cells -----------------------------------------------------------------------------------------
def test_a_plus_joins_training_sources():
    assert parse_spec(SPEC) == [Transfer("gta5+synthia", ("cityscapes", "bdd100k", "mapillary"))]
    assert parse_spec("gta5+synthia:cityscapes") == [Transfer("gta5+synthia", ("cityscapes",))]
    # a part named as a target is in-domain: scored first anyway, not twice
    assert parse_specs(["gta5+synthia->synthia,cityscapes"]) == [Transfer("gta5+synthia", ("cityscapes",))]


@pytest.mark.parametrize("bad, says", [
    ("gta5->cityscapes+bdd100k", "joins training sources only"),
    ("gta5+synthia<->cityscapes", "joins training sources only"),
    ("gta5+gta5->cityscapes", "distinct dataset names"),
    ("gta5++synthia->cityscapes", "distinct dataset names"),
])
def test_plus_joins_distinct_sources_only(bad, says):
    with pytest.raises(SpecError, match=says):
        parse_spec(bad)


def cells_of(specs, **train):
    cfg = load_config(None)
    cfg["train"].update(train)
    return {c.source: c for c in plan(cfg, parse_specs(specs), ["resnet18"], ["fcn"])}


def test_a_union_is_one_cell_scored_on_each_part_then_the_targets():
    cell = cells_of([SPEC])["gta5+synthia"]
    assert cell.eval_targets == ("gta5", "synthia", "cityscapes", "bdd100k", "mapillary")
    assert cell.dirname.startswith("gta5+synthia__resnet18__fcn__s0__")


def test_source_weights_decide_a_unions_id_and_never_a_single_sources():
    plain = cells_of([SPEC, "gta5->cityscapes"])
    listed = cells_of([SPEC, "gta5->cityscapes"], source_weights=[1, 3])
    mapped = cells_of([SPEC, "gta5->cityscapes"], source_weights={"synthia": 3, "gta5": 1})
    assert listed["gta5+synthia"].train["source_weights"] == {"gta5": 1, "synthia": 3}
    assert listed["gta5+synthia"].cell_id == mapped["gta5+synthia"].cell_id != plain["gta5+synthia"].cell_id
    assert listed["gta5"].cell_id == mapped["gta5"].cell_id == plain["gta5"].cell_id
    # one mapping for two unions: each cell keeps the weights of its own parts
    both = cells_of([SPEC, "gta5+cityscapes->bdd100k"], source_weights={"gta5": 1, "synthia": 2, "cityscapes": 4})
    assert both["gta5+cityscapes"].train["source_weights"] == {"gta5": 1, "cityscapes": 4}


def test_the_study_class_set_enters_a_unions_id_only():
    def ids(classes):
        cfg = load_config(None)
        cfg["eval"]["classes"] = classes
        return {c.source: c.cell_id for c in plan(cfg, parse_specs([SPEC, "synthia->cityscapes"]), ["resnet18"],
                                                   ["fcn"])}
    assert ids(16)["synthia"] == ids(None)["synthia"] == ids(19)["synthia"]
    assert ids(16)["gta5+synthia"] != ids(None)["gta5+synthia"] == ids(19)["gta5+synthia"]


# -- weights: settings, validation, quotas ------------------------------------------------------------------------
def test_source_weights_resolve_to_one_weight_per_part():
    assert weights_per_part(["a", "b"], [12, 6], None) == [12.0, 6.0]
    assert weights_per_part(["a", "b"], [12, 6], {"b": 1, "a": 3}) == [3.0, 1.0]
    assert weights_per_part(["a", "b"], [12, 6], [0.5, 0.5]) == [0.5, 0.5]
    (missing,) = source_weight_problems({"a": 1}, ["a+b"])
    assert "no weight for b; expected a weight for each of a, b (spec source a+b)" in missing
    assert source_weight_problems({"a": 1, "c": 1}, ["a+b"])[0] == "train.source_weights: 'c' is not a source of a+b"
    (counted,) = source_weight_problems([1, 1, 1], ["a+b"])
    assert "3 weight(s) for 2 sources (a, b); expected one per source, in that order" in counted


def test_bad_source_weights_are_named_before_any_work(tmp_path):
    def problems(specs, weights):
        cfg = load_config(None)
        cfg.update(specs=specs)
        cfg["train"]["source_weights"] = weights
        with pytest.raises(ConfigError) as e:
            validate_study(cfg, tmp_path)
        return str(e.value)

    said = problems([SPEC], {"gta5": 1, "synthai": 1})
    assert "'synthai' is not a source of gta5+synthia" in said and "no weight for synthia" in said
    assert "multi-source spec" in problems(["gta5->cityscapes"], [1, 1])
    assert "train.source_weights='equal': expected null, a mapping" in problems([SPEC], "equal")
    assert "every weight must be > 0" in problems([SPEC], [1, 0])
    assert "unknown dataset 'nosuch'" in problems(["gta5+nosuch->cityscapes"], None)


def test_block_quotas_are_the_largest_remainders_of_the_exact_shares():
    assert block_quota([1, 1, 1], 1000) == [334, 333, 333]
    assert block_quota([0.25, 0.75], 1000) == [250, 750]
    assert block_quota([12, 6], 1000) == [667, 333]
    assert block_quota([12388, 9400], 21788) == [12388, 9400]  # the sizes, on a block of the union: exact
    rng = np.random.default_rng(0)
    for _ in range(200):
        weights, block = rng.uniform(0.01, 5, size=rng.integers(2, 6)).tolist(), int(rng.integers(50, 5000))
        quota = block_quota(weights, block)
        exact = [Fraction(w) * block / sum(map(Fraction, weights)) for w in weights]
        assert sum(quota) == block and all(abs(q - e) < 1 for q, e in zip(quota, exact))


# -- the stream -----------------------------------------------------------------------------------------------------
def test_a_two_source_study_draws_both_sources_in_the_weights_proportion(tmp_path, monkeypatch):
    """What training samples (engine/train.make_loader's sampler) over 4000 positions: which source each index is
    from, against the weights, within 4 binomial standard deviations; and each source walked epoch by epoch."""
    write_trees(tmp_path, monkeypatch)
    data = union(tmp_path)
    assert data.names == ["gta5", "synthia"] and data.sizes == [24, 6]
    settings = train_settings({**load_config(None)["train"], "iters": 1000, "batch_size": 4, "workers": 0,
                               "source_weights": {"gta5": 0.3, "synthia": 0.7}})
    items = list(make_loader(data, None, settings, seed=5, start_iter=0, device=torch.device("cpu")).sampler)
    assert len(items) == 4000
    sources = [data.locate(index) for index, _, _ in items]
    counts = Counter(part for part, _ in sources)
    for part, weight in ((0, 0.3), (1, 0.7)):
        sigma = math.sqrt(4000 * weight * (1 - weight))
        assert abs(counts[part] - 4000 * weight) <= 4 * sigma, counts
    for part, size in ((0, 24), (1, 6)):
        local = [i for p, i in sources if p == part]
        for epoch in range(len(local) // size):  # without replacement within each of the source's epochs
            assert sorted(local[epoch * size:(epoch + 1) * size]) == list(range(size))
    assert len({seed for _, seed, _ in items}) == 4000  # every position its own augmentation seed


def test_default_weights_visit_every_image_of_the_union_once_per_block():
    sizes = [700, 500]
    sources = [SeededStreamSampler(n, seed=k) for k, n in enumerate(sizes)]
    stream = MultiSourceStreamSampler(sources, [float(n) for n in sizes], seed=3, total=2 * sum(sizes))
    assert stream.block == sum(sizes) >= MIN_BLOCK
    items = [index for index, _, _ in stream]
    assert sorted(items[:1200]) == list(range(1200)) and sorted(items[1200:]) == list(range(1200))
    assert items[:1200] != items[1200:]


def test_the_stream_is_a_pure_function_of_position():
    def stream(**kw):
        sources = [SeededStreamSampler(n, seed=k) for k, n in enumerate((9, 4, 13))]
        return list(MultiSourceStreamSampler(sources, [1, 2, 3], seed=11, total=3000, **kw))
    full = stream()
    assert stream(start=1234) == full[1234:]  # a resumed run replays exactly what an uninterrupted one saw
    ranks = [stream(rank=r, world_size=3) for r in range(3)]
    assert [ranks[p % 3][p // 3] for p in range(3000)] == full
    counts = Counter(0 if i < 9 else 1 if i < 13 else 2 for i, _, _ in full[:2000])  # two blocks of 1000
    assert [counts[k] for k in range(3)] == [2 * q for q in block_quota([1, 2, 3], 1000)]


def test_class_uniform_draws_within_each_source(tmp_path, monkeypatch):
    write_trees(tmp_path, monkeypatch)
    data = union(tmp_path)
    settings = train_settings({**load_config(None)["train"], "iters": 100, "batch_size": 4, "workers": 0,
                               "class_uniform": 1.0})
    items = list(make_loader(data, None, settings, seed=0, start_iter=0, device=torch.device("cpu")).sampler)
    for index, _, focus in items:
        _, label = data.load_pair(index)
        assert focus >= 0 and (label == focus).any()


# -- labels ---------------------------------------------------------------------------------------------------------
def test_every_source_decodes_its_own_labels_and_the_class_set_applies_to_all(tmp_path, monkeypatch):
    truth = write_trees(tmp_path, monkeypatch)
    for classes, dropped in ((None, ()), (tuple(c for c in range(19) if c not in (9, 14, 16)), (9, 14, 16))):
        data = union(tmp_path, classes=classes)
        for index in range(len(data)):
            part, local = data.locate(index)
            image_path = data.parts[part].pairs[local][0]
            expected = truth[image_path].copy()
            expected[np.isin(expected, dropped)] = lt.IGNORE
            assert np.array_equal(data.load_pair(index)[1], expected), (image_path, classes)
        if dropped:
            assert any(np.isin(t, dropped).any() for p, t in truth.items() if "gta5" in str(p))  # a real test


def test_unknown_label_counts_are_summed_over_the_sources(tmp_path, monkeypatch):
    write_trees(tmp_path, monkeypatch)
    mt.poke_label(tmp_path / "gta5/labels/00002.png", 40, count=5)
    mt.poke_label(tmp_path / "synthia/GT/LABELS/0000001.png", 300, count=3)
    data = union(tmp_path)
    fields = apply_unknown_label_policy_per_source(data, "ignore")
    assert fields == {"unknown_label_pixels": 8, "unknown_label_files": 2,
                      "unknown_label_values": {"40": 5, "300": 3}}
    assert all(part.unknown_labels == "ignore" for part in data.parts)


# -- end to end -----------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_gta5_and_synthia_to_three_real_targets_end_to_end(tmp_path, monkeypatch, one_thread, capsys):
    root = tmp_path / "data"
    write_trees(root, monkeypatch)
    args = [SPEC, "--backbones", "resnet18", "--data-root", str(root), "--results", str(tmp_path / "results"),
            "--name", "multi", "--set", "train.iters=2", "--set", "train.batch_size=2", "--set", "train.crop=[32,64]",
            "--set", "train.workers=0", "--set", "train.ckpt_every=1", "--set", "model.pretrained=null",
            "--set", "eval.workers=0", "--set", "eval.size=[32,64]", "--set", "train.source_weights=[1,1]",
            # the miniature GTA5 lacks most frames of RobustNet's val list: scored without them, on purpose
            "--set", "eval.missing_pairs=skip"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DatasetWarning)  # frames the RobustNet lists name but the miniature lacks
        assert run.main(args) == 0
    study = tmp_path / "results" / "multi"
    (path,) = study.glob("cells/gta5+synthia__resnet18__fcn__s0__*/record.json")
    record = json.loads(path.read_text())
    assert record["targets"] == ["gta5", "synthia", "cityscapes", "bdd100k", "mapillary"] == sorted(
        record["results"], key=record["targets"].index)
    assert record["config"]["train"]["source_weights"] == {"gta5": 1, "synthia": 1}
    card = record["protocol"]
    assert card["sources"] == ["gta5", "synthia"] and card["source_weights"] == {"gta5": 1, "synthia": 1}
    assert set(card["targets"]) == set(record["results"])
    listed = len(read_split_list(SPLIT_DIR / gta5.ROBUSTNET_SPLITS["val"], gta5.FRAME_DIGITS))
    left_out = listed - record["results"]["gta5"]["images"]  # the val frames the miniature lacks, counted
    assert left_out > 0 and record["results"]["gta5"]["missing_pairs"] == card["targets"]["gta5"]["missing_pairs"] \
        == left_out
    assert all("missing_pairs" not in record["results"][t] for t in ("synthia", "cityscapes", "bdd100k", "mapillary"))

    dg = (study / "dg.md").read_text()
    assert "### trained on gta5+synthia" in dg and "| gta5 (in-domain) | synthia (in-domain) |" in dg
    unseen = statistics.fmean(record["results"][t]["miou"] for t in ("cityscapes", "bdd100k", "mapillary"))
    (row,) = [line for line in dg.splitlines() if line.startswith("| resnet18 |")]
    assert row.split("|")[-2].strip() == f"{unseen:.1f}"  # mean (unseen) over the three targets, not the parts
    table = (study / "table.md").read_text()
    assert "train gta5+synthia / test gta5 | train gta5+synthia / test synthia | train gta5+synthia / test cityscapes" \
        in table
    from segbench.report.protocols import card_hash
    assert f"Protocol card: {card_hash(card)} (train gta5+synthia)" in table
    assert (f"Rows resnet18 (train gta5+synthia): test gta5 was scored without {left_out} file(s) that lack their "
            "image or label (eval.missing_pairs=skip;") in table
    assert f"### card {card_hash(card)}" in (study / "report.md").read_text()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DatasetWarning)
        assert run.main(args) == 0  # finished: skipped, not retrained
    assert "1 finished cell(s) skipped" in capsys.readouterr().out
