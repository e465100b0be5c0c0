"""Each real-dataset adapter against a miniature tree in the official layout and file format."""
from __future__ import annotations

import hashlib
import warnings

import numpy as np
import pytest
import torch

import label_tables as lt
import minitrees as mt
from segbench.data.adapters import acdc, bdd100k, cityscapes, gta5, mapillary, synthia  # noqa: F401  (registers the adapters)
from segbench.data.base import DatasetError, DatasetWarning, SizeMismatchError
from segbench.data.factory import build_dataset
from segbench.data.registry import DATASETS


def assert_decodes(ds, truth):
    """Every pair decodes to exactly the trainIds the tree was generated from, image included."""
    assert len(ds) == len(truth)
    for i, (image_path, _) in enumerate(ds.pairs):
        image, label = ds[i]
        assert image.dtype == np.uint8 and image.shape == (mt.H, mt.W, 3)
        assert label.dtype == np.uint8
        np.testing.assert_array_equal(label, truth[image_path])


def open_quietly(name, root, split):
    with warnings.catch_warnings():
        warnings.simplefilter("error", DatasetWarning)  # a clean tree must not warn
        return DATASETS.get(name)(root, split=split)


# ------------------------------------------------------------------------------------------------ id tables
TABLE_CASES = {
    # name: (adapter, split, tree, raw ids the files hold, table typed in from the primary source)
    "cityscapes": ("cityscapes", "val", mt.make_cityscapes, lt.CITYSCAPES_RAW_IDS, lt.CITYSCAPES_ID_TO_TRAINID),
    "gta5": ("gta5", "all", mt.make_gta5, lt.CITYSCAPES_RAW_IDS, lt.CITYSCAPES_ID_TO_TRAINID),
    "synthia": ("synthia", "all", mt.make_synthia, lt.SYNTHIA_RAW_IDS, lt.SYNTHIA_ID_TO_TRAINID),
    "bdd100k": ("bdd100k", "val", mt.make_bdd100k, lt.TRAINID_RAW_IDS, lt.TRAINID_TO_TRAINID),
    "mapillary": ("mapillary", "val", mt.make_mapillary, lt.MAPILLARY_RAW_IDS, lt.MAPILLARY_ID_TO_TRAINID),
    "acdc-trainids": ("acdc", "val", mt.make_acdc, lt.TRAINID_RAW_IDS, lt.TRAINID_TO_TRAINID),
    "acdc-labelids": ("acdc", "val", lambda root: mt.make_acdc(root, label_files=("_gt_labelIds.png",)),
                      lt.CITYSCAPES_RAW_IDS, lt.CITYSCAPES_ID_TO_TRAINID),
}


@pytest.mark.parametrize("case", list(TABLE_CASES))
def test_every_raw_id_decodes_as_the_primary_table_says(tmp_path, case):
    """Each raw id the download can hold (several per class for Mapillary, ignored ones included) -> the trainId of the
    table typed in from cityscapesScripts / RobustNet; the tree covers every id and every trainId 0..18."""
    name, split, make, raw_ids, table = TABLE_CASES[case]
    make(tmp_path)
    ds = open_quietly(name, tmp_path, split)
    decoded = {}
    for i in range(len(ds)):
        _, raw, label = ds.load_pair_raw(i)
        for r in np.unique(raw):
            decoded.setdefault(int(r), set()).update(np.unique(label[raw == r]).tolist())
    assert sorted(decoded) == sorted(raw_ids), "the miniature tree must hold every raw id"
    wrong = {r: sorted(got) for r, got in decoded.items() if got != {table.get(r, lt.IGNORE)}}
    assert not wrong, f"raw id -> decoded trainIds, expected {{{', '.join(f'{r}: {table.get(r, 255)}' for r in wrong)}}}: {wrong}"
    assert set().union(*decoded.values()) == set(range(19)) | {lt.IGNORE}


# ------------------------------------------------------------------------------------------------ Cityscapes
def test_cityscapes_from_label_ids_alone(tmp_path):
    truth = mt.make_cityscapes(tmp_path)
    for split, count in (("train", 3), ("val", 2)):
        ds = open_quietly("cityscapes", tmp_path, split)
        assert len(ds) == count and all(p[1].name.endswith("_gtFine_labelIds.png") for p in ds.pairs)
        assert_decodes(ds, {k: v for k, v in truth.items() if f"/{split}/" in str(k)})


def test_cityscapes_prefers_train_id_files(tmp_path):
    truth = mt.make_cityscapes(tmp_path, trainid_files=True)
    ds = open_quietly("cityscapes", tmp_path, "train")
    assert all(p[1].name.endswith("_gtFine_labelTrainIds.png") for p in ds.pairs)
    assert_decodes(ds, {k: v for k, v in truth.items() if "/train/" in str(k)})


