"""ImageNet / local weights for backbones: official files, hub cache, hash check, strict loading, fail-fast offline.

`pretrained='imagenet'` uses torchvision's IMAGENET1K_V1 files for plain ResNets (the weights IBN-Net compared with) and
the official IBN-Net release for IBN variants. Files live where torch.hub keeps them (`torch.hub.get_dir()/checkpoints`),
named `NAME-HASHPREFIX.pth`; the prefix of the file's sha256 must match (torch.hub's check_hash convention), checked on
every load so a truncated or wrong file never trains silently.
"""
from __future__ import annotations

import hashlib
import os
import re
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

IBN_RELEASE = "https://github.com/XingangPan/IBN-Net/releases/download/v1.0/"
IBN_FILES = {  # name -> sha256 prefix: XingangPan/IBN-Net release v1.0 (`ibnnet/resnet_ibn.py` model_urls)
    "resnet18_ibn_a": "2f571257", "resnet34_ibn_a": "94bc1577", "resnet50_ibn_a": "d9d0bb7b",
    "resnet101_ibn_a": "59ea0ac6", "resnet18_ibn_b": "bc2f3c11", "resnet34_ibn_b": "04134c37",
    "resnet50_ibn_b": "9ca61e85", "resnet101_ibn_b": "c55f6dba", "resnext101_ibn_a": "6ace051d",
    "se_resnet101_ibn_a": "fabed4e2",
}
DOWNLOAD_TIMEOUT_S = 20  # per connect/read: an offline machine must fail in seconds, not hang
SCRATCH_HINT = "--set model.pretrained=null (Python: pretrained=None)"
_HASH_IN_NAME = re.compile(r"-([0-9a-f]{6,})\.")
_ANCHOR = "layer1.0.conv1.weight"  # every backbone has it exactly once; locates the backbone inside checkpoints


class PretrainedWeightsError(RuntimeError):
    """Weights could not be fetched, verified or matched to the backbone; the message says what to do."""


def imagenet_url(name: str) -> str:
    if name in IBN_FILES:
        return f"{IBN_RELEASE}{name}-{IBN_FILES[name]}.pth"
    import torchvision.models as tvm

    weights = getattr(tvm, f"{name.capitalize().replace('net', 'Net')}_Weights", None)
    if weights is None:
        raise PretrainedWeightsError(f"no ImageNet weights known for backbone {name!r}; pass a file path or "
                                     f"train from scratch with {SCRATCH_HINT}")
    return weights.IMAGENET1K_V1.url


def cache_path(url: str) -> Path:
    """Where torch.hub would keep `url` (honours TORCH_HOME / torch.hub.set_dir at call time)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urllib.parse.urlparse(url).path)


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_hash(path: Path) -> None:
    """torch.hub convention: the digits after the last '-' in the file name start the file's sha256."""
    match = _HASH_IN_NAME.search(path.name)
    if match is None:
        return
    digest = sha256_of(path)
    if not digest.startswith(match.group(1)):
        raise PretrainedWeightsError(
            f"{path} is corrupt or not the official file: its sha256 starts with {digest[:len(match.group(1))]}, "
            f"the name promises {match.group(1)}. Delete it and download again.")


def download(url: str, dst: Path, timeout: float = DOWNLOAD_TIMEOUT_S) -> None:
    """Stream `url` into a temporary file next to `dst`, then rename: concurrent ranks never see half a file."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    with urllib.request.urlopen(url, timeout=timeout) as response:
        fd, tmp = tempfile.mkstemp(dir=dst.parent, prefix=dst.name + ".", suffix=".partial")
        try:
            with os.fdopen(fd, "wb") as f:
                for chunk in iter(lambda: response.read(1 << 20), b""):
                    f.write(chunk)
            os.replace(tmp, dst)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)


def fetch_imagenet(name: str) -> Path:
    """Cached file for `name` (downloaded if missing), hash-checked."""
    url = imagenet_url(name)
    path = cache_path(url)
    if not path.exists():
        try:
            download(url, path)
        except (urllib.error.URLError, OSError) as err:  # URLError, timeouts, refused connections
            raise PretrainedWeightsError(
                f"could not download ImageNet weights for {name!r} ({err}).\n"
                f"  URL: {url}\n"
                f"  Offline? Put the file at: {path}\n"
                f"  Or train from scratch: {SCRATCH_HINT}") from err
    check_hash(path)
    return path


def backbone_state_dict(obj: Mapping) -> dict[str, torch.Tensor]:
    """The backbone's tensors from an official state dict or any checkpoint wrapping one.

    Accepts {"model"|"state_dict": ...} wrappers and any key prefix (`backbone.` in segbench checkpoints,
    `module.` from DDP, `encoder.` from smp): the prefix is the part before `layer1.0.conv1.weight`.
    The classifier (`fc.*`) is dropped.
    """
    while not any(torch.is_tensor(v) for v in obj.values()):
        inner = [obj[k] for k in ("model", "state_dict") if isinstance(obj.get(k), Mapping)]
        if not inner:
            raise PretrainedWeightsError(f"no state dict found; top-level keys: {sorted(obj)[:10]}")
        obj = inner[0]
    prefixes = sorted(k[: -len(_ANCHOR)] for k in obj if k == _ANCHOR or k.endswith("." + _ANCHOR))
    if len(prefixes) != 1:
        raise PretrainedWeightsError(f"cannot locate exactly one backbone in the file (prefixes found: {prefixes})")
    prefix = prefixes[0]
    state = {k[len(prefix):]: v for k, v in obj.items() if k.startswith(prefix)}
    return {k: v for k, v in state.items() if not k.startswith("fc.")}


def load_pretrained(backbone: nn.Module, name: str, pretrained: str | os.PathLike) -> nn.Module:
    """Load 'imagenet' (official file for `name`) or a local file into `backbone`, strictly."""
    if str(pretrained) == "imagenet":
        path = fetch_imagenet(name)
    else:
        path = Path(pretrained).expanduser()
        if not path.is_file():
            raise PretrainedWeightsError(f"pretrained file {path} does not exist (or use 'imagenet', or "
                                         f"{SCRATCH_HINT})")
        # a local file is the user's own: its name carries no hash promise (iter-040000.pth is not a sha256)
    obj = torch.load(path, map_location="cpu", weights_only=True)
    expected = set(backbone.state_dict())
    state = backbone_state_dict(obj)
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise PretrainedWeightsError(
            f"{path} does not fit backbone {name!r}: {len(missing)} missing keys {missing[:4]}, "
            f"{len(unexpected)} unexpected keys {unexpected[:4]} (a different variant's weights?)")
    backbone.load_state_dict(state, strict=True)
    return backbone
