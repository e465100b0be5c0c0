"""`model.pretrained: torchvision`: RobustNet's "IBN-Net" row, an IBN-b ResNet-50 initialised from torchvision's
ImageNet ResNet-50 (shachoi/RobustNet `network/Resnet.py` resnet50 with `--wt_layer 0 0 4 4 4 0 0`, restored by
`network/mynn.py` forgiving_state_restore: every tensor whose name and shape match is loaded, the rest keep their
initial values).

No network: the test writes a torchvision-format ResNet-50 state dict with distinct random values into the torch hub
cache, under a name whose hash prefix is the file's own (the official name's prefix belongs to the official file).
"""
from __future__ import annotations

import hashlib
import types
import urllib.error

import pytest
import torch
import torchvision
from torch import nn

import segbench.models as M
from segbench.cells import plan
from segbench.config import EMBEDDED_DEFAULT, apply_overrides, load_config
from segbench.data.adapters import synthetic
from segbench.models import pretrained as P
from segbench.spec import parse_specs

# RobustNet's IBN placement, written out from `network/Resnet.py`: `instance_norm_layer` in the last block of layer1
# (3 blocks) and layer2 (4 blocks); the stem norm `bn1` is an affine InstanceNorm, which keeps no running statistics
POST_ADD_IN = ("layer1.2.IN.weight", "layer1.2.IN.bias", "layer2.3.IN.weight", "layer2.3.IN.bias")
BN_STATISTICS_OF_THE_STEM = ("bn1.running_mean", "bn1.running_var", "bn1.num_batches_tracked")


def _random_torchvision_state(name: str) -> dict[str, torch.Tensor]:
    """torchvision's `name` state dict with distinct random values: a fresh model's norms are all 1/0, and a stem IN
    at 1/0 would then be indistinguishable from one that took BatchNorm's parameters."""
    g = torch.Generator().manual_seed(3)
    state = {}
    for key, value in getattr(torchvision.models, name)(weights=None).state_dict().items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.randint(1, 10**6, (), generator=g)
        elif key.endswith("running_var"):
            state[key] = torch.rand(value.shape, generator=g) + 0.5
        else:
            state[key] = torch.randn(value.shape, generator=g) * 0.1
    return state


@pytest.fixture(scope="module")
def torchvision_cache(tmp_path_factory):
    """A hub cache holding random resnet18 and resnet50 files, written once: (directory, name -> url, name -> state)."""
    cache, urls, states = tmp_path_factory.mktemp("torch") / "hub" / "checkpoints", {}, {}
    cache.mkdir(parents=True)
    for name in ("resnet18", "resnet50"):
        states[name] = _random_torchvision_state(name)
        torch.save(states[name], cache / "tmp.pth")
        prefix = hashlib.sha256((cache / "tmp.pth").read_bytes()).hexdigest()[:8]
        (cache / "tmp.pth").rename(cache / f"{name}-{prefix}.pth")
        urls[name] = f"https://download.pytorch.org/models/{name}-{prefix}.pth"
    return cache, urls, states


@pytest.fixture
def torchvision_file(torchvision_cache, monkeypatch, one_thread):
    """That cache as torch.hub's, its files as torchvision's, no network; returns name -> state dict."""
    cache, urls, states = torchvision_cache
    monkeypatch.setenv("TORCH_HOME", str(cache.parent.parent))

    def offline(url, dst, timeout=P.DOWNLOAD_TIMEOUT_S):
        raise urllib.error.URLError("network is unreachable (test)")

    monkeypatch.setattr(P, "download", offline)
    official = P.imagenet_url
    monkeypatch.setattr(P, "imagenet_url", lambda name: urls.get(name) or official(name))
    return states


def test_torchvision_initialised_ibn_b_loads_every_tensor_it_should_and_names_the_rest(torchvision_file):
    state = torchvision_file["resnet50"]
    with pytest.warns(P.PartialLoadWarning) as caught:
        backbone = M.create_backbone("resnet50_ibn_b", pretrained="torchvision", output_stride=16)
    ours = backbone.state_dict()
    # every conv and BatchNorm tensor of torchvision's ResNet-50 (the classifier aside) arrived unchanged, by name
    loaded = set(state) - set(BN_STATISTICS_OF_THE_STEM) - {"fc.weight", "fc.bias"}
    assert set(ours) == loaded | set(POST_ADD_IN)
    for key in loaded:
        assert torch.equal(ours[key], state[key]), key
    # the stem InstanceNorm took BatchNorm's affine parameters; the post-add InstanceNorms start at 1 / 0
    assert isinstance(backbone.bn1, nn.InstanceNorm2d) and backbone.bn1.affine
    assert torch.equal(backbone.bn1.weight, state["bn1.weight"]) and torch.equal(backbone.bn1.bias, state["bn1.bias"])
    for block in (backbone.layer1[2], backbone.layer2[3]):
        assert torch.equal(block.IN.weight, torch.ones(block.IN.num_features))
        assert torch.equal(block.IN.bias, torch.zeros(block.IN.num_features))

    (warning,) = caught
    message = str(warning.message)
    assert f"{len(loaded)} tensors loaded" in message and len(loaded) == 315
    assert "bn1.weight (BatchNorm2d -> InstanceNorm2d), bn1.bias (BatchNorm2d -> InstanceNorm2d)" in message
    assert "left at their initial values: " + ", ".join(f"{k} (InstanceNorm2d)" for k in POST_ADD_IN) in message
    assert "not loadable here: " + ", ".join(BN_STATISTICS_OF_THE_STEM) in message
    assert P.init_record("resnet50_ibn_b", "torchvision") == {
        "weights": "torchvision", "backbone": "resnet50_ibn_b", "source": "resnet50", "loaded": 315,
        "retyped": {"bn1.weight": "BatchNorm2d -> InstanceNorm2d", "bn1.bias": "BatchNorm2d -> InstanceNorm2d"},
        "kept": {k: "InstanceNorm2d" for k in POST_ADD_IN}, "unused": list(BN_STATISTICS_OF_THE_STEM)}
    assert P.init_record("resnet50_ibn_b", "imagenet") is None


