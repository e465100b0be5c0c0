"""The training loop of one cell: the optimizer and schedule of engine/optim.py (SGD or AdamW, poly lr with an
optional warmup), iteration based, seeded, resumable, with AMP on GPUs."""
from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .. import distributed as dist_utils
from ..config import TrainSettings
from ..data.sampler import SeededTransformDataset
from ..data.streams import training_stream
from ..data.transforms import normalized_tensor
from ..data.workers import worker_init_fn
from ..labels import IGNORE_INDEX
from ..methods.base import Batch, Method, TrainRun
from .checkpoint import TrainingState, check_same_config, load_latest_checkpoint, save_checkpoint
from .frozen_weights import weights_to_load, weights_to_save
from .logging import ScalarLog
from .optim import learning_rate, make_optimizer, set_learning_rate


LOG_EVERY = 10  # iterations between log rows (and host syncs)


class NonFiniteLoss(RuntimeError):
    """The loss became NaN/inf; the last good checkpoint is left untouched."""



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


def model_loss(model: torch.nn.Module, outputs: dict, target: torch.Tensor, aux_weight: float) -> torch.Tensor:
    """The network's training loss: a mask-classification head's own (its matched class, mask and dice terms over
    every decoder output: models/mask2former.py), else `segmentation_loss` on the per-pixel logits."""
    if "mask_logits" in outputs:
        return sum(model.head.loss(outputs, target).values())
    return segmentation_loss(outputs, target, aux_weight)


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
    # 1. this process's share of the global batch, the model on its device, the optimizer
    world = dist_utils.world_size()
    # an uneven split fails here, before any work
    micro_batch = dist_utils.batch_share(settings.batch_size, world, settings.accumulate)
    put_on_device(model, settings, device)
    optimizer = make_optimizer(model, settings)
    amp_ctx, scaler = autocast_for(device, settings.amp)
    # 2. the newest checkpoint of this configuration, if any: weights, optimizer and RNG, and the run's progress so far
    progress = resume(ckpt_dir, identity, model, optimizer, scaler, device)
    progress.launches.append({"from_iteration": progress.start, "world_size": world,
                              "batch_per_process": micro_batch * settings.accumulate})
    ddp_model = dist_utils.wrap_ddp(model, device)
    step_model = torch.compile(ddp_model) if settings.compile else ddp_model
    checkpoints = Checkpointing(ckpt_dir, settings.keep_ckpts, identity, model, optimizer, scaler, device)
    # 3. the sample stream from where the checkpoint left it, the log, the progress bar
    loader = make_loader(dataset, transform, settings, seed, progress.start, device)
    main = dist_utils.is_main()
    log = ScalarLog(log_path if main else None, tb_dir if main else None, resume_from=progress.start)
    model.train()
    bar = tqdm(total=settings.iters, initial=progress.start, desc=desc, unit="it", dynamic_ncols=True,
               disable=not dist_utils.is_main())
    progress.start_clock()
    finite = FiniteLoss(device, desc, ckpt_dir)
    method = method or Method()
    run = TrainRun(dataset=dataset, normalize=normalized_tensor, device=device, seed=seed, iters=settings.iters,
                   batch_size=settings.batch_size, pretrained=pretrained)
    # 4. the steps: `accumulate` micro-batches each, then the optimizer step, the log, periodic scores, a checkpoint
    iteration, micro = progress.start, 0  # micro: micro-steps of the current iteration done so far
    try:
        for image, target, domains in loader:
            if micro == 0:
                lr = begin_step(model, optimizer, method, run, settings, iteration)
                loss_value = torch.zeros((), device=device)
            micro += 1
            loss_value = loss_value + micro_step(image, target, domains, model, ddp_model, step_model, method,
                                                 settings, iteration, last=micro == settings.accumulate,
                                                 amp_ctx=amp_ctx, scaler=scaler, device=device)
            finite.note(loss_value, iteration)
            progress.images += image.shape[0] * world
            if micro < settings.accumulate:
                continue
            micro = 0
            optimizer_step(optimizer, scaler)
            iteration += 1
            rate = progress.images / max(progress.training_seconds(), 1e-9)
            bar.update(1)
            if iteration % LOG_EVERY == 0 or iteration == settings.iters:
                finite.check()
                value = loss_value.item()
                bar.set_postfix(loss=f"{value:.3f}", lr=f"{lr:.2e}", img_s=f"{rate:.1f}")
                log.log(iteration, value, lr, rate)
            if on_eval is not None and eval_every and (iteration % eval_every == 0 or iteration == settings.iters):
                progress.score(on_eval, iteration, model, device)  # before the checkpoint, so a resumed run has it
            if settings.ckpt_every and iteration % settings.ckpt_every == 0 and iteration < settings.iters:
                finite.check()
                checkpoints.write(iteration, progress)
    finally:
        bar.close()
        log.close()
    # 5. the end: every step taken and finite, the last checkpoint, the run's statistics
    if iteration != settings.iters:
        raise RuntimeError(f"{desc}: data stream ended at iteration {iteration} of {settings.iters}")
    finite.check()
    statistics = progress.statistics(world, micro_batch * settings.accumulate)  # the one-off final save is not in it
    if progress.start < settings.iters:
        checkpoints.write(settings.iters, progress)
    return statistics


