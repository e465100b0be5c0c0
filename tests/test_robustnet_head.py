"""`robustnet-deeplabv3plus` against RobustNet's DeepR50V3PlusD rebuilt from its source (`robustnet_reference.py`:
shachoi/RobustNet `network/deepv3.py` DeepV3Plus and _AtrousSpatialPyramidPoolingModule, `network/mynn.py` Upsample
and initialize_weights): torchvision's ResNet-50 dilated the way its variants D16 / D do, and the decoder typed in."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from robustnet_reference import ReferenceDeepV3Plus, segbench_state_for_reference
from segbench.models import create_model


@pytest.mark.parametrize("output_stride", [16, 8])
def test_the_network_is_robustnets_deepv3plus(output_stride):
    """Same weights, same input: the logits of segbench's network equal the reference's, and every state-dict key of
    the reference (RobustNet's names) is filled from segbench's, so none is missing or extra."""
    torch.manual_seed(0)
    model = create_model("resnet50", "robustnet-deeplabv3plus", num_classes=5, output_stride=output_stride).eval()
    with torch.no_grad():  # running statistics away from 0/1, so BatchNorm's eval path matters
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    reference = ReferenceDeepV3Plus(5, output_stride).eval()
    reference.load_state_dict(segbench_state_for_reference(model), strict=True)
    x = torch.randn(1, 3, 65, 97)
    with torch.no_grad():
        ours, theirs = model(x)["out"], reference(x)
    assert ours.shape == (1, 5, 65, 97)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


def test_layer4_of_the_plain_deeplabv3plus_keeps_torchvisions_dilation():
    """The other head is left alone: RobustNet's rule applies to this head's backbone only."""
    plain = create_model("resnet50", "deeplabv3plus")
    robust = create_model("resnet50", "robustnet-deeplabv3plus")
    assert [b.conv2.dilation for b in plain.backbone.layer4] == [(1, 1), (2, 2), (2, 2)]
    assert [b.conv2.dilation for b in robust.backbone.layer4] == [(2, 2), (2, 2), (2, 2)]
    assert not any(isinstance(m, nn.Dropout) for m in robust.head.modules())


def test_decoder_is_initialised_like_robustnet():
    """initialize_weights: Kaiming-normal (fan-in, gain sqrt(2)) convs, zero biases, BatchNorm 1 / 0. The std of
    final1's first conv (256 x 304 x 3 x 3 draws) must be sqrt(2 / fan_in) within 2%."""
    torch.manual_seed(0)
    head = create_model("resnet50", "robustnet-deeplabv3plus").head
    conv = head.final1[0]
    fan_in = conv.in_channels * 9
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / fan_in), rel=0.02)
    assert torch.count_nonzero(head.final2[0].bias) == 0
    bns = [m for m in head.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(torch.all(m.weight == 1) and torch.all(m.bias == 0) for m in bns)


def test_a_basic_block_backbone_is_refused_with_the_fix():
    with pytest.raises(ValueError, match="BasicBlock.*ResNet-50/101"):
        create_model("resnet18", "robustnet-deeplabv3plus")
