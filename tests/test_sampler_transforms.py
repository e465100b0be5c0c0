"""Seeded stream sampler (resumable data order) and the transform presets."""
import numpy as np
import pytest
import torch

from segbench.data.sampler import SeededStreamSampler
from segbench.data.transforms import EvalTransform, build_train_transform


def test_stream_is_a_function_of_seed_and_position():
    full = list(SeededStreamSampler(10, seed=3, total=35))
    resumed = list(SeededStreamSampler(10, seed=3, start=17, total=35))
    assert resumed == full[17:]
    assert list(SeededStreamSampler(10, seed=4, total=35)) != full


def test_each_epoch_is_a_permutation():
    idx = [i for i, _ in SeededStreamSampler(7, seed=0, total=21)]
    for e in range(3):
        assert sorted(idx[e * 7:(e + 1) * 7]) == list(range(7))


def test_ranks_split_the_stream_without_overlap():
    full = list(SeededStreamSampler(10, seed=1, total=20))
    r0 = list(SeededStreamSampler(10, seed=1, total=20, rank=0, world_size=2))
    r1 = list(SeededStreamSampler(10, seed=1, total=20, rank=1, world_size=2))
    assert r0 == full[0::2] and r1 == full[1::2]
    assert len(SeededStreamSampler(10, seed=1, total=20, rank=1, world_size=2)) == 10


def _pair(h=50, w=80):
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8), rng.integers(0, 19, (h, w), dtype=np.uint8)


def test_train_transform_moves_image_and_mask_together():
    # a label that encodes its own x coordinate in the image: after flip/scale/crop they must still agree
    h, w = 40, 64
    xs = np.tile(np.arange(w, dtype=np.uint8)[None] % 19, (h, 1))
    image = np.repeat((xs * 13)[..., None], 3, axis=2).astype(np.uint8)
    t = build_train_transform((32, 48), scale_range=(1.0, 1.0), hflip=0.5, mean=(0, 0, 0), std=(1, 1, 1))
    for seed in range(6):
        t.set_random_seed(seed)
        out = t(image=image, mask=xs)
        img = (out["image"][0] * 255).round().long()
        assert torch.equal(img, out["mask"] * 13)


def test_train_transform_pads_masks_with_ignore_not_road():
    image, mask = _pair(20, 30)
    t = build_train_transform((64, 64), scale_range=(1.0, 1.0))
    out = t(image=image, mask=mask)
    assert out["mask"].shape == (64, 64) and out["mask"].dtype == torch.long
    assert (out["mask"] == 255).sum() == 64 * 64 - 20 * 30


def test_train_transform_is_reproducible_per_seed():
    image, mask = _pair()
    t = build_train_transform((32, 32), scale_range=(0.5, 2.0))
    t.set_random_seed(11)
    a = t(image=image, mask=mask)
    t.set_random_seed(11)
    b = t(image=image, mask=mask)
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])


def test_eval_transform_keeps_mask_resolution():
    image, mask = _pair(50, 80)
    out = EvalTransform(size=(25, 40))(image=image, mask=mask)
    assert out["image"].shape == (3, 25, 40) and out["mask"].shape == (50, 80)
    assert torch.equal(out["mask"], torch.from_numpy(mask).long())


