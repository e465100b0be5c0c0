"""Scoring: one confusion matrix per split at each label's native resolution (official Cityscapes semantics), for a
model (`evaluate`) or for a directory of prediction PNGs written by any framework (`score_prediction_dir`).

Under torch.distributed each rank scores a disjoint shard (no padding duplicates, unlike DistributedSampler) and
the matrices are summed, so N processes give exactly the 1-process numbers. On request `evaluate` also keeps each
image's matrix (gathered to rank 0 in dataset order), so the report can bootstrap over test images
(report/bootstrap.py).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from .. import distributed as dist_utils
from ..config import EvalSettings, eval_settings
from ..data.base import DatasetError, MissingPairsError, missing_pairs, read_rgb
from ..data.eval_protocols import DEFAULT_PROTOCOL
from ..data.readers import PNG_PALETTE, png_header
from ..data.transforms import eval_transform_for
from ..data.workers import worker_init_fn
from ..io import save_npz, write_bytes
from ..labels import IGNORE_INDEX, NUM_CLASSES, colorize, ids_to_train_ids, scored_classes
from ..metrics import ConfusionMatrix
from .inference import predict


def scoring_options(ecfg: dict) -> dict:
    """`evaluate`'s keyword arguments that an `eval:` section decides: loader workers, frames per forward pass, and
    how a frame becomes scores (the runner, periodic scoring and `segbench evaluate` all score this way)."""
    return {"workers": ecfg.get("workers", 0), "batch_size": ecfg.get("batch_size", 1),
            "settings": eval_settings(ecfg)}


def scoring_transform_and_classes(dataset, ecfg: dict):
    """How a study scores `dataset`: its eval transform (`eval.size`, `eval.protocol`) and the classes its mIoU
    averages over (`eval.classes`): the one place the runner, `segbench evaluate` and `analyze shift` decide it."""
    return (eval_transform_for(dataset, ecfg.get("size"), ecfg.get("protocol", DEFAULT_PROTOCOL)),
            scored_classes(getattr(dataset, "eval_classes", None), ecfg.get("classes")))


def prepare_for_scoring(dataset, ecfg: dict) -> tuple[int, ...] | None:
    """Set `dataset` up as a study scores it and return its scored classes (`scoring_transform_and_classes`); a split
    with files that lack their partner is refused unless `eval.missing_pairs` is "skip" (`check_missing_pairs`)."""
    check_missing_pairs(dataset, ecfg.get("missing_pairs", "error"))
    dataset.transform, classes = scoring_transform_and_classes(dataset, ecfg)
    return classes


#: how many file names a refusal shows before it abbreviates
NAMES_SHOWN = 3
#: the way out every missing-pairs refusal offers besides the fix
SKIP_HINT = "or score the complete pairs only with --set eval.missing_pairs=skip (the count left out is recorded)"


def _some(names: Sequence[str]) -> str:
    """The first few names, then how many more."""
    more = f" and {len(names) - NAMES_SHOWN} more" if len(names) > NAMES_SHOWN else ""
    return ", ".join(names[:NAMES_SHOWN]) + more


def check_missing_pairs(dataset, policy: str) -> int:
    """How many files of `dataset` lack their image or label (base.missing_pairs); under `eval.missing_pairs`
    "error" (the default) any is refused, naming them: the score would be over a smaller test set than the download's
    without a word."""
    problems = missing_pairs(dataset)
    if problems and policy != "skip":
        name = getattr(dataset, "dataset_name", type(dataset).__name__)
        shown = _some([f"{Path(p.path).name} ({p.kind})" for p in problems])
        raise MissingPairsError(
            f"{name} {dataset.split!r} under {dataset.root}: {len(problems)} file(s) without their image or label, "
            f"which scoring would leave out: {shown}; restore them (`segbench data check {name} --split "
            f"{dataset.split}` lists each), {SKIP_HINT}")
    return len(problems)


class _Indexed(torch.utils.data.Dataset):
    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        image, mask = self.dataset[i]
        return i, image, mask


def _collate(batch):
    """Keep samples as a list: a split may mix image sizes (Mapillary), and labels are scored at native size."""
    return batch


def image_id(pairs, index: int) -> str:
    """How the per-image file names an image: its path, or its index for a dataset without files."""
    return str(pairs[index][0]) if pairs else f"{index:05d}"


def save_image_confusions(path: Path, counts: np.ndarray, images: Sequence[str]) -> None:
    """One confusion matrix per image: `counts` (N x C x C+1 int64, as ConfusionMatrix.counts: rows ground truth,
    void column last) and `images` (N ids), in dataset order; compressed, written atomically. report/bootstrap.py's
    `load_image_confusions` reads it back."""
    if len(counts) != len(images):
        raise ValueError(f"{len(counts)} matrices for {len(images)} images; pass one matrix per image")
    arrays = {"counts": np.asarray(counts, dtype=np.int64), "images": np.asarray(list(images), dtype=str)}
    save_npz(Path(path), **arrays)


def _in_dataset_order(mine: torch.Tensor, n_images: int) -> torch.Tensor:
    """Rank r holds the matrices of images r, r + world, ... (padded to one length); all_gather them and interleave
    back into dataset order, so the result does not depend on the number of processes."""
    world = dist_utils.world_size()
    if world > 1:
        parts = [torch.empty_like(mine) for _ in range(world)]
        torch.distributed.all_gather(parts, mine)
        mine = torch.stack(parts, 1).flatten(0, 1)  # position p * world + r holds image r + p * world
    return mine[:n_images]


def _write_png(path: Path, array: np.ndarray) -> None:
    """Encoded in memory, written atomically: cv2.imwrite only returns False when it fails."""
    ok, data = cv2.imencode(".png", array)
    if not ok:
        raise ValueError(f"cannot encode {path} as a PNG (array {array.dtype} {array.shape})")
    write_bytes(path, data.tobytes())


def save_prediction(path: Path, pred: np.ndarray, image_path: Path | None = None, overlay: bool = False) -> None:
    """trainId PNG (what `segbench evaluate --preds` reads back), plus a palette overlay on the image if asked."""
    _write_png(path, pred.astype(np.uint8))
    if overlay:
        color = colorize(pred.astype(np.uint8))
        if image_path is not None:
            image = read_rgb(image_path)
            if image.shape[:2] == color.shape[:2]:
                color = (0.5 * image + 0.5 * color).astype(np.uint8)
        _write_png(path.with_name(path.stem + "_overlay.png"), cv2.cvtColor(color, cv2.COLOR_RGB2BGR))


@torch.no_grad()
def _same_size_runs(batch: list) -> list[list]:
    """Consecutive (index, image, mask) items whose images and masks share their sizes: one forward pass each."""
    runs: list[list] = []
    for item in batch:
        if runs and (runs[-1][0][1].shape, runs[-1][0][2].shape) == (item[1].shape, item[2].shape):
            runs[-1].append(item)
        else:
            runs.append([item])
    return runs


def _predict_batch(model, batch: list, device: torch.device, settings: EvalSettings):
    """(index, 1 x H x W mask, 1 x H x W prediction) per item of a loader batch, images of one size predicted in one
    forward pass (`eval.batch_size`; frames of different sizes go one run at a time)."""
    for run in _same_size_runs(batch):
        images = torch.stack([image for _, image, _ in run]).to(device, non_blocking=True)
        masks = torch.stack([mask for _, _, mask in run]).to(device, non_blocking=True)
        preds = predict(model, images, tuple(masks.shape[-2:]), settings).argmax(1)
        for (index, _, _), mask, pred in zip(run, masks, preds):
            yield index, mask[None], pred[None]


def evaluate(model: torch.nn.Module, dataset, *, device: torch.device, eval_classes: Sequence[int] | None = None,
             workers: int = 2, settings: EvalSettings = EvalSettings(), desc: str = "eval",
             dump_dir: Path | None = None, dump_count: int = 0, save_dir: Path | None = None,
             overlay: bool = False, batch_size: int = 1, per_image_path: Path | None = None) -> dict:
    """mIoU and per-class IoU of `model` on `dataset` (whose transform is an eval preset).

    The first `dump_count` predictions go to `dump_dir` (listed under "samples" for the report's qualitative panel);
    `save_dir` receives every prediction (and overlays with `overlay=True`); `per_image_path` (rank 0 writes it) the
    confusion matrix of every image (save_image_confusions), which sum to the split's matrix.
    """
    rank, world = dist_utils.rank(), dist_utils.world_size()
    shard = list(range(rank, len(dataset), world))
    loader = torch.utils.data.DataLoader(_Indexed(dataset), batch_size=batch_size, sampler=shard, num_workers=workers,
                                         collate_fn=_collate, pin_memory=device.type == "cuda",
                                         worker_init_fn=worker_init_fn if workers else None)
    was_training = model.training
    model.eval().to(device)
    cm = ConfusionMatrix(device=device)
    # one row per image of this rank's shard (rank 0's length on every rank, so all_gather sees equal shapes)
    per_image = None if per_image_path is None else torch.zeros(
        len(range(0, len(dataset), world)), cm.num_classes, cm.num_classes + 1, dtype=torch.int64, device=device)
    samples = []
    pairs = getattr(dataset, "pairs", None)
    # counted in images: a last batch may be short, so the bar advances by each batch's length
    bar = tqdm(total=len(shard), desc=desc, unit="img", dynamic_ncols=True, leave=False,
               disable=not dist_utils.is_main())
    for batch in loader:
        bar.update(len(batch))
        for index, mask, pred in _predict_batch(model, batch, device, settings):
            added = cm.update(mask, pred)
            if per_image is not None:
                per_image[index // world] = added
            image_path = Path(pairs[index][0]) if pairs else None
            name = f"{index:05d}" if image_path is None else image_path.stem
            if dump_dir is not None and index < dump_count and dist_utils.is_main():
                rel = Path("preds") / Path(dump_dir).name
                save_prediction(Path(dump_dir) / f"{name}.png", pred[0].cpu().numpy())
                # the decoded trainId label too: raw labels (GTA5 palette, SYNTHIA 16-bit) cannot be drawn directly
                save_prediction(Path(dump_dir) / f"{name}_gt.png", mask[0].cpu().numpy())
                samples.append({"index": index, "image": str(image_path) if image_path else None,
                                "label": str(pairs[index][1]) if pairs else None, "pred": str(rel / f"{name}.png"),
                                "gt": str(rel / f"{name}_gt.png")})
            if save_dir is not None:
                save_prediction(Path(save_dir) / f"{name}.png", pred[0].cpu().numpy(), image_path, overlay)
    bar.close()
    cm.all_reduce()
    if per_image is not None:
        counts = _in_dataset_order(per_image, len(dataset)).cpu().numpy()
        if dist_utils.is_main():
            save_image_confusions(per_image_path, counts, [image_id(pairs, i) for i in range(len(dataset))])
    model.train(was_training)
    summary = cm.summary(eval_classes)
    if samples:
        summary["samples"] = sorted(samples, key=lambda s: s["index"])
    return summary


class PredictionError(ValueError):
    """A prediction directory that cannot be scored as it is; the message names the file and the fix."""


# Suffixes other frameworks append to the image stem when naming prediction files.
PRED_SUFFIXES = ("_pred", "_prediction", "_trainIds", "_labelTrainIds", "_labelIds", "_gtFine_labelIds")
IMAGE_SUFFIXES = ("_leftImg8bit", "_rgb_anon")
#: Cityscapes label ids 0..33 (cityscapesScripts `helpers/labels.py`); a prediction may also hold 255, void (the
#: license plate's -1 in 8 bits, which the official label files never hold: `preparation/json2labelImg.py` skips it)
CITYSCAPES_IDS = range(34)
#: --encoding -> (the class values a prediction may hold besides IGNORE_INDEX, what they are called, the full range)
ENCODINGS = {
    "trainid": (range(NUM_CLASSES), "trainIds", f"trainIds 0..{NUM_CLASSES - 1} and {IGNORE_INDEX}"),
    "cityscapes": (CITYSCAPES_IDS, "Cityscapes label ids",
                   f"Cityscapes label ids 0..{len(CITYSCAPES_IDS) - 1} and {IGNORE_INDEX} (-1)"),
}
#: mIoU points by which predictions must score higher read in another encoding than --encoding says before they are
#: taken for predictions in that encoding: read in the wrong one, the classes are permuted and score near 0
ENCODING_MARGIN = 10.0


def decode_prediction(pred: np.ndarray, encoding: str) -> np.ndarray:
    """Class values as --encoding `encoding` writes them -> trainIds."""
    return ids_to_train_ids(pred) if encoding == "cityscapes" else pred


def _normalise_stem(stem: str, suffixes) -> str:
    """`stem` less the longest suffix it ends with (`_gtFine_labelIds` before `_labelIds`)."""
    for suffix in sorted(suffixes, key=len, reverse=True):
        if stem.endswith(suffix):
            return stem[: -len(suffix)]
    return stem


def index_predictions(pred_dir: Path) -> dict[str, list[Path]]:
    """Stem (as written, and without a framework's suffix) -> every PNG under `pred_dir` that carries it."""
    index: dict[str, list[Path]] = {}
    for path in sorted(pred_dir.rglob("*.png")):
        if path.stem.endswith("_overlay"):
            continue
        for key in dict.fromkeys((path.stem, _normalise_stem(path.stem, PRED_SUFFIXES))):
            index.setdefault(key, []).append(path)
    return index


def match_prediction(index: dict[str, list[Path]], image_path: Path) -> Path | None:
    """The one prediction named after `image_path`; two candidates are an error, never a silent pick."""
    stem = Path(image_path).stem
    keys = dict.fromkeys((stem, _normalise_stem(stem, IMAGE_SUFFIXES)))
    found = list(dict.fromkeys(p for key in keys for p in index.get(key, ())))
    if len(found) > 1:
        raise PredictionError(
            f"{len(found)} predictions match image {image_path}: {', '.join(map(str, found))}; keep one per image "
            "(e.g. point --preds at the sub-directory of the run you mean)")
    return found[0] if found else None


def read_prediction(path: Path) -> np.ndarray:
    """A class-index PNG as stored: a palette (mode P) PNG gives its index, which is the class (OpenCV would expand
    it to colours); a grey PNG its value, 8 or 16 bit."""
    try:
        if png_header(path)[3] == PNG_PALETTE:
            with Image.open(path) as im:
                return np.asarray(im)
    except (DatasetError, OSError, SyntaxError, ValueError) as e:
        raise PredictionError(f"{path}: cannot read it as a PNG ({e}); write the prediction again") from None
    pred = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if pred is None:
        raise PredictionError(f"{path}: cannot read it as a PNG (truncated or another format); write it again")
    if pred.ndim != 2:
        raise PredictionError(f"{path}: expected a single-channel class-index PNG, got shape {pred.shape}; "
                              "colour-coded predictions cannot be scored (colours collide), save class indices")
    return pred


def values_outside(pred: np.ndarray, encoding: str) -> np.ndarray:
    """The distinct values of `pred` that `encoding` does not define (sorted; empty when every value is one)."""
    valid = np.zeros(np.iinfo(pred.dtype).max + 1, bool)
    valid[list(ENCODINGS[encoding][0])] = True
    valid[IGNORE_INDEX] = True
    return np.unique(pred[~valid[pred]])


def _points(miou: float) -> float:
    """An mIoU to compare: NaN (no class present) counts as 0."""
    return 0.0 if math.isnan(miou) else miou


class EncodingCheck:
    """Predictions read under --encoding and, while their values allow it, under every other encoding too: the one
    place that notices predictions written in another encoding than the flag says. A value the flag's encoding does
    not define stops at its file, naming the encoding that defines it; when every value is one both define (trainIds
    0..18 are Cityscapes ids too), the scores under each reading decide, and a far higher one under another stops the
    run naming its flag (trainId predictions read as Cityscapes ids score about 0 otherwise, without a word)."""

    def __init__(self, encoding: str):
        self.encoding = encoding
        self.matrices = {e: ConfusionMatrix() for e in ENCODINGS}

    def add(self, path: Path, pred: np.ndarray, label: np.ndarray) -> None:
        if pred.dtype not in (np.uint8, np.uint16):
            raise PredictionError(f"{path}: {pred.dtype} pixels; save class indices as an 8-bit PNG")
        for encoding in list(self.matrices):
            outside = values_outside(pred, encoding)
            if len(outside) and encoding == self.encoding:
                raise PredictionError(self._refusal(path, pred, outside))
            if len(outside):
                del self.matrices[encoding]  # not this encoding's predictions
                continue
            decoded = decode_prediction(pred, encoding)
            if decoded.shape != label.shape:
                raise PredictionError(f"{path}: prediction is {pred.shape[1]}x{pred.shape[0]} but its label is "
                                      f"{label.shape[1]}x{label.shape[0]}; predictions must be at label resolution")
            self.matrices[encoding].update(torch.from_numpy(label.astype(np.int64)),
                                           torch.from_numpy(decoded.astype(np.int64)))

    def _refusal(self, path: Path, pred: np.ndarray, outside: np.ndarray) -> str:
        """Values the flag's encoding does not define, and the likeliest reason."""
        hint = "save the class index of each pixel"
        other = [e for e in ENCODINGS if e != self.encoding and not len(values_outside(pred, e))]
        if pred.dtype == np.uint16 and not (np.unique(pred) % 256).any():
            hint = ("the values look like class x 256 (a 16-bit PNG scaled for viewing): save the class index itself, "
                    "8 bit")
        elif other:
            hint = f"if these are {ENCODINGS[other[0]][1]}, pass --encoding {other[0]}"
        more = f" (and {len(outside) - 1} other value(s))" if len(outside) > 1 else ""
        return (f"{path}: value {outside[0]}{more} is not one of --encoding {self.encoding}'s "
                f"{ENCODINGS[self.encoding][2]}; {hint}")

    def summary(self, pred_dir: Path, eval_classes: Sequence[int] | None) -> dict:
        """The scores under --encoding; PredictionError when another reading of the same values scores far higher."""
        mine = self.matrices[self.encoding].summary(eval_classes)
        for encoding, cm in self.matrices.items():
            other = cm.summary(eval_classes)["miou"]
            if encoding != self.encoding and _points(other) >= _points(mine["miou"]) + ENCODING_MARGIN:
                raise PredictionError(
                    f"{pred_dir}: these look like {ENCODINGS[encoding][1]}, not {ENCODINGS[self.encoding][1]}: every "
                    f"value is one both define, and they score {other:.1f} mIoU read with --encoding {encoding} "
                    f"against {mine['miou']:.1f} with --encoding {self.encoding}; pass --encoding {encoding}")
        return mine


def match_predictions(dataset, pred_dir: Path, policy: str = "error") -> tuple[list[tuple[int, Path]], int]:
    """([(pair index, its prediction)], how many files are left unmatched): every image of `dataset` and every
    prediction in `pred_dir` must find its partner, or `policy` ("error": refuse, naming them; "skip": count them)."""
    index = index_predictions(pred_dir)
    matched, missing = [], []
    for i, (image_path, _) in enumerate(dataset.pairs):
        pred = match_prediction(index, image_path)
        if pred is None:
            missing.append(Path(image_path).stem)
        else:
            matched.append((i, pred))
    used = {pred for _, pred in matched}
    every = dict.fromkeys(p for paths in index.values() for p in paths)
    strays = [str(p.relative_to(pred_dir)) for p in every if p not in used]
    if (missing or strays) and policy != "skip":
        what = []
        if missing:
            what.append(f"{len(missing)} of {len(dataset)} images have no prediction (e.g. {_some(missing)})")
        if strays:
            name = getattr(dataset, "dataset_name", "the dataset")
            what.append(f"{len(strays)} prediction(s) match no image of {name} {dataset.split!r} ({_some(strays)})")
        raise PredictionError(
            f"{pred_dir}: {' and '.join(what)}; name each prediction after its image (STEM.png or STEM_pred.png, any "
            f"sub-directory) and score the split they were made for (--set eval.split=...), {SKIP_HINT}")
    return matched, len(missing) + len(strays)


def score_prediction_dir(dataset, pred_dir: Path, encoding: str, eval_classes: Sequence[int] | None = None,
                         on_missing_pairs: str = "error") -> dict:
    """Match each (image, label) pair of `dataset` to the one `pred_dir/**/STEM*.png` and score them all. Files
    without their partner (in the dataset, or between images and predictions) are refused unless `on_missing_pairs`
    is "skip" (`eval.missing_pairs`); then the result's `missing_pairs` counts them."""
    if not pred_dir.is_dir():
        raise PredictionError(f"prediction directory {pred_dir} does not exist; pass the directory holding the PNGs")
    unpaired = check_missing_pairs(dataset, on_missing_pairs)
    matched, unmatched = match_predictions(dataset, pred_dir, on_missing_pairs)
    readings = EncodingCheck(encoding)
    for i, pred_path in tqdm(matched, desc="score", unit="img", dynamic_ncols=True):
        _, label = dataset.load_pair(i)
        readings.add(pred_path, read_prediction(pred_path), label)
    summary = readings.summary(pred_dir, eval_classes if eval_classes is not None
                               else getattr(dataset, "eval_classes", None))
    summary["images"] = len(matched)
    if unpaired + unmatched:
        summary["missing_pairs"] = unpaired + unmatched
    return summary