def test_cityscapes_missing_label_is_skipped_with_one_warning(tmp_path):
    mt.make_cityscapes(tmp_path)
    gone = next(p for p in (tmp_path / "gtFine/train").rglob("*_labelIds.png"))
    gone.unlink()
    with pytest.warns(DatasetWarning) as record:
        ds = cityscapes.Cityscapes(tmp_path, "train")
    assert len(record) == 1 and "1 missing label" in str(record[0].message)
    assert gone.name.replace("_gtFine_labelIds", "_leftImg8bit") in str(record[0].message)
    assert len(ds) == 2 and ds.skipped[0].kind == "missing label"


# ------------------------------------------------------------------------------------------------ GTA5
def test_gta5_reads_palette_index_not_colour(tmp_path):
    truth = mt.make_gta5(tmp_path)
    ds = open_quietly("gta5", tmp_path, "all")
    assert_decodes(ds, truth)


def test_gta5_skips_size_mismatch_and_missing_label_with_one_warning(tmp_path):
    mt.make_gta5(tmp_path, count=6)
    mt.write_palette(tmp_path / "labels/00002.png", np.zeros((mt.H - 2, mt.W), np.uint8))  # 64x30 label for a 64x32 image
    (tmp_path / "labels/00004.png").unlink()
    with pytest.warns(DatasetWarning) as record:
        ds = gta5.GTA5(tmp_path, "all")
    assert len(record) == 1
    message = str(record[0].message)
    assert "skipped 2 of 6" in message and "1 size mismatch: 00002.png [image 64x32, label 64x30]" in message
    assert "1 missing label: 00004.png" in message
    assert [p[0].name for p in ds.pairs] == ["00001.png", "00003.png", "00005.png", "00006.png"]
    for i in range(len(ds)):  # a whole epoch goes through
        ds[i]


def test_gta5_robustnet_splits_are_shipped_and_disjoint():
    names = {s: gta5.read_split_list(gta5.SPLIT_DIR / f, gta5.FRAME_DIGITS) for s, f in gta5.ROBUSTNET_SPLITS.items()}
    assert {s: len(v) for s, v in names.items()} == {"train": 12388, "val": 6382, "test": 6181}
    sets = {s: set(v) for s, v in names.items()}
    assert not (sets["train"] & sets["val"]) and not (sets["train"] & sets["test"]) and not (sets["val"] & sets["test"])
    union = {int(n[:5]) for v in sets.values() for n in v}
    unused = set(range(1, 24967)) - union
    assert unused == {12160, 12166, 12167, 12191, 12192, 12193, 12195, *range(12202, 12209), 19993}


def test_jpeg_with_an_exif_orientation_is_read_as_stored(tmp_path):
    """A JPEG tagged "rotate 90" (EXIF Orientation 6) reads as its stored pixels, as PIL gives them to RobustNet's
    loaders and as its label PNG was drawn: OpenCV's plain IMREAD_COLOR would turn it to 64x32 and the pair would
    no longer line up."""
    from PIL import Image

    truth = mt.make_mapillary(tmp_path, n={"validation": 1})
    (path,) = truth
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.open(path).save(path, quality=95, exif=exif)
    ds = open_quietly("mapillary", tmp_path, "val")
    image, label = ds[0]
    assert image.shape == (mt.H, mt.W, 3)
    stored = np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)
    assert np.abs(image.astype(np.int16) - stored).mean() < 2  # the same pixels, up to the two decoders' rounding
    np.testing.assert_array_equal(label, truth[path])


def test_gta5_robustnet_split_lists_are_the_upstream_files():
    """Byte for byte shachoi/RobustNet `split_data/gtav_split_{train,val,test}.txt` (commit c6ee8ce): SHA-256 of the
    upstream files, so an edited or re-transcribed list cannot pass for RobustNet's split."""
    upstream = {
        "train": "44e8f5f3891907c1693f4c8422b3822b79eb44f643bde4397a12362c5f1cc10e",
        "val": "c5647af8f75ec9dbaf7ca07c899aa0fa675ccc9a4e887f7a72e560bd7da27837",
        "test": "d38ff2920f6ff852829e6fccd2db556b71c56a158f4f76084b29d4fc3fd172e2",
    }
    shipped = {s: hashlib.sha256((gta5.SPLIT_DIR / f).read_bytes()).hexdigest() for s, f in gta5.ROBUSTNET_SPLITS.items()}
    assert shipped == upstream


