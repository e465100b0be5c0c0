"""Cost of IBN: parameters and MACs per head at 512x1024, and time of IBN variants relative to plain ResNet-50.

MACs are counted on the meta device (no memory, no compute) with torch.utils.flop_counter.FlopCounterMode, which counts
convolutions and matrix products (MACs = FLOPs / 2); normalisation layers are not counted, which is exactly where IBN
differs, so the timing part measures that cost directly: the variants run interleaved, repeat by repeat, so machine
load drifts hit all of them alike; medians are reported.

    python benchmarks/bench_models.py [--size 512x256] [--repeats 5] [--threads 2] [--device cuda]

`time_variants` and `summarise` are what benchmarks/gpu_check.py calls.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import segbench.models as M  # noqa: E402
from segbench.data.cache import size_argument  # noqa: E402
from segbench.engine.train import autocast_for  # noqa: E402


BACKBONES = ("resnet50", "resnet50_ibn_a", "resnet50_ibn_b")
MAC_SIZE = (512, 1024)


def macs(backbone: str, head: str, size: tuple[int, int]) -> int:
    with torch.device("meta"):
        model = M.create_model(backbone, head).eval()
        with FlopCounterMode(display=False) as counter:
            model(torch.randn(1, 3, *size))
    return counter.get_total_flops() // 2


def cost_table(heads: list[str]) -> str:
    lines = [f"| head | backbone | output stride | params (M) | GMACs @ {MAC_SIZE[0]}x{MAC_SIZE[1]} |",
             "|---|---|---|---|---|"]
    for head in heads:
        for backbone in BACKBONES:
            with torch.device("meta"):
                model = M.create_model(backbone, head)
            lines.append(f"| {head} | {backbone} | {model.backbone.output_stride} | "
                         f"{M.count_parameters(model) / 1e6:.2f} | {macs(backbone, head, MAC_SIZE) / 1e9:.1f} |")
    return "\n".join(lines)


def _time_once(model: torch.nn.Module, x: torch.Tensor, train: bool, amp_ctx) -> float:
    sync(x.device)
    start = time.perf_counter()
    if train:
        with amp_ctx:
            out = model(x)["out"]
        out.float().mean().backward()
        model.zero_grad(set_to_none=True)
    else:
        with torch.inference_mode(), amp_ctx:
            model(x)
    sync(x.device)
    return time.perf_counter() - start


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_variants(head: str, size: tuple[int, int], repeats: int, train: bool, batch: int,
                  device: torch.device = torch.device("cpu"), backbones=BACKBONES) -> dict[str, list[float]]:
    """Seconds per step of each backbone, interleaved repeat by repeat after one warm-up each. On a GPU the models run
    as training runs them there: bf16 autocast (fp16 where bf16 is missing) and channels_last."""
    amp_ctx, _ = autocast_for(device, True)
    memory_format = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    torch.manual_seed(0)
    models = {b: M.create_model(b, head).train(train).to(device, memory_format=memory_format) for b in backbones}
    x = torch.randn(batch, 3, *size, device=device).contiguous(memory_format=memory_format)
    times: dict[str, list[float]] = {b: [] for b in backbones}
    for b in backbones:  # warm-up: allocator, oneDNN primitive caches, cudnn autotune
        _time_once(models[b], x, train, amp_ctx)
    for _ in range(repeats):
        for b in backbones:
            times[b].append(_time_once(models[b], x, train, amp_ctx))
    return times


def summarise(times: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    """Median, min, max seconds and the median's ratio to the first backbone (plain ResNet)."""
    base = statistics.median(next(iter(times.values())))
    return {b: {"median_s": statistics.median(t), "min_s": min(t), "max_s": max(t),
                "ratio": statistics.median(t) / base} for b, t in times.items()}


def timing_table(head: str, size: tuple[int, int], repeats: int, train: bool, batch: int,
                 device: torch.device = torch.device("cpu")) -> str:
    stats = summarise(time_variants(head, size, repeats, train, batch, device))
    mode = "train fwd+bwd" if train else "eval forward"
    where = f"{torch.get_num_threads()} threads" if device.type == "cpu" else torch.cuda.get_device_name(device)
    lines = [f"{head}, {mode}, batch {batch} x {size[0]}x{size[1]}, {repeats} repeats, {where}:",
             "| backbone | median (s) | min (s) | max (s) | ratio to resnet50 (median) |", "|---|---|---|---|---|"]
    for b, s in stats.items():
        lines.append(f"| {b} | {s['median_s']:.3f} | {s['min_s']:.3f} | {s['max_s']:.3f} | {s['ratio']:.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=size_argument, default=(256, 512), metavar="WxH",
                        help="timing input, WxH like every segbench command (default 512x256)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--timing-heads", nargs="+", default=["fcn"])
    parser.add_argument("--skip-timing", action="store_true")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (cuda: bf16 autocast and channels_last)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {sys.platform}")
    print(cost_table(M.list_heads()))
    if not args.skip_timing:
        for head in args.timing_heads:
            print()
            print(timing_table(head, tuple(args.size), args.repeats, train=False, batch=1, device=device))
            print()
            h, w = args.size
            print(timing_table(head, (h // 2, w // 2), args.repeats, train=True, batch=2, device=device))
    return 0


if __name__ == "__main__":
    sys.exit(main())
