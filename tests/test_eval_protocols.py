"""Issue 13, items 3 and 6: named evaluation protocols (`eval.protocol`) and the study's class set (`eval.classes`).

Expected values are worked out here from the official code's definitions (sizes and crop offsets typed in, Pillow's
nearest sampling as an index formula, RobustNet's CenterCropPad transcribed with Pillow's own operations), never read
back from segbench.
"""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

import label_tables as lt
import minitrees as mt
from segbench import network, pipeline
from segbench.cells import DONE, FINAL_WEIGHTS, plan
from segbench.config import ADDED_SETTINGS, EVAL_CLASS_SETS, EVAL_PROTOCOLS, ConfigError, apply_overrides, \
    load_config, validate
from segbench.data import DATASETS
from segbench.data.adapters.mapillary import Mapillary
from segbench.data.eval_protocols import TARGET_GEOMETRY, ImageResize, ReinMapillary, RobustNetCentreCrop, \
    geometry_for, jpeg_roundtrip
from segbench.data.transforms import eval_transform_for
from segbench.io import save_torch
from segbench.labels import CLASS_NAMES, CLASS_SETS, scored_classes
from segbench.record import is_done, missing_targets, new_record, write_record
from segbench.spec import parse_specs
from tiny_models import PixelModel

FRAME_H, FRAME_W = 1080, 1920


def pillow_nearest(n_in: int, n_out: int) -> np.ndarray:
    """Source index of each output pixel of Pillow's NEAREST resize along one axis: the sample position starts at
    0.5 * n_in / n_out and steps by n_in / n_out in double precision, truncated (the stepping also decides where
    (i + 0.5) * n_in / n_out lands exactly on an integer). OpenCV's INTER_NEAREST_EXACT agrees; INTER_NEAREST does not."""
    step, pos, out = n_in / n_out, 0.5 * n_in / n_out, []
    for _ in range(n_out):
        out.append(int(pos))
        pos += step
    return np.array(out)


def robustnet_reference(image: np.ndarray, mask: np.ndarray, size: int = 1536):
    """RobustNet's ResizeHeight(size) + CenterCropPad(size) (transforms/joint_transforms.py), statement by statement
    with Pillow, as create_extra_val_loader builds it for Mapillary (CenterCropPad's ignore_index left at 0)."""
    img, msk = Image.fromarray(image), Image.fromarray(mask)
    w, h = img.size
    target_w = int(w / h * size)
    img, msk = img.resize((target_w, size), Image.BICUBIC), msk.resize((target_w, size), Image.NEAREST)
    w, h = img.size
    tw, th = size, size
    pad_x = tw - w if w < tw else 0
    pad_y = th - h if h < th else 0
    if pad_x or pad_y:
        img = ImageOps.expand(img, border=(pad_x, pad_y, pad_x, pad_y), fill=0)
        msk = ImageOps.expand(msk, border=(pad_x, pad_y, pad_x, pad_y), fill=0)
    x1, y1 = int(round((w - tw) / 2.0)), int(round((h - th) / 2.0))
    box = (x1, y1, x1 + tw, y1 + th)
    return np.asarray(img.crop(box)), np.asarray(msk.crop(box))


def varied_mask(h: int, w: int) -> np.ndarray:
    """Neighbouring pixels differ in both directions, so any off-by-one in a resize or crop shows."""
    return ((np.arange(w)[None, :] * 7 + np.arange(h)[:, None] * 13) % 251).astype(np.uint8)