def test_scaled_crops_keep_image_and_mask_aligned():
    """Blocks of constant class; after scale+crop the image still says which class each pixel has."""
    h, w = 60, 90
    mask = ((np.arange(h)[:, None] // 15) * 4 + (np.arange(w)[None] // 15)).astype(np.uint8) % 19
    image = np.repeat((mask * 13)[..., None], 3, axis=2).astype(np.uint8)
    t = build_train_transform((40, 40), scale_range=(0.5, 2.0), hflip=0.5, mean=(0, 0, 0), std=(1, 1, 1))
    for seed in range(10):
        t.set_random_seed(seed)
        out = t(image=image, mask=mask)
        assert out["image"].shape == (3, 40, 40) and out["mask"].shape == (40, 40)
        valid = out["mask"] != 255
        decoded = (out["image"][0] * 255 / 13).round().long()
        agree = (decoded[valid] == out["mask"][valid]).float().mean().item()
        assert agree > 0.85, (seed, agree)


def test_scale_range_is_respected():
    """At scale 2 a 40x40 crop covers ~20x20 source pixels: a mask with 1-pixel stripes shows runs of 2."""
    mask = np.tile((np.arange(80) % 2).astype(np.uint8)[None], (80, 1))
    image = np.zeros((80, 80, 3), np.uint8)
    t = build_train_transform((40, 40), scale_range=(2.0, 2.0), hflip=0.0)
    t.set_random_seed(0)
    row = t(image=image, mask=mask)["mask"][0].tolist()
    runs = [len(list(g)) for _, g in __import__("itertools").groupby(row)]
    assert set(runs[1:-1]) == {2}


# -- class-uniform sampling -----------------------------------------------------------------------------------------
def test_class_uniform_draws_rare_classes_as_often_as_common_ones():
    from segbench.data.class_uniform import ClassUniformStreamSampler

    presence = [[0, 2]] * 98 + [[0, 16]] * 2  # 'train' (16) is in 2% of the images
    items = list(ClassUniformStreamSampler(presence, 1.0, seed=0, total=3000))
    focus = [f for _, _, f in items]
    share = {c: focus.count(c) / len(focus) for c in (0, 2, 16)}
    assert all(abs(v - 1 / 3) < 0.05 for v in share.values()), share
    assert all(16 in presence[i] for i, _, f in items if f == 16)
    mixed = list(ClassUniformStreamSampler(presence, 0.5, seed=0, total=2000))
    assert 0.4 < sum(f >= 0 for _, _, f in mixed) / 2000 < 0.6
    assert list(ClassUniformStreamSampler(presence, 0.5, seed=0, start=700, total=2000)) == mixed[700:]


def test_focus_crop_contains_the_class():
    mask = np.zeros((100, 100), np.uint8)
    mask[90:93, 5:8] = 16  # a tiny 'train' in a corner
    image = np.zeros((100, 100, 3), np.uint8)
    t = build_train_transform((32, 32), scale_range=(0.5, 2.0), hflip=0.5)
    for seed in range(20):
        t.set_random_seed(seed)
        assert (t(image=image, mask=mask, focus=16)["mask"] == 16).any(), seed


def test_focus_on_the_last_columns_below_half_scale():
    """A GTA5-wide frame (1914 px) at s = 0.402 is 769 px (rounded) wide, and the last source column lands at
    int(1913 * 0.402) = 769, outside it: the crop window must still be drawn (it raised ValueError) and hold the class.
    scale_range [0.402, 0.402] is a valid setting (config: 0 < LOW <= HIGH)."""
    image = np.zeros((6, 1914, 3), np.uint8)
    t = build_train_transform((4, 768), scale_range=(0.402, 0.402), hflip=0.0)
    for width in (1, 8):  # the last column alone (every draw anchors there), then a band wide enough to survive
        mask = np.zeros((6, 1914), np.uint8)
        mask[:, -width:] = 16
        for seed in range(6):
            t.set_random_seed(seed)
            out = t(image=image, mask=mask, focus=16)
            assert out["mask"].shape == (4, 768), seed
            if width > 1:  # nearest downsampling by 2.5 can skip a single column, not 8
                assert (out["mask"] == 16).any(), seed


def test_extra_transforms_draw_independently_of_the_flip():
    """Compose.set_random_seed seeds every transform with the same random.Random(seed): an extra VerticalFlip(p=0.5)
    was applied exactly when the horizontal flip was. Both flips must vary independently over seeds, and adding an
    extra transform must not change which samples are flipped horizontally."""
    import albumentations as A

    mask = np.arange(64, dtype=np.uint8).reshape(8, 8)  # corner value tells both flips apart
    image = np.zeros((8, 8, 3), np.uint8)
    plain = build_train_transform((8, 8), scale_range=(1.0, 1.0), hflip=0.5)
    extra = build_train_transform((8, 8), scale_range=(1.0, 1.0), hflip=0.5, extra=[A.VerticalFlip(p=0.5)])
    combos = {}
    for seed in range(200):
        plain.set_random_seed(seed)
        extra.set_random_seed(seed)
        corner = int(extra(image=image, mask=mask)["mask"][0, 0])
        h_flipped, v_flipped = corner % 8 == 7, corner >= 56
        assert h_flipped == (int(plain(image=image, mask=mask)["mask"][0, 0]) == 7), seed
        combos[h_flipped, v_flipped] = combos.get((h_flipped, v_flipped), 0) + 1
    assert len(combos) == 4 and min(combos.values()) >= 30, combos


def test_class_presence_is_scanned_once_and_cached(tmp_path, monkeypatch):
    from segbench.data import build_dataset
    from segbench.data.adapters import synthetic
    from segbench.data.class_uniform import class_presence

    monkeypatch.setattr(synthetic, "SPLIT_SIZES", {"train": 3, "val": 1})
    monkeypatch.setenv("SEGBENCH_CACHE", str(tmp_path / "cache"))
    ds = build_dataset("sim", "train", root=tmp_path / "data")
    first = class_presence(ds)
    assert len(first) == 3 and all(0 in c and 10 in c for c in first)  # every scene has road and sky
    assert len(list((tmp_path / "cache" / "class_presence").glob("*.json"))) == 1
    monkeypatch.setattr(type(ds), "read_raw_label", lambda *a: (_ for _ in ()).throw(AssertionError("rescanned")))
    assert class_presence(ds) == first


def test_eval_height_keeps_aspect_ratio_and_explicit_size_wins(tmp_path):
    """The real Mapillary adapter on a miniature tree, default (`native`) protocol: its image is resized to height 1536
    (`eval_height`), width by the aspect ratio, label untouched. RobustNet's own way, which resizes and crops the label
    too, is the `robustnet` protocol (tests/test_eval_protocols.py)."""
    import minitrees as mt
    from segbench.data.adapters.mapillary import Mapillary
    from segbench.data.transforms import eval_transform_for

    mt.make_mapillary(tmp_path, n={"validation": 1})
    ds = Mapillary(tmp_path, "val")
    image, mask = ds[0]
    assert image.shape[:2] == (mt.H, mt.W)
    out = eval_transform_for(ds)(image=image, mask=mask)
    assert out["image"].shape == (3, 1536, 1536 * mt.W // mt.H)
    assert torch.equal(out["mask"], torch.from_numpy(mask).long())  # scored at the label's native resolution
    assert eval_transform_for(ds, size=(20, 40))(image=image, mask=mask)["image"].shape == (3, 20, 40)
    assert eval_transform_for(object())(image=image, mask=mask)["image"].shape == (3, mt.H, mt.W)


@pytest.mark.parametrize("scale, crop", [(0.6, (22, 32)), (1.7, (63, 90))])
def test_labels_resize_as_pillows_nearest(scale, crop):
    """The official codes resize labels with Pillow's NEAREST (RobustNet transforms/joint_transforms.py; the 1280x720
    GTA5 copies peers train on): a crop spanning the whole scaled 37x53 frame must hold exactly Pillow's resized
    label, and so must the prepared cache. OpenCV's plain INTER_NEAREST took other pixels (up to one source pixel up
    and left)."""
    from PIL import Image

    from segbench.data.cache import resize_pair

    label = np.random.default_rng(0).integers(0, 19, (37, 53)).astype(np.uint8)
    pillow = np.asarray(Image.fromarray(label).resize((crop[1], crop[0]), Image.NEAREST))
    t = build_train_transform(crop, scale_range=(scale, scale), hflip=0.0)
    t.set_random_seed(0)
    np.testing.assert_array_equal(t(image=np.zeros((37, 53, 3), np.uint8), mask=label)["mask"].numpy(), pillow)
    _, cached = resize_pair(np.zeros((37, 53, 3), np.uint8), label, (crop[1], crop[0]))
    np.testing.assert_array_equal(cached, pillow)
