"""RobustNet's auxiliary head (`model.aux: robustnet`) and its loss, against RobustNet's definition
(shachoi/RobustNet network/deepv3.py `dsn`, train.py `main_loss + 0.4 * aux_loss`) computed independently here."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from segbench.config import ConfigError, apply_overrides, load_config, validate
from segbench.engine.train import label_at, segmentation_loss
from segbench.models import create_model
from segbench.models.heads import FCNHead, RobustNetAuxHead, aux_head


def test_head_is_dsn_layer_by_layer():
    """ResNet-50's layer3 (1024 ch): Conv2d(1024, 512, 3, padding 1, bias) - BN(512) - ReLU - Dropout2d(0.1) -
    Conv2d(512, 19, 1, bias)."""
    head = RobustNetAuxHead(1024, 19)
    conv1, bn, relu, drop, conv2 = head
    assert (conv1.in_channels, conv1.out_channels, conv1.kernel_size, conv1.padding, conv1.stride) == \
        (1024, 512, (3, 3), (1, 1), (1, 1)) and conv1.bias is not None
    assert isinstance(bn, nn.BatchNorm2d) and bn.num_features == 512
    assert isinstance(relu, nn.ReLU)
    assert type(drop) is nn.Dropout2d and drop.p == 0.1
    assert (conv2.in_channels, conv2.out_channels, conv2.kernel_size) == (512, 19, (1, 1)) and conv2.bias is not None
    assert sum(p.numel() for p in head.parameters()) == (1024 * 9 * 512 + 512) + 2 * 512 + (512 * 19 + 19)
    assert head.in_index == 2


def test_init_is_robustnets_initialize_weights():
    """network/mynn.py initialize_weights: kaiming_normal_(nonlinearity='relu') (fan_in), bias 0, BN weight 1 bias 0."""
    torch.manual_seed(0)
    head = RobustNetAuxHead(1024, 19)
    conv1, bn, _, _, conv2 = head
    for conv in (conv1, conv2):
        fan_in = conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1]
        assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / fan_in), rel=0.02)
        assert abs(conv.weight.mean().item()) < 0.05 * math.sqrt(2 / fan_in)
        assert torch.count_nonzero(conv.bias) == 0
    assert torch.all(bn.weight == 1) and torch.count_nonzero(bn.bias) == 0


def _dsn_reference(head: RobustNetAuxHead, x: torch.Tensor, training: bool) -> torch.Tensor:
    """RobustNet's dsn as functional calls on the head's own parameters."""
    conv1, bn, _, _, conv2 = head
    y = F.conv2d(x, conv1.weight, conv1.bias, padding=1)
    y = F.batch_norm(y, bn.running_mean.clone(), bn.running_var.clone(), bn.weight, bn.bias, training=training,
                     momentum=0.1, eps=1e-5)
    y = F.dropout2d(F.relu(y), p=0.1, training=training)
    return F.conv2d(y, conv2.weight, conv2.bias)


@pytest.mark.parametrize("training", [False, True])
def test_forward_on_a_fixed_tensor_matches_the_reference(training):
    torch.manual_seed(1)
    head = RobustNetAuxHead(64, 7).train(training)
    x = torch.randn(3, 64, 9, 11)
    feats = [None, None, x, None]
    torch.manual_seed(2)
    got = head(feats)
    torch.manual_seed(2)  # the same channel dropout mask in train mode
    want = _dsn_reference(head, x, training)
    assert got.shape == (3, 7, 9, 11)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_model_returns_aux_at_layer3_resolution_and_main_at_input_size():
    """deeplabv3plus at OS16 (RobustNet's D16): layer3 at stride 16, so a 32x48 crop has 2x3 aux logits (the FCN
    aux head, model.aux: true, keeps logits upsampled to the input: tests/test_models.py)."""
    torch.manual_seed(0)
    model = create_model("resnet18", "deeplabv3plus", num_classes=5, output_stride=16, pretrained=None,
                         aux="robustnet").train()
    assert isinstance(model.aux_head, RobustNetAuxHead) and model.aux_head[0].in_channels == 256
    out = model(torch.randn(2, 3, 32, 48))
    assert out["out"].shape == (2, 5, 32, 48) and out["aux"].shape == (2, 5, 2, 3)
    assert set(model.eval()(torch.randn(1, 3, 32, 48))) == {"out"}


def test_aux_head_kinds():
    assert aux_head(1024, 19, False) is None
    assert type(aux_head(1024, 19, True)) is FCNHead
    assert type(aux_head(1024, 19, "robustnet")) is RobustNetAuxHead
    with pytest.raises(ValueError, match="robustnet"):
        aux_head(1024, 19, "pspnet")


def _nearest_reference(label: np.ndarray, h: int, w: int) -> np.ndarray:
    """F.interpolate(mode='nearest') as RobustNet calls it: output (i, j) takes source (floor(i*H/h), floor(j*W/w))."""
    H, W = label.shape[-2:]
    rows = np.floor(np.arange(h) * (H / h)).astype(int)
    cols = np.floor(np.arange(w) * (W / w)).astype(int)
    return label[..., rows[:, None], cols[None, :]]


def _ce_reference(logits: np.ndarray, label: np.ndarray) -> float:
    """Mean over non-ignored pixels of -log softmax at the true class (ignore 255)."""
    z = logits - logits.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    valid = label != 255
    idx = np.nonzero(valid)
    return float(-logp[idx[0], label[valid], idx[1], idx[2]].mean())


@pytest.mark.parametrize("label_size, aux_size", [((64, 96), (4, 6)), ((50, 70), (7, 9)), ((33, 47), (5, 5))])
def test_loss_is_main_plus_point_four_aux_against_the_nearest_downsampled_label(label_size, aux_size):
    g = torch.Generator().manual_seed(3)
    label = torch.randint(0, 6, (2, *label_size), generator=g)
    label[torch.rand(label.shape, generator=g) < 0.2] = 255
    main = torch.randn(2, 6, *label_size, generator=g, dtype=torch.float64)
    aux = torch.randn(2, 6, *aux_size, generator=g, dtype=torch.float64)
    got = segmentation_loss({"out": main, "aux": aux}, label, aux_weight=0.4).item()
    small = _nearest_reference(label.numpy(), *aux_size)
    assert np.array_equal(label_at(label, aux_size).numpy(), small)
    want = _ce_reference(main.numpy(), label.numpy()) + 0.4 * _ce_reference(aux.numpy(), small)
    assert got == pytest.approx(want, rel=1e-10)


def test_label_keeps_its_size_when_logits_match():
    label = torch.randint(0, 19, (2, 8, 8))
    assert label_at(label, (8, 8)) is label


def test_model_aux_setting_accepts_the_kinds():
    for value, expected in (("true", True), ("false", False), ("robustnet", "robustnet")):
        assert validate(apply_overrides(load_config(), [f"model.aux={value}"]))["model"]["aux"] == expected
    with pytest.raises(ConfigError, match="model.aux='dsn': expected false, true"):
        validate(apply_overrides(load_config(), ["model.aux=dsn"]))
