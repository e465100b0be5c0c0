"""IBN-a and IBN-b blocks against a functional reference written here in plain torch ops.

The reference follows the official forward passes line by line (XingangPan/IBN-Net `ibnnet/resnet_ibn.py`,
BasicBlock_IBN.forward / Bottleneck_IBN.forward; `ibnnet/modules.py`, IBN.forward):
IBN-a: conv1 -> IBN (IN(affine) on the FIRST int(planes * 0.5) channels, BN on the rest) -> relu -> conv2 -> bn2
       [-> relu -> conv3 -> bn3] -> + residual -> relu
IBN-b: ... -> bn2/bn3 -> + residual -> IN(affine) -> relu
The blocks are taken from real backbones (the ones segbench builds), all their tensors are randomised, and the
reference reads them by their official names.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import segbench.models as M

RATIO, EPS, MOMENTUM = 0.5, 1e-5, 0.1  # IBN(planes, ratio=0.5); PyTorch's norm defaults, which the release uses

pytestmark = pytest.mark.usefixtures("one_thread")


def _norm_bn(x, p, key, training):
    # clones: the reference must not touch the block's running statistics
    return F.batch_norm(x, p[f"{key}.running_mean"].clone(), p[f"{key}.running_var"].clone(),
                        p[f"{key}.weight"], p[f"{key}.bias"], training, MOMENTUM, EPS)


def _norm_in(x, p, key):
    return F.instance_norm(x, weight=p[f"{key}.weight"], bias=p[f"{key}.bias"], eps=EPS)


def _conv(x, p, key, stride=1):
    w = p[f"{key}.weight"]
    return F.conv2d(x, w, stride=stride, padding=w.shape[-1] // 2)


def _reference_block(p, x, ibn, bottleneck, stride, training):
    """One official residual block as plain ops; p: the block's state dict by official key."""

    def norm1(y):
        if ibn != "a":
            return _norm_bn(y, p, "bn1", training)
        half = int(y.shape[1] * RATIO)
        assert p["bn1.IN.weight"].shape == (half,), "IN must cover int(planes * 0.5) channels"
        return torch.cat([_norm_in(y[:, :half], p, "bn1.IN"), _norm_bn(y[:, half:], p, "bn1.BN", training)], 1)

    if bottleneck:  # stride on the 3x3 conv, as torchvision and the release
        out = F.relu(norm1(_conv(x, p, "conv1")))
        out = F.relu(_norm_bn(_conv(out, p, "conv2", stride), p, "bn2", training))
        out = _norm_bn(_conv(out, p, "conv3"), p, "bn3", training)
    else:
        out = F.relu(norm1(_conv(x, p, "conv1", stride)))
        out = _norm_bn(_conv(out, p, "conv2"), p, "bn2", training)
    residual = x
    if "downsample.0.weight" in p:
        residual = _norm_bn(_conv(x, p, "downsample.0", stride), p, "downsample.1", training)
    out = out + residual
    if ibn == "b":
        out = _norm_in(out, p, "IN")
    return F.relu(out)


def _randomised_block(backbone: str, path: str) -> torch.nn.Module:
    """The block at `path` of `backbone`, built on the meta device (free) then filled with random float64 tensors:
    norm weights away from 1, biases and running means away from 0, so a misplaced norm cannot hide."""
    with torch.device("meta"):
        block = M.create_backbone(backbone).get_submodule(path)
    block = block.to_empty(device="cpu").double()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for key, t in block.state_dict().items():
            if key.endswith("num_batches_tracked"):
                t.zero_()
            elif key.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g, dtype=t.dtype) + 0.5)
            elif t.dim() == 1:  # norm weight / bias / running mean
                centre = 1.0 if key.endswith("weight") else 0.3
                t.copy_(torch.randn(t.shape, generator=g, dtype=t.dtype) * 0.5 + centre)
            else:  # conv: He-normal on fan-in keeps activations O(1)
                fan_in = t[0].numel()
                t.copy_(torch.randn(t.shape, generator=g, dtype=t.dtype) * (2.0 / fan_in) ** 0.5)
    return block


# (backbone, block, ibn, bottleneck?, stride, input channels): a stride-2 IBN-a block with a downsample branch and an
# identity-residual one; IBN-b lives only in the last block of layer1/layer2 (identity residual)
CASES = [
    ("resnet50_ibn_a", "layer2.0", "a", True, 2, 256),
    ("resnet18_ibn_a", "layer1.1", "a", False, 1, 64),
    ("resnet50_ibn_b", "layer1.2", "b", True, 1, 256),
    ("resnet18_ibn_b", "layer2.1", "b", False, 1, 128),
]


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("backbone,path,ibn,bottleneck,stride,channels", CASES)
def test_block_matches_functional_reference(backbone, path, ibn, bottleneck, stride, channels, training):
    """Same numbers as the official op order, with batch statistics (train) and running statistics (eval) in the BNs."""
    block = _randomised_block(backbone, path).train(training)
    params = {k: v.clone() for k, v in block.state_dict().items()}
    x = torch.randn(3, channels, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64) + 0.2
    with torch.no_grad():
        expected = _reference_block(params, x, ibn, bottleneck, stride, training)
        got = block(x.clone())
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)