def test_gta5_split_selects_listed_frames_and_reports_listed_but_absent(tmp_path, monkeypatch):
    mt.make_gta5(tmp_path, count=4)
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists/val.txt").write_text("00002.png\n3\n00009.png\n")
    monkeypatch.setattr(gta5, "SPLIT_DIR", tmp_path / "lists")
    monkeypatch.setitem(gta5.ROBUSTNET_SPLITS, "val", "val.txt")
    with pytest.warns(DatasetWarning, match="1 missing image: 00009.png"):
        ds = gta5.GTA5(tmp_path, "val")
    assert [p[0].name for p in ds.pairs] == ["00002.png", "00003.png"]


def test_gta5_missing_split_list_names_where_to_put_it(tmp_path, monkeypatch):
    mt.make_gta5(tmp_path, count=2)
    monkeypatch.setattr(gta5, "SPLIT_DIR", tmp_path / "nowhere")
    with pytest.raises(DatasetError, match=r"(?s)nowhere/gta5_robustnet_train.txt not found.*copy the list"):
        gta5.GTA5(tmp_path, "train")


def test_gta5_official_split_mat(tmp_path):
    scipy_io = pytest.importorskip("scipy.io")
    mt.make_gta5(tmp_path, count=5)
    scipy_io.savemat(tmp_path / "split.mat", {"trainIds": np.array([[1], [2], [5]]), "valIds": np.array([[3]]), "testIds": np.array([[4]])})
    assert [p[0].name for p in gta5.GTA5(tmp_path, "official-train").pairs] == ["00001.png", "00002.png", "00005.png"]
    assert [p[0].name for p in gta5.GTA5(tmp_path, "official-test").pairs] == ["00004.png"]
    (tmp_path / "split.mat").unlink()
    with pytest.raises(DatasetError, match="(?s)split.mat not found.*read_mapping"):
        gta5.GTA5(tmp_path, "official-val")


def test_gta5_id_outside_table_is_ignored_and_reported(tmp_path):
    mt.make_gta5(tmp_path, count=1)
    raw = np.full((mt.H, mt.W), 7, np.uint8)
    raw[0, :5] = 40  # no Cityscapes id 40
    mt.write_palette(tmp_path / "labels/00001.png", raw)
    ds = gta5.GTA5(tmp_path, "all")
    image, raw_read, label = ds.load_pair_raw(0)
    assert (label[0, :5] == 255).all() and (label[1:] == 0).all()
    assert ds.unknown_label_values(raw_read, ds.pairs[0][1]) == {40: 5}


def test_gta5_rgb_label_is_refused_with_the_reason(tmp_path):
    mt.make_gta5(tmp_path, count=1)
    mt.write_rgb(tmp_path / "labels/00001.png", mt.image(0))
    ds = gta5.GTA5(tmp_path, "all")
    with pytest.raises(DatasetError, match="expected a palette PNG"):
        ds[0]


def test_corrupt_png_fails_when_read_naming_the_file(tmp_path):
    mt.make_gta5(tmp_path, count=2)
    mt.corrupt(tmp_path / "images/00002.png")
    ds = gta5.GTA5(tmp_path, "all")  # header intact: only decoding can tell
    ds[0]
    with pytest.raises(DatasetError, match="00002.png"):
        ds[1]


# ------------------------------------------------------------------------------------------------ SYNTHIA
@pytest.mark.parametrize("name, n_eval", [("synthia", 19), ("synthia16", 16)])
def test_synthia_reads_class_from_r_channel_of_16_bit_labels(tmp_path, name, n_eval):
    truth = mt.make_synthia(tmp_path)
    ds = open_quietly(name, tmp_path, "all")
    assert_decodes(ds, truth)
    assert len(ds.eval_classes) == n_eval
    assert not {9, 14, 16} & set(ds.eval_classes) or n_eval == 19


def test_synthia_unknown_16_bit_id_is_reported(tmp_path):
    mt.make_synthia(tmp_path, count=1)
    label = np.zeros((mt.H, mt.W, 3), np.uint16)
    label[:, :, 2] = 3
    label[0, 0, 2] = 300
    mt.write_gray(tmp_path / "GT/LABELS/0000000.png", label)
    ds = synthia.Synthia(tmp_path, "all")
    _, raw, decoded = ds.load_pair_raw(0)
    assert decoded[0, 0] == 255 and decoded[0, 1] == 0
    assert ds.unknown_label_values(raw, ds.pairs[0][1]) == {300: 1}