def put_on_device(model: torch.nn.Module, settings: TrainSettings, device: torch.device) -> None:
    model.to(device)
    if device.type == "cuda" and settings.channels_last:
        model.to(memory_format=torch.channels_last)



@dataclass
class Progress:
    """Where a run stands: what the launches before this one trained (carried by the checkpoint it resumed from;
    nothing for a fresh start) and what this launch has trained since `start_clock`. The statistics train() returns
    and each checkpoint's are taken from here."""

    start: int = 0  # the iteration this launch began at
    before_seconds: float = 0.0
    before_images: int = 0
    before_eval_seconds: float = 0.0
    launches: list = field(default_factory=list)  # every launch since iteration 0, this one last
    curves: dict = field(default_factory=dict)  # {target: [[iteration, miou], ...]} under eval.every
    images: int = 0  # trained by this launch
    eval_seconds: float = 0.0  # this launch's periodic scoring, left out of its training time
    began: float = 0.0

    @classmethod
    def resumed_from(cls, state: TrainingState) -> "Progress":
        # checkpoints written before these were recorded: the statistics then cover this process only
        return cls(start=int(state.iteration), before_seconds=float(state.train_seconds),
                   before_images=int(state.train_images), before_eval_seconds=float(state.eval_seconds),
                   launches=list(state.launches),
                   curves={t: [list(p) for p in points] for t, points in (state.curves or {}).items()})

    def start_clock(self) -> None:
        self.began = time.perf_counter()

    def training_seconds(self) -> float:
        """Seconds this launch has trained: its wall time less the periodic scoring's."""
        return time.perf_counter() - self.began - self.eval_seconds

    def score(self, on_eval: Callable[[int], dict[str, float]], iteration: int, model: torch.nn.Module,
              device: torch.device) -> None:
        """One point of every target's curve (`periodic_scores`), its time kept apart from training's."""
        began = time.perf_counter()
        for target, miou in periodic_scores(on_eval, iteration, model, device).items():
            self.curves.setdefault(target, []).append([iteration, float(miou)])
        self.eval_seconds += time.perf_counter() - began

    def statistics(self, world: int, batch_per_process: int) -> dict:
        """The whole run's, across resumes (record["training"], with "curves" and "eval_seconds" for the record to
        take apart)."""
        seconds, total_images = self.before_seconds + self.training_seconds(), self.before_images + self.images
        return {"train_seconds": seconds,
                "images_per_s": total_images / seconds if seconds > 0 and total_images else math.nan,
                "resumed_from": self.start, "world_size": world, "batch_per_process": batch_per_process,
                "launches": self.launches, "curves": self.curves,
                "eval_seconds": self.before_eval_seconds + self.eval_seconds}


def resume(ckpt_dir: Path, identity: dict, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scaler,
           device: torch.device) -> Progress:
    """Load the newest checkpoint of `ckpt_dir` that loads into the model, the optimizer, the scaler and the RNGs,
    refusing one written by another configuration (CheckpointMismatch); the run's progress up to it (a fresh one
    when there is none)."""
    found = load_latest_checkpoint(ckpt_dir, set_damaged_aside=dist_utils.is_main())
    if found is None:
        return Progress()
    path, state = found
    check_same_config(state.identity, identity, path)
    model.load_state_dict(weights_to_load(model, state.model, path))
    optimizer.load_state_dict(state.optimizer)
    if scaler is not None and state.scaler:
        scaler.load_state_dict(state.scaler)
    torch.set_rng_state(state.rng_cpu)
    if device.type == "cuda" and state.rng_cuda is not None:
        torch.cuda.set_rng_state(state.rng_cuda, device)
    return Progress.resumed_from(state)


