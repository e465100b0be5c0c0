"""Pretrained weights without network: cache lookup, hash check, offline message, local files and checkpoints."""
from __future__ import annotations

import hashlib
import urllib.error

import pytest
import torch
import torchvision

import segbench.models as M
from segbench.models import pretrained as P


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    """An empty torch hub cache, and a downloader that proves no test touches the network."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def offline(url, dst, timeout=P.DOWNLOAD_TIMEOUT_S):
        raise urllib.error.URLError("network is unreachable (test)")

    monkeypatch.setattr(P, "download", offline)
    return tmp_path / "torch" / "hub" / "checkpoints"


def _official_like(name: str) -> dict[str, torch.Tensor]:
    """A state dict in the release's layout: backbone tensors (random) plus the ImageNet classifier."""
    torch.manual_seed(1)
    state = M.create_backbone(name).state_dict()
    state = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in state.items()}
    ch = M.create_backbone(name).out_channels[3]
    return {**state, "fc.weight": torch.randn(1000, ch), "fc.bias": torch.randn(1000)}


def _save_hashed(state, directory, name):
    """Save like the release: NAME-<sha256 prefix>.pth; returns that prefix."""
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / "tmp.pth"
    torch.save(state, tmp)
    prefix = hashlib.sha256(tmp.read_bytes()).hexdigest()[:8]
    tmp.rename(directory / f"{name}-{prefix}.pth")
    return prefix


def test_urls_follow_the_official_releases():
    assert P.imagenet_url("resnet50_ibn_b") == \
        "https://github.com/XingangPan/IBN-Net/releases/download/v1.0/resnet50_ibn_b-9ca61e85.pth"
    assert P.imagenet_url("resnet50") == torchvision.models.ResNet50_Weights.IMAGENET1K_V1.url
    for name in M.list_backbones():
        assert P.imagenet_url(name).endswith(".pth")  # every registered backbone has official weights


def test_imagenet_from_cache_loads_strictly(torch_home, monkeypatch):
    state = _official_like("resnet18_ibn_a")
    prefix = _save_hashed(state, torch_home, "resnet18_ibn_a")
    monkeypatch.setitem(P.IBN_FILES, "resnet18_ibn_a", prefix)  # the test's own file stands in for the release
    bb = M.create_backbone("resnet18_ibn_a", pretrained="imagenet", output_stride=8)
    assert torch.equal(bb.layer1[0].bn1.IN.weight, state["layer1.0.bn1.IN.weight"])
    assert torch.equal(bb.layer4[1].conv2.weight, state["layer4.1.conv2.weight"])
    assert bb.output_stride == 8  # dilation does not change the weights' names


def test_wrong_hash_prefix_fails_clearly(torch_home):
    torch_home.mkdir(parents=True)
    torch.save(_official_like("resnet18_ibn_b"), torch_home / "resnet18_ibn_b-bc2f3c11.pth")
    with pytest.raises(P.PretrainedWeightsError, match="sha256 starts with .* promises bc2f3c11"):
        M.create_backbone("resnet18_ibn_b", pretrained="imagenet")


def test_offline_miss_says_url_cache_path_and_scratch_flag(torch_home):
    with pytest.raises(P.PretrainedWeightsError) as info:
        M.create_model("resnet50_ibn_a", "fcn", pretrained="imagenet")
    msg = str(info.value)
    assert "https://github.com/XingangPan/IBN-Net/releases/download/v1.0/resnet50_ibn_a-d9d0bb7b.pth" in msg
    assert str(torch_home / "resnet50_ibn_a-d9d0bb7b.pth") in msg
    assert "model.pretrained=null" in msg and "pretrained=None" in msg


def test_real_downloader_fails_fast_when_offline(tmp_path, monkeypatch):
    """The real download() with an unreachable address: an error within the timeout, never a hang."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(P, "imagenet_url", lambda name: "http://127.0.0.1:9/resnet18-f37072fd.pth")
    with pytest.raises(P.PretrainedWeightsError, match="Put the file at"):
        P.fetch_imagenet("resnet18")
    assert not list(tmp_path.rglob("*.partial"))


def test_local_official_file_with_fc(tmp_path):
    state = _official_like("resnet50_ibn_b")
    torch.save(state, tmp_path / "w.pth")
    bb = M.create_backbone("resnet50_ibn_b", pretrained=tmp_path / "w.pth")
    assert torch.equal(bb.bn1.weight, state["bn1.weight"])  # IBN-b stem InstanceNorm weights


def test_local_torchvision_file_for_plain_resnet(tmp_path):
    tv = torchvision.models.resnet18(weights=None)
    torch.save(tv.state_dict(), tmp_path / "tv.pth")
    bb = M.create_backbone("resnet18", pretrained=str(tmp_path / "tv.pth"))
    assert torch.equal(bb.layer3[0].downsample[0].weight, tv.layer3[0].downsample[0].weight)


@pytest.mark.parametrize("wrap", ["model", "state_dict", "model+module"])
def test_segbench_checkpoint_backbone_prefix(tmp_path, wrap):
    source = M.create_model("resnet18_ibn_a", "deeplabv3plus", num_classes=3)
    state = source.state_dict()
    if wrap.endswith("module"):
        state = {f"module.{k}": v for k, v in state.items()}  # saved from DistributedDataParallel
    torch.save({wrap.split("+")[0]: state, "epoch": 3}, tmp_path / "ckpt.pth")
    model = M.create_model("resnet18_ibn_a", "fcn", pretrained=tmp_path / "ckpt.pth")
    for k, v in source.backbone.state_dict().items():
        assert torch.equal(model.backbone.state_dict()[k], v), k


def test_variant_mismatch_is_reported(tmp_path):
    torch.save(_official_like("resnet18_ibn_a"), tmp_path / "a.pth")
    with pytest.raises(P.PretrainedWeightsError, match="does not fit backbone 'resnet18_ibn_b'.*missing"):
        M.create_backbone("resnet18_ibn_b", pretrained=tmp_path / "a.pth")


def test_missing_local_file(tmp_path):
    with pytest.raises(P.PretrainedWeightsError, match="does not exist"):
        M.create_backbone("resnet18", pretrained=tmp_path / "nope.pth")