# ------------------------------------------------------------------------------------------------ BDD100K, Mapillary, ACDC
@pytest.mark.parametrize("legacy", [False, True])
def test_bdd100k_both_layouts(tmp_path, legacy):
    truth = mt.make_bdd100k(tmp_path, legacy=legacy)
    for split in ("train", "val"):
        ds = open_quietly("bdd100k", tmp_path, split)
        assert_decodes(ds, {k: v for k, v in truth.items() if f"/{split}/" in str(k)})


@pytest.mark.parametrize("nested", [False, True])
def test_mapillary_both_archive_layouts(tmp_path, nested):
    truth = mt.make_mapillary(tmp_path, nested=nested)
    ds = open_quietly("mapillary", tmp_path, "val")
    assert_decodes(ds, {k: v for k, v in truth.items() if "/validation/" in str(k)})
    assert ds.eval_height == 1536


def test_acdc_per_condition_and_all(tmp_path):
    truth = mt.make_acdc(tmp_path)
    assert len(open_quietly("acdc", tmp_path, "val")) == 4
    for condition in ("fog", "night", "rain", "snow"):
        ds = open_quietly(f"acdc-{condition}", tmp_path, "val")
        assert len(ds) == 1 and f"/{condition}/" in str(ds.pairs[0][0])
        assert_decodes(ds, {k: v for k, v in truth.items() if f"/{condition}/val/" in str(k)})


def test_acdc_reference_frames_are_not_taken_as_frames(tmp_path):
    """ACDC's clear-weather references (`rgb_anon/COND/{train,val}_ref/SEQ/NAME_rgb_ref_anon.png`, no labels) are not
    frames of the condition, wherever an unpacked copy puts them."""
    truth = mt.make_acdc(tmp_path, conditions=("fog",))
    for seq_dir in (tmp_path / "rgb_anon/fog/val").iterdir():
        stem = next(seq_dir.glob("*_rgb_anon.png")).name[: -len("_rgb_anon.png")]
        mt.write_rgb(tmp_path / "rgb_anon/fog/val_ref" / seq_dir.name / f"{stem}_rgb_ref_anon.png", mt.image(7))
        mt.write_rgb(seq_dir / f"{stem}_rgb_ref_anon.png", mt.image(7))  # references unpacked beside the frames
    ds = open_quietly("acdc-fog", tmp_path, "val")
    assert [p[0].name.endswith("_rgb_anon.png") for p in ds.pairs] == [True]
    assert_decodes(ds, {k: v for k, v in truth.items() if "/val/" in str(k)})


def test_acdc_label_ids_files_decode_through_the_cityscapes_table(tmp_path):
    """A copy holding only `_gt_labelIds.png` (Cityscapes ids) decodes to the same trainIds as the trainId files would."""
    truth = mt.make_acdc(tmp_path, conditions=("rain",), label_files=("_gt_labelIds.png",))
    ds = open_quietly("acdc-rain", tmp_path, "val")
    assert [p[1].name.endswith("_gt_labelIds.png") for p in ds.pairs] == [True]
    assert_decodes(ds, {k: v for k, v in truth.items() if "/val/" in str(k)})
    _, raw, _ = ds.load_pair_raw(0)
    assert ds.unknown_label_values(raw, ds.pairs[0][1]) == {}  # ids 19..33 are known Cityscapes ids, not unknown values


def test_acdc_prefers_train_ids_when_both_files_exist(tmp_path):
    truth = mt.make_acdc(tmp_path, conditions=("snow",), label_files=("_gt_labelTrainIds.png", "_gt_labelIds.png"))
    ds = open_quietly("acdc-snow", tmp_path, "train")
    assert [p[1].name.endswith("_gt_labelTrainIds.png") for p in ds.pairs] == [True]
    assert_decodes(ds, {k: v for k, v in truth.items() if "/train/" in str(k)})
    # the same value means different things in the two files: 25 is rider in labelIds, out of range in labelTrainIds
    raw = np.full((2, 2), 25, np.uint8)
    ids_file = ds.pairs[0][1].with_name(ds.pairs[0][1].name.replace("_gt_labelTrainIds", "_gt_labelIds"))
    assert ds.unknown_label_values(raw, ds.pairs[0][1]) == {25: 4} and ds.unknown_label_values(raw, ids_file) == {}
    assert (ds.decode_label(raw, ids_file) == 12).all() and (ds.decode_label(raw, ds.pairs[0][1]) == 255).all()


