"""Layer-wise feature divergence between two sets of images, as in IBN-Net (Pan et al., ECCV 2018, arXiv:1807.09441).

Section 3 of the paper ("Investigating IN and BN", Fig. 2) compares, for every layer, the divergence caused by an
appearance difference (ImageNet vs the same images restyled) with that caused by a content difference (two disjoint
sets of ImageNet classes); the definition is given at the end of the paper. Exactly what is computed here:

* feature of an image at a layer: the spatial mean of each channel, F_i = mean_{h,w} x[i, h, w];
* per domain D and channel i, F_i is modelled as a Gaussian N(mu_i^D, sigma_i^D^2) fitted over D's images
  (sample mean and unbiased variance, accumulated in a streaming way: memory does not grow with the image count);
* symmetric KL per channel, with sigma^2 <- sigma^2 + eps (eps = stats.VAR_EPS, so constant channels give 0):

      D_i(A||B) = KL(A||B) + KL(B||A)
                = (sigma_A^2 + (mu_A - mu_B)^2) / (2 sigma_B^2) + (sigma_B^2 + (mu_A - mu_B)^2) / (2 sigma_A^2) - 1

  (the log(sigma_A/sigma_B) terms of the two directions cancel);
* layer divergence D(L_A||L_B) = (1/C) sum_i D_i(A||B).

Layers: the stem after max pooling (the input of layer1; `backbone.maxpool`'s output) and the output of every
residual block `layerN.M` (after its final ReLU, so IBN-b's post-addition IN is included).

Pairs measured in one streaming pass over domain A (and B):
* appearance: A's images vs the same images through an appearance transform (the paper's ImageNet vs restyled);
* content:    A's images with the most vs the least of a class (split at the median pixel fraction);
* null:       two random halves of A: the finite-sample floor the content pair should be read against;
* domain:     A vs B (when B is given): the real cross-domain gap, appearance and content together.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data.transforms import eval_transform_for
from ..io import csv_text, markdown_table
from .appearance import ImageTransform
from .stats import ChannelMoments, moments_divergence

PAIR_TYPES = ("appearance", "content", "null", "domain")


def feature_points(backbone: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """(name, module) whose outputs are measured: 'stem' (after maxpool) and every block of layer1..layer4."""
    if not hasattr(backbone, "maxpool"):
        raise ValueError(f"{type(backbone).__name__} has no `maxpool`: divergence expects a ResNet-style backbone")
    points = [("stem", backbone.maxpool)]
    for stage in ("layer1", "layer2", "layer3", "layer4"):
        layer = getattr(backbone, stage, None)
        if layer is None:
            raise ValueError(f"{type(backbone).__name__} has no `{stage}`: divergence expects a ResNet-style backbone")
        points += [(f"{stage}.{j}", block) for j, block in enumerate(layer)]
    return points


def network_order(layers) -> list[str]:
    """Distinct layer names, stem first, then by (stage, block): models of different depths share one axis by name
    (layer2.0 is the same place in a ResNet-18 and a ResNet-101), not by position."""
    def key(name: str):
        return (0, 0) if name == "stem" else tuple(int(p) for p in name[len("layer"):].split("."))
    return sorted(set(layers), key=key)


class FeatureMeans:
    """Forward hooks that keep, per measured layer, the (N, C) spatial means of the last forward pass."""

    def __init__(self, backbone: torch.nn.Module):
        self.backbone = backbone
        self.points = feature_points(backbone)
        self.names = [n for n, _ in self.points]
        self.last: dict[str, torch.Tensor] = {}
        self._handles = [m.register_forward_hook(self._hook(n)) for n, m in self.points]

    def _hook(self, name: str):
        def hook(module, inputs, output):
            self.last[name] = output.detach().float().mean(dim=(2, 3))
        return hook

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        self.last = {}
        self.backbone(images)  # the head is not needed: only backbone layers are measured
        return dict(self.last)

    def close(self) -> None:
        for h in self._handles:
            h.remove()


class GroupMoments:
    """One ChannelMoments per layer for one group of images."""

    def __init__(self, names: Sequence[str]):
        self.layers = {n: ChannelMoments() for n in names}

    def update(self, feats: dict[str, torch.Tensor]) -> None:
        for n, x in feats.items():
            self.layers[n].update(x)

    @property
    def count(self) -> int:
        return next(iter(self.layers.values())).count


def class_fraction(label: np.ndarray, cls: int, ignore: int = 255) -> float:
    valid = label != ignore
    return float((label[valid] == cls).mean()) if valid.any() else 0.0


def content_split(base, indices: Sequence[int], cls: int) -> tuple[list[int], list[int]]:
    """(low, high): images with less / more of class `cls` than the median, disjoint, as equal in size as possible."""
    fractions = [(class_fraction(base.load_pair(i)[1], cls), i) for i in tqdm(
        indices, desc="content split", unit="img", leave=False, dynamic_ncols=True)]
    order = [i for _, i in sorted(fractions)]
    half = len(order) // 2
    return sorted(order[:half]), sorted(order[len(order) - half:])


def random_split(indices: Sequence[int], seed: int) -> tuple[list[int], list[int]]:
    perm = np.random.default_rng(seed).permutation(len(indices))
    half = len(indices) // 2
    return sorted(indices[p] for p in perm[:half]), sorted(indices[p] for p in perm[len(indices) - half:])


@dataclass
class DivergenceRow:
    model: str
    pair: str
    depth: int
    layer: str
    channels: int
    divergence: float
    images_a: int
    images_b: int
    detail: str


def _batches(base, indices, appearance, size, batch_size):
    """Yield (indices, clean batch, transformed batch or None), normalised and sized for evaluation.

    A batch holds at most `batch_size` consecutive frames of one size: at their evaluation size frames may differ
    (Mapillary keeps each frame's aspect ratio), and padding them to stack would move the spatial means.
    """
    eval_t = eval_transform_for(base, size)
    chunk, clean, shifted = [], [], []
    for i in indices:
        image, label = base.load_pair(i)
        x = eval_t(image=image, mask=label)["image"]
        if chunk and (len(chunk) == batch_size or x.shape != clean[0].shape):
            yield chunk, torch.stack(clean), (torch.stack(shifted) if shifted else None)
            chunk, clean, shifted = [], [], []
        chunk.append(i)
        clean.append(x)
        if appearance is not None:
            shifted.append(eval_t(image=appearance(image, i), mask=label)["image"])
    if chunk:
        yield chunk, torch.stack(clean), (torch.stack(shifted) if shifted else None)


def measure(model, base_a, *, base_b=None, appearance: ImageTransform | None = None, content_class: int | None = None,
            max_images: int | None = None, size=None, seed: int = 0, device="cpu", batch_size: int = 4,
            label: str = "model", names: tuple[str, str] = ("A", "B")) -> list[DivergenceRow]:
    """All pair divergences for one model (eval mode), one streaming pass per domain.

    `size` (H, W) resizes every image; None keeps each dataset's evaluation size (its protocol height, e.g. Mapillary's
    1536, or its native size).
    """
    device = torch.device(device)
    model.eval().to(device)
    idx_a = list(range(len(base_a) if max_images is None else min(max_images, len(base_a))))
    hooks = FeatureMeans(model.backbone)
    groups = {k: GroupMoments(hooks.names) for k in ("A", "A+T", "lo", "hi", "r0", "r1", "B")}
    lo, hi = content_split(base_a, idx_a, content_class) if content_class is not None else ([], [])
    r0, r1 = random_split(idx_a, seed)
    member = {"lo": set(lo), "hi": set(hi), "r0": set(r0), "r1": set(r1)}
    try:
        bar = tqdm(total=len(idx_a), desc=f"divergence {label} {names[0]}", unit="img", dynamic_ncols=True,
                   leave=False)
        for chunk, clean, shifted in _batches(base_a, idx_a, appearance, size, batch_size):
            bar.update(len(chunk))
            feats = hooks(clean.to(device))
            groups["A"].update(feats)
            for key, ids in member.items():
                rows = [j for j, i in enumerate(chunk) if i in ids]
                if rows:
                    groups[key].update({n: x[rows] for n, x in feats.items()})
            if shifted is not None:
                groups["A+T"].update(hooks(shifted.to(device)))
        bar.close()
        if base_b is not None:
            idx_b = list(range(len(base_b) if max_images is None else min(max_images, len(base_b))))
            bar = tqdm(total=len(idx_b), desc=f"divergence {label} {names[1]}", unit="img", dynamic_ncols=True,
                       leave=False)
            for chunk, clean, _ in _batches(base_b, idx_b, None, size, batch_size):
                bar.update(len(chunk))
                groups["B"].update(hooks(clean.to(device)))
            bar.close()
    finally:
        hooks.close()
    pairs = [("null", "r0", "r1", f"random halves of {names[0]}")]
    if appearance is not None:
        pairs.insert(0, ("appearance", "A", "A+T", f"{names[0]} vs {names[0]} + {appearance.title}"))
    if content_class is not None:
        from ..labels import CLASS_NAMES
        pairs.insert(1, ("content", "lo", "hi", f"{names[0]}: least vs most {CLASS_NAMES[content_class]}"))
    if base_b is not None:
        pairs.append(("domain", "A", "B", f"{names[0]} vs {names[1]}"))
    rows = []
    for pair, ka, kb, detail in pairs:
        ga, gb = groups[ka], groups[kb]
        if ga.count < 2 or gb.count < 2:
            raise ValueError(f"pair {pair!r} needs at least 2 images per side, has {ga.count} and {gb.count}; "
                             f"raise --max-images")
        for depth, n in enumerate(hooks.names):
            rows.append(DivergenceRow(label, pair, depth, n, int(ga.layers[n].mean.numel()),
                                      moments_divergence(ga.layers[n], gb.layers[n]), ga.count, gb.count, detail))
    return rows


CSV_FIELDS = ("model", "pair", "depth", "layer", "channels", "divergence", "images_a", "images_b", "detail")


def divergence_csv(rows: Sequence[DivergenceRow]) -> str:
    return csv_text(CSV_FIELDS, ([r.model, r.pair, r.depth, r.layer, r.channels, f"{r.divergence:.6g}", r.images_a,
                                  r.images_b, r.detail] for r in rows))


def divergence_markdown(rows: Sequence[DivergenceRow]) -> str:
    """Layers as rows, (model, pair) as columns."""
    cols = list(dict.fromkeys((r.model, r.pair) for r in rows))
    layers = network_order(r.layer for r in rows)
    val = {(r.model, r.pair, r.layer): r.divergence for r in rows}
    body = [[layer] + [f"{val.get((m, p, layer), float('nan')):.3g}" for m, p in cols] for layer in layers]
    return ("Feature divergence (symmetric KL of per-channel mean statistics, averaged over channels)\n\n"
            + markdown_table(["layer"] + [f"{m} {p}" for m, p in cols], body))
