"""`segbench data check` and `segbench data prepare` on miniature trees with the awkward cases real copies have."""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

import label_tables as lt
import minitrees as mt
from segbench.data.adapters import acdc, cityscapes, gta5, synthetic  # noqa: F401  (registers the adapters)
from segbench.data.factory import build_dataset
from segbench.data.check import check_dataset
from segbench.data.cli import main


@pytest.fixture
def broken_gta5(tmp_path):
    """6 frames: one size mismatch, one missing label, one truncated image, one id outside the table."""
    root = tmp_path / "gta5"
    truth = mt.make_gta5(root, count=6)
    mt.write_palette(root / "labels/00002.png", np.zeros((mt.H - 2, mt.W), np.uint8))
    (root / "labels/00004.png").unlink()
    mt.corrupt(root / "images/00005.png")
    raw = mt.to_raw(truth[root / "images/00006.png"], mt.CS_ID, 0)
    raw[0, :3] = 40
    mt.write_palette(root / "labels/00006.png", raw)
    truth[root / "images/00006.png"][0, :3] = 255  # id 40 decodes as ignored (training refuses it by default)
    return root, truth


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_check_reports_every_problem_and_exact_pixel_counts(broken_gta5, capsys):
    root, truth = broken_gta5
    code, out, err = run_cli(capsys, "check", "gta5", "--root", str(root), "--json", "--quiet")
    assert code == 1
    report = json.loads(out)
    kinds = sorted((p["kind"], p["path"].rsplit("/", 1)[-1]) for p in report["problems"])
    assert kinds == [
        ("label values outside the mapping", "00006.png"), ("missing label", "00004.png"),
        ("size mismatch", "00002.png"), ("unreadable", "00005.png"),
    ]
    assert report["pairs"] == 2  # 00001 and 00003 are usable; 00006 stops training unless train.unknown_labels=ignore
    assert report["label_values_outside_mapping"] == {"40": 3}
    pixels = report["pixels_per_class"]
    assert list(pixels)[:2] == ["road", "sidewalk"] and list(pixels)[-1] == "ignored" and len(pixels) == 20
    expected = np.zeros(256, np.int64)
    for k in (1, 3, 6):
        expected += np.bincount(truth[root / f"images/{k:05d}.png"].ravel(), minlength=256)
    assert list(pixels.values()) == [*expected[:19].tolist(), int(expected[19:].sum())]


def test_check_text_report_and_clean_exit_code(tmp_path, capsys):
    mt.make_cityscapes(tmp_path / "cityscapes")
    code, out, _ = run_cli(capsys, "check", "cityscapes", "--data-root", str(tmp_path), "--split", "val", "--quiet")
    assert code == 0 and "no problems found" in out and "2 pairs usable" in out and "road" in out


def test_check_with_workers_matches_single_process(broken_gta5):
    root, _ = broken_gta5
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = gta5.GTA5(root, "all")
    one = check_dataset(ds, workers=0, progress=False).to_json()
    two = check_dataset(ds, workers=2, progress=False).to_json()
    assert one == two


def test_check_bad_root_exits_2_naming_the_layout(tmp_path, capsys):
    code, _, err = run_cli(capsys, "check", "mapillary", "--root", str(tmp_path / "nope"), "--quiet")
    assert code == 2 and str(tmp_path / "nope") in err and "validation}/images/NAME.jpg" in err
    code, _, err = run_cli(capsys, "check", "no-such-set", "--quiet")
    assert code == 2 and "unknown dataset 'no-such-set'" in err and "cityscapes" in err


def test_prepare_writes_resized_cache_that_build_dataset_opens(broken_gta5, capsys):
    root, _ = broken_gta5
    # frame 1: road (id 7), bicycle (33) and unlabeled (0) drawn per pixel, so trainIds 0, 18 and 255 touch everywhere:
    # any interpolation but nearest-neighbour invents values between them (9, 127, 136, ...)
    raw = np.random.default_rng(0).choice(np.array([7, 33, 0]), (mt.H, mt.W))
    mt.write_palette(root / "labels/00001.png", raw)
    source = mt.decode(raw, lt.CITYSCAPES_ID_TO_TRAINID)
    assert set(np.unique(source).tolist()) == {0, 18, 255}
    data_root = root.parent
    w, h = 40, 20  # 64x32 -> 40x20: a factor of 1.6, so nearest skips some source rows and columns, unevenly
    code, out, err = run_cli(capsys, "prepare", "gta5", "--size", f"{w}x{h}", "--data-root", str(data_root), "--quiet")
    assert code == 1 and f"gta5@{w}x{h}" in out  # pairs were left out: said, and non-zero
    # where `data check` finds them: the RobustNet split lists name frames this copy lacks, which `all` never sees
    assert "`segbench data check gta5 --split SPLIT` explains (SPLIT: all, train)" in err
    ds = build_dataset(f"gta5@{w}x{h}", "all", root=data_root)
    assert [p[0].name for p in ds.pairs] == ["images__00001.png", "images__00003.png"]  # 00006: id 40, left out
    image, label = ds[0]
    assert image.shape == (h, w, 3) and label.shape == (h, w)
    assert set(np.unique(label).tolist()) <= {0, 18, 255}, "label interpolation invented class ids"
    # nearest neighbour as Pillow's NEAREST (the official codes' label resize) defines it: the source pixel under the
    # output pixel's centre
    from PIL import Image
    np.testing.assert_array_equal(label, np.asarray(Image.fromarray(source).resize((w, h), Image.NEAREST)))
    manifest = json.loads((data_root / f"prepared/gta5@{w}x{h}/manifest.json").read_text())
    left_out = sorted(p["path"].rsplit("/", 1)[-1] for p in manifest["left_out"] if p["kind"] != "missing image")
    assert left_out == ["00002.png", "00004.png", "00005.png", "00006.png"] and manifest["size"] == [w, h]
    # the RobustNet lists name frames this miniature copy lacks: recorded as such, not silently dropped
    assert {p["kind"] for p in manifest["left_out"]} == {"missing image", "missing label", "size mismatch", "unreadable",
                                                         "label values outside the mapping"}
    splits_of = {p["path"].rsplit("/", 1)[-1]: p["splits"] for p in manifest["left_out"]}
    assert set(splits_of["00006.png"]) == {"all", "train"} and all(splits_of.values())  # each in the splits holding it


