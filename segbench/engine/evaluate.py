"""Score a model on a split: logits upsampled to each label's native resolution, one confusion matrix per split."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..metrics import ConfusionMatrix
from . import distributed as dist_utils


@torch.no_grad()
def predict_logits(model: torch.nn.Module, image: torch.Tensor, out_size: tuple[int, int]) -> torch.Tensor:
    """Whole-image inference, bilinear upsampling of the logits to `out_size` (H, W)."""
    logits = model(image)["out"]
    if logits.shape[-2:] != tuple(out_size):
        logits = F.interpolate(logits.float(), size=out_size, mode="bilinear", align_corners=False)
    return logits


def _collate(batch):
    """Images may differ in size across a split (Mapillary): keep them as a list when they do."""
    images, masks = zip(*batch)
    if all(i.shape == images[0].shape for i in images) and all(m.shape == masks[0].shape for m in masks):
        return torch.stack(images), torch.stack(masks)
    return list(images), list(masks)


@torch.no_grad()
def evaluate(model: torch.nn.Module, dataset, *, device: torch.device, eval_classes: Sequence[int] | None = None,
             batch_size: int = 1, workers: int = 2, desc: str = "eval") -> dict:
    """mIoU and per-class IoU of `model` on `dataset` (whose transform is an eval preset)."""
    from ..data.workers import worker_init_fn

    sampler = None
    if dist_utils.is_dist():
        sampler = torch.utils.data.distributed.DistributedSampler(dataset, shuffle=False, drop_last=False)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, sampler=sampler, shuffle=False,
                                         num_workers=workers, collate_fn=_collate, pin_memory=device.type == "cuda",
                                         worker_init_fn=worker_init_fn if workers else None)
    was_training = model.training
    model.eval().to(device)
    cm = ConfusionMatrix(device=device)
    for images, masks in tqdm(loader, desc=desc, unit="batch", dynamic_ncols=True, leave=False,
                              disable=not dist_utils.is_main()):
        pairs = zip(images, masks) if isinstance(images, list) else [(images, masks)]
        for image, mask in pairs:
            if image.dim() == 3:
                image, mask = image[None], mask[None]
            image, mask = image.to(device, non_blocking=True), mask.to(device, non_blocking=True)
            pred = predict_logits(model, image, tuple(mask.shape[-2:])).argmax(1)
            cm.update(mask, pred)
    cm.all_reduce()
    model.train(was_training)
    return cm.summary(eval_classes)