@dataclass
class Checkpointing:
    """Where and what a run checkpoints: the first rank writes the TrainingState, keeping the newest `keep`."""

    directory: Path
    keep: int
    identity: dict
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scaler: object
    device: torch.device

    def write(self, iteration: int, progress: Progress) -> None:
        if not dist_utils.is_main():
            return
        cuda = self.device.type == "cuda"
        state = TrainingState(
            iteration=iteration, identity=self.identity, model=weights_to_save(self.model),
            optimizer=self.optimizer.state_dict(), scaler=self.scaler.state_dict() if self.scaler else None,
            rng_cpu=torch.get_rng_state(), rng_cuda=torch.cuda.get_rng_state(self.device) if cuda else None,
            train_seconds=progress.before_seconds + progress.training_seconds(),
            train_images=progress.before_images + progress.images, launches=progress.launches,
            curves=progress.curves, eval_seconds=progress.before_eval_seconds + progress.eval_seconds)
        save_checkpoint(self.directory, iteration, state.to_checkpoint(), keep=self.keep)


class FiniteLoss:
    """The first iteration whose loss was NaN or inf, kept on the device (a check every step would sync the GPU each
    step) and checked where the run syncs anyway: every log row, before a checkpoint, at the end."""

    def __init__(self, device: torch.device, desc: str, ckpt_dir: Path):
        self.first_bad = torch.full((), -1, dtype=torch.long, device=device)
        self.desc, self.ckpt_dir = desc, ckpt_dir

    def note(self, loss_value: torch.Tensor, iteration: int) -> None:
        self.first_bad = torch.where((self.first_bad < 0) & ~torch.isfinite(loss_value), iteration, self.first_bad)

    def check(self) -> None:
        flag = self.first_bad.clone()
        if dist_utils.is_dist():
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        bad = int(flag.item())
        if bad >= 0:
            raise NonFiniteLoss(f"{self.desc}: loss became NaN/inf at iteration {bad}; stopped without saving. The "
                                f"last good checkpoint in {self.ckpt_dir} is intact. Lower train.lr or check the "
                                "labels (values outside 0..18 and 255?).")


def begin_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, method: Method, run: TrainRun,
               settings: TrainSettings, iteration: int) -> float:
    """Before an optimizer step's first micro-batch: the method's `before_step`, the poly learning rate, gradients
    cleared. Returns the learning rate."""
    method.before_step(model, iteration, run)
    lr = learning_rate(settings, iteration)
    set_learning_rate(optimizer, lr)
    optimizer.zero_grad(set_to_none=True)
    return lr


def micro_step(image: torch.Tensor, target: torch.Tensor, domains, model: torch.nn.Module, ddp_model, step_model,
               method: Method, settings: TrainSettings, iteration: int, *, last: bool, amp_ctx, scaler,
               device: torch.device) -> torch.Tensor:
    """One micro-batch forward and backward: the segmentation loss plus the method's, divided by `accumulate`, its
    gradients added to the step's (DDP all-reduces them once, on the `last` micro-batch). Returns the loss, detached."""
    image = image.to(device, non_blocking=True)
    target = target.to(device, non_blocking=True)
    if device.type == "cuda" and settings.channels_last:
        image = image.contiguous(memory_format=torch.channels_last)
    batch = Batch(image, target, domains)
    method.before_forward(model, batch)
    syncs = last or not isinstance(ddp_model, torch.nn.parallel.DistributedDataParallel)
    with nullcontext() if syncs else ddp_model.no_sync():
        with amp_ctx:
            outputs = step_model(image)
            loss = model_loss(model, outputs, target, settings.aux_weight)
            for term in method.losses(model, outputs, batch, iteration).values():
                loss = loss + term
            loss = loss / settings.accumulate
        if scaler is not None:
            scaler.scale(loss).backward()
        else:
            loss.backward()
    return loss.detach()


def optimizer_step(optimizer: torch.optim.Optimizer, scaler) -> None:
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()


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
