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


# name -> (bottleneck?, blocks per stage, ibn_cfg), as the official constructors call ResNet_IBN
# (XingangPan/IBN-Net `ibnnet/resnet_ibn.py`: resnet18_ibn_a ... resnet101_ibn_b)
OFFICIAL_ARCH = {
    "resnet18": (False, (2, 2, 2, 2), (None,) * 4), "resnet50": (True, (3, 4, 6, 3), (None,) * 4),
    "resnet18_ibn_a": (False, (2, 2, 2, 2), ("a", "a", "a", None)),
    "resnet18_ibn_b": (False, (2, 2, 2, 2), ("b", "b", None, None)),
    "resnet50_ibn_a": (True, (3, 4, 6, 3), ("a", "a", "a", None)),
    "resnet50_ibn_b": (True, (3, 4, 6, 3), ("b", "b", None, None)),
}


def _official_shapes(name: str) -> dict[str, tuple[int, ...]]:
    """Key -> shape of the release's state dict, fc included, written from the official module tree.

    XingangPan/IBN-Net `ibnnet/resnet_ibn.py` (ResNet_IBN, BasicBlock_IBN, Bottleneck_IBN), `ibnnet/modules.py` (IBN):
    stem bn1 is InstanceNorm2d(64, affine) when ibn_cfg[0] == 'b'; IBN-a: bn1 = IBN(planes) = IN(int(planes * 0.5),
    affine) + BN(rest); IBN-b: `IN` = InstanceNorm2d(planes * expansion, affine) only in a stage's last block; affine
    InstanceNorm keeps no running stats."""
    bottleneck, layers, ibn_cfg = OFFICIAL_ARCH[name]
    shapes: dict[str, tuple[int, ...]] = {}

    def conv(key, cout, cin, k):
        shapes[f"{key}.weight"] = (cout, cin, k, k)

    def bn(key, c):
        shapes.update({f"{key}.{p}": (c,) for p in ("weight", "bias", "running_mean", "running_var")})
        shapes[f"{key}.num_batches_tracked"] = ()

    def inorm(key, c):
        shapes.update({f"{key}.weight": (c,), f"{key}.bias": (c,)})

    conv("conv1", 64, 3, 7)
    (inorm if ibn_cfg[0] == "b" else bn)("bn1", 64)
    inplanes, expansion = 64, 4 if bottleneck else 1
    for stage, (planes, blocks, ibn) in enumerate(zip((64, 128, 256, 512), layers, ibn_cfg)):
        for i in range(blocks):
            key = f"layer{stage + 1}.{i}"
            block_ibn = None if ibn == "b" and i < blocks - 1 else ibn
            conv(f"{key}.conv1", planes, inplanes, 1 if bottleneck else 3)
            if block_ibn == "a":
                half = int(planes * 0.5)
                inorm(f"{key}.bn1.IN", half)
                bn(f"{key}.bn1.BN", planes - half)
            else:
                bn(f"{key}.bn1", planes)
            conv(f"{key}.conv2", planes, planes, 3)
            bn(f"{key}.bn2", planes)
            if bottleneck:
                conv(f"{key}.conv3", planes * 4, planes, 1)
                bn(f"{key}.bn3", planes * 4)
            if block_ibn == "b":
                inorm(f"{key}.IN", planes * expansion)
            if i == 0 and (stage > 0 or inplanes != planes * expansion):  # stride 2, or channels change
                conv(f"{key}.downsample.0", planes * expansion, inplanes, 1)
                bn(f"{key}.downsample.1", planes * expansion)
            inplanes = planes * expansion
    shapes.update({"fc.weight": (1000, inplanes), "fc.bias": (1000,)})
    return shapes


def _official_like(name: str) -> dict[str, torch.Tensor]:
    """A state dict in the release's layout with distinct random tensors (positive variances, counters > 0)."""
    g = torch.Generator().manual_seed(1)
    state = {}
    for key, shape in _official_shapes(name).items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.randint(1, 10**6, shape, generator=g)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=g) + 0.5
        else:
            state[key] = torch.randn(shape, generator=g)
    return state


