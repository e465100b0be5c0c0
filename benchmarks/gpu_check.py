"""One command that proves segbench's GPU path and measures it, with no dataset and no download.

    python benchmarks/gpu_check.py                        # one CUDA GPU: every section within --budget-s 480
    python benchmarks/gpu_check.py --device cpu --smoke   # every section's code on CPU in under a minute (CI runs it)

Sections, in this order (--sections picks and orders them):
  tests     pytest -m cuda tests/test_cuda.py: bf16 and fp16 + GradScaler steps against fp32, channels_last,
            torch.compile, CUDA vs CPU confusion matrix, SyncBatchNorm in a 1-process NCCL group, sliding windows
  train     bench_train's GPU preset (DeepLabV3+ / ResNet-50-IBN-a, crop 768, batch 8): images/s of segbench's loop
            and of a bare loop, and of segbench's loop with its real DataLoader (min(8, CPUs) workers, pinned memory)
            at its steady state; model TFLOP/s and the fraction of the card's peak bf16
  models    bench_models' timing: ResNet-50 vs IBN-a vs IBN-b, a training step of the preset and a full-frame forward
  methods   each feature-level DG method's training images/s in segbench's loop (plain ResNet-50 + the preset's
            head, crop and batch) relative to erm; ISW and SHADE (statistics passes over real images) and PASTA (in the
            loader, on the CPU) are not timed here
  data      can one process with N loader workers (N = min(8, CPUs)) feed the preset, from full-size GTA5-like PNGs
            and from their prepared 1280x720 cache? loader images/s against the train section's step images/s
  embedded  python -m segbench.run on this device: the embedded default's wall time and table
  profile   where the preset's training step spends device time (torch.profiler, ops grouped by kind), and the
            steady-state images/s of variants that each change one thing (batch x2, no channels_last, plain
            ResNet-50, the loss at the head's own resolution): what would move the fraction of peak; and a
            roofline: the least traffic each kind of op moves in one step, and the fraction of peak the step could
            reach if convolutions kept their time and every other op ran at the card's peak memory bandwidth
  hours     the projected training hours of each experiment file's whole recipe on this device, from each of its
            distinct steps timed in segbench's loop (benchmarks/project_hours.py), without and (on a GPU) with
            train.compile; measuring stops at the budget, leaving the remaining files' hours open

Each section is guarded: a failure is recorded (error and traceback) and the next section runs. Once --budget-s is
spent the remaining sections are recorded as skipped. Every figure goes to one JSON file (--out), rewritten after each
section, so an interrupted run keeps what it measured; a short summary is printed at the end.
--smoke shrinks every section (resnet18, crop 64, batch 2, a few small frames, a 1-cell study).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]

import torch  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402
from torch.utils._pytree import tree_flatten  # noqa: E402

#: the issue's target on an H100-class card: the preset at >= 35% of peak bf16 counted as model FLOPs
TARGET_FRACTION_OF_PEAK = 0.35
SECTION_NAMES = ("tests", "train", "models", "methods", "data", "embedded", "profile", "hours")
#: the methods the `methods` section times (every one that works on in-memory batches alone)
TIMED_METHODS = ("erm", "iw", "irw", "sw", "mixstyle", "dsu", "np")


@dataclass(frozen=True)
class Profile:
    """The sizes of every section: FULL on a GPU, SMOKE for a CPU run that only exercises the code."""

    backbone: str
    head: str
    crop: tuple[int, int]  # (H, W)
    batch: int
    train_iters: int
    train_repeats: int
    ratio_backbones: tuple[str, ...]
    ratio_eval_size: tuple[int, int]  # (H, W) of the full-frame forward
    ratio_repeats: int
    frames: int
    frame_size: tuple[int, int]  # (W, H), like GTA5's 1914x1052
    prepared_size: tuple[int, int]  # (W, H), like `segbench data prepare --size 1280x720`
    loader_rounds: int
    profile_warmup: int = 5
    profile_steps: int = 15
    embedded_args: tuple[str, ...] = ()
    hours_experiments: tuple[str, ...] = ()  # experiment file stems the hours section projects (empty: every one)
    hours_steps: int | None = None  # at most this many distinct steps timed (None: until the budget is spent)
    hours_compile: bool = True  # also with train.compile (on a GPU only)
    synthetic_sizes: str | None = None  # SEGBENCH_SYNTHETIC_SIZES for the embedded run
    #: intra-op threads on a CPU (None: torch's default). Tiny inputs gain nothing from threads, and on a busy CI
    #: machine two threads that wait for each other made a resnet18 step 20x slower (2.7 s against 0.14 s)
    cpu_threads: int | None = None
    test_timeout_s: float = 300.0


# the train fields are bench_train.GPU_PRESET (tests/test_gpu_check.py holds them equal)
FULL = Profile(backbone="resnet50_ibn_a", head="deeplabv3plus", crop=(768, 768), batch=8, train_iters=20,
               train_repeats=2, ratio_backbones=("resnet50", "resnet50_ibn_a", "resnet50_ibn_b"),
               ratio_eval_size=(1024, 2048), ratio_repeats=5, frames=16, frame_size=(1914, 1052),
               prepared_size=(1280, 720), loader_rounds=4)
SMOKE = Profile(backbone="resnet18", head="fcn", crop=(64, 64), batch=2, train_iters=2, train_repeats=1,
                ratio_backbones=("resnet18", "resnet18_ibn_a", "resnet18_ibn_b"), ratio_eval_size=(64, 128),
                ratio_repeats=1, frames=4, frame_size=(320, 176), prepared_size=(160, 88), loader_rounds=2,
                profile_warmup=1, profile_steps=2,
                embedded_args=("--set", "train.iters=2", "--set", "train.batch_size=2", "--seeds", "1",
                               "--backbones", "resnet18"),
                synthetic_sizes="train=2,val=1", cpu_threads=1, hours_experiments=("embedded",), hours_steps=1,
                hours_compile=False)


@dataclass
class Context:
    """What every section gets: where to run, how big, the clock, a scratch directory, earlier sections' results."""

    device: torch.device
    profile: Profile
    budget_s: float
    scratch: Path
    started: float = field(default_factory=time.perf_counter)
    sections: dict = field(default_factory=dict)

    def remaining_s(self) -> float:
        return self.budget_s - (time.perf_counter() - self.started)

    @property
    def loader_workers(self) -> int:
        return min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


