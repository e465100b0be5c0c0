"""Rein's training pipeline against mmsegmentation 1.2.2 / mmcv 2.x typed in here from their source
(mmseg/datasets/transforms/transforms.py ResizeShortestEdge, RandomCrop, PhotoMetricDistortion, RandomFlip;
mmcv/transforms/processing.py Resize, RandomChoiceResize, RandomFlip; mmcv/image/geometric.py rescale_size,
imrescale, imflip; mmseg/models/data_preprocessor.py + utils/misc.py stack_batch), on a BGR image as mmseg loads it,
with numpy's global random state replaced by a RandomState that both sides seed alike."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from segbench.data.mmseg_pipeline import ReinTrainTransform


#: crop side -> (RandomChoiceResize scales, max_size) as written in Rein's configs
#: (configs/dinov2/rein_dinov2_mask2former_512x512_bs1x4.py, .../rein_dinov2_mask2former_1024x1024_bs4x2.py)
CONFIGS = {512: ([int(512 * x * 0.1) for x in range(5, 21)], 2048),
           1024: ([int(1024 * x * 0.1) for x in range(5, 21)], 4096)}


class MMSeg:
    """The pipeline of Rein's 512 (or 1024) config, `random` = numpy.random."""

    def __init__(self, random, side=512):
        self.random = random  # mmseg's `from numpy import random`, and mmcv's np.random
        self.side = side
        self.scales, self.max_size = CONFIGS[side]

    # RandomChoiceResize + ResizeShortestEdge + Resize(keep_ratio=True)
    def resize(self, img, seg):
        scale = self.scales[self.random.randint(len(self.scales))]
        h, w = img.shape[:2]
        size = scale * 1.0
        s = size / min(h, w)
        if h < w:
            new_h, new_w = size, s * w
        else:
            new_h, new_w = s * h, size
        if max(new_h, new_w) > self.max_size:
            s = self.max_size * 1.0 / max(new_h, new_w)
            new_h *= s
            new_w *= s
        target = (int(new_w + 0.5), int(new_h + 0.5))
        factor = min(max(target) / max(h, w), min(target) / min(h, w))
        new_size = int(w * float(factor) + 0.5), int(h * float(factor) + 0.5)
        return (cv2.resize(img, new_size, interpolation=cv2.INTER_LINEAR),
                cv2.resize(seg, new_size, interpolation=cv2.INTER_NEAREST))

    def crop(self, img, seg, cat_max_ratio=0.75):
        crop_size = (self.side, self.side)

        def generate_crop_bbox(img):
            margin_h = max(img.shape[0] - crop_size[0], 0)
            margin_w = max(img.shape[1] - crop_size[1], 0)
            offset_h = self.random.randint(0, margin_h + 1)
            offset_w = self.random.randint(0, margin_w + 1)
            return offset_h, offset_h + crop_size[0], offset_w, offset_w + crop_size[1]

        bbox = generate_crop_bbox(img)
        for _ in range(10):
            seg_temp = seg[bbox[0]:bbox[1], bbox[2]:bbox[3]]
            labels, cnt = np.unique(seg_temp, return_counts=True)
            cnt = cnt[labels != 255]
            if len(cnt) > 1 and np.max(cnt) / np.sum(cnt) < cat_max_ratio:
                break
            bbox = generate_crop_bbox(img)
        return img[bbox[0]:bbox[1], bbox[2]:bbox[3], ...], seg[bbox[0]:bbox[1], bbox[2]:bbox[3], ...]

    def flip(self, img, seg):
        if self.random.choice(["horizontal", None], p=[0.5, 0.5]) == "horizontal":
            return np.flip(img, axis=1), np.flip(seg, axis=1)  # mmcv.imflip
        return img, seg

    @staticmethod
    def convert(img, alpha=1, beta=0):
        img = img.astype(np.float32) * alpha + beta
        img = np.clip(img, 0, 255)
        return img.astype(np.uint8)

    def photometric(self, img):
        random = self.random
        if random.randint(2):
            img = self.convert(img, beta=random.uniform(-32, 32))
        mode = random.randint(2)
        if mode == 1 and random.randint(2):
            img = self.convert(img, alpha=random.uniform(0.5, 1.5))
        if random.randint(2):
            img = cv2.cvtColor(img, cv2.COLOR_BGR2HSV)
            img[:, :, 1] = self.convert(img[:, :, 1], alpha=random.uniform(0.5, 1.5))
            img = cv2.cvtColor(img, cv2.COLOR_HSV2BGR)
        if random.randint(2):
            img = cv2.cvtColor(img, cv2.COLOR_BGR2HSV)
            img[:, :, 0] = (img[:, :, 0].astype(int) + random.randint(-18, 18)) % 180
            img = cv2.cvtColor(img, cv2.COLOR_HSV2BGR)
        if mode == 0 and random.randint(2):
            img = self.convert(img, alpha=random.uniform(0.5, 1.5))
        return img

    def preprocess(self, img, seg):
        """SegDataPreProcessor: BGR -> RGB, normalise, pad right/bottom to the crop (image 0, label 255)."""
        x = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))[[2, 1, 0], ...].float()
        mean = torch.tensor([123.675, 116.28, 103.53]).view(-1, 1, 1)
        std = torch.tensor([58.395, 57.12, 57.375]).view(-1, 1, 1)
        x = (x - mean) / std
        pad_h, pad_w = max(self.side - x.shape[1], 0), max(self.side - x.shape[2], 0)
        x = torch.nn.functional.pad(x, (0, pad_w, 0, pad_h), value=0)
        y = torch.nn.functional.pad(torch.from_numpy(np.ascontiguousarray(seg)).long(), (0, pad_w, 0, pad_h),
                                    value=255)
        return x, y

    def __call__(self, img, seg):
        img, seg = self.resize(img, seg)
        img, seg = self.crop(img, seg)
        img, seg = self.flip(img, seg)
        return self.preprocess(self.photometric(np.ascontiguousarray(img)), seg)


