"""`segbench evaluate`: score a trained checkpoint, or a directory of prediction PNGs from any framework, with
segbench's metric (official Cityscapes semantics). Prints JSON with mIoU and per-class IoU."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .io import write_json

# Suffixes other frameworks append to the image stem when naming prediction files.
PRED_SUFFIXES = ("_pred", "_prediction", "_trainIds", "_labelTrainIds", "_labelIds", "_gtFine_labelIds")
IMAGE_SUFFIXES = ("_leftImg8bit", "_rgb_anon")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="segbench evaluate", description=__doc__)
    p.add_argument("checkpoint", nargs="?", type=Path, help="cell directory, model_final.pt or checkpoints/iter_*.pt")
    p.add_argument("--preds", type=Path, help="score this directory of prediction PNGs instead of a checkpoint")
    p.add_argument("--encoding", choices=["trainid", "cityscapes"], default="trainid",
                   help="how --preds PNGs encode classes: 0..18 trainIds, or Cityscapes label ids")
    p.add_argument("--dataset", required=True, help="registered dataset name, e.g. cityscapes")
    p.add_argument("--split", default="val")
    p.add_argument("--data-root")
    p.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), help="resize images to this before inference")
    p.add_argument("--mode", choices=["whole", "slide"], default="whole")
    p.add_argument("--window", type=int, nargs=2, metavar=("H", "W"))
    p.add_argument("--stride", type=int, nargs=2, metavar=("H", "W"))
    p.add_argument("--flip", action="store_true", help="average with the horizontally flipped image")
    p.add_argument("--scales", type=float, nargs="+", default=[1.0], help="multi-scale averaging, e.g. 0.75 1 1.25")
    p.add_argument("--save-preds", type=Path, help="write every prediction here as a trainId PNG")
    p.add_argument("--overlay", action="store_true", help="with --save-preds: also palette overlays")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--output", type=Path, help="also write the JSON here")
    return p


def _normalise_stem(stem: str, suffixes) -> str:
    for suffix in suffixes:
        if stem.endswith(suffix):
            return stem[: -len(suffix)]
    return stem


def index_predictions(pred_dir: Path) -> dict[str, Path]:
    index: dict[str, Path] = {}
    for path in sorted(pred_dir.rglob("*.png")):
        if path.stem.endswith("_overlay"):
            continue
        index.setdefault(path.stem, path)
        index.setdefault(_normalise_stem(path.stem, PRED_SUFFIXES), path)
    return index


def score_prediction_dir(dataset, pred_dir: Path, encoding: str) -> dict:
    """Match each (image, label) pair of `dataset` to `pred_dir/**/STEM*.png` and score them all."""
    from .data.base import read_gray
    from .labels import ids_to_train_ids
    from .metrics import ConfusionMatrix

    if not pred_dir.is_dir():
        raise FileNotFoundError(f"prediction directory {pred_dir} does not exist")
    index = index_predictions(pred_dir)
    matched, missing = [], []
    for i, (image_path, _) in enumerate(dataset.pairs):
        stem = Path(image_path).stem
        pred = index.get(stem) or index.get(_normalise_stem(stem, IMAGE_SUFFIXES))
        (matched if pred else missing).append((i, pred) if pred else stem)
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} of {len(dataset)} images have no prediction in {pred_dir} (e.g. {', '.join(missing[:3])}); "
            "name each prediction after its image (STEM.png or STEM_pred.png, any sub-directory)")
    cm = ConfusionMatrix()
    for i, pred_path in tqdm(matched, desc="score", unit="img", dynamic_ncols=True):
        _, label = dataset.load_pair(i)
        pred = read_gray(pred_path)
        if pred.ndim != 2:
            raise ValueError(f"{pred_path}: expected a single-channel class-index PNG, got shape {pred.shape}; "
                             "colour-coded predictions cannot be scored (colours collide), save class indices")
        if encoding == "cityscapes":
            pred = ids_to_train_ids(pred)
        if pred.shape != label.shape:
            raise ValueError(f"{pred_path}: prediction is {pred.shape[1]}x{pred.shape[0]} but its label is "
                             f"{label.shape[1]}x{label.shape[0]}; predictions must be at label resolution")
        cm.update(torch.from_numpy(label.astype(np.int64)), torch.from_numpy(pred.astype(np.int64)))
    return cm.summary(getattr(dataset, "eval_classes", None))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .data import DatasetError, build_dataset

    if (args.checkpoint is None) == (args.preds is None):
        print("segbench evaluate: give either a CHECKPOINT or --preds DIR", file=sys.stderr)
        return 2
    try:
        if args.preds is not None:
            dataset = build_dataset(args.dataset, args.split, root=args.data_root)
            result = score_prediction_dir(dataset, args.preds, args.encoding)
            result["source"] = {"preds": str(args.preds), "encoding": args.encoding}
        else:
            from .data.transforms import eval_transform_for
            from .engine.checkpoint import load_trained_model
            from .engine.distributed import init_from_env
            from .engine.evaluate import evaluate
            from .engine.inference import InferenceSettings

            settings = InferenceSettings(mode=args.mode, window=tuple(args.window) if args.window else None,
                                         stride=tuple(args.stride) if args.stride else None, flip=args.flip,
                                         scales=tuple(args.scales))
            model, record = load_trained_model(args.checkpoint)
            dataset = build_dataset(args.dataset, args.split, root=args.data_root)
            dataset.transform = eval_transform_for(dataset, args.size)
            device = init_from_env(None if args.device == "auto" else args.device)
            result = evaluate(model, dataset, device=device, eval_classes=getattr(dataset, "eval_classes", None),
                              workers=args.workers, settings=settings, save_dir=args.save_preds, overlay=args.overlay,
                              desc=f"evaluate on {args.dataset}")
            result["source"] = {"checkpoint": str(args.checkpoint), "cell_id": record.get("cell_id"),
                                **{k: record.get(k) for k in ("backbone", "head", "source", "seed")}}
    except (DatasetError, FileNotFoundError, ValueError, KeyError) as e:  # CheckpointError is a ValueError
        print(f"segbench evaluate: {e.args[0] if isinstance(e, KeyError) else e}", file=sys.stderr)
        return 2
    result.update(dataset=args.dataset, split=args.split, images=len(dataset))
    if args.output:
        write_json(args.output, result)
    print(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
