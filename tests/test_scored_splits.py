"""What a study's score is taken on (issue 22, items 1 and 3): every file of the scored split paired (a partly
extracted download is refused, or scored without the missing files only when `eval.missing_pairs: skip` says so, and
then counted in the record, on the card and under the table), and never the images the model was trained on unless
`train.allow_eval_split` says so, which the card and the table then say too."""
from __future__ import annotations

import json

import pytest
import torch

import minitrees as mt
from segbench import network, pipeline, run
from segbench.cells import FINAL_WEIGHTS, plan
from segbench.config import apply_overrides, load_config
from segbench.config import identity_view
from segbench.data import build_dataset
from segbench.data.adapters import synthetic
from segbench.data.cli import main as data_main
from segbench.evaluate import main as evaluate_main
from segbench.io import save_torch
from segbench.protocol_card import protocol_card
from segbench.record import is_done, new_record, write_record
from segbench.report import build_report
from segbench.spec import parse_specs
from tiny_models import PixelModel

pytestmark = pytest.mark.filterwarnings("ignore::segbench.data.base.DatasetWarning")  # what the tests look at

TINY = ["--set", "train.iters=1", "--set", "train.batch_size=1", "--set", "train.crop=[32,64]", "--set",
        "train.workers=0", "--set", "model.pretrained=null", "--set", "eval.workers=0"]


@pytest.fixture
def short_cityscapes(tmp_path, monkeypatch):
    """A BDD100K source and a Cityscapes target in their official layouts; one Cityscapes val image is missing, its
    label still there (5 of 6 would have been scored). Returns the data root and that label."""
    monkeypatch.setattr(synthetic, "SPLIT_SIZES", {"train": 2, "val": 1})
    data = tmp_path / "data"
    mt.make_bdd100k(data / "bdd100k", n={"train": 2, "val": 2})
    images = sorted(mt.make_cityscapes(data / "cityscapes", n={"train": 1, "val": 3}))
    image = next(p for p in images if "/val/" in str(p))
    image.unlink()
    stem = image.name.removesuffix("_leftImg8bit.png")
    return data, data / "cityscapes/gtFine/val" / image.parent.name / f"{stem}_gtFine_labelIds.png"


def test_a_study_refuses_a_target_with_a_missing_image_before_training(tmp_path, short_cityscapes, capsys):
    data, label = short_cityscapes
    code = run.main(["bdd100k->cityscapes", "--backbones", "resnet18", "--data-root", str(data), "--results",
                     str(tmp_path / "results"), "--name", "short", *TINY])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    *said, line = err.strip().splitlines()  # what the study said as it started, then the one-line refusal
    assert said[0].startswith("settings: ") and said[-1].startswith("1 cells -> ")
    assert all(s.startswith("warning: ") for s in said[1:-1])  # loader workers beyond this machine's cores, if so
    assert "cityscapes 'val'" in line and label.name in line and "missing image" in line
    assert "`segbench data check cityscapes --split val`" in line and "eval.missing_pairs=skip" in line
    assert not (tmp_path / "results" / "short" / "cells").exists()  # refused before any training


@pytest.fixture
def scored_short(tmp_path, short_cityscapes, monkeypatch):
    """A trained bdd100k->cityscapes cell (PixelModel weights) scored with eval.missing_pairs=skip."""
    data, _ = short_cityscapes
    monkeypatch.setattr(network, "create_model", lambda *a, **k: PixelModel())
    cfg = apply_overrides(load_config(None), ["eval.workers=0", "eval.dump=0", "eval.missing_pairs=skip"])
    (cell,) = plan(cfg, parse_specs(["bdd100k->cityscapes"]), ["resnet50"], ["fcn"])
    cell_dir = cell.directory(tmp_path / "results" / "short")
    cell_dir.mkdir(parents=True)
    torch.manual_seed(0)
    save_torch(cell_dir / FINAL_WEIGHTS, PixelModel().state_dict())
    record = pipeline.run_cell(cell, cell_dir, data_root=data, device=torch.device("cpu"))
    return data, cell, cell_dir, record


def test_skipping_missing_pairs_is_counted_in_the_record_on_the_card_and_under_the_table(scored_short):
    data, cell, cell_dir, record = scored_short
    scored = build_dataset("cityscapes", "val", root=data)
    left_out = len(scored.skipped)
    assert left_out == 1 and record["results"]["cityscapes"]["images"] == len(scored) == 2
    assert record["results"]["cityscapes"]["missing_pairs"] == left_out
    assert record["protocol"]["targets"]["cityscapes"]["missing_pairs"] == left_out
    assert "missing_pairs" not in record["results"]["bdd100k"]  # complete: nothing to count, nothing on its card
    assert "missing_pairs" not in record["protocol"]["targets"]["bdd100k"]
    build_report(cell_dir.parent.parent, plot=False)
    for table in ("table.md", "dg.md"):
        text = (cell_dir.parent.parent / table).read_text()
        assert ("Rows resnet50 (train bdd100k): test cityscapes was scored without 1 file(s) that lack their image "
                "or label (eval.missing_pairs=skip; `segbench data check cityscapes` lists them).") in text


