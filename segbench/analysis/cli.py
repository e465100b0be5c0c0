"""`segbench analyze shift|divergence CHECKPOINT... [options]`: IBN-Net's analyses of trained models.

A CHECKPOINT is a finished cell directory (`results/STUDY/cells/NAME/`) or its `model_final.pt`.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from ..data.cache import size_argument
from ..errors import command
from .appearance import TRANSFORMS, parse_transform_spec
from .runner import DEFAULT_CONTENT_CLASS, DEFAULT_STYLE_IMAGES, analyze_divergence, analyze_shift


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="segbench analyze", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="kind", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("checkpoints", nargs="+", help="cell directories or their model_final.pt")
    common.add_argument("--split", default="val", help="the dataset split the images come from (default val)")
    common.add_argument("--data-root", default=None,
                        help="directory holding the datasets (default: $SEGBENCH_DATA or ./datasets)")
    common.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 or auto")
    common.add_argument("--out", type=Path, default=None, help="output directory (default: the study's directory, "
                        "results/STUDY/, when all checkpoints share one; ./analysis/ otherwise)")
    common.add_argument("--max-images", type=int, default=None, help="first N images of each split only")
    common.add_argument("--size", type=size_argument, default=None, metavar="WxH",
                        help="resize images to WxH, e.g. 1024x512, before the model (default: shift scores each "
                             "cell as `segbench evaluate` does, under the eval settings in its record.json; "
                             "divergence takes the dataset's native evaluation size, e.g. Mapillary at height 1536)")
    common.add_argument("--seed", type=int, default=0, help="seeds the noise and the random halves")
    common.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    common.add_argument("--style-images", type=int, default=DEFAULT_STYLE_IMAGES,
                        help="images the style statistics are averaged over")
    s = sub.add_parser("shift", parents=[common], help="mIoU under appearance transforms")
    s.add_argument("--dataset", required=True, help="dataset whose images are transformed and scored")
    s.add_argument("--transforms", default=",".join(TRANSFORMS), help=f"comma list of: {', '.join(TRANSFORMS)}")
    s.add_argument("--style-from", default=None, help="dataset whose colour statistics 'style' transfers "
                                                      "(default: the other embedded domain)")
    s.add_argument("--batch-size", type=int, default=1, help="images per forward pass (default 1)")
    d = sub.add_parser("divergence", parents=[common], help="layer-wise feature divergence (IBN-Net Sec. 3)")
    d.add_argument("--domains", required=True, help="A or A,B")
    d.add_argument("--appearance", default="style",
                   help="transform[:level] for the appearance pair ('' to skip); style borrows B's (or the other "
                        "embedded domain's) colour statistics")
    d.add_argument("--content-class", default=DEFAULT_CONTENT_CLASS,
                   help="class whose pixel fraction splits A into the content pair ('' to skip)")
    d.add_argument("--batch-size", type=int, default=4, help="images per forward pass (default 4)")
    return parser


# the analyses refuse bad arguments (a transform, class or domain name, too few images) with ValueError
@command("segbench analyze", also=(ValueError,))
def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    common = dict(split=args.split, out_dir=args.out, data_root=args.data_root, device=args.device,
                  max_images=args.max_images, size=args.size, seed=args.seed, batch_size=args.batch_size,
                  style_images=args.style_images)
    if args.kind == "shift":
        names = [t.strip() for t in args.transforms.split(",") if t.strip()]
        for t in names:
            parse_transform_spec(t)
        paths = analyze_shift(args.checkpoints, dataset=args.dataset, transforms=names, style_from=args.style_from,
                              **common)
    else:
        paths = analyze_divergence(args.checkpoints, domains=[d for d in args.domains.split(",") if d],
                                   appearance=args.appearance or None, content_class=args.content_class or None,
                                   **common)
    if paths[1].suffix == ".md":
        print(paths[1].read_text())
    for p in paths:
        print(f"wrote {p}")
    return 0
