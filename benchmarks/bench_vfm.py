"""Cost of the parameter-efficient methods on a DINOv2 backbone: parameters trained, and the time and peak memory of
one training step (forward, backward, AdamW step) relative to full fine-tuning, run side by side.

The methods run interleaved, repeat by repeat, so machine load drifts hit all of them alike; medians are reported.
Memory is CUDA's peak allocation (on a GPU) or the step's parameter + gradient + optimizer-state bytes (on a CPU,
where allocator peaks are not observable).

    python benchmarks/bench_vfm.py [--backbone dinov2_vitb14_p16] [--size 224x224] [--batch 2] [--repeats 3]
        [--head linear] [--device cuda] [--dtype bf16]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from segbench.config import TrainSettings  # noqa: E402
from segbench.data.cache import size_argument  # noqa: E402
from segbench.engine.optim import make_optimizer  # noqa: E402
from segbench.methods import build_method  # noqa: E402
from segbench.models import create_model  # noqa: E402

METHODS = ("full", "frozen", "rein", "lora", "vpt")


def build(backbone: str, head: str, method: str, device: torch.device):
    torch.manual_seed(0)
    model = create_model(backbone, head, num_classes=19)
    build_method(method).build(model)
    model.to(device).train()
    settings = TrainSettings(optimizer="adamw", lr=1e-4, weight_decay=0.05)
    return model, make_optimizer(model, settings)


def state_bytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """Parameters, plus a gradient and AdamW's two moments for every parameter that trains."""
    trained = sum(p.numel() * p.element_size() for g in optimizer.param_groups for p in g["params"])
    return sum(p.numel() * p.element_size() for p in model.parameters()) + 3 * trained


def step(model, optimizer, x, y, dtype) -> None:
    with torch.autocast(device_type=x.device.type, dtype=dtype, enabled=dtype != torch.float32):
        out = model(x)
        loss = (sum(model.head.loss(out, y).values()) if "mask_logits" in out
                else torch.nn.functional.cross_entropy(out["out"].float(), y, ignore_index=255))
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default="dinov2_vitb14_p16")
    ap.add_argument("--head", default="linear")
    ap.add_argument("--size", type=size_argument, default=(224, 224), help="WxH")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    args = ap.parse_args()
    device = torch.device(args.device)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    h, w = args.size
    x = torch.randn(args.batch, 3, h, w, device=device)
    y = torch.randint(0, 19, (args.batch, h, w), device=device)
    runs = {m: build(args.backbone, args.head, m, device) for m in METHODS}
    times = {m: [] for m in METHODS}
    peaks = {}
    for model, optimizer in runs.values():  # warm-up: first steps allocate optimizer state
        step(model, optimizer, x, y, dtype)
    for _ in range(args.repeats):
        for method, (model, optimizer) in runs.items():
            if device.type == "cuda":
                torch.cuda.synchronize(device)
                torch.cuda.reset_peak_memory_stats(device)
            start = time.perf_counter()
            step(model, optimizer, x, y, dtype)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
                peaks[method] = torch.cuda.max_memory_allocated(device)
            times[method].append(time.perf_counter() - start)
    base = statistics.median(times["full"])
    print(f"{args.backbone} + {args.head}, {args.batch} x {w}x{h}, AdamW, {args.dtype}, {device}, "
          f"median of {args.repeats}")
    print("| method | trains (M) | step (s) | step vs full | memory (GB) |")
    print("|---|---|---|---|---|")
    for method, (model, optimizer) in runs.items():
        trained = sum(p.numel() for g in optimizer.param_groups for p in g["params"])
        memory = peaks.get(method, state_bytes(model, optimizer))
        t = statistics.median(times[method])
        print(f"| {method} | {trained / 1e6:.2f} | {t:.2f} | x{t / base:.2f} | {memory / 1e9:.2f} |")


if __name__ == "__main__":
    main()
