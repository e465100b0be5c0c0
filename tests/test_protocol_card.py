"""The protocol card on every record (protocol_card.py) and what the report makes of it: a footer naming each
source's card, rows that differ in protocol kept apart and told apart, every distinct card printed once."""
from __future__ import annotations

import copy
import json
import warnings
from types import SimpleNamespace

import minitrees as mt
import pytest
from segbench.cells import plan
from segbench.config import EMBEDDED_DEFAULT, load_config
from segbench.data import build_dataset
from segbench.data.transforms import eval_transform_for
from segbench.io import write_json
from segbench.models import create_model
from segbench.protocol_card import CHECKPOINT_RULE, protocol_card, target_protocol
from segbench.record import is_done, new_record, write_record
from segbench.report import build_report
from segbench.report.protocols import card_hash, differences
from segbench.spec import parse_specs


def robustnet_cell(**train):
    cfg = load_config("robustnet_dg")
    cfg["train"].update(train)
    return plan(cfg, parse_specs(cfg["specs"]), ["resnet50"], ["deeplabv3plus"])[0]


def test_the_card_states_the_recipe_and_each_targets_scoring():
    cell = robustnet_cell()
    mapillary = SimpleNamespace(split="val", transform=SimpleNamespace(size=None, height=1536, normalize=object()))
    card = protocol_card(cell, {"mapillary": target_protocol(mapillary, None),
                                "not-a-target": target_protocol(mapillary, None)})
    t = cell.train
    assert card["sources"] == ["gta5"] and card["split"] == t["split"] == "train"
    assert card["resolution"] == {"gta5": "native"}
    assert card["global_batch"] == t["batch_size"] and card["iterations"] == t["iters"]
    for key in ("crop", "scale_range", "hflip", "class_uniform", "lr", "momentum", "weight_decay", "power"):
        assert card["train"][key] == t[key], key
    for speed_knob in ("workers", "ckpt_every", "keep_ckpts", "compile", "channels_last", "unknown_labels"):
        assert speed_knob not in card["train"]
    assert card["model"]["output_stride"] == cell.model["output_stride"]
    assert card["eval"]["split"] == "val" and "workers" not in card["eval"] and "batch_size" not in card["eval"]
    assert card["targets"] == {"mapillary": {"split": "val", "transform": {"size": None, "height": 1536},
                                             "classes": 19}}  # only targets of the cell; objects left out
    assert card["checkpoint"] == CHECKPOINT_RULE == "last"
    assert "source_weights" not in card and "training_classes" not in card  # one source


def test_settings_other_helpers_add_appear_when_set_and_leave_the_card_alone_at_their_old_value():
    before = protocol_card(robustnet_cell(photometric=None), {})
    older = robustnet_cell()
    del older.train["photometric"]  # a record written before the setting existed
    assert protocol_card(older, {}) == before
    jitter = protocol_card(robustnet_cell(photometric="robustnet"), {})
    assert jitter["train"]["photometric"] == "robustnet"
    assert differences(before, jitter) == ["train.photometric"]
    assert differences(jitter, protocol_card(robustnet_cell(photometric="robustnet", crop=[512, 512]), {})) == [
        "train.crop"]


def test_a_union_card_names_its_weights_and_training_classes():
    cfg = load_config(None)
    cfg["eval"]["classes"] = 16
    (cell,) = plan(cfg, parse_specs(["gta5+synthia->cityscapes"]), ["resnet50"], ["fcn"])
    card = protocol_card(cell, {})
    assert card["sources"] == ["gta5", "synthia"] and card["source_weights"] == "proportional to size"
    assert card["training_classes"] == [c for c in range(19) if c not in (9, 14, 16)]


def test_each_targets_resolution_crop_and_classes_come_from_its_opened_dataset(tmp_path):
    mt.make_mapillary(tmp_path, n={"validation": 1})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = build_dataset("mapillary", "val", path=tmp_path)
    ds.transform = eval_transform_for(ds, None, "robustnet")
    entry = target_protocol(ds, [c for c in range(19) if c != 9])
    assert entry["split"] == "val" and entry["classes"] == [c for c in range(19) if c != 9]
    assert entry["transform"]["geometry"] == {"type": "RobustNetCentreCrop", "height": 1536, "crop": 1536}
    ds.transform = eval_transform_for(ds, None, "native")
    assert target_protocol(ds, None)["transform"]["geometry"] == {"type": "ImageResize", "size": None, "height": 1536}
    assert target_protocol(ds, None)["classes"] == 19