# ------------------------------------------------------------------------------------------------ sections
def section_tests(ctx: Context) -> dict:
    """The `cuda` tests in a child pytest; pass/fail counts and each failure's message from its JUnit XML."""
    if ctx.device.type != "cuda":
        return {"status": "skipped", "reason": "no CUDA: the cuda tests need a GPU"}
    xml = ctx.scratch / "cuda_tests.xml"
    cmd = [sys.executable, "-m", "pytest", "-m", "cuda", "tests/test_cuda.py", "-q", "-p", "no:cacheprovider",
           f"--junitxml={xml}"]
    run = run_child(cmd, ctx, timeout_s=ctx.profile.test_timeout_s)
    if not xml.exists():
        return {"status": "failed", "error": "pytest wrote no report", **run}
    counts = junit_counts(xml)
    ok = run["returncode"] == 0 and counts["passed"] > 0
    return {"status": "ok" if ok else "failed", **counts, **({} if ok else {"output_tail": run["output_tail"]}),
            "command": run["command"], "child_wall_s": run["wall_s"]}


def section_train(ctx: Context) -> dict:
    import bench_train

    p = ctx.profile
    # with enough iterations for a steady window, segbench's loop also runs with its real DataLoader workers
    workers = ctx.loader_workers if p.train_iters >= 2 * bench_train.LOG_EVERY else 0
    figures = bench_train.measure(p.backbone, p.head, p.crop, p.batch, p.train_iters, p.train_repeats, ctx.device,
                                  workers)
    figures.update(bench_train.throughput(p.backbone, p.head, p.crop, figures["segbench_images_per_s"],
                                          device_name(ctx.device)))
    if ctx.device.type == "cuda" and figures["fraction_of_peak_bf16"] is not None:
        figures["target_fraction_of_peak_bf16"] = TARGET_FRACTION_OF_PEAK
        figures["meets_target"] = figures["fraction_of_peak_bf16"] >= TARGET_FRACTION_OF_PEAK
    return figures


def section_models(ctx: Context) -> dict:
    """IBN's cost on this device: a training step of the preset, and a forward pass of one full frame."""
    import bench_models
    import bench_train
    from segbench.config import TrainSettings

    p = ctx.profile
    figures = {"precision": bench_train.precision(ctx.device, TrainSettings()),
               "channels_last": ctx.device.type == "cuda"}
    for name, size, batch, train in (("train_step", p.crop, p.batch, True),
                                     ("eval_forward", p.ratio_eval_size, 1, False)):
        times = bench_models.time_variants(p.head, size, p.ratio_repeats, train, batch, ctx.device,
                                           p.ratio_backbones)
        stats = bench_models.summarise(times)
        figures[name] = {"head": p.head, "size_hw": list(size), "batch": batch, "repeats": p.ratio_repeats,
                         "seconds": {b: s["median_s"] for b, s in stats.items()},
                         "ratio_to_plain": {b: s["ratio"] for b, s in stats.items()}}
    return figures


