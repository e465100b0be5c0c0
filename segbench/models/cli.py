"""`segbench models [PATTERN]`: list backbones (with parameter counts and their official ImageNet weights: the file
and whether it is in torch.hub's cache) and heads."""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ..errors import command
from .factory import count_parameters, create_backbone, create_model
from .pretrained import IMAGENET, PretrainedWeightsError, cache_path, imagenet_url
from .registries import BACKBONES, HEADS

REFERENCE_BACKBONE = "resnet50"  # head sizes are reported on top of this backbone


def weights_file(name: str) -> tuple[str, str]:
    """(file name, "yes"/"no") of the official weights `model.pretrained=imagenet` loads for backbone `name`, looked
    for where torch.hub keeps downloads; ("none", "-") for a backbone without official weights."""
    try:
        path = cache_path(imagenet_url(name))
    except PretrainedWeightsError:
        return "none", "-"
    return path.name, "yes" if path.is_file() else "no"


def backbone_rows(pattern: str) -> list[tuple[str, ...]]:
    rows = []
    for name in BACKBONES.expand([pattern]):  # a pattern that matches nothing fails with the valid names
        with torch.device("meta"):  # shapes only: listing stays instant even for ResNet-101s
            bb = create_backbone(name)
        rows.append((name, f"{count_parameters(bb) / 1e6:.2f}", "/".join(map(str, bb.out_channels)),
                     *weights_file(name)))
    return rows


def weights_note() -> str:
    """Where the weights files are looked for and how they get there."""
    where = Path(torch.hub.get_dir()) / "checkpoints"
    return (f"ImageNet weights (model.pretrained={IMAGENET}; torchvision's IMAGENET1K_V1 for plain ResNets, the "
            f"IBN-Net v1.0 release for IBN variants)\nare looked for in {where} ($TORCH_HOME moves it); a file not "
            "there is downloaded when a study starts, or put it there by hand on an offline machine.")


def head_rows(pattern: str) -> list[tuple[str, str, str, str]]:
    with torch.device("meta"):
        base = count_parameters(create_backbone(REFERENCE_BACKBONE))
    rows = []
    for name in HEADS.expand([pattern]):
        spec = HEADS.get(name)
        with torch.device("meta"):
            extra = count_parameters(create_model(REFERENCE_BACKBONE, name)) - base
        strides = "the backbone's" if spec.output_strides is None else ",".join(map(str, spec.output_strides))
        default = "backbone" if spec.default_output_stride is None else spec.default_output_stride
        rows.append((name, f"{extra / 1e6:.2f}", f"{default} ({strides})", spec.description))
    return rows


def format_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    return "\n".join([line(header), line(tuple("-" * w for w in widths)), *map(line, rows)])


@command("segbench models")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="segbench models", description=__doc__)
    parser.add_argument("pattern", nargs="?", default="*", help="glob on backbone names (default: all)")
    parser.add_argument("--heads", default="*", help="glob on head names (default: all)")
    args = parser.parse_args(argv)
    backbones = backbone_rows(args.pattern)
    heads = head_rows(args.heads)
    print(format_table(("backbone", "params (M)", "stage channels", "ImageNet weights file", "present"), backbones))
    print(weights_note())
    print()
    print(format_table(("head", f"params on {REFERENCE_BACKBONE} (M)", "output stride: default (allowed)",
                        "description"), heads))
    return 0
