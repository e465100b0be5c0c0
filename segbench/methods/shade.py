"""SHADE's pieces as plain PyTorch: style hallucination, farthest point sampling of basis styles, and the style
consistency and retrospection losses.

Zhao et al., "Style-Hallucinated Dual Consistency Learning for Domain Generalized Semantic Segmentation", ECCV 2022.
Official code: HeliosZhao/SHADE network/style_hallucination.py (the module), utils/fps.py (the sampling),
train.py (`validate_for_prototype`: the statistics; `train`: the consistency loss), loss.py (`calc_feat_dist`,
`downscale_label_ratio`: the retrospection loss and its mask).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

#: the classes whose cells the retrospection loss keeps (Cityscapes train ids: traffic light, traffic sign, person,
#: rider, car, truck, bus, train, motorcycle, bicycle): loss.py `imnet_feature_dist_classes`
RETROSPECTION_CLASSES = (6, 7, 11, 12, 13, 14, 15, 16, 17, 18)

#: added to the std that normalises a feature map (style_hallucination.py) and to the variance of a basis style
#: (train.py `validate_for_prototype`): the official code puts the same constant in these two different places
STYLE_EPS = 1e-7


class StyleHallucination(nn.Module):
    """In training, appends to the batch a copy of each feature map re-styled with a random convex combination of the
    basis styles: x' = (x - mu) / sigma * (w . basis_std) + w . basis_mean, w ~ Dirichlet(concentration * 1_K) per
    sample, mu and sigma the detached per-channel instance mean and (unbiased) std. Returns cat([x, x']), so the
    batch doubles; in eval mode returns x.

    The basis styles are buffers (K x C), so checkpoints carry them; `set_basis` fills them (`basis_styles`). The
    weights are drawn from torch's global generator on x's device. Statistics are computed in float32 whatever x's
    dtype (under bf16 autocast the instance std would otherwise lose most of its digits)."""

    def __init__(self, channels: int, basis_styles: int = 64, concentration: float = 0.0156):
        super().__init__()
        if channels < 1 or basis_styles < 1:
            raise ValueError(f"StyleHallucination needs channels >= 1 and basis_styles >= 1, got {channels} and "
                             f"{basis_styles}")
        if not concentration > 0:
            raise ValueError(f"concentration={concentration!r}: a Dirichlet concentration must be > 0 (SHADE uses "
                             "0.0156)")
        self.concentration = float(concentration)
        self.register_buffer("basis_mean", torch.zeros(basis_styles, channels))
        self.register_buffer("basis_std", torch.zeros(basis_styles, channels))

    @torch.no_grad()
    def set_basis(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        if mean.shape != self.basis_mean.shape or std.shape != self.basis_std.shape:
            raise ValueError(f"basis styles of shape {tuple(mean.shape)} and {tuple(std.shape)}; this module holds "
                             f"{tuple(self.basis_mean.shape)} (basis_styles x channels)")
        self.basis_mean.copy_(mean)
        self.basis_std.copy_(std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        styles, channels = self.basis_mean.shape
        if x.dim() != 4 or x.shape[1] != channels or x.shape[2] * x.shape[3] < 2:
            raise ValueError(f"StyleHallucination({channels} channels) takes N x {channels} x H x W maps with "
                             f"H * W >= 2 (an instance std needs two values), got {tuple(x.shape)}")
        x32 = x.float()
        mean = x32.mean(dim=(2, 3), keepdim=True).detach()
        std = (x32.std(dim=(2, 3), keepdim=True) + STYLE_EPS).detach()
        concentration = torch.full((styles,), self.concentration, device=x.device)
        weights = torch.distributions.Dirichlet(concentration).sample((x.shape[0],))  # N x K
        new_mean = (weights @ self.basis_mean.float())[:, :, None, None]
        new_std = (weights @ self.basis_std.float())[:, :, None, None]
        hallucinated = (x32 - mean) / std * new_std + new_mean
        return torch.cat([x, hallucinated.to(x.dtype)])

    def extra_repr(self) -> str:
        styles, channels = self.basis_mean.shape
        return f"channels={channels}, basis_styles={styles}, concentration={self.concentration}"


def features_at(resnet: nn.Module, place: str, x: torch.Tensor) -> torch.Tensor:
    """The output of a torchvision-named ResNet (conv1, bn1, relu, maxpool, layer1..4) at a place of places.py, running
    its modules in order, hooks on them included (for a hallucination module in eval mode: the identity)."""
    x = resnet.relu(resnet.bn1(resnet.conv1(x)))
    if place == "stem":
        return x
    x = resnet.maxpool(x)
    if place == "maxpool":
        return x
    for stage in ("layer1", "layer2", "layer3", "layer4"):
        x = getattr(resnet, stage)(x)
        if place == stage:
            return x
    raise ValueError(f"unknown place {place!r}; places after an output: stem, maxpool, layer1 .. layer4")


class BackboneTap:
    """Forward hooks keeping what the retrospection loss needs from a backbone's last training forward: its input
    (the original images, padded as the backbone saw them) and layer4's output (original and hallucinated halves).
    Nothing is kept in eval mode, so scoring and the basis pass hold no activations."""

    def __init__(self):
        self.input: torch.Tensor | None = None
        self.layer4: torch.Tensor | None = None

    def keep_input(self, module: nn.Module, inputs) -> None:
        if module.training:
            self.input = inputs[0]

    def keep_layer4(self, module: nn.Module, _inputs, output) -> None:
        if module.training:
            self.layer4 = output

    def clear(self) -> None:
        self.input = self.layer4 = None


def instance_style(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample, per-channel (mean, sqrt(unbiased variance + 1e-7)) over H x W: the style a basis is sampled
    from (train.py `validate_for_prototype`)."""
    if features.dim() != 4 or features.shape[2] * features.shape[3] < 2:
        raise ValueError(f"instance_style takes N x C x H x W maps with H * W >= 2, got {tuple(features.shape)}")
    return features.mean(dim=(2, 3)), (features.var(dim=(2, 3)) + STYLE_EPS).sqrt()


def farthest_point_sampling(points: torch.Tensor, count: int, start: int) -> torch.Tensor:
    """Indices of `count` points of `points` (N x D), starting at index `start`, each next one the point farthest
    (squared Euclidean) from those chosen so far, the lowest index on ties (PointNet++'s sampling, utils/fps.py).
    When count > N every point is chosen once and then index 0 repeats, as the official loop does."""
    if points.dim() != 2 or points.shape[0] == 0:
        raise ValueError(f"farthest_point_sampling takes an N x D point set with N >= 1, got {tuple(points.shape)}")
    if count < 1:
        raise ValueError(f"count={count}: sample at least one point")
    if not 0 <= start < points.shape[0]:
        raise ValueError(f"start={start} is not an index of the {points.shape[0]} points")
    chosen = torch.empty(count, dtype=torch.long)
    nearest = torch.full((points.shape[0],), float("inf"), dtype=points.dtype, device=points.device)
    current = start
    for i in range(count):
        chosen[i] = current
        nearest = torch.minimum(nearest, ((points - points[current]) ** 2).sum(dim=1))
        current = int(torch.argmax(nearest))
    return chosen


def basis_styles(means: torch.Tensor, stds: torch.Tensor, count: int, start: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The `count` basis styles (mean, std), each K x C, picked by farthest point sampling over the images' styles
    [mean; std] (N x 2C), starting from image `start`."""
    if means.shape != stds.shape or means.dim() != 2:
        raise ValueError(f"means and stds must both be N x C, got {tuple(means.shape)} and {tuple(stds.shape)}")
    chosen = farthest_point_sampling(torch.cat([means, stds], dim=1), count, start).to(means.device)
    return means[chosen], stds[chosen]


def style_consistency_loss(logits: torch.Tensor, hallucinated_logits: torch.Tensor) -> torch.Tensor:
    """(KL(p || m) + KL(q || m)) / 2 with m = clamp((p + q) / 2, 1e-7, 1), p and q the class softmax of the original
    and hallucinated predictions, summed over classes and averaged over pixels, no ignore mask (train.py: KL with
    `batchmean` over the pixels as rows). Gradients reach both predictions, as officially."""
    if logits.shape != hallucinated_logits.shape or logits.dim() < 2:
        raise ValueError(f"the two predictions must be N x K x ... of one shape, got {tuple(logits.shape)} and "
                         f"{tuple(hallucinated_logits.shape)}")
    p, q = logits.float().softmax(dim=1), hallucinated_logits.float().softmax(dim=1)
    log_mixture = ((p + q) / 2).clamp(1e-7, 1).log()
    pixels = p.numel() // p.shape[1]
    kl_p = (torch.xlogy(p, p) - p * log_mixture).sum() / pixels
    kl_q = (torch.xlogy(q, q) - q * log_mixture).sum() / pixels
    return (kl_p + kl_q) / 2


def retrospection_mask(label: torch.Tensor, feature_size: Sequence[int], stride: int, num_classes: int,
                       classes: Sequence[int] = RETROSPECTION_CLASSES, min_ratio: float = 0.75,
                       ignore_index: int = 255) -> torch.Tensor:
    """N x h x w bool: the feature cells (stride x stride label pixels each) whose most frequent label, ignored pixels
    counting as a class of their own, covers >= `min_ratio` of the cell and is one of `classes` (loss.py
    `downscale_label_ratio`). A label smaller than the cells cover (an input padded bottom and right before the
    backbone) is padded likewise with `ignore_index`, so cells stay aligned with the features; labels outside
    0..num_classes-1 count as ignored."""
    if label.dim() != 3:
        raise ValueError(f"label must be N x H x W, got {tuple(label.shape)}")
    if stride < 2:
        raise ValueError(f"stride={stride}: the features must be coarser than the label")
    (n, height, width), (h, w) = label.shape, tuple(feature_size)
    if h * stride < height or w * stride < width:
        raise ValueError(f"a {height}x{width} label is larger than {h}x{w} feature cells of stride {stride} cover: "
                         "pass the label of the images the features were computed from, and the backbone's stride")
    padded = F.pad(label, (0, w * stride - width, 0, h * stride - height), value=ignore_index).long()
    padded = torch.where((padded >= 0) & (padded < num_classes), padded, num_classes)  # ignored: class num_classes
    rows = torch.arange(h * stride, device=label.device) // stride
    cols = torch.arange(w * stride, device=label.device) // stride
    cell = (torch.arange(n, device=label.device)[:, None, None] * h + rows[None, :, None]) * w + cols[None, None, :]
    counts = torch.bincount((cell * (num_classes + 1) + padded).flatten(), minlength=n * h * w * (num_classes + 1))
    most, dominant = counts.view(n * h * w, num_classes + 1).max(dim=1)
    wanted = torch.as_tensor(list(classes), device=label.device, dtype=torch.long)
    keep = (most >= min_ratio * stride * stride) & torch.isin(dominant, wanted)
    return keep.view(n, h, w)


def retrospection_loss(features: torch.Tensor, reference: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the masked cells of the channel-mean squared difference between `features` and the frozen model's
    `reference` (N x C x h x w; mask N x h x w); 0 when no cell is masked (loss.py `masked_feat_dist`)."""
    if features.shape != reference.shape or mask.shape != features.shape[:1] + features.shape[2:]:
        raise ValueError(f"features {tuple(features.shape)}, reference {tuple(reference.shape)} and mask "
                         f"{tuple(mask.shape)} must be N x C x h x w, N x C x h x w and N x h x w")
    per_cell = (features.float() - reference.float()).pow(2).mean(dim=1)
    mask = mask.to(per_cell.dtype)
    return (per_cell * mask).sum() / mask.sum().clamp(min=1)