def section_methods(ctx: Context) -> dict:
    """Images/s of segbench's loop with each method on the plain backbone, after one warm-up run per method
    (allocator, cudnn autotune), and the ratio to erm's."""
    import bench_train
    from segbench.config import ModelSettings, TrainSettings
    from segbench.engine.train import train
    from segbench.network import build_cell_model

    p = ctx.profile
    backbone = p.ratio_backbones[0]  # the plain ResNet: every method's places are free there
    settings = TrainSettings(iters=p.train_iters, batch_size=p.batch, workers=0, ckpt_every=0)
    images, masks = bench_train.make_data(p.batch * 2, tuple(p.crop))
    rates = {}
    for name in TIMED_METHODS:
        for _ in range(2):  # the second run is the one kept
            torch.manual_seed(0)
            model, method = build_cell_model(backbone, p.head, ModelSettings(), name, pretrained=False)
            with tempfile.TemporaryDirectory() as tmp:
                stats = train(model, bench_train.InMemory(images, masks), bench_train.Passthrough(), settings, seed=0,
                              device=ctx.device, ckpt_dir=Path(tmp) / "ckpt", identity={}, desc=name, method=method)
            rates[name] = stats["images_per_s"]
            del model
    return {"backbone": backbone, "head": p.head, "crop_hw": list(p.crop), "batch": p.batch, "iters": p.train_iters,
            "precision": bench_train.precision(ctx.device, settings), "images_per_s": rates,
            "ratio_to_erm": {k: v / rates["erm"] for k, v in rates.items()}}


def section_data(ctx: Context) -> dict:
    """Loader images/s from full-size PNG frames and from the prepared cache, against the step's images/s."""
    import bench_data
    from segbench.config import TrainSettings
    from segbench.data.cache import prepared_name
    from segbench.data.factory import build_dataset, prepare_dataset
    from segbench.data.transforms import build_train_transform

    p, workers = ctx.profile, ctx.loader_workers
    root = ctx.scratch / "data"
    figures = {"workers": workers, "frames": p.frames, "frame_size_wh": list(p.frame_size),
               "prepared_size_wh": list(p.prepared_size), "crop_hw": list(p.crop), "batch": p.batch,
               "note": "frames were just written, so they are read from the page cache; the step does not run "
                       "at the same time (the loader alone, with each batch copied to the device)"}
    t0 = time.perf_counter()
    bench_data.make_tree(root / "gta5", p.frames, p.frame_size, workers=workers)
    figures["generate_s"] = time.perf_counter() - t0
    transform = build_train_transform(crop_size=p.crop, scale_range=TrainSettings().scale_range)
    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")  # and the notes on GTA5's splits that need split lists this tree lacks
        t0 = time.perf_counter()
        prepare_dataset("gta5", p.prepared_size, data_root_dir=root, workers=workers, progress=False)
        figures["prepare_s"] = time.perf_counter() - t0
        datasets = {"full_frames": build_dataset("gta5", "all", root=root),
                    "prepared": build_dataset(prepared_name("gta5", p.prepared_size), "all", root=root)}
    step = ctx.sections.get("train", {}).get("segbench_images_per_s")
    figures["step_images_per_s"] = step
    for name, dataset in datasets.items():
        rate = bench_data.loader_rate(dataset, transform, batch=p.batch, workers=workers, rounds=p.loader_rounds,
                                      device=ctx.device)
        rate["keeps_up"] = None if step is None else rate["images_per_s"] >= step
        rate["per_worker_images_per_s"] = rate["images_per_s"] / max(workers, 1)
        if step is not None:
            rate["workers_needed"] = math.ceil(step / rate["per_worker_images_per_s"])
        figures[name] = rate
    return figures


def section_embedded(ctx: Context) -> dict:
    """The embedded default as a user runs it (fresh data root: generation included), on this device."""
    p = ctx.profile
    cmd = [sys.executable, "-m", "segbench.run", "--device", ctx.device.type, "--results",
           str(ctx.scratch / "results"), "--data-root", str(ctx.scratch / "datasets"), *p.embedded_args]
    env = {"SEGBENCH_SYNTHETIC_SIZES": p.synthetic_sizes} if p.synthetic_sizes else {}
    if ctx.device.type == "cpu" and p.cpu_threads:
        env["OMP_NUM_THREADS"] = str(p.cpu_threads)
    run = run_child(cmd, ctx, env=env)
    table = printed_table(run["stdout"])
    ok = run["returncode"] == 0 and bool(table)
    return {"status": "ok" if ok else "failed", "command": run["command"], "run_wall_s": run["wall_s"],
            "returncode": run["returncode"], "table": table, **({"env": env} if env else {}),
            **({} if ok else {"output_tail": run["output_tail"]})}