def test_a_finished_embedded_cell_stays_done(tmp_path):
    """Records written before protocol cards existed: same ids, still done (nothing is re-scored for a card)."""
    cfg = load_config(EMBEDDED_DEFAULT)
    cell = plan(cfg, parse_specs(cfg["specs"]), cfg["backbones"][:1], cfg["heads"])[0]
    record = new_record(cell)
    for target in cell.eval_targets:
        record["results"][target] = {"miou": 50.0, "eval": cell.eval_identity()}
    cell_dir = cell.directory(tmp_path)
    write_record(cell_dir, record)
    (cell_dir / "done").touch()
    assert is_done(cell, cell_dir)


# -- the report -------------------------------------------------------------------------------------------------------
def carded(backbone, seed, mious, *, crop=(768, 768), size=None, source="gta5"):
    cfg = load_config(None)
    cfg["train"]["crop"] = list(crop)
    cfg["eval"]["size"] = size
    (cell,) = plan(cfg, parse_specs([f"{source}->cityscapes"]), [backbone], ["fcn"])
    cell.seed = seed
    rec = new_record(cell)
    geometry = {"type": "ImageResize", "size": size, "height": None}
    entries = {}
    for target, miou in mious.items():
        rec["results"][target] = {"miou": miou, "pixel_acc": 50.0, "per_class_iou": {"road": miou},
                                  "eval": cell.eval_identity()}
        entries[target] = {"split": "val", "transform": {"geometry": geometry}, "classes": 19}
    rec["protocol"] = protocol_card(cell, entries)
    return rec


def write_study(root, records):
    for k, rec in enumerate(records):
        cell = root / "cells" / f"{rec['source']}__{rec['backbone']}__fcn__s{rec['seed']}__{rec['cell_id']}{k}"
        write_json(cell / "record.json", rec)
        (cell / "done").touch()
    return root


def test_one_protocol_is_named_under_both_tables_and_printed_once(tmp_path):
    recs = [carded(b, s, {"gta5": 60.0 + s, "cityscapes": 30.0 + s}) for b in ("resnet50", "resnet50_ibn_b")
            for s in (0, 1)]
    study = write_study(tmp_path / "study", recs)
    build_report(study, plot=False)
    h = card_hash(recs[0]["protocol"])
    assert card_hash(recs[3]["protocol"]) == h  # backbone and seed are not protocol
    for name in ("table.md", "dg.md"):
        assert f"Protocol card: {h} (train gta5); report.md prints each card in full." in (study / name).read_text()
    report = (study / "report.md").read_text()
    assert report.count("### card ") == 1 and f"### card {h}" in report
    assert "train gta5: resnet50, resnet50_ibn_b" in report and "crop: [768, 768]" in report


def test_rows_measured_under_different_protocols_are_kept_apart_and_the_footer_says_why(tmp_path):
    recs = [carded("resnet50", 0, {"cityscapes": 30.0}), carded("resnet50", 1, {"cityscapes": 32.0}),
            carded("resnet50", 2, {"cityscapes": 40.0}, size=[512, 1024])]  # eval only: same training config
    study = write_study(tmp_path / "study", recs)
    build_report(study, plot=False)
    table = (study / "table.md").read_text()
    a, b = card_hash(recs[0]["protocol"]), card_hash(recs[2]["protocol"])
    assert a != b
    assert f"| resnet50 [protocol {a}] | 31.0 ± 1.0 |" in table  # seeds 0 and 1 together (se), seed 2 never with them
    assert f"| resnet50 [protocol {b}] | 40.0 (n=1) |" in table
    assert (f"Rows resnet50 [protocol {a}] and resnet50 [protocol {b}] (train gta5) differ in protocol: eval.size, "
            "targets.cityscapes.transform.geometry.size;") in table
    assert (study / "report.md").read_text().count("### card ") == 2


def test_a_seed_that_has_not_scored_a_target_yet_is_a_missing_score_not_a_protocol(tmp_path):
    """Its card lacks the target's entry, which is no difference in how anything was measured."""
    recs = [carded("resnet50", 0, {"gta5": 60.0, "cityscapes": 30.0}), carded("resnet50", 1, {"gta5": 62.0})]
    study = write_study(tmp_path / "study", recs)
    build_report(study, plot=False)
    running = card_hash(recs[1]["protocol"])
    (line,) = [line for line in (study / "table.md").read_text().splitlines() if line.startswith("Rows ")]
    assert line == (f"Rows resnet50 and resnet50 (train gta5) differ only in a missing score: cityscapes not scored "
                    f"yet by the records of card {running}; their protocols agree otherwise.")
    recs.append(carded("resnet50", 2, {"gta5": 61.0}, crop=(512, 512)))  # a real difference is still named as one
    study = write_study(tmp_path / "other", recs)
    build_report(study, plot=False)
    lines = [line for line in (study / "dg.md").read_text().splitlines() if line.startswith("Rows ")]
    assert any("differ in protocol: train.crop;" in line and "Also cityscapes not scored yet" in line
               for line in lines), lines