def test_the_setting_leaves_ids_and_finished_scores_alone(scored_short):
    _, cell, cell_dir, _ = scored_short
    erroring = {**cell.eval, "missing_pairs": "error"}
    assert identity_view("eval", erroring) == cell.eval_identity()  # scores made under either value stay done
    assert is_done(cell, cell_dir)


def test_evaluate_refuses_the_short_split_unless_the_setting_says_skip(scored_short, tmp_path, capsys, monkeypatch):
    import segbench.network as network_mod

    data, _, cell_dir, record = scored_short
    monkeypatch.setattr(network_mod, "create_model", lambda *a, **k: PixelModel())
    argv = [str(cell_dir), "--dataset", "cityscapes", "--data-root", str(data), "--device", "cpu"]
    assert evaluate_main([*argv, "--set", "eval.missing_pairs=error"]) == 2
    assert "eval.missing_pairs=skip" in capsys.readouterr().err
    assert evaluate_main([*argv, "--output", str(tmp_path / "ev.json")]) == 0  # the cell's own setting: skip
    result = json.loads((tmp_path / "ev.json").read_text())
    assert result["missing_pairs"] == 1 and result["miou"] == pytest.approx(record["results"]["cityscapes"]["miou"])


def test_a_prepared_copy_keeps_the_missing_files_of_its_source(short_cityscapes, capsys):
    from segbench.data.base import MissingPairsError
    from segbench.engine.scoring import check_missing_pairs

    data, label = short_cityscapes
    assert label.is_file()
    assert data_main(["prepare", "cityscapes", "--size", "32x16", "--data-root", str(data), "--quiet"]) == 1
    capsys.readouterr()
    with pytest.raises(MissingPairsError, match=label.name):
        check_missing_pairs(build_dataset("cityscapes@32x16", "val", root=data), "error")


# -- item 3: the in-domain column is not scored on training images ---------------------------------------------------
@pytest.mark.parametrize("spec, split", [("sim->photo", "val"), ("gta5->cityscapes", "all")])
def test_training_on_the_scored_split_is_refused_before_any_work(tmp_path, capsys, spec, split):
    """`train.split=val` with eval.split val scored the in-domain column on training images, exit 0; so did GTA5's
    `all` (which holds its val frames)."""
    argv = [spec, "--data-root", str(tmp_path / "data"), "--results", str(tmp_path / "r"), "--set",
            f"train.split={split}", "--dry-run"]
    assert run.main(argv) == 2
    err = capsys.readouterr().err
    (line,) = err.strip().splitlines()
    source = spec.partition("->")[0]
    assert f"train.split={split!r}: {source} is scored in-domain on eval.split='val'" in line
    assert "train.allow_eval_split=true" in line
    assert run.main([*argv, "--set", "train.allow_eval_split=true"]) == 0
    capsys.readouterr()


def test_allowed_training_on_the_scored_split_is_marked_on_the_card_and_under_the_table(tmp_path):
    cfg = apply_overrides(load_config("embedded"), ["train.split=val", "train.allow_eval_split=true"])
    cells = plan(cfg, parse_specs(cfg["specs"]), ["resnet18"], ["fcn"])
    plain = plan(apply_overrides(load_config("embedded"), ["train.split=val"]), parse_specs(cfg["specs"]),
                 ["resnet18"], ["fcn"])
    assert [c.cell_id for c in cells] == [c.cell_id for c in plain]  # the permission decides nothing about weights
    study = tmp_path / "study"
    for cell in cells[:1]:
        record = new_record(cell)
        record["results"] = {t: {"miou": 50.0, "pixel_acc": 80.0, "eval": cell.eval_identity()}
                             for t in cell.eval_targets}
        record["protocol"] = protocol_card(cell, {t: {"split": "val", "classes": 19} for t in cell.eval_targets})
        assert record["protocol"]["in_domain_on_training_images"] == [cell.source]
        write_record(cell.directory(study), record)
    normal = protocol_card(plan(load_config("embedded"), parse_specs(cfg["specs"]), ["resnet18"], ["fcn"])[0], {})
    assert "in_domain_on_training_images" not in normal  # the usual card is unchanged
    build_report(study, plot=False)
    source = cells[0].source
    for table in ("table.md", "dg.md"):
        assert (f"Rows resnet18 (train {source}): test {source} is scored on images the model was trained on "
                "(train.split 'val' shares them with the eval split; train.allow_eval_split).") \
            in (study / table).read_text()
