"""torch.distributed helpers: one code path for 1 CPU, 1 GPU and N GPUs launched by torchrun. A leaf beside io.py, so
training, scoring, the methods and the commands all import it without an upward import."""
from __future__ import annotations

import os

import torch
import torch.distributed as dist

from .config import ConfigError


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_dist() else 0


def world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def is_main() -> bool:
    return rank() == 0


def batch_share(global_batch: int, world: int, accumulate: int = 1) -> int:
    """Images one process puts through one forward pass: the study's global batch split over `world` processes and
    `accumulate` micro-steps. The batch belongs to the study, not to the launch: RobustNet's 16 is 4 per GPU on 4 GPUs,
    16 on one GPU, or 4 x 4 micro-steps there with `train.accumulate: 4`."""
    parts = world * accumulate
    if global_batch % parts:
        fits = [n for n in range(1, global_batch + 1) if global_batch % (n * accumulate) == 0]
        fix = (f"launch {', '.join(map(str, fits))} process(es)" if fits
               else f"lower train.accumulate to a divisor of {global_batch}")
        raise ConfigError(
            f"train.batch_size={global_batch} is the global batch (all processes together) and does not split evenly "
            f"over {world} process(es) x train.accumulate={accumulate}: make it a multiple of {parts}, or {fix}")
    return global_batch // parts


def init_from_env(device_type: str | None = None) -> torch.device:
    """Join the process group torchrun describes (if any) and return this process's device. `--device cuda` where
    no GPU is visible is the user's to fix: one line, not torch's "Found no NVIDIA driver" traceback."""
    if device_type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA GPU is visible here (no NVIDIA driver, CUDA_VISIBLE_DEVICES empty, "
                          "or a CPU-only torch build); run with --device cpu, or --device auto (the default: the GPU "
                          "when there is one)")
    use_cuda = torch.cuda.is_available() if device_type is None else device_type == "cuda"
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ and not is_dist():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    if use_cuda:
        local = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    return torch.device("cpu")


def leave() -> None:
    """Destroy this process's group, if it joined one: every process should once its last collective is done
    (pytorch/pytorch torch/distributed/distributed_c10d.py, destroy_process_group), and rank 0's work after that (the
    report, --analyze) then scores alone instead of waiting in an all_reduce on ranks that have exited."""
    if is_dist():
        dist.destroy_process_group()


def wrap_ddp(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """DDP + SyncBatchNorm when several processes train; SyncBN converts only BatchNorm, so IN stays per-sample."""
    if not is_dist() or world_size() == 1:
        return model
    if device.type == "cuda":
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