def _assert_loaded(backbone: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Every tensor of the file but the classifier arrived unchanged, and the backbone holds nothing else."""
    ours = backbone.state_dict()
    assert set(ours) == {k for k in state if not k.startswith("fc.")}
    for k, v in ours.items():
        assert v.dtype == state[k].dtype and torch.equal(v, state[k]), k


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_official_shape_rules_reproduce_torchvision_without_ibn(name):
    """The generator's skeleton (stem, blocks, downsample, fc) is torchvision's ResNet, which the release extends."""
    with torch.device("meta"):
        tv = getattr(torchvision.models, name)(weights=None)
    assert _official_shapes(name) == {k: tuple(v.shape) for k, v in tv.state_dict().items()}


def _save_hashed(state, directory, name):
    """Save like the release: NAME-<sha256 prefix>.pth; returns that prefix."""
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / "tmp.pth"
    torch.save(state, tmp)
    prefix = hashlib.sha256(tmp.read_bytes()).hexdigest()[:8]
    tmp.rename(directory / f"{name}-{prefix}.pth")
    return prefix


def test_urls_follow_the_official_releases():
    from segbench.models.resnet import SPECS as RESNET_SPECS
    from segbench.models.vit_weights import official_url

    assert official_url("dinov2_vitl14_reg4_p16") == \
        "https://dl.fbaipublicfiles.com/dinov2/dinov2_vitl14/dinov2_vitl14_reg4_pretrain.pth"
    assert P.imagenet_url("resnet50_ibn_b") == \
        "https://github.com/XingangPan/IBN-Net/releases/download/v1.0/resnet50_ibn_b-9ca61e85.pth"
    assert P.imagenet_url("resnet50") == torchvision.models.ResNet50_Weights.IMAGENET1K_V1.url
    for name in M.list_backbones():
        if name.startswith("vit_debug"):  # not a release: no official weights
            continue
        url = P.imagenet_url(name) if name in RESNET_SPECS else official_url(name)
        assert url.endswith(".pth")  # every released backbone has official weights


def test_imagenet_from_cache_loads_strictly(torch_home, monkeypatch):
    state = _official_like("resnet18_ibn_a")
    prefix = _save_hashed(state, torch_home, "resnet18_ibn_a")
    monkeypatch.setitem(P.IBN_FILES, "resnet18_ibn_a", prefix)  # the test's own file stands in for the release
    bb = M.create_backbone("resnet18_ibn_a", pretrained="imagenet", output_stride=8)
    _assert_loaded(bb, state)
    assert bb.output_stride == 8  # dilation does not change the weights' names


def test_wrong_hash_prefix_fails_clearly(torch_home):
    torch_home.mkdir(parents=True)
    path = torch_home / "resnet18_ibn_b-bc2f3c11.pth"
    torch.save(_official_like("resnet18_ibn_b"), path)
    with pytest.raises(P.PretrainedWeightsError, match="sha256 starts with .* promises bc2f3c11") as info:
        M.create_backbone("resnet18_ibn_b", pretrained="imagenet")
    # the way out it names (for a release whose names were not made from sha256) loads the same file
    assert f"model.pretrained={path}" in str(info.value)
    _assert_loaded(M.create_backbone("resnet18_ibn_b", pretrained=path), _official_like("resnet18_ibn_b"))


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


@pytest.mark.parametrize("name", ["resnet18_ibn_b", "resnet50_ibn_a", "resnet50_ibn_b"])
def test_local_official_file_with_fc(tmp_path, name):
    """A file in the release's exact layout (fc included) loads strictly, every tensor unchanged."""
    state = _official_like(name)
    torch.save(state, tmp_path / "w.pth")
    _assert_loaded(M.create_backbone(name, pretrained=tmp_path / "w.pth"), state)


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
