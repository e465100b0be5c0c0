"""Training overhead of segbench's loop against a bare PyTorch loop: same model, same in-memory batches, run side by
side (interleaved repeats, median), reported as a ratio. On a GPU it also reports images/s and the fraction of the
card's peak bf16 throughput for DeepLabV3+ / ResNet-50-IBN-a at crop 768, batch 8.

    python benchmarks/bench_train.py                      # CPU: resnet18 + fcn at 64x128, batch 8
    python benchmarks/bench_train.py --device cuda --gpu-preset   # DeepLabV3+ R50-IBN-a, crop 768, batch 8, bf16

`measure` and `throughput` are what benchmarks/gpu_check.py calls.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from segbench.config import TrainSettings  # noqa: E402
from segbench.data.cache import size_argument  # noqa: E402
from segbench.engine.optim import poly_lr  # noqa: E402
from segbench.engine.train import LOG_EVERY, autocast_for, train  # noqa: E402
from segbench.labels import IGNORE_INDEX  # noqa: E402
from segbench.models import create_model  # noqa: E402

GPU_PRESET = {"backbone": "resnet50_ibn_a", "head": "deeplabv3plus", "size": (768, 768), "batch": 8}

# Peak dense (no sparsity) bf16 tensor throughput in TFLOP/s, from the vendors' data sheets (NVIDIA H100/H200, A100,
# L40S, A10, RTX 4090 specifications). The first fragment found in the device name wins: specific names come first.
PEAK_BF16_TFLOPS = (("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("H200", 989.0), ("A100", 312.0),
                    ("L40S", 362.0), ("A10", 125.0), ("RTX 4090", 165.0))


# Peak memory bandwidth in TB/s, from the same data sheets (H100 SXM5 80 GB HBM3 3.35, H100 PCIe 2.0, H100 NVL 3.9,
# H200 4.8, A100 80 GB SXM 2.039 / PCIe 1.935, A100 40 GB 1.555): what bounds the normalisation and elementwise work.
PEAK_MEMORY_TB_PER_S = (("H100 PCIe", 2.0), ("H100 NVL", 3.9), ("H100", 3.35), ("H200", 4.8),
                        ("A100-SXM4-80GB", 2.039), ("A100 80GB PCIe", 1.935), ("A100", 1.555), ("L40S", 0.864),
                        ("A10", 0.6), ("RTX 4090", 1.008))


def peak_bf16_tflops(device_name: str) -> float | None:
    return next((peak for fragment, peak in PEAK_BF16_TFLOPS if fragment in device_name), None)


def peak_memory_tb_per_s(device_name: str) -> float | None:
    return next((peak for fragment, peak in PEAK_MEMORY_TB_PER_S if fragment in device_name), None)


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


def bare_step(model, settings: TrainSettings, device, forward=None):
    """One step of the loop a researcher would write by hand (poly lr, SGD, CE with ignore, AMP where available), as a
    function of (x, y, iteration). `forward(model, x, y) -> loss` replaces the plain one (gpu_check's variants)."""
    model.to(device).train()
    if device.type == "cuda" and settings.channels_last:
        model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=settings.lr, momentum=settings.momentum,
                          weight_decay=settings.weight_decay)
    amp_ctx, scaler = autocast_for(device, settings.amp)
    forward = forward or (lambda m, x, y: F.cross_entropy(m(x)["out"], y, ignore_index=IGNORE_INDEX))

    def step(x, y, it):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if device.type == "cuda" and settings.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        for group in opt.param_groups:
            group["lr"] = poly_lr(settings.lr, it, settings.iters, settings.power)
        with amp_ctx:
            loss = forward(model, x, y)
        opt.zero_grad(set_to_none=True)
        if scaler:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            opt.step()

    return step


def batches_of(images, masks, b, device):
    """Batches of `b`, in pinned memory for a GPU as segbench's DataLoader gives them (pin_memory=True): a pageable
    copy to the device blocks the host and is several times slower."""
    batches = [(torch.stack(images[i:i + b]), torch.stack(masks[i:i + b])) for i in range(0, len(images) - b + 1, b)]
    if device.type == "cuda":
        batches = [(x.pin_memory(), y.pin_memory()) for x, y in batches]
    return batches


def timed_images_per_s(step, batches, steps: int, device, first: int = 0) -> float:
    """Images/s of `steps` calls of `step` (iterations first, first + 1, ...), cycling through `batches`, timed
    between device synchronisations."""
    sync(device)
    t0 = time.perf_counter()
    for it in range(first, first + steps):
        step(*batches[it % len(batches)], it)
    sync(device)
    return steps * len(batches[0][0]) / (time.perf_counter() - t0)