def test_prepare_keeps_eval_classes_and_resumes(tmp_path, capsys):
    mt.make_acdc(tmp_path / "acdc", conditions=("fog",))
    code, *_ = run_cli(capsys, "prepare", "acdc-fog", "--size", "16x8", "--data-root", str(tmp_path), "--quiet")
    assert code == 0
    cached = tmp_path / "prepared/acdc-fog@16x8/images"
    stamp = {p: p.stat().st_mtime_ns for p in cached.iterdir()}
    assert len(stamp) == 2
    code, *_ = run_cli(capsys, "prepare", "acdc-fog", "--size", "16x8", "--data-root", str(tmp_path), "--quiet")
    assert code == 0 and {p: p.stat().st_mtime_ns for p in cached.iterdir()} == stamp  # nothing rewritten
    ds = build_dataset("acdc-fog@16x8", "val", root=tmp_path)
    assert len(ds) == 1 and len(ds.eval_classes) == 19


def test_prepared_name_without_cache_says_how_to_make_it(tmp_path):
    from segbench.data.base import DatasetError

    with pytest.raises(DatasetError, match="segbench data prepare gta5 --size 1280x720"):
        build_dataset("gta5@1280x720", "train", root=tmp_path)


# -- files without their partner: every layout, through the real readers ---------------------------------------------
MYCITY = """\
segbench_dataset: 1
name: mycity
splits: [train, val]
images: {dir: "photos/{split}", suffix: ".jpg"}
labels: {dir: "gt/{split}", suffix: "_gt.png"}
encoding: trainid
"""


def make_mycity(data_root):
    (data_root / "mycity.yaml").write_text(MYCITY)
    for k in range(3):
        mt.write_rgb(data_root / "mycity/photos/val/seq1" / f"f{k}.jpg", mt.image(k))
        mt.write_gray(data_root / "mycity/gt/val/seq1" / f"f{k}_gt.png", mt.train_ids(k))


#: name -> (split, writer of a 3-frame tree under the data root in the official layout, label files per frame)
LAYOUTS = {
    # beside the labelIds files: labelTrainIds of the same frames and the colour files, which pair with nothing
    "cityscapes": ("val", lambda d: mt.make_cityscapes(d / "cityscapes", n={"val": 3}, trainid_files=True), 2),
    "gta5": ("all", lambda d: mt.make_gta5(d / "gta5", count=3), 1),
    "synthia": ("all", lambda d: mt.make_synthia(d / "synthia", count=3), 1),
    "bdd100k": ("val", lambda d: mt.make_bdd100k(d / "bdd100k", n={"val": 3}), 1),
    "bdd100k-legacy": ("val", lambda d: mt.make_bdd100k(d / "bdd100k", legacy=True, n={"val": 3}), 1),
    "mapillary": ("val", lambda d: mt.make_mapillary(d / "mapillary", nested=True, n={"validation": 3}), 1),
    "acdc-fog": ("val", lambda d: mt.make_acdc(d / "acdc", conditions=("fog",), n={"val": 3},
                                               label_files=("_gt_labelTrainIds.png", "_gt_labelIds.png")), 2),
    "photo": ("val", lambda d: build_dataset("photo", "val", root=d), 1),  # generated on first use
    "mycity": ("val", make_mycity, 1),  # a YAML dataset
}


