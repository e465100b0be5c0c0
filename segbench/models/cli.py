"""`segbench models [PATTERN]`: list backbones (with parameter counts and their official weights: the file and
whether it is in torch.hub's cache), what each parameter-efficient method trains on the DINOv2 backbones, and heads."""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ..errors import command
from .factory import count_parameters, create_backbone, create_model
from .pretrained import IMAGENET, PretrainedWeightsError, cache_path, imagenet_url
from .registries import BACKBONES, HEADS
from .vit import DINOV2_SPECS
from .vit_weights import DINOV2, official_url

REFERENCE_BACKBONE = "resnet50"  # head sizes are reported on top of this backbone


def weights_file(name: str) -> tuple[str, str]:
    """(file name, "yes"/"no") of the official weights `model.pretrained=imagenet` (a ResNet) or `dinov2` (a DINOv2
    ViT) loads for backbone `name`, looked for where torch.hub keeps downloads; ("none", "-") for a backbone without
    official weights."""
    try:
        path = cache_path(official_url(name) if name in DINOV2_SPECS else imagenet_url(name))
    except (PretrainedWeightsError, KeyError):
        return "none", "-"
    return path.name, "yes" if path.is_file() else "no"


#: the parameter-efficient methods (methods/foundation.py) whose trainable parameters the listing counts
VFM_METHODS = ("frozen", "full", "rein", "lora", "vpt")


def method_rows(pattern: str) -> list[tuple[str, ...]]:
    """Per DINOv2 release matching `pattern` (without registers or Rein's geometry, which train the same counts):
    the parameters each method trains besides the head, in millions; Rein with and without the query link (built
    only for a head that takes its queries: rein-mask2former). On the meta device: shapes only."""
    from ..methods import build_method

    rows = []
    names = [n for n in BACKBONES.expand([pattern]) if n in DINOV2_SPECS and n.endswith("14")
             and not n.startswith("vit_debug")] if any(n in DINOV2_SPECS for n in BACKBONES.expand([pattern])) else []
    for name in names:
        counts = []
        for method in VFM_METHODS:
            with torch.device("meta"):
                model = create_model(name, "linear")
                try:
                    build_method(method).build(model)
                except Exception as e:  # lora without peft: say so in the cell, not as a failure of the listing
                    counts.append(f"({type(e).__name__})")
                    continue
            trained = sum(p.numel() for n, p in model.named_parameters() if p.requires_grad
                          and not n.startswith("head."))
            if method == "rein":
                reins = model.method_modules["rein"]
                link = (reins.learnable_tokens_b.shape[-1] + 1) * 256 + (256 * 3 + 1) * 256
                counts.append(f"{trained / 1e6:.2f} ({(trained + link) / 1e6:.2f} linked)")
            else:
                counts.append(f"{trained / 1e6:.2f}")
        rows.append((name, *counts))
    return rows


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
            f"IBN-Net v1.0 release for IBN variants) and DINOv2's (model.pretrained={DINOV2}, the official LVD-142M "
            f"files)\nare looked for in {where} ($TORCH_HOME moves it); a file not "
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
    print(format_table(("backbone", "params (M)", "stage channels", "official weights file", "present"), backbones))
    print(weights_note())
    methods = method_rows(args.pattern)
    if methods:
        print()
        print(format_table(("backbone", *(f"{m} trains (M)" for m in VFM_METHODS)), methods))
        print("besides the head; rein's query link (transform, merge) is built only for a head that takes its queries "
              "(rein-mask2former)")
    print()
    print(format_table(("head", f"params on {REFERENCE_BACKBONE} (M)", "output stride: default (allowed)",
                        "description"), heads))
    return 0
