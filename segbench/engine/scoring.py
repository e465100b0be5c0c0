"""Scoring: one confusion matrix per split at each label's native resolution (official Cityscapes semantics), for a
model (`evaluate`) or for a directory of prediction PNGs written by any framework (`score_prediction_dir`).

Under torch.distributed each rank scores a disjoint shard (no padding duplicates, unlike DistributedSampler) and
the matrices are summed, so N processes give exactly the 1-process numbers.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import torch
from tqdm.auto import tqdm

from ..config import InferenceSettings
from ..data.base import read_gray
from ..data.workers import worker_init_fn
from ..labels import colorize, ids_to_train_ids
from ..metrics import ConfusionMatrix
from . import distributed as dist_utils
from .inference import predict


class _Indexed(torch.utils.data.Dataset):
    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        image, mask = self.dataset[i]
        return i, image, mask


def _collate(batch):
    """Keep samples as a list: a split may mix image sizes (Mapillary), and labels are scored at native size."""
    return batch


def save_prediction(path: Path, pred: np.ndarray, image_path: Path | None = None, overlay: bool = False) -> None:
    """trainId PNG (what `segbench evaluate --preds` reads back), plus a palette overlay on the image if asked."""
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), pred.astype(np.uint8))
    if overlay:
        color = colorize(pred.astype(np.uint8))
        if image_path is not None:
            image = cv2.cvtColor(cv2.imread(str(image_path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
            if image.shape[:2] == color.shape[:2]:
                color = (0.5 * image + 0.5 * color).astype(np.uint8)
        cv2.imwrite(str(path.with_name(path.stem + "_overlay.png")), cv2.cvtColor(color, cv2.COLOR_RGB2BGR))


@torch.no_grad()
def evaluate(model: torch.nn.Module, dataset, *, device: torch.device, eval_classes: Sequence[int] | None = None,
             workers: int = 2, settings: InferenceSettings = InferenceSettings(), desc: str = "eval",
             dump_dir: Path | None = None, dump_count: int = 0, save_dir: Path | None = None,
             overlay: bool = False, batch_size: int = 1) -> dict:
    """mIoU and per-class IoU of `model` on `dataset` (whose transform is an eval preset).

    The first `dump_count` predictions go to `dump_dir` (listed under "samples" for the report's qualitative panel);
    `save_dir` receives every prediction (and overlays with `overlay=True`).
    """
    rank, world = dist_utils.rank(), dist_utils.world_size()
    shard = list(range(rank, len(dataset), world))
    loader = torch.utils.data.DataLoader(_Indexed(dataset), batch_size=batch_size, sampler=shard, num_workers=workers,
                                         collate_fn=_collate, pin_memory=device.type == "cuda",
                                         worker_init_fn=worker_init_fn if workers else None)
    was_training = model.training
    model.eval().to(device)
    cm = ConfusionMatrix(device=device)
    samples = []
    pairs = getattr(dataset, "pairs", None)
    for batch in tqdm(loader, desc=desc, unit="img", unit_scale=batch_size, dynamic_ncols=True, leave=False,
                      disable=not dist_utils.is_main()):
        for index, image, mask in batch:
            image = image[None].to(device, non_blocking=True)
            mask = mask[None].to(device, non_blocking=True)
            pred = predict(model, image, tuple(mask.shape[-2:]), settings).argmax(1)
            cm.update(mask, pred)
            image_path = Path(pairs[index][0]) if pairs else None
            name = f"{index:05d}" if image_path is None else image_path.stem
            if dump_dir is not None and index < dump_count and dist_utils.is_main():
                rel = Path("preds") / Path(dump_dir).name
                save_prediction(Path(dump_dir) / f"{name}.png", pred[0].cpu().numpy())
                # the decoded trainId label too: raw labels (GTA5 palette, SYNTHIA 16-bit) cannot be drawn directly
                save_prediction(Path(dump_dir) / f"{name}_gt.png", mask[0].cpu().numpy())
                samples.append({"index": index, "image": str(image_path) if image_path else None,
                                "label": str(pairs[index][1]) if pairs else None, "pred": str(rel / f"{name}.png"),
                                "gt": str(rel / f"{name}_gt.png")})
            if save_dir is not None:
                save_prediction(Path(save_dir) / f"{name}.png", pred[0].cpu().numpy(), image_path, overlay)
    cm.all_reduce()
    model.train(was_training)
    summary = cm.summary(eval_classes)
    if samples:
        summary["samples"] = sorted(samples, key=lambda s: s["index"])
    return summary


# Suffixes other frameworks append to the image stem when naming prediction files.
PRED_SUFFIXES = ("_pred", "_prediction", "_trainIds", "_labelTrainIds", "_labelIds", "_gtFine_labelIds")
IMAGE_SUFFIXES = ("_leftImg8bit", "_rgb_anon")


def _normalise_stem(stem: str, suffixes) -> str:
    for suffix in suffixes:
        if stem.endswith(suffix):
            return stem[: -len(suffix)]
    return stem


def index_predictions(pred_dir: Path) -> dict[str, Path]:
    index: dict[str, Path] = {}
    for path in sorted(pred_dir.rglob("*.png")):
        if path.stem.endswith("_overlay"):
            continue
        index.setdefault(path.stem, path)
        index.setdefault(_normalise_stem(path.stem, PRED_SUFFIXES), path)
    return index


def score_prediction_dir(dataset, pred_dir: Path, encoding: str) -> dict:
    """Match each (image, label) pair of `dataset` to `pred_dir/**/STEM*.png` and score them all."""
    if not pred_dir.is_dir():
        raise FileNotFoundError(f"prediction directory {pred_dir} does not exist")
    index = index_predictions(pred_dir)
    matched, missing = [], []
    for i, (image_path, _) in enumerate(dataset.pairs):
        stem = Path(image_path).stem
        pred = index.get(stem) or index.get(_normalise_stem(stem, IMAGE_SUFFIXES))
        (matched if pred else missing).append((i, pred) if pred else stem)
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} of {len(dataset)} images have no prediction in {pred_dir} (e.g. {', '.join(missing[:3])}); "
            "name each prediction after its image (STEM.png or STEM_pred.png, any sub-directory)")
    cm = ConfusionMatrix()
    for i, pred_path in tqdm(matched, desc="score", unit="img", dynamic_ncols=True):
        _, label = dataset.load_pair(i)
        pred = read_gray(pred_path)
        if pred.ndim != 2:
            raise ValueError(f"{pred_path}: expected a single-channel class-index PNG, got shape {pred.shape}; "
                             "colour-coded predictions cannot be scored (colours collide), save class indices")
        if encoding == "cityscapes":
            pred = ids_to_train_ids(pred)
        if pred.shape != label.shape:
            raise ValueError(f"{pred_path}: prediction is {pred.shape[1]}x{pred.shape[0]} but its label is "
                             f"{label.shape[1]}x{label.shape[0]}; predictions must be at label resolution")
        cm.update(torch.from_numpy(label.astype(np.int64)), torch.from_numpy(pred.astype(np.int64)))
    return cm.summary(getattr(dataset, "eval_classes", None))
