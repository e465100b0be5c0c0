"""`segbench predict CELL_OR_CHECKPOINT IMAGE_OR_DIR --out DIR [--overlay]`: segment images with a trained cell.

Each image becomes OUT/NAME.png, a trainId PNG (what `segbench evaluate --preds` reads back; a folder's images keep
their sub-folders), and with --overlay OUT/NAME_overlay.png, the Cityscapes palette blended half and half with the
image. The model is rebuilt from the cell's record (network.py) and predicts as its cell was scored
(eval.mode, window, stride, flip, scales), unless --set says otherwise; every image is read at its own size.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .config import ConfigError, eval_settings
from .errors import command

#: the image files a folder is searched for (any case)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
#: how `predict` names an overlay beside its prediction (engine/scoring.py save_prediction writes it)
OVERLAY_SUFFIX = "_overlay.png"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="segbench predict", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  segbench predict results/embedded/cells/sim__resnet18_ibn_b__fcn__s0__97a5e735f7 "
               "frame.png --out preds/ --overlay\n  segbench predict results/NAME/cells/CELL my_photos/ --out preds/ "
               "--set eval.mode=slide --set 'eval.window=[512,1024]'")
    p.add_argument("checkpoint", type=Path, metavar="CELL_OR_CHECKPOINT",
                   help="a finished cell directory, its model_final.pt, or a checkpoints/iter_*.pt")
    p.add_argument("images", type=Path, metavar="IMAGE_OR_DIR",
                   help=f"an image, or a folder searched for {', '.join(IMAGE_SUFFIXES)} files (sub-folders too)")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="where the predictions go (created)")
    p.add_argument("--overlay", action="store_true",
                   help=f"also write NAME{OVERLAY_SUFFIX}: the prediction in the Cityscapes palette over the image")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="eval.KEY=VALUE",
                   help="inference setting over the cell's (repeatable): eval.mode=slide, 'eval.window=[H,W]', "
                        "'eval.stride=[H,W]', eval.flip=true, 'eval.scales=[0.75,1.0,1.25]'")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="auto (default): cuda when a GPU is visible, else cpu")
    return p


def image_files(path: Path) -> list[tuple[Path, Path]]:
    """(image, its name under --out without suffix) for an image, or every image under a folder, sorted."""
    if path.is_file():
        return [(path, Path(path.stem))]
    if not path.is_dir():
        raise ConfigError(f"{path}: no such file or folder; give an image or a folder of images")
    found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not found:
        raise ConfigError(f"{path}: no image in it or its sub-folders (looked for {', '.join(IMAGE_SUFFIXES)})")
    return [(p, p.relative_to(path).with_suffix("")) for p in found]


def output_path(out: Path, name: Path) -> Path:
    return out / name.with_name(name.name + ".png")


def check_outputs(out: Path, files: list[tuple[Path, Path]]) -> None:
    """Refused before the model is loaded: an --out where a prediction would overwrite an input image (--out the
    input folder itself, with PNG inputs), or that cannot be written."""
    from .io import check_writable

    inputs = {image.resolve() for image, _ in files}
    for image, name in files:
        for target in (output_path(out, name), output_path(out, name).with_name(name.name + OVERLAY_SUFFIX)):
            if target.resolve() in inputs:
                raise ConfigError(f"--out {out}: the prediction {target} would overwrite the input image of that "
                                  "name; choose another folder")
    check_writable(out)


@command("segbench predict")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .evaluate import eval_section, only_eval_overrides

    only_eval_overrides(args.overrides, "segbench predict")
    files = image_files(args.images)
    check_outputs(args.out, files)

    from tqdm import tqdm

    from .data.base import read_rgb
    from .data.transforms import normalized_tensor
    from .network import load_trained_model
    from .distributed import init_from_env
    from .engine.inference import predict
    from .engine.scoring import save_prediction

    model, record = load_trained_model(args.checkpoint)
    settings = eval_settings(eval_section(args.overrides, record["config"].get("eval")))
    device = init_from_env(None if args.device == "auto" else args.device)
    model.to(device)
    for image_path, name in tqdm(files, desc="predict", unit="img", file=sys.stderr, disable=len(files) < 2):
        image = read_rgb(image_path)
        scores = predict(model, normalized_tensor(image)[None].to(device), image.shape[:2], settings)
        save_prediction(output_path(args.out, name), scores.argmax(1)[0].cpu().numpy(), image_path, args.overlay)
    print(f"{len(files)} prediction(s) of {record['backbone']} + {record['head']} ({record.get('cell_id', '?')}) in "
          f"{args.out}: trainId PNGs" + (f", NAME{OVERLAY_SUFFIX} in the Cityscapes palette beside each"
                                         if args.overlay else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
