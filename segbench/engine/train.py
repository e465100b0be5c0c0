"""The training loop of one cell: SGD + poly lr, iteration based, seeded, resumable, with AMP on GPUs."""
from __future__ import annotations

import math
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..config import TrainSettings
from ..data.sampler import SeededTransformDataset
from ..data.streams import training_stream
from ..data.workers import worker_init_fn
from ..data.transforms import normalized_tensor
from ..labels import IGNORE_INDEX
from ..methods.base import Batch, Method, TrainRun
from .. import distributed as dist_utils
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


def label_at(target: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
    """The N x H x W label at `size`: itself, or resized as RobustNet resizes it for its aux loss
    (shachoi/RobustNet network/deepv3.py: `interpolate(gts.unsqueeze(1).float(), size, mode='nearest')`: source
    pixel floor(i * H / h) for output row i, likewise for columns)."""
    if tuple(target.shape[-2:]) == tuple(size):
        return target
    return F.interpolate(target.unsqueeze(1).float(), size=tuple(size), mode="nearest").squeeze(1).long()


def labelled_ce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy averaged over the batch's labelled pixels (nn.CrossEntropyLoss(ignore_index=255), RobustNet's
    loss.py criterion), and 0 where it has none. There the official criterion is 0/0 = NaN with a zero gradient, so
    RobustNet's train.py steps on (weight decay and momentum only); a NaN here would stop the run as diverged, at the
    same image of the seeded stream on every resume. The gradient is the official one either way; no host sync."""
    loss = F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX)
    return torch.where((target != IGNORE_INDEX).any(), loss, torch.zeros_like(loss))


def segmentation_loss(outputs: dict, target: torch.Tensor, aux_weight: float) -> torch.Tensor:
    """CE (ignore 255, `labelled_ce`) of the main logits + aux_weight x CE of the aux logits, each against the label
    at the logits' size: an aux head scored at its own resolution (RobustNet's) sees the label downsampled
    (`label_at`).

    A network whose batch grows inside it (a method's module appending k-1 altered copies of the images, SHADE's
    hallucinated styles) returns k times as many maps as labels: the labels are repeated k times, in order."""
    copies, rest = divmod(outputs["out"].shape[0], target.shape[0])
    if rest:
        raise ValueError(f"{outputs['out'].shape[0]} predictions for {target.shape[0]} labels: a module in the network "
                         "changed the batch size to a non-multiple of it")
    if copies > 1:
        target = target.repeat(copies, *([1] * (target.dim() - 1)))
    loss = labelled_ce(outputs["out"], target)
    if "aux" in outputs:
        aux = outputs["aux"]
        loss = loss + aux_weight * labelled_ce(aux, label_at(target, aux.shape[-2:]))
    return loss


def make_loader(dataset, transform, settings: TrainSettings, seed: int, start_iter: int, device: torch.device):
    """This process's micro-batches of the one global sample stream.

    Step k holds positions [k*B, (k+1)*B) of the stream (B = the global `settings.batch_size`); position p goes to
    rank p % world_size, so the N processes of a step together see exactly the B images one process would, whatever
    N, and each process's consecutive micro-batches of B / (N * accumulate) make up its share of that step.
    """
    rank, world = dist_utils.rank(), dist_utils.world_size()
    micro_batch = dist_utils.batch_share(settings.batch_size, world, settings.accumulate)
    stream = dict(start=start_iter * settings.batch_size, total=settings.iters * settings.batch_size,
                  rank=rank, world_size=world)
    sampler = training_stream(dataset, settings, seed, **stream)
    return torch.utils.data.DataLoader(
        SeededTransformDataset(dataset, transform), batch_size=micro_batch, sampler=sampler,
        num_workers=settings.workers, pin_memory=device.type == "cuda", drop_last=True,
        persistent_workers=False, worker_init_fn=worker_init_fn if settings.workers else None,
        # its own generator: creating the iterator must not draw from the global RNG, or a resumed run's dropout
        # masks would differ from an uninterrupted run's
        generator=torch.Generator().manual_seed(seed),
    )


def train(model: torch.nn.Module, dataset, transform, settings: TrainSettings, *, seed: int, device: torch.device,
          ckpt_dir: Path, identity: dict, log_path: Path | None = None, tb_dir: Path | None = None,
          desc: str = "train", method: Method | None = None, pretrained: str | None = None, eval_every: int = 0,
          on_eval: Callable[[int], dict[str, float]] | None = None) -> dict:
    """Train `model` in place for `settings.iters` iterations, resuming from `ckpt_dir` when it holds a checkpoint.

    `identity` is the configuration a checkpoint must match to be resumed from. `settings.batch_size` is the global
    batch: each of the N processes takes its share, in `settings.accumulate` micro-steps whose mean loss is
    backpropagated before one optimizer step (DDP reduces the gradients on the last micro-step only). For a model
    without BatchNorm this is the full-batch update whenever every micro-batch holds as many labelled pixels (each
    micro-batch's mean loss weighs the same, as DDP weighs each process's); with BatchNorm, the statistics are those
    of a micro-batch (across the N processes under SyncBatchNorm on GPUs; per process on CPU, where DDP runs gloo
    without SyncBatchNorm).

    `method` (segbench.methods) runs its `before_step` hook before each step and its `before_forward` hook before
    each micro-batch's forward pass (with the batch and each sample's source part, `Batch.domains`), and adds its
    `losses` to the segmentation loss; its state lives in the model, so checkpoints carry it. `pretrained` (the
    `model.pretrained` setting) tells a method which weights the model started from.

    `on_eval(iteration) -> {target: mIoU}` runs every `eval_every` iterations and after the last, on every rank
    (scoring is collective), with the RNG forked (`periodic_scores`), so the weights end exactly as without it. Its
    points are returned as "curves" ({target: [[iteration, mIoU], ...]}, carried by checkpoints) and its time as
    "eval_seconds", which train_seconds and images_per_s leave out.

    Returns statistics of the whole run: a checkpoint carries the seconds and images trained up to it, and a resumed
    run adds its own; `world_size` and `batch_per_process` describe this launch, `launches` every launch since
    iteration 0 (those before checkpoints that predate it are unknown, hence absent).
    """
    world, accumulate = dist_utils.world_size(), settings.accumulate
    micro_batch = dist_utils.batch_share(settings.batch_size, world, accumulate)  # an uneven split: before any work
    batch_per_process = micro_batch * accumulate
    model.to(device)
    if device.type == "cuda" and settings.channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=settings.lr, momentum=settings.momentum,
                                weight_decay=settings.weight_decay)
    amp_ctx, scaler = autocast_for(device, settings.amp)
    start, before_seconds, before_images, launches = 0, 0.0, 0, []
    curves: dict[str, list[list]] = {}
    before_eval_seconds = 0.0
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
        launches = list(state.get("launches", []))
        curves = {t: [list(p) for p in points] for t, points in (state.get("curves") or {}).items()}
        before_eval_seconds = float(state.get("eval_seconds", 0.0))
    launches.append({"from_iteration": start, "world_size": world, "batch_per_process": batch_per_process})
    ddp_model = dist_utils.wrap_ddp(model, device)
    step_model = torch.compile(ddp_model) if settings.compile else ddp_model

    def snapshot(iteration: int) -> None:
        if dist_utils.is_main():
            save_checkpoint(ckpt_dir, iteration, {
                "iteration": iteration, "identity": identity, "model": model.state_dict(),
                "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict() if scaler else None,
                "rng_cpu": torch.get_rng_state(),
                "rng_cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
                "train_seconds": before_seconds + training_seconds(),
                "train_images": before_images + images, "launches": launches, "curves": curves,
                "eval_seconds": before_eval_seconds + eval_seconds,
            }, keep=settings.keep_ckpts)

    loader = make_loader(dataset, transform, settings, seed, start, device)
    main = dist_utils.is_main()
    log = ScalarLog(log_path if main else None, tb_dir if main else None, resume_from=start)
    model.train()
    bar = tqdm(total=settings.iters, initial=start, desc=desc, unit="it", dynamic_ncols=True,
               disable=not dist_utils.is_main())
    images, t0, eval_seconds = 0, time.perf_counter(), 0.0

    def training_seconds() -> float:
        """Seconds this launch has trained: its wall time less the periodic scoring's."""
        return time.perf_counter() - t0 - eval_seconds

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

    def score_now(iteration: int) -> None:
        nonlocal eval_seconds
        began = time.perf_counter()
        for target, miou in periodic_scores(on_eval, iteration, model, device).items():
            curves.setdefault(target, []).append([iteration, float(miou)])
        eval_seconds += time.perf_counter() - began

    method = method or Method()
    run = TrainRun(dataset=dataset, normalize=normalized_tensor, device=device, seed=seed, iters=settings.iters,
                   batch_size=settings.batch_size, pretrained=pretrained)
    micro = 0  # micro-steps of the current iteration done so far
    try:
        for image, target, domains in loader:
            if micro == 0:
                method.before_step(model, iteration, run)
                lr = poly_lr(settings.lr, iteration, settings.iters, settings.power)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                optimizer.zero_grad(set_to_none=True)
                loss_value = torch.zeros((), device=device)
            micro += 1
            image = image.to(device, non_blocking=True)
            target = target.to(device, non_blocking=True)
            if device.type == "cuda" and settings.channels_last:
                image = image.contiguous(memory_format=torch.channels_last)
            batch = Batch(image, target, domains)
            method.before_forward(model, batch)
            # gradients add up over the micro-steps; DDP all-reduces them once, on the last
            syncs = micro == accumulate or not isinstance(ddp_model, torch.nn.parallel.DistributedDataParallel)
            with nullcontext() if syncs else ddp_model.no_sync():
                with amp_ctx:
                    outputs = step_model(image)
                    loss = segmentation_loss(outputs, target, settings.aux_weight)
                    for term in method.losses(model, outputs, batch, iteration).values():
                        loss = loss + term
                    loss = loss / accumulate
                if scaler is not None:
                    scaler.scale(loss).backward()
                else:
                    loss.backward()
            loss_value = loss_value + loss.detach()
            first_bad = torch.where((first_bad < 0) & ~torch.isfinite(loss_value), iteration, first_bad)
            images += image.shape[0] * world
            if micro < accumulate:
                continue
            micro = 0
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            iteration += 1
            rate = images / max(training_seconds(), 1e-9)
            bar.update(1)
            if iteration % LOG_EVERY == 0 or iteration == settings.iters:
                check_finite()
                value = loss_value.item()
                bar.set_postfix(loss=f"{value:.3f}", lr=f"{lr:.2e}", img_s=f"{rate:.1f}")
                log.log(iteration, value, lr, rate)
            if on_eval is not None and eval_every and (iteration % eval_every == 0 or iteration == settings.iters):
                score_now(iteration)  # before the checkpoint, so a resumed run has this point
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
    seconds, total_images = before_seconds + training_seconds(), before_images + images
    if start < settings.iters:
        snapshot(settings.iters)
    return {"train_seconds": seconds,
            "images_per_s": total_images / seconds if seconds > 0 and total_images else math.nan,
            "resumed_from": start, "world_size": world, "batch_per_process": batch_per_process, "launches": launches,
            "curves": curves, "eval_seconds": before_eval_seconds + eval_seconds}


def periodic_scores(on_eval: Callable[[int], dict[str, float]], iteration: int, model: torch.nn.Module,
                    device: torch.device) -> dict[str, float]:
    """`on_eval(iteration)` inside `torch.random.fork_rng` (CPU and `device`), then the model back in train mode.

    A DataLoader draws its base seed from the global generator when given none, and so may whatever runs in eval
    mode; the fork puts every draw back, so dropout masks and method draws after it are those of a run that never
    scored in between. (DomainBed scores every split each `checkpoint_freq` steps for its selection rules:
    facebookresearch/DomainBed domainbed/scripts/train.py.)
    """
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        scores = on_eval(iteration)
    model.train()
    return scores