def _label_of(name, split, data, image):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return dict(build_dataset(name, split, root=data).pairs).get(image)


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_check_names_a_label_without_its_image_and_an_image_without_its_label(tmp_path, monkeypatch, capsys, layout):
    """A partly extracted download: before, a label whose image was missing was not seen at all (and the synthetic
    domains did not see a missing label either), so `data check` said "no problems found" and scoring used fewer
    images without a word."""
    monkeypatch.setattr(synthetic, "SPLIT_SIZES", {"train": 1, "val": 3})
    name, (split, write, encodings) = layout.removesuffix("-legacy"), LAYOUTS[layout]
    data = tmp_path / "data"
    data.mkdir()
    write(data)
    argv = ["check", name, "--data-root", str(data), "--split", split, "--json", "--quiet"]
    code, out, _ = run_cli(capsys, *argv)
    assert code == 0 and json.loads(out)["problems"] == [] and json.loads(out)["pairs"] == 3  # clean: nothing invented
    (image0, label0), (image1, _), _ = build_dataset(name, split, root=data).pairs
    image0.unlink()  # an image whose label stays
    while (label := _label_of(name, split, data, image1)) is not None:
        label.unlink()  # every label of a frame whose image stays (Cityscapes and ACDC keep two encodings)
    code, out, _ = run_cli(capsys, *argv)
    report = json.loads(out)
    assert code == 1 and report["pairs"] == 1
    found = [(p["kind"], p["path"]) for p in report["problems"]]
    assert ("missing image", str(label0)) in found and ("missing label", str(image1)) in found
    assert sorted(kind for kind, _ in found) == ["missing image"] * encodings + ["missing label"]


# -- issue 23: what `data check` and `data prepare` say about splits --------------------------------------------------
def test_check_calls_pairs_usable_whatever_the_split_is_for(tmp_path, capsys):
    """A val split's pairs are scored, not trained on: the report says they are usable, not "usable for training"."""
    mt.make_cityscapes(tmp_path / "cityscapes")
    code, out, _ = run_cli(capsys, "check", "cityscapes", "--data-root", str(tmp_path), "--split", "val", "--quiet")
    first = out.splitlines()[0]
    assert code == 0 and "split 'val'" in first and "2 pairs usable" in first and "training" not in first


def test_check_split_all_lists_an_absent_split_and_passes(tmp_path, capsys):
    """BDD100K with its val split only: the train split is absent (not downloaded), which is no problem of the copy."""
    mt.make_bdd100k(tmp_path / "bdd100k", n={"val": 2})
    code, out, _ = run_cli(capsys, "check", "bdd100k", "--data-root", str(tmp_path), "--split", "all", "--quiet")
    assert code == 0, out
    assert "split 'val'" in out and "split 'train' absent" in out and "cannot be opened" not in out
    assert str(tmp_path / "bdd100k" / "images/10k/train") in out
    code, out, _ = run_cli(capsys, "check", "bdd100k", "--data-root", str(tmp_path), "--split", "all", "--quiet",
                           "--json")
    report = json.loads(out)
    assert code == 0 and report["ok"] and [r["split"] for r in report["splits"]] == ["val"]
    assert list(report["absent"]) == ["train"] and report["unavailable"] == {}


def test_check_split_all_with_no_split_present_exits_2(tmp_path, capsys):
    (tmp_path / "bdd100k").mkdir()
    code, _, err = run_cli(capsys, "check", "bdd100k", "--data-root", str(tmp_path), "--split", "all", "--quiet")
    assert code == 2 and "no split of bdd100k could be opened" in err and "images/10k/val" in err


def test_prepare_names_a_split_it_leaves_out_in_full(tmp_path, capsys):
    """The val split's images have no labels at all: the message names the first image by its whole path, not
    the first 120 characters of the message."""
    mt.make_cityscapes(tmp_path / "cityscapes")
    for label in (tmp_path / "cityscapes/gtFine/val").rglob("*.png"):
        label.unlink()
    first_image = sorted((tmp_path / "cityscapes/leftImg8bit/val").rglob("*.png"))[0]
    code, _, err = run_cli(capsys, "prepare", "cityscapes", "--size", "16x8", "--data-root", str(tmp_path), "--quiet")
    (line,) = [ln for ln in err.splitlines() if "split 'val'" in ln]
    assert code == 0 and str(first_image) in line and line.count("(") == line.count(")")


def test_list_shows_the_data_root_where_it_came_from_and_what_is_there(tmp_path, monkeypatch, capsys):
    mt.make_cityscapes(tmp_path / "cityscapes")
    monkeypatch.delenv("SEGBENCH_DATA", raising=False)
    code, out, _ = run_cli(capsys, "list", "--data-root", str(tmp_path))
    lines = out.splitlines()
    assert code == 0 and lines[0] == f"data root: {tmp_path.resolve()} (from --data-root)"
    status = {ln.split()[0]: ln for ln in lines[1:]}
    assert " present " in status["cityscapes"] and " missing " in status["gta5"]
    assert "generated on first use" in status["sim"]  # the embedded domains write themselves
    monkeypatch.setenv("SEGBENCH_DATA", str(tmp_path))
    code, out, _ = run_cli(capsys, "list")
    assert out.splitlines()[0] == f"data root: {tmp_path.resolve()} (from $SEGBENCH_DATA)"
    monkeypatch.delenv("SEGBENCH_DATA")
    monkeypatch.chdir(tmp_path)
    code, out, _ = run_cli(capsys, "list")
    assert out.splitlines()[0] == f"data root: {(tmp_path / 'datasets').resolve()} (from the default ./datasets)"