def section_hours(ctx: Context) -> dict:
    """Projected hours of each experiment file's training on this device, eager and (on a GPU) compiled."""
    import project_hours

    p = ctx.profile
    files = project_hours.experiment_files(list(p.hours_experiments) or None)

    def can_measure(measured: int) -> bool:
        return ctx.remaining_s() > 0 and (p.hours_steps is None or measured < p.hours_steps)

    def progress(line: str) -> None:
        print(line, file=sys.stderr)

    figures = {"eager": project_hours.project(files, ctx.device, False, can_measure, progress)}
    if p.hours_compile and ctx.device.type == "cuda":
        figures["compiled"] = project_hours.project(files, ctx.device, True, can_measure, progress)
    figures["table"] = "\n\n".join(project_hours.table(report, device_name(ctx.device))
                                    for report in (figures["eager"], figures.get("compiled")) if report)
    return figures


#: the profile section's grouping of the innermost aten op that ran each kernel (first match wins, else "other")
OP_KINDS = (("resampling", ("upsample", "interpolate", "grid_sampler")),  # before "linear": upsample_bilinear2d
            ("convolution", ("convolution", "conv2d", "mm", "matmul", "linear")),
            ("normalisation", ("batch_norm", "instance_norm", "group_norm", "layer_norm")),
            ("loss", ("nll_loss", "log_softmax", "cross_entropy")),
            ("optimizer", ("_foreach", "sgd")),
            ("copies and layout", ("copy_", "contiguous", "clone", "cat", "pad")),
            ("elementwise and pooling", ("relu", "threshold", "add", "mul", "div", "sub", "fill", "zero", "where",
                                         "sum", "mean", "pool", "sigmoid", "neg", "exp", "sqrt", "pow")))


def op_kind(name: str) -> str:
    op = name.split("::")[-1].lower()
    return next((kind for kind, fragments in OP_KINDS if any(f in op for f in fragments)), "other")


def summed_by_kind(per_op: dict[str, float]) -> dict[str, float]:
    """Per-op figures summed per `op_kind`, largest first."""
    kinds: dict[str, float] = {}
    for name, value in per_op.items():
        kinds[op_kind(name)] = kinds.get(op_kind(name), 0.0) + value
    return dict(sorted(kinds.items(), key=lambda kv: -kv[1]))


