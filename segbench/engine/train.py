"""The training loop of one cell: SGD + poly lr, iteration based, seeded, resumable, with AMP on GPUs."""
from __future__ import annotations

import math
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..config import TrainSettings
from ..data.class_uniform import ClassUniformStreamSampler, class_presence
from ..data.sampler import SeededStreamSampler, SeededTransformDataset
from ..data.workers import worker_init_fn
from ..labels import IGNORE_INDEX
from . import distributed as dist_utils
from .logging import ScalarLog
from .checkpoint import check_same_config, load_latest_checkpoint, save_checkpoint


LOG_EVERY = 10  # iterations between log rows (and host syncs)


class NonFiniteLoss(RuntimeError):
    """The loss became NaN/inf; the last good checkpoint is left untouched."""


def poly_lr(base_lr: float, iteration: int, total: int, power: float) -> float:
    return base_lr * (1 - iteration / total) ** power


def autocast_for(device: torch.device, enabled: bool):
    """bf16 autocast where the GPU supports it, fp16 (with a GradScaler) otherwise; full precision on CPU."""
    if not enabled or device.type != "cuda":
        return nullcontext(), None
    if torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16), None
    return torch.autocast("cuda", dtype=torch.float16), torch.amp.GradScaler("cuda")


def segmentation_loss(outputs: dict, target: torch.Tensor, aux_weight: float) -> torch.Tensor:
    loss = F.cross_entropy(outputs["out"], target, ignore_index=IGNORE_INDEX)
    if "aux" in outputs:
        loss = loss + aux_weight * F.cross_entropy(outputs["aux"], target, ignore_index=IGNORE_INDEX)
    return loss


def make_loader(dataset, transform, settings: TrainSettings, seed: int, start_iter: int, device: torch.device):
    rank, world = dist_utils.rank(), dist_utils.world_size()
    stream = dict(start=start_iter * settings.batch_size * world, total=settings.iters * settings.batch_size * world,
                  rank=rank, world_size=world)
    if settings.class_uniform > 0:
        sampler = ClassUniformStreamSampler(class_presence(dataset), settings.class_uniform, seed, **stream)
    else:
        sampler = SeededStreamSampler(len(dataset), seed, **stream)
    return torch.utils.data.DataLoader(
        SeededTransformDataset(dataset, transform), batch_size=settings.batch_size, sampler=sampler,
        num_workers=settings.workers, pin_memory=device.type == "cuda", drop_last=True,
        persistent_workers=False, worker_init_fn=worker_init_fn if settings.workers else None,
        # its own generator: creating the iterator must not draw from the global RNG, or a resumed run's dropout
        # masks would differ from an uninterrupted run's
        generator=torch.Generator().manual_seed(seed),
    )


def train(model: torch.nn.Module, dataset, transform, settings: TrainSettings, *, seed: int, device: torch.device,
          ckpt_dir: Path, identity: dict, log_path: Path | None = None, tb_dir: Path | None = None,
          desc: str = "train") -> dict:
    """Train `model` in place for `settings.iters` iterations, resuming from `ckpt_dir` when it holds a checkpoint.

    `identity` is the configuration a checkpoint must match to be resumed from. Returns timing statistics of the
    whole run: a checkpoint carries the seconds and images trained up to it, and a resumed run adds its own.
    """
    model.to(device)
    if device.type == "cuda" and settings.channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=settings.lr, momentum=settings.momentum,
                                weight_decay=settings.weight_decay)
    amp_ctx, scaler = autocast_for(device, settings.amp)
    start, before_seconds, before_images = 0, 0.0, 0
    found = load_latest_checkpoint(ckpt_dir, set_damaged_aside=dist_utils.is_main())
    if found is not None:
        resume, state = found
        check_same_config(state["identity"], identity, resume)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng_cpu"])
        if device.type == "cuda" and state.get("rng_cuda") is not None:
            torch.cuda.set_rng_state(state["rng_cuda"], device)
        start = int(state["iteration"])
        # checkpoints written before these were recorded: the statistics then cover this process only
        before_seconds, before_images = float(state.get("train_seconds", 0.0)), int(state.get("train_images", 0))
    ddp_model = dist_utils.wrap_ddp(model, device)
    step_model = torch.compile(ddp_model) if settings.compile else ddp_model

    def snapshot(iteration: int) -> None:
        if dist_utils.is_main():
            save_checkpoint(ckpt_dir, iteration, {
                "iteration": iteration, "identity": identity, "model": model.state_dict(),
                "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict() if scaler else None,
                "rng_cpu": torch.get_rng_state(),
                "rng_cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
                "train_seconds": before_seconds + time.perf_counter() - t0, "train_images": before_images + images,
            }, keep=settings.keep_ckpts)

    loader = make_loader(dataset, transform, settings, seed, start, device)
    main = dist_utils.is_main()
    log = ScalarLog(log_path if main else None, tb_dir if main else None, resume_from=start)
    model.train()
    bar = tqdm(total=settings.iters, initial=start, desc=desc, unit="it", dynamic_ncols=True,
               disable=not dist_utils.is_main())
    images, t0 = 0, time.perf_counter()
    iteration = start
    # first iteration with a non-finite loss, kept on the device: checking it every step would sync the GPU each step
    first_bad = torch.full((), -1, dtype=torch.long, device=device)

    def check_finite() -> None:
        flag = first_bad.clone()
        if dist_utils.is_dist():
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        bad = int(flag.item())
        if bad >= 0:
            raise NonFiniteLoss(
                f"{desc}: loss became NaN/inf at iteration {bad}; stopped without saving. The last good checkpoint in "
                f"{ckpt_dir} is intact. Lower train.lr or check the labels (values outside 0..18 and 255?).")

    try:
        for image, target in loader:
            lr = poly_lr(settings.lr, iteration, settings.iters, settings.power)
            for group in optimizer.param_groups:
                group["lr"] = lr
            image = image.to(device, non_blocking=True)
            target = target.to(device, non_blocking=True)
            if device.type == "cuda" and settings.channels_last:
                image = image.contiguous(memory_format=torch.channels_last)
            with amp_ctx:
                loss = segmentation_loss(step_model(image), target, settings.aux_weight)
            loss_value = loss.detach()
            first_bad = torch.where((first_bad < 0) & ~torch.isfinite(loss_value), iteration, first_bad)
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                optimizer.step()
            iteration += 1
            images += image.shape[0] * dist_utils.world_size()
            rate = images / max(time.perf_counter() - t0, 1e-9)
            bar.update(1)
            if iteration % LOG_EVERY == 0 or iteration == settings.iters:
                check_finite()
                value = loss_value.item()
                bar.set_postfix(loss=f"{value:.3f}", lr=f"{lr:.2e}", img_s=f"{rate:.1f}")
                log.log(iteration, value, lr, rate)
            if settings.ckpt_every and iteration % settings.ckpt_every == 0 and iteration < settings.iters:
                check_finite()
                snapshot(iteration)
    finally:
        bar.close()
        log.close()
    if iteration != settings.iters:
        raise RuntimeError(f"{desc}: data stream ended at iteration {iteration} of {settings.iters}")
    check_finite()
    # training throughput: the one-off final save is not part of it
    seconds, total_images = before_seconds + time.perf_counter() - t0, before_images + images
    if start < settings.iters:
        snapshot(settings.iters)
    return {"train_seconds": seconds,
            "images_per_s": total_images / seconds if seconds > 0 and total_images else math.nan,
            "resumed_from": start}