def _robustnet_bottleneck_forward(block, x):
    """torchvision's Bottleneck.forward with RobustNet's `instance_norm_layer` between the addition and the ReLU."""
    identity = x if block.downsample is None else block.downsample(x)
    out = block.relu(block.bn1(block.conv1(x)))
    out = block.relu(block.bn2(block.conv2(out)))
    out = block.bn3(block.conv3(out)) + identity
    return block.relu(block.instance_norm_layer(out))


def test_the_network_is_robustnets_ibn_net_built_from_torchvision(torchvision_file):
    """An independent construction: torchvision's ResNet-50 with the file loaded, its stem BN swapped for an affine
    IN carrying BN's weight and bias, and a fresh affine IN after the addition of layer1[2] and layer2[3], computes
    the same features as segbench's torchvision-initialised resnet50_ibn_b (BatchNorm in eval mode)."""
    state = torchvision_file["resnet50"]
    reference = torchvision.models.resnet50(weights=None)
    reference.load_state_dict(state)
    stem = nn.InstanceNorm2d(64, affine=True)
    stem.load_state_dict({"weight": state["bn1.weight"], "bias": state["bn1.bias"]})
    reference.bn1 = stem
    for block in (reference.layer1[2], reference.layer2[3]):
        block.instance_norm_layer = nn.InstanceNorm2d(block.bn3.num_features, affine=True)
        block.forward = types.MethodType(_robustnet_bottleneck_forward, block)
    reference.eval()
    with pytest.warns(P.PartialLoadWarning):
        ours = M.create_backbone("resnet50_ibn_b", pretrained="torchvision").eval()

    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = reference.maxpool(reference.relu(reference.bn1(reference.conv1(x))))
        feats = ours(x)
        for i, layer in enumerate((reference.layer1, reference.layer2, reference.layer3, reference.layer4)):
            expected = layer(expected)
            torch.testing.assert_close(feats[i], expected, msg=lambda m, i=i: f"layer{i + 1}: {m}")


def test_a_plain_resnet_loads_everything_without_a_warning(torchvision_file, recwarn):
    backbone = M.create_backbone("resnet18", pretrained="torchvision")
    assert not [w for w in recwarn if issubclass(w.category, P.PartialLoadWarning)]
    state = torchvision_file["resnet18"]
    for key, value in backbone.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_ibn_a_has_no_torchvision_initialisation():
    with pytest.raises(P.PretrainedWeightsError, match=r"not 'resnet50_ibn_a'.*IBN-a splits .* Use 'imagenet'"):
        M.create_backbone("resnet50_ibn_a", pretrained="torchvision")
    with pytest.raises(P.PretrainedWeightsError, match="not 'resnext101_ibn_a'"):
        P.official_file("resnext101_ibn_a", "torchvision")


def test_a_file_that_is_not_torchvisions_resnet_is_refused(torchvision_file, monkeypatch):
    state = dict(torchvision_file["resnet50"])
    del state["layer3.0.conv1.weight"]
    cache = P.cache_path(P.imagenet_url("resnet50")).parent
    torch.save(state, cache / "tmp.pth")
    prefix = hashlib.sha256((cache / "tmp.pth").read_bytes()).hexdigest()[:8]
    (cache / "tmp.pth").rename(cache / f"resnet50-{prefix}.pth")
    monkeypatch.setattr(P, "imagenet_url", lambda name: f"https://download.pytorch.org/models/{name}-{prefix}.pth")
    with pytest.raises(P.PretrainedWeightsError, match=r"is not torchvision's resnet50: 1 tensors .*layer3.0.conv1"):
        M.create_backbone("resnet50_ibn_b", pretrained="torchvision")


def test_the_record_of_a_torchvision_initialised_cell_names_the_partial_load(torchvision_file, tmp_path,
                                                                           monkeypatch):
    from segbench import pipeline

    monkeypatch.setattr(synthetic, "SPLIT_SIZES", {"train": 2, "val": 1})
    cfg = apply_overrides(load_config(EMBEDDED_DEFAULT), [
        "model.pretrained=torchvision", "train.iters=1", "train.batch_size=2", "train.crop=[32,64]",
        "train.workers=0", "train.ckpt_every=0", "eval.workers=0", "eval.dump=0"])
    (cell,) = plan(cfg, parse_specs(["sim->sim"]), ["resnet18_ibn_b"], ["fcn"])[:1]
    with pytest.warns(P.PartialLoadWarning, match="resnet18_ibn_b initialised from torchvision's resnet18"):
        record = pipeline.run_cell(cell, tmp_path / "cell", data_root=tmp_path / "data", device=torch.device("cpu"))
    assert record["training"]["init"] == P.init_record("resnet18_ibn_b", "torchvision")
    assert record["training"]["init"]["kept"] == {k: "InstanceNorm2d" for k in (
        "layer1.1.IN.weight", "layer1.1.IN.bias", "layer2.1.IN.weight", "layer2.1.IN.bias")}
    assert record["training"]["world_size"] == 1 and record["training"]["batch_per_process"] == 2