# ------------------------------------------------------------------------------------------------ errors and plumbing
@pytest.mark.parametrize("name", ["cityscapes", "gta5", "synthia", "bdd100k", "mapillary", "acdc-fog"])
def test_missing_root_names_path_and_layout(tmp_path, name):
    with pytest.raises(DatasetError) as info:
        build_dataset(name, "val" if "val" in DATASETS.get(name).splits else "all", root=tmp_path)
    message = str(info.value)
    assert str(tmp_path / DATASETS.get(name).default_dir) in message and "Expected layout" in message
    assert DATASETS.get(name).layout.splitlines()[0] in message


def test_wrong_layout_names_the_missing_directory(tmp_path):
    mt.make_gta5(tmp_path / "gta5")
    (tmp_path / "gta5/labels").rename(tmp_path / "gta5/gt")
    with pytest.raises(DatasetError, match=r"(?s)label directory .*gta5/labels does not exist.*palette PNG"):
        build_dataset("gta5", "all", root=tmp_path)


def test_unknown_split_lists_valid_ones(tmp_path):
    mt.make_cityscapes(tmp_path)
    with pytest.raises(DatasetError, match=r"unknown split 'test'.*train, val"):
        cityscapes.Cityscapes(tmp_path, "test")


def test_size_mismatch_outside_gta5_fails_loudly_on_read(tmp_path):
    mt.make_bdd100k(tmp_path)
    lab = next((tmp_path / "labels/sem_seg/masks/val").glob("*.png"))
    mt.write_gray(lab, np.zeros((8, 8), np.uint8))
    ds = bdd100k.BDD100K(tmp_path, "val")
    with pytest.raises(SizeMismatchError, match=lab.name):
        [ds[i] for i in range(len(ds))]


def test_dataloader_with_workers_and_transform(tmp_path):
    from segbench.data.workers import worker_init_fn

    mt.make_acdc(tmp_path)
    to_tensor = lambda image, mask: {"image": torch.from_numpy(image).permute(2, 0, 1).float(), "mask": torch.from_numpy(mask).long()}
    ds = DATASETS.get("acdc-night")(tmp_path, "train", transform=to_tensor)
    loader = torch.utils.data.DataLoader(ds, batch_size=1, num_workers=1, worker_init_fn=worker_init_fn)
    image, mask = next(iter(loader))
    assert image.shape == (1, 3, mt.H, mt.W) and mask.dtype == torch.long


def test_synthia_robustnet_split_lists_are_the_upstream_files():
    """shachoi/RobustNet `split_data/synthia_split_{train,val}.txt` (commit c6ee8ce), byte for byte: train 6580 and
    val 2820 frames, disjoint, together every frame 0000000..0009399 of SYNTHIA-RAND-CITYSCAPES."""
    upstream = {"train": "98d60bf5438fcc00deb068a15daf873afbf3cd5fab1cb5ca7f3579b79af9619f",
                "val": "26ea99f4da25965a69850aad04aa10142882b0376de62f22e53e7f1df29958b0"}
    files = {s: synthia.SPLIT_DIR / f for s, f in synthia.ROBUSTNET_SPLITS.items()}
    assert {s: hashlib.sha256(f.read_bytes()).hexdigest() for s, f in files.items()} == upstream
    names = {s: f.read_text().split() for s, f in files.items()}
    assert (len(names["train"]), len(names["val"])) == (6580, 2820)
    assert sorted(names["train"] + names["val"]) == [f"{i:07d}.png" for i in range(9400)]


def test_synthia_val_selects_the_shipped_list_frames(tmp_path):
    """Frames 0000000..0000003 of a copy: RobustNet's val list holds 0000000 and 0000003, its train list the other two."""
    mt.make_synthia(tmp_path, count=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DatasetWarning)  # the thousands of listed frames this miniature lacks
        assert [p[0].name for p in synthia.Synthia(tmp_path, "val").pairs] == ["0000000.png", "0000003.png"]
        assert [p[0].name for p in synthia.Synthia(tmp_path, "train").pairs] == ["0000001.png", "0000002.png"]


def test_synthia_split_lists_from_dataset_root_or_a_clear_error(tmp_path, monkeypatch):
    """Without the shipped lists (a trimmed install), RobustNet's own files under the dataset root are read."""
    monkeypatch.setattr(synthia, "SPLIT_DIR", tmp_path / "no-lists")
    mt.make_synthia(tmp_path, count=4)
    with pytest.raises(DatasetError, match=r"(?s)split list not found.*split_data/synthia_split_val.txt"):
        synthia.Synthia(tmp_path, "val")
    (tmp_path / "split_data").mkdir()
    (tmp_path / "split_data/synthia_split_val.txt").write_text("0000001.png\n0000003.png\n")
    assert [p[0].name for p in synthia.Synthia(tmp_path, "val").pairs] == ["0000001.png", "0000003.png"]