def test_rows_that_differ_in_training_config_name_the_setting(tmp_path):
    recs = [carded("resnet50", 0, {"cityscapes": 30.0}), carded("resnet50", 0, {"cityscapes": 35.0}, crop=(512, 512))]
    study = write_study(tmp_path / "study", recs)
    build_report(study, plot=False)
    (line,) = [line for line in (study / "dg.md").read_text().splitlines() if line.startswith("Rows ")]
    assert "resnet50 [crop=[768, 768]]" in line and "resnet50 [crop=[512, 512]]" in line
    assert line.endswith("(train gta5) differ in protocol: train.crop; seeds are averaged only where the cards agree "
                         "on the target.")


def test_sources_have_cards_of_their_own_and_records_without_one_are_counted(tmp_path):
    old = copy.deepcopy(carded("resnet50", 1, {"cityscapes": 31.0}))
    del old["protocol"]
    recs = [carded("resnet50", 0, {"cityscapes": 30.0}), old, carded("resnet50", 0, {"cityscapes": 20.0},
                                                                     source="synthia")]
    study = write_study(tmp_path / "study", recs)
    build_report(study, plot=False)
    table = (study / "table.md").read_text()
    g, s = card_hash(recs[0]["protocol"]), card_hash(recs[2]["protocol"])
    assert f"Protocol cards: {g} (train gta5), {s} (train synthia);" in table
    assert "| resnet50 | 30.5 ± 0.5 | 20.0 (n=1) |" in table  # (se) a record without a card is not a different protocol
    assert "Rows resnet50 (train gta5) include records without a protocol card" in table


def test_records_without_cards_get_no_footer(tmp_path):
    rec = carded("resnet50", 0, {"cityscapes": 30.0})
    del rec["protocol"]
    study = write_study(tmp_path / "study", [rec])
    build_report(study, plot=False)
    assert "Protocol card" not in (study / "table.md").read_text()
    assert "## Protocol cards" not in (study / "report.md").read_text()


def test_the_card_is_json_and_hashes_stably():
    card = protocol_card(robustnet_cell(), {})
    assert json.loads(json.dumps(card)) == card
    assert card_hash(json.loads(json.dumps(card, sort_keys=True))) == card_hash(card)  # as a record stores it


@pytest.mark.parametrize("head, default", [("fcn", 8), ("deeplabv3plus", 16)])
def test_an_unset_output_stride_is_carded_as_the_heads_default(head, default):
    """A spec-only study leaves model.output_stride unset (None); the card states the stride the network was built
    with (models.create_model's default for the head), and the id keeps the setting as given."""
    cfg = load_config(None)
    assert cfg["model"]["output_stride"] is None
    (unset,) = plan(cfg, parse_specs(["gta5->cityscapes"]), ["resnet50"], [head])
    cfg["model"]["output_stride"] = default
    (written,) = plan(cfg, parse_specs(["gta5->cityscapes"]), ["resnet50"], [head])
    assert create_model("resnet50", head).backbone.output_stride == default  # what "unset" builds
    assert protocol_card(unset, {})["model"]["output_stride"] == default
    assert protocol_card(unset, {}) == protocol_card(written, {})
    assert unset.cell_id != written.cell_id  # finished cells keep their ids


def test_a_record_carded_before_strides_were_resolved_shares_the_card_of_one_written_since(tmp_path):
    old, new = carded("resnet50", 0, {"cityscapes": 30.0}), carded("resnet50", 1, {"cityscapes": 32.0})
    old["protocol"]["model"]["output_stride"] = None  # as cards were written before
    assert new["protocol"]["model"]["output_stride"] == 8
    study = write_study(tmp_path / "study", [old, new])
    build_report(study, plot=False)
    table = (study / "table.md").read_text()
    assert "| resnet50 | 31.0 ± 1.0 |" in table and "differ in protocol" not in table
    assert f"Protocol card: {card_hash(new['protocol'])} (train gta5)" in table