def bare_loop(model, images, masks, settings: TrainSettings, device, steady: bool = False) -> float:
    """Images/s of the bare loop over `settings.iters` steps, or with `steady` over the same window as
    `segbench_loop(steady=True)`: LOG_EVERY steps untimed, then LOG_EVERY timed."""
    step = bare_step(model, settings, device)
    batches = batches_of(images, masks, settings.batch_size, device)
    if not steady:
        return timed_images_per_s(step, batches, settings.iters, device)
    timed_images_per_s(step, batches, LOG_EVERY, device)
    return timed_images_per_s(step, batches, LOG_EVERY, device, first=LOG_EVERY)


def segbench_loop(model, images, masks, settings: TrainSettings, device, steady: bool = False) -> float:
    """Images/s of segbench's loop over the whole run, or with `steady` over its second LOG_EVERY iterations only
    (`window_seconds`): loader workers start inside the run, a cost a 40k-iteration run does not see."""
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "train_log.csv"
        stats = train(model, InMemory(images, masks), Passthrough(), settings, seed=0, device=device,
                      ckpt_dir=Path(tmp) / "ckpt", identity={}, desc="segbench", log_path=log if steady else None)
        if steady:
            rows = {int(r["iteration"]): float(r["images_per_s"]) for r in csv.DictReader(log.open())}
            return settings.batch_size / window_seconds(rows, settings.batch_size, LOG_EVERY)
    return stats["images_per_s"]


def window_seconds(cumulative_rates: dict[int, float], batch: int, every: int) -> float:
    """Seconds per iteration between the loop's first two log rows, from its cumulative images/s at each: at
    iteration k it has run for k x batch / rate_k seconds."""
    first, second = every, 2 * every
    elapsed = {k: k * batch / cumulative_rates[k] for k in (first, second)}
    return (elapsed[second] - elapsed[first]) / (second - first)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def precision(device: torch.device, settings: TrainSettings) -> str:
    """The arithmetic the loops run in: what autocast_for picks on this device."""
    amp_ctx, scaler = autocast_for(device, settings.amp)
    dtype = getattr(amp_ctx, "fast_dtype", None)
    return "fp32" if dtype is None else {torch.bfloat16: "bf16", torch.float16: "fp16 + GradScaler"}[dtype]


def measure(backbone: str, head: str, size: tuple[int, int], batch: int, iters: int, repeats: int,
            device: torch.device, workers: int = 0) -> dict:
    """Images/s of both loops, median of `repeats` interleaved rounds after one warm-up round (allocator, cudnn
    autotune), and their ratio. With `workers`, segbench's loop also runs with its real DataLoader (that many worker
    processes; pinned memory on a GPU), against the bare loop over the same steady window (`steady`: needs iters >=
    2 x LOG_EVERY), where the plain one collates and pins on the main thread (`workers=0`)."""
    settings = TrainSettings(iters=iters, batch_size=batch, workers=0, ckpt_every=0)
    images, masks = make_data(batch * 4, tuple(size))
    loops = {"bare": bare_loop, "segbench": segbench_loop}
    if workers:
        if iters < 2 * LOG_EVERY:
            raise ValueError(f"iters={iters}: the loop with workers is timed between iterations {LOG_EVERY} and "
                             f"{2 * LOG_EVERY}; give at least {2 * LOG_EVERY}")
        with_workers = dataclasses.replace(settings, workers=workers)
        loops["bare_steady"] = lambda m, i, k, s, d: bare_loop(m, i, k, s, d, steady=True)
        loops["segbench_workers"] = lambda m, i, k, _, d: segbench_loop(m, i, k, with_workers, d, steady=True)
    rates = {name: [] for name in loops}
    for r in range(repeats + 1):
        for name, loop in loops.items():
            torch.manual_seed(0)
            model = create_model(backbone, head)
            rate = loop(model, images, masks, settings, device)
            if r:
                rates[name].append(rate)
            del model
    median = {name: statistics.median(runs) for name, runs in rates.items()}
    bare, seg = median["bare"], median["segbench"]
    figures = {"backbone": backbone, "head": head, "crop_hw": list(size), "batch": batch, "iters": iters,
               "repeats": repeats, "precision": precision(device, settings),
               "channels_last": device.type == "cuda" and settings.channels_last,
               "bare_images_per_s": bare, "segbench_images_per_s": seg, "segbench_over_bare": seg / bare,
               "bare_runs": rates["bare"], "segbench_runs": rates["segbench"]}
    if workers:
        figures.update({"workers": workers, "bare_steady_images_per_s": median["bare_steady"],
                        "segbench_workers_images_per_s": median["segbench_workers"],
                        "segbench_workers_over_bare": median["segbench_workers"] / median["bare_steady"],
                        "bare_steady_runs": rates["bare_steady"], "segbench_workers_runs": rates["segbench_workers"]})
    return figures


