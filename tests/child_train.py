"""Child process for tests/test_resume_ddp.py: one run of `segbench.engine.train.train` on the embedded `sim` data.

Under RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT it is one rank of a gloo group (joined through
`segbench.distributed.init_from_env`). With --freeze-after K it writes a marker file right after the checkpoint
of iteration K is on disk and then blocks, so the parent can SIGKILL it at a known point. Everything the parent checks
goes to --out: initial and final weights (rank 0); per rank a JSON with train()'s statistics, the number of
training forward passes this process ran and, per forward pass, a digest of each input image (the augmented pixels
the model saw); with --eval the raw confusion matrix of `segbench.engine.scoring.evaluate`. --batch is the global
batch (train.batch_size), shared by the processes.
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import json
import time
from pathlib import Path

import torch
from torch import nn

import segbench.engine.scoring as evaluate_mod
import segbench.engine.train as train_mod
from segbench import distributed as dist_utils
from segbench.config import TrainSettings
from segbench.data import build_dataset
from segbench.data.transforms import EvalTransform, build_train_transform, train_transform
from segbench.methods import build_method

NUM_CLASSES = 19
FROZEN = "frozen"  # marker file name, written into --out


class TinyNet(nn.Module):
    """No BatchNorm and no dropout: N processes x batch b must then give exactly the 1-process x batch N*b step."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, NUM_CLASSES, 1))

    def forward(self, x):
        return {"out": self.body(x)}


def build_model(name: str, head: str | None = None) -> nn.Module:
    if name == "tiny":
        return TinyNet()
    from segbench.models import create_model

    if name.startswith("vit_"):  # a tiny DINOv2-layout ViT under DINOv2's linear head (BatchNorm too), or another
        return create_model(name, head=head or "linear", pretrained=None)
    # the real FCN head: BatchNorm buffers and Dropout(0.1) both have to survive a resume
    return create_model(name, head="fcn", pretrained=None)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-root", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--iters", type=int, required=True)
    ap.add_argument("--batch", type=int, required=True)
    ap.add_argument("--accumulate", type=int, default=1)
    ap.add_argument("--ckpt-every", type=int, default=0)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--class-uniform", type=float, default=0.0)
    ap.add_argument("--freeze-after", type=int, default=-1)
    ap.add_argument("--eval", action="store_true")
    ap.add_argument("--method", default="erm", help="a segbench.methods name, placed in the model before training")
    ap.add_argument("--method-opt", action="append", default=[], metavar="KEY=JSON")
    ap.add_argument("--optimizer", default="sgd", help="train.optimizer (adamw: Rein's, with its weight decay)")
    ap.add_argument("--head", default=None, help="a ViT's head (default linear)")
    ap.add_argument("--pipeline", default="scale_crop", help="train.pipeline (rein: mmseg's, Rein's)")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    device = dist_utils.init_from_env("cpu")
    rank = dist_utils.rank()
    torch.manual_seed(0)
    model = build_model(args.model, args.head)
    method = build_method(args.method, {k: json.loads(v) for k, v in (o.split("=", 1) for o in args.method_opt)})
    method.build(model)
    if rank == 0:
        torch.save(model.state_dict(), out / "init.pt")
    forwards = []  # per training forward pass: a digest of each image in it

    def digests(module, inputs):
        if module.training:
            forwards.append([hashlib.sha1(x.numpy().tobytes()).hexdigest()[:16] for x in inputs[0]])

    model.register_forward_pre_hook(digests)

    if args.freeze_after >= 0:
        real_save = train_mod.save_checkpoint

        def save_then_freeze(directory, iteration, state, keep=2):
            path = real_save(directory, iteration, state, keep=keep)
            if iteration == args.freeze_after:
                (out / FROZEN).write_text(str(path))
                while True:  # wait here for the parent's SIGKILL
                    time.sleep(60)
            return path

        train_mod.save_checkpoint = save_then_freeze

    result = {}
    if args.eval:
        # score the untrained copy: every process holds bit-identical weights, so predictions cannot differ
        matrices = []

        class RecordingMatrix(evaluate_mod.ConfusionMatrix):
            def summary(self, *a, **k):
                matrices.append(self.counts.clone())
                return super().summary(*a, **k)

        evaluate_mod.ConfusionMatrix = RecordingMatrix
        val = build_dataset("sim", "val", args.data_root, transform=EvalTransform())
        result["eval"] = evaluate_mod.evaluate(copy.deepcopy(model), val, device=device, workers=0)
        (matrix,) = matrices
        torch.save(matrix, out / f"cm_rank{rank}.pt")

    optimizer = ({"optimizer": "adamw", "lr": 1e-4, "weight_decay": 0.05, "no_decay_norms": True}
                 if args.optimizer == "adamw" else {"lr": 0.01})
    settings = TrainSettings(
        iters=args.iters, batch_size=args.batch, accumulate=args.accumulate, workers=args.workers,
        ckpt_every=args.ckpt_every, keep_ckpts=2, amp=False, channels_last=False, class_uniform=args.class_uniform,
        pipeline=args.pipeline, crop=(32, 64) if args.pipeline == "scale_crop" else (64, 64), **optimizer)
    dataset = build_dataset("sim", "train", args.data_root)
    # 96x192 frames scaled by >= 0.5 cover a 32x64 crop: no padding, so every crop is fully labelled
    image_method = method.transform_image if method.transforms_image else None
    transform = (train_transform(settings, image_method) if args.pipeline == "rein" else
                 build_train_transform((32, 64), scale_range=(0.5, 2.0), image_method=image_method))
    stats = train_mod.train(model, dataset, transform, settings, seed=1, device=device, ckpt_dir=out / "checkpoints",
                            identity={"test": "child_train", "model": args.model}, log_path=out / "train_log.csv",
                            method=method)
    result.update(stats=stats, forwards=len(forwards), inputs=forwards, world_size=dist_utils.world_size())
    (out / f"rank{rank}.json").write_text(json.dumps(result))
    if rank == 0:
        torch.save(model.state_dict(), out / "final.pt")
    if dist_utils.is_dist():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