def step_breakdown(step, batches, steps: int, device: torch.device) -> dict:
    """Self device time (CPU time on a CPU) of every op over `steps` steps, per step, grouped by OP_KINDS. Only the
    ops' own rows are summed: a kernel's row repeats the time of the op that launched it."""
    from bench_train import sync
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities, record_shapes=True, acc_events=True) as prof:
        for it in range(steps):
            step(*batches[it % len(batches)], it)
        sync(device)
    ops = {}
    for evt in prof.key_averages():
        if evt.device_type != torch.autograd.DeviceType.CPU or evt.key.startswith(("autograd::", "ProfilerStep")):
            continue
        us = evt.self_device_time_total if device.type == "cuda" else evt.self_cpu_time_total
        if us > 0:
            ops[evt.key] = ops.get(evt.key, 0.0) + us / 1e3 / steps
    total = sum(ops.values())
    kinds = summed_by_kind(ops)
    top = sorted(ops.items(), key=lambda kv: -kv[1])[:15]
    # which tensors the copies move (input shapes), and the transfers between host and device among them
    copies = sorted(((str(evt.input_shapes), (evt.self_device_time_total if device.type == "cuda" else
                                              evt.self_cpu_time_total) / 1e3 / steps, evt.count // steps)
                     for evt in prof.key_averages(group_by_input_shape=True)
                     if evt.key == "aten::copy_" and evt.device_type == torch.autograd.DeviceType.CPU),
                    key=lambda c: -c[1])[:10]
    memcpy = {evt.key: evt.device_time_total / 1e3 / steps for evt in prof.key_averages()
              if device.type == "cuda" and evt.device_type != torch.autograd.DeviceType.CPU and "Memcpy" in evt.key}
    return {"timed": "device" if device.type == "cuda" else "cpu", "ms_per_step": total,
            "by_kind": {k: {"ms_per_step": ms, "share": ms / total if total else 0.0}
                        for k, ms in kinds.items()},
            "top_ops": [{"op": name, "ms_per_step": ms, "share": ms / total if total else 0.0} for name, ms in top],
            "copies_by_shape": [{"input_shapes": shapes, "ms_per_step": ms, "calls_per_step": calls}
                                for shapes, ms, calls in copies],
            "memcpy_ms_per_step": memcpy}


#: ops that move no tensor data (views and allocations), and ops whose first argument they only write
NO_TRAFFIC = ("_unsafe_view", "alias", "detach", "lift_fresh", "empty", "empty_like", "empty_strided", "new_empty",
              "new_empty_strided", "set_")
WRITE_ONLY_FIRST = ("copy_", "fill_", "zero_")


def tensor_bytes(t: torch.Tensor) -> int:
    """Bytes a kernel must touch to read or write `t` once: its elements, or its memory span when fewer (an
    expanded tensor repeats one element along stride-0 dimensions)."""
    if t.numel() == 0:
        return 0
    span = 1 + sum((size - 1) * stride for size, stride in zip(t.shape, t.stride()))
    return min(t.numel(), span) * t.element_size()


class TrafficCounter(TorchDispatchMode):
    """Bytes per aten op that its tensor arguments and results on `device` hold, each read or written once: the
    least that op can move as a kernel of its own. Kernels that read their input twice (a norm's statistics pass,
    then the normalisation) move more, so this is a floor of what the eager step moves."""

    def __init__(self, device: torch.device):
        super().__init__()
        self.device_type = device.type
        self.bytes: dict[str, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = func.overloadpacket.__name__
        if func.is_view or name in NO_TRAFFIC:
            return out
        inputs = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        if name in WRITE_ONLY_FIRST:
            inputs = inputs[1:]
        outputs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        moved = sum(tensor_bytes(t) for t in inputs + outputs if t.device.type == self.device_type)
        self.bytes[name] = self.bytes.get(name, 0) + moved
        return out


def step_traffic(step, batch, iteration: int, device: torch.device) -> dict:
    """GB per training step that each kind of op must at least read and write on the device (TrafficCounter over
    one step), for a roofline of the step: the bandwidth that non-convolution work needs."""
    from bench_train import sync

    with TrafficCounter(device) as counter:
        step(*batch, iteration)
        sync(device)
    return summed_by_kind({name: moved / 1e9 for name, moved in counter.bytes.items()})


def bandwidth_bound(ms_by_kind: dict, gb_by_kind: dict, gflop_per_step: float, peak_tflops: float | None,
                    peak_tb_per_s: float | None, target: float = TARGET_FRACTION_OF_PEAK) -> dict:
    """Roofline of one step: convolutions keep their measured time, every other op moves its least traffic at the
    card's peak bandwidth. `fraction_of_peak_bf16_bound` is the most this op sequence can reach without fusing ops
    (fewer bytes) or faster convolutions; `other_gb_allowed_by_target` is what the non-convolution work may move
    for the step to reach `target`."""
    conv_ms = ms_by_kind.get("convolution", 0.0)
    other_ms = sum(ms for kind, ms in ms_by_kind.items() if kind != "convolution")
    other_gb = sum(gb for kind, gb in gb_by_kind.items() if kind != "convolution")
    bound = {"convolution_ms": conv_ms, "other_ms": other_ms, "other_gb": other_gb,
             "other_tb_per_s": other_gb / other_ms if other_ms else None, "peak_tb_per_s": peak_tb_per_s,
             "tb_per_s_by_kind": {kind: gb / ms_by_kind[kind] for kind, gb in gb_by_kind.items()
                                  if ms_by_kind.get(kind)}}
    if peak_tflops and peak_tb_per_s:
        floor_ms = other_gb / peak_tb_per_s  # GB / (TB/s) = ms
        allowed_ms = gflop_per_step / (target * peak_tflops) - conv_ms  # GFLOP / (TFLOP/s) = ms
        bound.update({"other_ms_at_peak_bandwidth": floor_ms,
                      "fraction_of_peak_bf16_bound": gflop_per_step / (conv_ms + floor_ms) / peak_tflops,
                      "target_fraction_of_peak_bf16": target, "other_ms_allowed_by_target": allowed_ms,
                      "other_gb_allowed_by_target": max(allowed_ms, 0.0) * peak_tb_per_s})
    return bound


def loss_at_head_resolution(model, x, y):
    """Diagnostic only (not a recipe): the loss on the head's own output against nearest-subsampled labels, which
    leaves out the full-resolution upsampling and the loss over every pixel."""
    from segbench.labels import IGNORE_INDEX

    logits = model.head(model.backbone(x))
    stride = x.shape[-1] // logits.shape[-1]
    return torch.nn.functional.cross_entropy(logits, y[:, ::stride, ::stride], ignore_index=IGNORE_INDEX)


def section_profile(ctx: Context) -> dict:
    import bench_train
    from segbench.config import ModelSettings, TrainSettings
    from segbench.network import build_network

    p = ctx.profile
    plain = p.ratio_backbones[0]
    variants = {"preset": {}, "batches_on_device": {"on_device": True}, "batch_x2": {"batch": 2 * p.batch},
                "no_channels_last": {"channels_last": False},
                f"plain_{plain}": {"backbone": plain}, "loss_at_head_resolution": {"forward": loss_at_head_resolution}}
    images, masks = bench_train.make_data(4 * p.batch, tuple(p.crop))
    figures = {"backbone": p.backbone, "head": p.head, "crop_hw": list(p.crop), "batch": p.batch,
               "warmup_steps": p.profile_warmup, "timed_steps": p.profile_steps, "variants": {}}
    for name, change in variants.items():
        batch = change.get("batch", p.batch)
        settings = TrainSettings(iters=p.profile_warmup + p.profile_steps, batch_size=batch, workers=0, ckpt_every=0,
                                 channels_last=change.get("channels_last", True))
        figures["precision"] = bench_train.precision(ctx.device, settings)
        torch.manual_seed(0)
        model = build_network(change.get("backbone", p.backbone), p.head, ModelSettings(), pretrained=False)
        step = bench_train.bare_step(model, settings, ctx.device, forward=change.get("forward"))
        batches = bench_train.batches_of(images, masks, batch, ctx.device)
        if change.get("on_device"):
            batches = [(x.to(ctx.device), y.to(ctx.device)) for x, y in batches]
        bench_train.timed_images_per_s(step, batches, p.profile_warmup, ctx.device)  # warm-up, not kept
        rate = bench_train.timed_images_per_s(step, batches, p.profile_steps, ctx.device, first=p.profile_warmup)
        figures["variants"][name] = {"images_per_s": rate, **({"batch": batch} if batch != p.batch else {})}
        if name == "preset":
            figures["breakdown"] = step_breakdown(step, batches, min(p.profile_steps, 5), ctx.device)
            figures["traffic_gb_per_step"] = step_traffic(step, batches[0], p.profile_warmup + p.profile_steps,
                                                          ctx.device)
        del model, step
    base = figures["variants"]["preset"]["images_per_s"]
    for entry in figures["variants"].values():
        entry["ratio_to_preset"] = entry["images_per_s"] / base
    name = device_name(ctx.device)
    figures.update(bench_train.throughput(p.backbone, p.head, p.crop, base, name))
    ms_by_kind = {kind: v["ms_per_step"] for kind, v in figures["breakdown"]["by_kind"].items()}
    figures["bandwidth_bound"] = bandwidth_bound(ms_by_kind, figures["traffic_gb_per_step"],
                                                 figures["training_gflop_per_image"] * p.batch,
                                                 bench_train.peak_bf16_tflops(name),
                                                 bench_train.peak_memory_tb_per_s(name))
    return figures


SECTIONS = {"tests": section_tests, "train": section_train, "models": section_models, "methods": section_methods,
            "data": section_data, "embedded": section_embedded, "hours": section_hours, "profile": section_profile}


# ------------------------------------------------------------------------------------------------ helpers
def run_child(cmd: list[str], ctx: Context, env: dict | None = None, timeout_s: float | None = None) -> dict:
    """Run `cmd` from the repository root with segbench importable, within the time left (and `timeout_s`)."""
    full_env = {**os.environ, **(env or {})}
    full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    timeout = max(1.0, min(ctx.remaining_s(), timeout_s or math.inf))
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=timeout)
        code, out, err = proc.returncode, proc.stdout, proc.stderr
    except subprocess.TimeoutExpired as e:
        code = "timeout"
        out, err = (x.decode(errors="replace") if isinstance(x, bytes) else (x or "") for x in (e.stdout, e.stderr))
        err += f"\n[gpu_check: stopped after {timeout:.0f} s, the time left in the budget]"
    return {"command": " ".join(cmd), "returncode": code, "wall_s": time.perf_counter() - t0, "stdout": out,
            "output_tail": (out + err)[-3000:]}


def junit_counts(path: Path) -> dict:
    """Counts and failures from pytest's JUnit XML."""
    cases = ET.parse(path).getroot().iter("testcase")
    counts = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0}
    failures = []
    for case in cases:
        name = f"{case.get('classname', '')}::{case.get('name')}"
        outcome = next((child for child in case if child.tag in ("failure", "error", "skipped")), None)
        if outcome is None:
            counts["passed"] += 1
            continue
        key = {"failure": "failed", "error": "errors", "skipped": "skipped"}[outcome.tag]
        counts[key] += 1
        if key != "skipped":
            failures.append({"test": name, "message": (outcome.get("message") or "")[:500],
                             "details": (outcome.text or "")[-2000:]})
    return {**counts, "failures": failures}


