"""segmentation-models-pytorch integration: encoder contract, smp models by name, smp heads with padding, SyncBN."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import segbench.models as M

smp = pytest.importorskip("segmentation_models_pytorch")
from segbench.models.smp_encoders import SegbenchEncoder  # noqa: E402

SMP_HEADS = ["smp-unet", "smp-fpn", "smp-deeplabv3plus"]


from segbench.models.vit import DINOV2_SPECS

pytestmark = pytest.mark.usefixtures("one_thread")


def test_every_backbone_is_an_smp_encoder():
    for name in M.list_backbones():
        if name in DINOV2_SPECS:  # no convolutional stages for smp's decoders
            assert name not in smp.encoders.encoders
            continue
        entry = smp.encoders.encoders[name]
        if entry["encoder"] is SegbenchEncoder:
            assert entry["params"]["backbone"] == name
            channels = entry["params"]["out_channels"]
        else:  # plain resnetXX: smp's own torchvision-based encoder with the same architecture
            assert name in {"resnet18", "resnet34", "resnet50", "resnet101"}
            channels = entry["params"]["out_channels"]
        with torch.device("meta"):  # channels only: skip allocation and init
            assert list(channels) == [3, 64, *M.create_backbone(name).out_channels]
    assert set(M.list_heads("smp-*")) == set(SMP_HEADS)


@pytest.mark.parametrize("name", ["resnet18_ibn_a", "resnet50_ibn_b"])
def test_smp_unet_by_encoder_name(name):
    model = smp.Unet(encoder_name=name, encoder_weights=None, classes=4).eval()
    assert isinstance(model.encoder, SegbenchEncoder)
    with torch.no_grad():
        feats = model.encoder(torch.randn(1, 3, 64, 96))
        out = model(torch.randn(1, 3, 64, 96))
    assert out.shape == (1, 4, 64, 96)
    assert [f.shape[1] for f in feats] == list(model.encoder.out_channels)
    assert [tuple(f.shape[-2:]) for f in feats] == [(64 // s, 96 // s) for s in (1, 2, 4, 8, 16, 32)]
    # the encoder's keys are the official ones, so a release file loads through smp's own path too
    official = {**M.create_backbone(name).state_dict(), "fc.weight": torch.zeros(1000, 1), "fc.bias": torch.zeros(1000)}
    model.encoder.load_state_dict(official)


@pytest.mark.parametrize("output_stride", [16, 8])
def test_smp_deeplabv3plus_by_name_is_dilated_like_torchvision(output_stride):
    model = smp.DeepLabV3Plus(encoder_name="resnet18_ibn_b", encoder_weights=None, classes=3,
                              encoder_output_stride=output_stride).eval()
    assert model.encoder.output_stride == output_stride
    reference = M.create_backbone("resnet18_ibn_b", output_stride=output_stride)
    dil = lambda m: {n: c.dilation for n, c in m.named_modules() if isinstance(c, nn.Conv2d)}  # noqa: E731
    assert dil(model.encoder) == dil(reference)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 3, 64, 64)


def test_encoder_depth_limits_features():
    enc = SegbenchEncoder("resnet18", depth=3)
    feats = enc(torch.randn(1, 3, 64, 64))
    assert len(feats) == 4 and enc.out_channels == [3, 64, 64, 128]
    with pytest.raises(ValueError, match="built at output stride"):
        enc.make_dilated(8)


@pytest.mark.parametrize("head", SMP_HEADS)
def test_smp_heads_pad_and_crop(head):
    model = M.create_model("resnet18_ibn_a", head, num_classes=6).eval()
    assert model.backbone.output_stride == M.HEADS.get(head).default_output_stride
    with torch.no_grad():
        out = model(torch.randn(1, 3, 52, 76))  # neither dimension divisible by 32
    assert set(out) == {"out"} and out["out"].shape == (1, 6, 52, 76)
    assert torch.isfinite(out["out"]).all()


def test_smp_head_checkpoint_keys_share_the_backbone_prefix(tmp_path):
    source = M.create_model("resnet18_ibn_b", "smp-unet", num_classes=3)
    assert {k.split(".")[0] for k in source.state_dict()} == {"backbone", "head"}  # same layout as native heads
    torch.save({"model": source.state_dict()}, tmp_path / "ckpt.pth")
    target = M.create_model("resnet18_ibn_b", "fcn", pretrained=tmp_path / "ckpt.pth")
    assert torch.equal(target.backbone.layer2[1].IN.weight, source.backbone.layer2[1].IN.weight)


def test_smp_deeplabv3plus_uses_deeplab_rates():
    model = M.create_model("resnet18", "smp-deeplabv3plus", output_stride=16)
    rates = sorted({m.dilation[0] for m in model.head.decoder.modules() if isinstance(m, nn.Conv2d)} - {1})
    assert rates == [6, 12, 18]
    with pytest.raises(ValueError, match="output_stride"):
        M.create_model("resnet18", "smp-unet", output_stride=8)


@pytest.mark.parametrize("head", ["fcn", "deeplabv3plus", "smp-unet"])
@pytest.mark.parametrize("backbone", ["resnet50_ibn_a", "resnet18_ibn_b"])
def test_syncbn_conversion_keeps_instance_norms(backbone, head):
    """SyncBN must replace every BatchNorm (IBN's BN half included) and leave every InstanceNorm per-sample."""
    model = M.create_model(backbone, head, num_classes=3, aux=True)
    bn = {n for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}
    inorm = {n for n, m in model.named_modules() if isinstance(m, nn.InstanceNorm2d)}
    assert inorm and any(n.endswith(".BN") for n in bn) == backbone.endswith("_ibn_a")
    converted = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    modules = dict(converted.named_modules())
    assert all(isinstance(modules[n], nn.SyncBatchNorm) for n in bn)
    assert all(type(modules[n]) is nn.InstanceNorm2d for n in inorm)
    assert not any(type(m) is nn.BatchNorm2d for m in converted.modules())