def _frame(seed, h=540, w=960):
    g = np.random.default_rng(seed)
    image = g.integers(0, 256, (h, w, 3), dtype=np.uint8)
    image = cv2.GaussianBlur(image, (9, 9), 3)  # smooth, so resizing and HSV round trips matter
    mask = np.repeat(g.integers(0, 19, (h // 30, w // 30), dtype=np.uint8), 30, 0).repeat(30, 1)
    mask[: h // 6] = 2  # a dominant class, so cat_max_ratio redraws some crops
    mask[-10:] = 255
    return image, mask


@pytest.mark.parametrize("sample_seed", range(12))
def test_the_pipeline_equals_mmsegs_draw_for_draw(sample_seed):
    image, mask = _frame(sample_seed)
    ours = ReinTrainTransform()
    ours.set_random_seed(sample_seed)
    out = ours(image, mask)
    reference = MMSeg(np.random.RandomState(np.random.SeedSequence(sample_seed).generate_state(1)[0]))
    x, y = reference(image[..., ::-1].copy(), mask)  # mmseg reads BGR
    torch.testing.assert_close(out["image"], x, rtol=0, atol=1e-5)
    assert torch.equal(out["mask"], y)
    assert out["image"].shape == (3, 512, 512)


@pytest.mark.parametrize("sample_seed", range(3))
def test_the_1024_config_is_the_same_pipeline_at_its_crop(sample_seed):
    """`train.pipeline: rein` at a 1024 crop is Rein's 1024 config: scales 512 .. 2048, long edge capped at 4096."""
    from segbench.config import train_settings
    from segbench.data.transforms import train_transform

    image, mask = _frame(sample_seed, 1080, 1920)
    ours = train_transform(train_settings({"pipeline": "rein", "crop": [1024, 1024]}))
    assert (list(ours.scales), ours.max_size) == CONFIGS[1024]
    ours.set_random_seed(sample_seed)
    out = ours(image, mask)
    reference = MMSeg(np.random.RandomState(np.random.SeedSequence(sample_seed).generate_state(1)[0]), side=1024)
    x, y = reference(image[..., ::-1].copy(), mask)
    torch.testing.assert_close(out["image"], x, rtol=0, atol=1e-5)
    assert torch.equal(out["mask"], y) and out["image"].shape == (3, 1024, 1024)


def test_small_frames_are_padded_with_zero_after_normalisation_and_ignore():
    image, mask = _frame(3, 300, 400)  # short side <= 512 at any scale: padded
    t = ReinTrainTransform()
    padded = 0
    for seed in range(8):
        t.set_random_seed(seed)
        out = t(image, mask)
        assert out["image"].shape == (3, 512, 512)
        ignored = out["mask"] == 255
        padded += int(ignored[-1].all())
        assert torch.all(out["image"][:, ignored & (out["image"].abs().sum(0) == 0)] == 0)
    assert padded > 0


def test_class_uniform_sampling_is_refused():
    image, mask = _frame(0)
    with pytest.raises(ValueError, match="class_uniform"):
        ReinTrainTransform()(image, mask, focus=3)