def printed_table(stdout: str) -> str:
    """The Markdown table segbench.run prints, with the caption line under it."""
    lines = stdout.splitlines()
    rows = [i for i, line in enumerate(lines) if line.startswith("|")]
    if not rows:
        return ""
    end = rows[-1] + 1
    caption = next((line for line in lines[end:end + 3] if line.strip()), "")
    return "\n".join(lines[rows[0]:end] + ([caption] if caption and not caption.startswith("tables:") else []))


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"


def environment(device: torch.device, ctx: Context) -> dict:
    env = {"device": device_name(device), "device_type": device.type, "torch": torch.__version__,
           "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version() if device.type == "cuda" else None,
           "python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count(),
           "torch_threads": torch.get_num_threads(), "loader_workers": ctx.loader_workers}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(capability=f"{props.major}.{props.minor}", memory_gib=round(props.total_memory / 2**30, 1),
                   bf16=torch.cuda.is_bf16_supported())
    try:
        env["segbench_commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                                text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        env["segbench_commit"] = None
    return env


def write_json(path: Path, report: dict) -> None:
    """Atomically: a run killed mid-write still leaves the previous section's file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def run_sections(names, ctx: Context, report: dict, out: Path, sections=SECTIONS) -> None:
    """Each section in turn, guarded; the JSON is rewritten after each one."""
    for name in names:
        elapsed = time.perf_counter() - ctx.started
        if ctx.remaining_s() <= 0:
            entry = {"status": "skipped", "reason": f"time budget of {ctx.budget_s:.0f} s spent ({elapsed:.0f} s)"}
        else:
            print(f"[gpu_check] {name} ... ({elapsed:.0f} s elapsed)", file=sys.stderr, flush=True)
            t0 = time.perf_counter()
            try:
                entry = dict(sections[name](ctx))
                entry.setdefault("status", "ok")
            except Exception as e:  # a GPU session is precious: record it and go on with the next section
                entry = {"status": "failed", "error": f"{type(e).__name__}: {e}",
                         "traceback": traceback.format_exc()[-4000:]}
            finally:
                if ctx.device.type == "cuda":
                    torch.cuda.empty_cache()
            entry = {"status": entry.pop("status"), "wall_s": time.perf_counter() - t0, **entry}
        entry.pop("stdout", None)
        ctx.sections[name] = report["sections"][name] = entry
        report["total_wall_s"] = time.perf_counter() - ctx.started
        write_json(out, report)


# ------------------------------------------------------------------------------------------------ summary
def summary_lines(report: dict) -> list[str]:
    env, s = report["environment"], report["sections"]
    versions = f"torch {env['torch']}" + (f", CUDA {env['cuda']}" if env["device_type"] == "cuda" else "")
    lines = [f"gpu_check on {env['device']} ({versions}), {'smoke' if report['smoke'] else 'full'}, "
             f"{report['total_wall_s']:.0f} s"]
    for name, entry in s.items():
        head = f"  {name:<9} {entry['status']:<8} {entry.get('wall_s', 0):6.1f} s"
        lines.append(head + ("  " + detail(name, entry) if entry["status"] != "skipped" else
                             f"  ({entry.get('reason', '')})"))
    return lines


def detail(name: str, e: dict) -> str:
    if "error" in e:
        return e["error"].splitlines()[0][:160]
    if name == "tests":
        return f"{e['passed']} passed, {e['failed']} failed, {e['errors']} errors, {e['skipped']} skipped"
    if name == "train":
        text = (f"{e['backbone']}+{e['head']} {e['crop_hw'][0]}x{e['crop_hw'][1]} b{e['batch']} {e['precision']}: "
                f"{e['segbench_images_per_s']:.1f} img/s (bare {e['bare_images_per_s']:.1f}"
                + (f", {e['workers']} workers {e['segbench_workers_images_per_s']:.1f}" if "workers" in e else "")
                + f"), {e['achieved_tflops']:.1f} TFLOP/s")
        if e.get("fraction_of_peak_bf16") is not None:
            text += f" = {100 * e['fraction_of_peak_bf16']:.1f}% of peak bf16"
        return text
    if name == "models":
        ratios = lambda key: ", ".join(f"{b} x{r:.2f}" for b, r in e[key]["ratio_to_plain"].items())  # noqa: E731
        return f"train step: {ratios('train_step')}; eval: {ratios('eval_forward')}"
    if name == "methods":
        return f"{e['backbone']}+{e['head']} img/s vs erm: " + ", ".join(
            f"{k} x{r:.2f}" for k, r in e["ratio_to_erm"].items() if k != "erm")
    if name == "data":
        parts = [f"{k} {e[k]['images_per_s']:.1f} img/s" + ("" if e[k]["keeps_up"] is None else
                                                          f" ({'keeps up' if e[k]['keeps_up'] else 'too slow'})")
                 for k in ("full_frames", "prepared")]
        step = e["step_images_per_s"]
        return f"{e['workers']} workers: " + ", ".join(parts) + (f" vs step {step:.1f} img/s" if step else "")
    if name == "profile":
        kinds = ", ".join(f"{k} {100 * v['share']:.0f}%" for k, v in e["breakdown"]["by_kind"].items())
        variants = ", ".join(f"{k} x{v['ratio_to_preset']:.2f}" for k, v in e["variants"].items() if k != "preset")
        text = (f"preset {e['variants']['preset']['images_per_s']:.1f} img/s, {e['breakdown']['ms_per_step']:.1f} "
                f"ms/step of {e['breakdown']['timed']} time: {kinds}; variants: {variants}")
        bound = e["bandwidth_bound"]
        text += f"; non-convolution ops move >= {bound['other_gb']:.1f} GB/step"
        if bound.get("fraction_of_peak_bf16_bound") is not None:
            text += (f" ({bound['other_tb_per_s']:.2f} TB/s of {bound['peak_tb_per_s']:.2f}): at peak bandwidth the "
                     f"step could reach {100 * bound['fraction_of_peak_bf16_bound']:.1f}% of peak bf16")
        return text
    if name == "embedded":
        return f"run {e['run_wall_s']:.1f} s" + ("" if e["status"] == "ok" else f", exit {e['returncode']}")
    if name == "hours":
        return "; ".join(f"{kind}: " + ", ".join(
            f"{stem} {'–' if x['hours'] is None else format(x['hours'], '.1f')} h" for stem, x in e[kind].items())
            for kind in ("eager", "compiled") if kind in e)
    return ""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--smoke", action="store_true", help="shrink every section (CI: --device cpu --smoke)")
    parser.add_argument("--out", type=Path, default=Path("gpu_check.json"), help="JSON file (default gpu_check.json)")
    parser.add_argument("--budget-s", type=float, default=480.0,
                        help="sections not started within this many seconds are skipped (default 480)")
    parser.add_argument("--sections", nargs="+", choices=SECTION_NAMES, default=list(SECTION_NAMES), metavar="NAME",
                        help=f"which sections, in order (default: {' '.join(SECTION_NAMES)})")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is visible to torch (torch.cuda.is_available() is False)")
    device = torch.device("cuda", 0) if args.device == "cuda" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    profile = SMOKE if args.smoke else FULL
    if device.type == "cpu" and profile.cpu_threads:
        torch.set_num_threads(profile.cpu_threads)
    with tempfile.TemporaryDirectory(prefix="gpu_check-") as scratch:
        ctx = Context(device=device, profile=profile, budget_s=args.budget_s, scratch=Path(scratch))
        report = {"gpu_check": 1, "smoke": args.smoke, "budget_s": args.budget_s,
                  "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                  "command": " ".join([Path(sys.argv[0]).name, *(sys.argv[1:] if argv is None else argv)]),
                  "environment": environment(device, ctx), "profile": asdict(profile), "sections": {},
                  "total_wall_s": 0.0}
        run_sections(args.sections, ctx, report, args.out)
    report["summary"] = summary_lines(report)
    write_json(args.out, report)
    print("\n".join(report["summary"]))
    embedded = report["sections"].get("embedded", {})
    if embedded.get("table"):
        print("\nembedded default:\n" + embedded["table"])
    hours = report["sections"].get("hours", {})
    if hours.get("table"):
        print("\n" + hours["table"])
    print(f"\nall figures: {args.out}")
    return 0 if all(e["status"] != "failed" for e in report["sections"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
