"""Training overhead of segbench's loop against a bare PyTorch loop: same model, same in-memory batches, run side by
side (interleaved repeats, median), reported as a ratio. On a GPU it also reports images/s and the fraction of the
card's peak bf16 throughput for DeepLabV3+ / ResNet-50-IBN-a at crop 768, batch 8.

    python benchmarks/bench_train.py                      # CPU: resnet18 + fcn at 64x128, batch 8
    python benchmarks/bench_train.py --device cuda --gpu-preset   # DeepLabV3+ R50-IBN-a, crop 768, batch 8, bf16
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from segbench.config import TrainSettings
from segbench.data.cache import size_argument
from segbench.engine.train import autocast_for, poly_lr, train
from segbench.labels import IGNORE_INDEX
from segbench.models import create_model

# Peak dense bf16 tensor throughput (TFLOP/s) by device name fragment, from the vendors' data sheets.
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0, "RTX 4090": 165.0}


class InMemory(torch.utils.data.Dataset):
    """Pre-made (image, mask) tensors behind the adapter interface segbench's loop expects."""

    def __init__(self, images, masks):
        self.images, self.masks = images, masks

    def __len__(self):
        return len(self.images)

    def load_pair(self, i):
        return self.images[i], self.masks[i]


class Passthrough:
    def set_random_seed(self, seed):
        pass

    def __call__(self, image, mask):
        return {"image": image, "mask": mask}



def make_data(n, size, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = [torch.randn(3, *size, generator=g) for _ in range(n)]
    masks = [torch.randint(0, 19, size, generator=g) for _ in range(n)]
    return images, masks


def bare_loop(model, images, masks, settings: TrainSettings, device) -> float:
    """The loop a researcher would write by hand: poly lr, SGD, CE with ignore, AMP where available."""
    model.to(device).train()
    if device.type == "cuda" and settings.channels_last:
        model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=settings.lr, momentum=settings.momentum,
                          weight_decay=settings.weight_decay)
    amp_ctx, scaler = autocast_for(device, settings.amp)
    b = settings.batch_size
    batches = [(torch.stack(images[i:i + b]), torch.stack(masks[i:i + b])) for i in range(0, len(images) - b + 1, b)]
    sync(device)
    t0 = time.perf_counter()
    for it in range(settings.iters):
        x, y = batches[it % len(batches)]
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if device.type == "cuda" and settings.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        for group in opt.param_groups:
            group["lr"] = poly_lr(settings.lr, it, settings.iters, settings.power)
        with amp_ctx:
            loss = F.cross_entropy(model(x)["out"], y, ignore_index=IGNORE_INDEX)
        opt.zero_grad(set_to_none=True)
        if scaler:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            opt.step()
    sync(device)
    return settings.iters * b / (time.perf_counter() - t0)


def segbench_loop(model, images, masks, settings: TrainSettings, device) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        stats = train(model, InMemory(images, masks), Passthrough(), settings, seed=0, device=device,
                      ckpt_dir=Path(tmp) / "ckpt", identity={}, desc="segbench")
    return stats["images_per_s"]


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def model_flops(model, size, batch, device) -> float:
    """Forward+backward FLOPs of one training step (backward ~ 2x forward, counted exactly by FlopCounterMode)."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn(batch, 3, *size, device=device)
    with FlopCounterMode(display=False) as counter:
        model(x)["out"].float().mean().backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--head", default="fcn")
    p.add_argument("--size", type=size_argument, default=(64, 128), metavar="WxH",
                   help="crop size, WxH like every segbench command (default 128x64)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--gpu-preset", action="store_true", help="DeepLabV3+ / resnet50_ibn_a, crop 768, batch 8")
    args = p.parse_args()
    if args.gpu_preset:
        args.backbone, args.head, args.size, args.batch = "resnet50_ibn_a", "deeplabv3plus", (768, 768), 8
    device = torch.device(args.device)
    settings = TrainSettings(iters=args.iters, batch_size=args.batch, workers=0, ckpt_every=0)
    images, masks = make_data(args.batch * 4, tuple(args.size))
    rates = {"bare": [], "segbench": []}
    for r in range(args.repeats + 1):  # first round warms up (allocator, cudnn autotune) and is discarded
        for name, loop in (("bare", bare_loop), ("segbench", segbench_loop)):
            torch.manual_seed(0)
            model = create_model(args.backbone, args.head)
            rate = loop(model, images, masks, settings, device)
            if r:
                rates[name].append(rate)
    bare, seg = statistics.median(rates["bare"]), statistics.median(rates["segbench"])
    print(f"device: {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}; {args.backbone} + "
          f"{args.head}, {args.size[0]}x{args.size[1]}, batch {args.batch}, {args.iters} iters x {args.repeats}")
    print(f"bare loop:     {bare:8.2f} images/s  (runs: {', '.join(f'{x:.2f}' for x in rates['bare'])})")
    print(f"segbench loop: {seg:8.2f} images/s  (runs: {', '.join(f'{x:.2f}' for x in rates['segbench'])})")
    print(f"segbench / bare = {seg / bare:.3f}  (overhead {100 * (1 - seg / bare):+.1f}%)")
    if device.type == "cuda":
        model = create_model(args.backbone, args.head).to(device)
        flops = model_flops(model, tuple(args.size), args.batch, device)
        peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in torch.cuda.get_device_name(device)), None)
        achieved = flops / args.batch * seg / 1e12
        print(f"training FLOPs/image: {flops / args.batch / 1e9:.1f} GFLOP; achieved {achieved:.1f} TFLOP/s"
              + (f" = {100 * achieved / peak:.1f}% of peak bf16 ({peak:.0f} TFLOP/s)" if peak else ""))


if __name__ == "__main__":
    main()