def training_flops_per_image(backbone: str, head: str, size: tuple[int, int]) -> float:
    """Forward+backward FLOPs of one training image, counted by FlopCounterMode on the meta device (shapes only: no
    memory, no compute). Convolutions and matrix products; normalisation layers are not counted. A batch of two,
    halved: a head with image pooling (DeepLabV3's ASPP) has a 1x1 BatchNorm that training mode refuses at batch 1."""
    from torch.utils.flop_counter import FlopCounterMode

    batch = 2
    with torch.device("meta"):
        model = create_model(backbone, head)
        x = torch.randn(batch, 3, *size)
        with FlopCounterMode(display=False) as counter:
            model(x)["out"].float().mean().backward()
    return float(counter.get_total_flops()) / batch


def throughput(backbone: str, head: str, size: tuple[int, int], images_per_s: float, device_name: str) -> dict:
    """Model FLOPs achieved at `images_per_s`, and the fraction of the card's peak bf16 when the card is known."""
    flops = training_flops_per_image(backbone, head, size)
    achieved = flops * images_per_s / 1e12
    peak = peak_bf16_tflops(device_name)
    return {"training_gflop_per_image": flops / 1e9, "achieved_tflops": achieved, "peak_bf16_tflops": peak,
            "fraction_of_peak_bf16": achieved / peak if peak else None}


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--head", default="fcn")
    p.add_argument("--size", type=size_argument, default=(64, 128), metavar="WxH",
                   help="crop size, WxH like every segbench command (default 128x64)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--workers", type=int, default=0,
                   help="also time segbench's loop with this many DataLoader workers (steady state; iters >= 20)")
    p.add_argument("--gpu-preset", action="store_true", help="DeepLabV3+ / resnet50_ibn_a, crop 768, batch 8")
    args = p.parse_args(argv)
    if args.gpu_preset:
        args.backbone, args.head, args.size, args.batch = (GPU_PRESET[k] for k in ("backbone", "head", "size", "batch"))
    device = torch.device(args.device)
    m = measure(args.backbone, args.head, tuple(args.size), args.batch, args.iters, args.repeats, device,
                args.workers)
    print(f"device: {device_name(device)}; {args.backbone} + {args.head}, {args.size[0]}x{args.size[1]}, "
          f"batch {args.batch}, {args.iters} iters x {args.repeats}, {m['precision']}")
    print(f"bare loop:     {m['bare_images_per_s']:8.2f} images/s  "
          f"(runs: {', '.join(f'{x:.2f}' for x in m['bare_runs'])})")
    print(f"segbench loop: {m['segbench_images_per_s']:8.2f} images/s  "
          f"(runs: {', '.join(f'{x:.2f}' for x in m['segbench_runs'])})")
    ratio = m["segbench_over_bare"]
    print(f"segbench / bare = {ratio:.3f}  (overhead {100 * (1 - ratio):+.1f}%)")
    if args.workers:
        w = m["segbench_workers_over_bare"]
        print(f"steady window (iterations {LOG_EVERY}-{2 * LOG_EVERY}): bare {m['bare_steady_images_per_s']:.2f}, "
              f"segbench with {args.workers} workers {m['segbench_workers_images_per_s']:.2f} images/s "
              f"(runs: {', '.join(f'{x:.2f}' for x in m['segbench_workers_runs'])}); / bare = {w:.3f}")
    if device.type == "cuda":
        t = throughput(args.backbone, args.head, tuple(args.size), m["segbench_images_per_s"], device_name(device))
        peak = t["peak_bf16_tflops"]
        of_peak = f" = {100 * t['fraction_of_peak_bf16']:.1f}% of peak bf16 ({peak:.0f} TFLOP/s)" if peak else ""
        print(f"training FLOPs/image: {t['training_gflop_per_image']:.1f} GFLOP; achieved {t['achieved_tflops']:.1f} "
              f"TFLOP/s{of_peak}")


if __name__ == "__main__":
    main()