def varied_image(h: int, w: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def mapillary_1920x1080(tmp_path_factory):
    """A Mapillary validation tree with one 1920 x 1080 frame; returns (dataset, its decoded trainIds)."""
    root = tmp_path_factory.mktemp("mapillary")
    raw = mt.raw_frame(lt.MAPILLARY_RAW_IDS, 0, h=FRAME_H, w=FRAME_W)
    mt.write_rgb(root / "validation" / "images" / "frame0.jpg", mt.image(0, h=FRAME_H, w=FRAME_W))
    mt.write_palette(root / "validation" / "labels" / "frame0.png", raw)
    return Mapillary(root, "val"), mt.decode(raw, lt.MAPILLARY_ID_TO_TRAINID)


# -- item 3: the three Mapillary protocols on a 1920 x 1080 frame ----------------------------------------------------
def test_robustnet_protocol_scores_a_1536_square_of_the_label_resized_to_1536_high(mapillary_1920x1080):
    ds, truth = mapillary_1920x1080
    ds.transform = eval_transform_for(ds, None, "robustnet")
    image, mask = ds[0]
    assert tuple(image.shape) == (3, 1536, 1536) and tuple(mask.shape) == (1536, 1536)
    # height 1080 -> 1536, width int(1920 / 1080 * 1536) = int(2730.67) = 2730; crop corner round((2730 - 1536) / 2) = 597
    rows, cols = pillow_nearest(FRAME_H, 1536), pillow_nearest(FRAME_W, 2730)[597:597 + 1536]
    assert torch.equal(mask, torch.from_numpy(truth[rows][:, cols]).long())


def test_robustnet_geometry_matches_the_official_pillow_steps_wide_and_narrow():
    """A landscape frame (cropped) and a portrait one (padded, with the official off-centre window)."""
    geometry = RobustNetCentreCrop()
    for h, w in ((FRAME_H, FRAME_W), (FRAME_W, FRAME_H)):
        image, mask = varied_image(h, w), varied_mask(h, w)
        got_image, got_mask = geometry(image, mask)
        want_image, want_mask = robustnet_reference(image, mask)
        assert np.array_equal(got_mask, want_mask) and np.array_equal(got_image, want_image), (h, w)


def test_robustnet_pads_a_portrait_frame_off_centre_with_road():
    """1080 x 1920 (w x h): resized to 864 x 1536, padded by 672 a side, window at x1 = round(-336) = -336 of the padded
    frame: 336 columns outside it, 672 of padding (label 0 = road), then the frame's columns 0..527; 528..863 unscored."""
    mask = varied_mask(FRAME_W, FRAME_H)
    _, got = RobustNetCentreCrop()(varied_image(FRAME_W, FRAME_H), mask)
    resized = mask[pillow_nearest(FRAME_W, 1536)][:, pillow_nearest(FRAME_H, 864)]
    assert got.shape == (1536, 1536)
    assert (got[:, :1008] == 0).all()
    assert np.array_equal(got[:, 1008:], resized[:, :528])


def test_native_protocol_scores_the_whole_frame_at_native_resolution(mapillary_1920x1080):
    ds, truth = mapillary_1920x1080
    ds.transform = eval_transform_for(ds, None, "native")
    image, mask = ds[0]
    assert torch.equal(mask, torch.from_numpy(truth).long())  # 1080 x 1920, untouched
    assert tuple(image.shape) == (3, 1536, 2731)  # the image alone: round(1920 * 1536 / 1080) = round(2730.67)
    assert eval_transform_for(ds).geometry == eval_transform_for(ds, None, "native").geometry  # the default


def test_rein_protocol_scores_mapillary_halved_and_feeds_1024x512(mapillary_1920x1080):
    """mapillary_resize.py halves image and label (1920 x 1080 -> 960 x 540; Pillow nearest takes the odd rows and
    columns, (2i + 0.5) * 2 -> 2i + 1); Resize(scale=(1024, 512), keep_ratio=True) then fits the image: factor
    min(1024 / 960, 512 / 540) = 512 / 540, size (int(960 * 512 / 540 + 0.5), int(540 * 512 / 540 + 0.5)) = (910, 512)."""
    ds, truth = mapillary_1920x1080
    ds.transform = eval_transform_for(ds, None, "rein")
    image, mask = ds[0]
    assert torch.equal(mask, torch.from_numpy(truth[1::2, 1::2]).long())
    assert tuple(image.shape) == (3, 512, 910)


@pytest.mark.parametrize("name, frame, fed", [
    ("cityscapes", (1024, 2048), (512, 1024)),  # scale (1024, 512): factor min(1024 / 2048, 512 / 1024) = 0.5
    ("bdd100k", (720, 1280), (720, 1280)),  # scale (1280, 720): factor 1, the frame as it is
    ("gta5", (1052, 1914), (704, 1280)),  # factor min(1280 / 1914, 720 / 1052) = 1280 / 1914; 1052 * 0.6688 = 703.5
    ("acdc-night", (1080, 1920), (540, 960)),  # scale (960, 540): factor 0.5
])
def test_rein_protocol_fits_each_target_its_configs_size_and_keeps_the_label(name, frame, fed):
    mask = varied_mask(*frame)
    out = eval_transform_for(Named(name), None, "rein")(image=varied_image(*frame), mask=mask)
    assert tuple(out["image"].shape) == (3, *fed)
    assert torch.equal(out["mask"], torch.from_numpy(mask).long())


def test_rein_mapillary_image_is_reencoded_as_pillow_jpeg_quality_75(mapillary_1920x1080):
    """mapillary_resize.py saves the halved image with `im.save(...jpg)`: Pillow's default quality is 75."""
    image = np.clip(np.add.outer(np.arange(64), np.arange(96))[..., None] * [1, 2, 3] % 256, 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=75)
    assert np.array_equal(jpeg_roundtrip(image), np.asarray(Image.open(buffer).convert("RGB")))
    assert not np.array_equal(jpeg_roundtrip(image), image)  # lossy: the re-encoding is part of the protocol
    assert isinstance(geometry_for(mapillary_1920x1080[0], "rein"), ReinMapillary)


class Named:
    """A stand-in dataset: just the registered name a protocol looks up, and no `eval_height`."""

    def __init__(self, name: str):
        self.dataset_name = name


def test_protocol_tables_name_registered_datasets_and_default_to_native():
    assert set(EVAL_PROTOCOLS) == set(TARGET_GEOMETRY) == {"native", "robustnet", "rein"}
    registered = set(DATASETS.names())
    for protocol, table in TARGET_GEOMETRY.items():
        assert set(table) <= registered, protocol  # a misspelt name would silently fall back to native
        for name in registered:
            assert len(eval_transform_for(Named(name), None, protocol).target_size(FRAME_H, FRAME_W)) == 2
    for protocol in EVAL_PROTOCOLS:  # a prepared copy and an unlisted dataset: native
        assert geometry_for(Named("mapillary@1024x768"), protocol) == ImageResize()
        assert geometry_for(Named("synthia"), protocol) == ImageResize()


def test_protocol_settings_are_checked_before_any_work():
    with pytest.raises(ConfigError, match=r"eval.protocol='mmseg': expected one of 'native', 'robustnet', 'rein'"):
        validate(apply_overrides(load_config(None), ["eval.protocol=mmseg"]))
    with pytest.raises(ConfigError, match=r"eval.size=\[512, 1024\]: eval.protocol='robustnet' fixes the sizes"):
        validate(apply_overrides(load_config(None), ["eval.protocol=robustnet", "eval.size=[512,1024]"]))
    with pytest.raises(ConfigError, match=r"eval.classes=17: expected one of null, 19, 16, 13"):
        validate(apply_overrides(load_config(None), ["eval.classes=17"]))
    assert validate(apply_overrides(load_config(None), ["eval.protocol=rein", "eval.classes=13"]))["eval"]["classes"] == 13


# -- item 6: the class set is the study's --------------------------------------------------------------------------
SYNTHIA16 = ("road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
             "sky", "person", "rider", "car", "bus", "motorcycle", "bicycle")
# MaxSquareLoss utils/eval.py synthia_set_13 = [0, 1, 2, 6, 7, 8, 10, 11, 12, 13, 15, 17, 18]
SYNTHIA13 = ("road", "sidewalk", "building", "traffic light", "traffic sign", "vegetation", "sky", "person", "rider",
             "car", "bus", "motorcycle", "bicycle")


def test_class_sets():
    assert tuple(CLASS_SETS) == EVAL_CLASS_SETS
    assert [CLASS_NAMES[c] for c in CLASS_SETS[16]] == list(SYNTHIA16)
    assert [CLASS_NAMES[c] for c in CLASS_SETS[13]] == list(SYNTHIA13)
    assert len(CLASS_SETS[19]) == 19
    assert scored_classes(CLASS_SETS[19], None) == CLASS_SETS[19]  # no study set: the dataset's own
    assert scored_classes(DATASETS.get("synthia16").eval_classes, 19) == CLASS_SETS[16]  # never a class it lacks
    assert scored_classes(DATASETS.get("cityscapes").eval_classes, 13) == CLASS_SETS[13]
    assert scored_classes((0, 3, 9), 16) == (0, 3)


@pytest.fixture
def synthia_and_cityscapes(tmp_path, monkeypatch):
    """SYNTHIA and Cityscapes miniatures; PixelModel. SYNTHIA's frames 0..3 split as RobustNet's shipped lists say
    (train 1, 2; val 0, 3); the lists' thousands of other frames are absent, which the adapter warns about."""
    data_root = tmp_path / "data"
    mt.make_synthia(data_root / "synthia", count=4)
    mt.make_cityscapes(data_root / "cityscapes")
    monkeypatch.setattr(network, "create_model", lambda *a, **k: PixelModel())
    return data_root


@pytest.mark.filterwarnings("ignore:Synthia 'val'.*missing image")
def test_synthia_to_cityscapes_study_scores_16_classes(tmp_path, synthia_and_cityscapes):
    """The shipped experiments/synthia_dg.yaml (eval.classes: 16) on SYNTHIA -> Cityscapes: every target's mIoU is the
    mean over those 16 classes; changing the class set re-scores the finished cell (19 entries)."""
    # the miniature lacks most frames RobustNet's val list names: scored without them, on purpose
    cfg = apply_overrides(load_config("synthia_dg"), ["eval.workers=0", "eval.dump=0", "eval.missing_pairs=skip"])
    (cell,) = plan(cfg, parse_specs(["synthia->cityscapes"]), ["resnet50"], ["deeplabv3plus"])
    cell_dir = cell.directory(tmp_path / "results")
    cell_dir.mkdir(parents=True)
    torch.manual_seed(0)
    save_torch(cell_dir / FINAL_WEIGHTS, PixelModel().state_dict())  # trained: the cell only scores
    record = pipeline.run_cell(cell, cell_dir, data_root=synthia_and_cityscapes, device=torch.device("cpu"))
    for target in ("synthia", "cityscapes"):
        per_class = record["results"][target]["per_class_iou"]
        assert tuple(per_class) == SYNTHIA16
        present = [v for v in per_class.values() if v is not None]
        assert record["results"][target]["num_classes_scored"] == len(present) > 0
        assert record["results"][target]["miou"] == pytest.approx(np.mean(present))
    assert is_done(cell, cell_dir)

    # `segbench evaluate` on the cell scores under the settings the cell was scored under: 16 classes again
    import json

    import segbench.network as network_mod
    from segbench.evaluate import main as evaluate_main

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(network_mod, "create_model", lambda *a, **k: PixelModel())
        out = tmp_path / "evaluate.json"
        assert evaluate_main([str(cell_dir), "--dataset", "cityscapes", "--data-root", str(synthia_and_cityscapes),
                              "--device", "cpu", "--output", str(out)]) == 0
    scored = json.loads(out.read_text())
    assert set(scored["per_class_iou"]) == set(SYNTHIA16)  # the JSON file sorts its keys
    assert scored["miou"] == pytest.approx(record["results"]["cityscapes"]["miou"])

    cell.eval = {**cell.eval, "classes": None}
    assert missing_targets(cell, cell_dir) == ["synthia", "cityscapes"]
    record = pipeline.run_cell(cell, cell_dir, data_root=synthia_and_cityscapes, device=torch.device("cpu"))
    assert len(record["results"]["cityscapes"]["per_class_iou"]) == 19
    assert len(record["results"]["synthia"]["per_class_iou"]) == 19  # `synthia` is the 19-class name


def test_a_cell_scored_before_protocols_and_class_sets_existed_stays_done(tmp_path):
    """The eval identity an embedded cell recorded before `eval.protocol` and `eval.classes` (computed with the
    config.py of the commit before them) still matches: nothing is re-scored. A new protocol is."""
    recorded_before = {"split": "val", "size": None, "mode": "whole", "window": None, "stride": None, "flip": False,
                       "scales": [1.0]}
    assert ADDED_SETTINGS["eval"] == {"protocol": "native", "classes": None}
    cfg = load_config("embedded")
    (cell,) = plan(cfg, parse_specs(cfg["specs"]), ["resnet18"], ["fcn"])[:1]
    cell_dir = cell.directory(tmp_path)
    cell_dir.mkdir(parents=True)
    record = new_record(cell)
    record["results"] = {t: {"miou": 50.0, "eval": recorded_before} for t in cell.eval_targets}
    write_record(cell_dir, record)
    (cell_dir / DONE).touch()
    assert is_done(cell, cell_dir)
    cell.eval = {**cell.eval, "protocol": "rein"}
    assert missing_targets(cell, cell_dir) == list(cell.eval_targets)
