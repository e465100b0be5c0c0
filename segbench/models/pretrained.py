"""ImageNet / local weights for backbones: official files, hub cache, hash check, strict loading, fail-fast offline.

`pretrained='imagenet'` uses torchvision's IMAGENET1K_V1 files for plain ResNets and the official IBN-Net release for
IBN variants. The "re-implementation" column of XingangPan/IBN-Net `README.md` compares ResNet-18/34 with exactly these
torchvision weights (top-1/5 error 30.24/10.92, 26.70/8.58) but ResNet-50/101 with its own unreleased retraining
(24.27/7.08, 22.48/6.23; torchvision's IMAGENET1K_V1 meta: 23.87/7.14, 22.63/6.45), so a plain resnet50/101 here is
not the ImageNet baseline of that table.

Files live where torch.hub keeps them (`torch.hub.get_dir()/checkpoints`), named `NAME-HASHPREFIX.pth`; the prefix of
the file's sha256 must match (torch.hub's check_hash convention), checked on every load so a truncated or wrong file
never trains silently.

`pretrained='torchvision'` is the one partial load: a plain or IBN-b ResNet initialised from torchvision's ImageNet
ResNet of its depth; for IBN-b that is the network of RobustNet's "IBN-Net" row (see `torchvision_init`).
"""
from __future__ import annotations

import hashlib
import os
import re
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from ..io import DamagedFileError, UnsafeFileError, load_torch

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


IMAGENET, TORCHVISION = "imagenet", "torchvision"  # the named choices of model.pretrained; anything else is a path
_TORCHVISION_INITIALISED = re.compile(r"(resnet(?:18|34|50|101))(?:_ibn_b)?")


class PretrainedWeightsError(RuntimeError):
    """Weights could not be fetched, verified or matched to the backbone; the message says what to do."""


class PartialLoadWarning(UserWarning):
    """pretrained='torchvision' left tensors at their initial values or loaded some into another module type."""


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
            f"the name promises {match.group(1)}. Delete it and download again; if a fresh download fails the same "
            f"way, pass the file as model.pretrained={path} (a local path is loaded without this check).")


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


def read_weights_file(path: Path) -> Mapping:
    """A weights file's contents (io.load_torch: weights_only=True), or PretrainedWeightsError naming the file: one
    that holds objects (a pickled model, maybe code) is never loaded unsafely, whatever torch's own message advises."""
    try:
        obj = load_torch(path)
    except UnsafeFileError as e:
        raise PretrainedWeightsError(
            f"model.pretrained={str(path)!r}: not a plain state dict ({e}); it may hold code, so segbench never loads "
            "it with weights_only=False: save the weights alone, torch.save(model.state_dict(), PATH)") from None
    except DamagedFileError as e:
        raise PretrainedWeightsError(f"model.pretrained={str(path)!r}: {e}; give a state dict saved with "
                                     "torch.save(model.state_dict(), PATH), 'imagenet', or null") from None
    if not isinstance(obj, Mapping):
        raise PretrainedWeightsError(f"model.pretrained={str(path)!r}: holds a {type(obj).__name__}, not a state "
                                     "dict; save it with torch.save(model.state_dict(), PATH)")
    return obj


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


def torchvision_counterpart(name: str) -> str:
    """The torchvision ResNet whose ImageNet weights `pretrained='torchvision'` puts into backbone `name`."""
    match = _TORCHVISION_INITIALISED.fullmatch(name)
    if match is None:
        raise PretrainedWeightsError(
            f"model.pretrained='torchvision' initialises a plain or IBN-b ResNet (resnet18/34/50/101[_ibn_b]) from "
            f"torchvision's ImageNet ResNet of its depth, not {name!r}: IBN-a splits each block's first BatchNorm into "
            f"InstanceNorm and BatchNorm halves that torchvision has no weights for. Use 'imagenet' (the official "
            f"IBN-Net weights) for it.")
    return match.group(1)


def official_file(name: str, pretrained: str) -> Path:
    """The cached (downloaded if missing), hash-checked file behind 'imagenet' or 'torchvision' for backbone `name`."""
    return fetch_imagenet(name if pretrained == IMAGENET else torchvision_counterpart(name))


@dataclass(frozen=True)
class PartialLoad:
    """What `pretrained='torchvision'` does to a backbone: tensors matched by name, as RobustNet's
    `network/mynn.py` `forgiving_state_restore` does (load where the name and shape match, keep the rest)."""

    backbone: str
    source: str  # the torchvision ResNet
    loaded: int  # tensors taken from the file
    retyped: dict[str, str]  # loaded into a module of another type: key -> "BatchNorm2d -> InstanceNorm2d"
    kept: dict[str, str]  # not in the file, left at their initial values: key -> module type
    unused: list[str]  # in the file (fc.* aside) with no place in the backbone

    def message(self) -> str:
        retyped = ", ".join(f"{k} ({v})" for k, v in self.retyped.items()) or "none"
        kept = ", ".join(f"{k} ({v})" for k, v in self.kept.items()) or "none"
        return (f"{self.backbone} initialised from torchvision's {self.source}: {self.loaded} tensors loaded; "
                f"loaded into another module type: {retyped}; not in the file, left at their initial values: {kept}; "
                f"in the file but not loadable here: {', '.join(self.unused) or 'none'} (the classifier fc.* is "
                f"dropped, as for every backbone)")

    def as_record(self) -> dict:
        return {"weights": TORCHVISION, **asdict(self)}


def _module_types(module: nn.Module) -> dict[str, str]:
    """State-dict key -> type name of the module holding it."""
    return {key: type(module.get_submodule(key.rpartition(".")[0])).__name__ for key in module.state_dict()}


def _torchvision_resnet(source: str) -> nn.Module:
    """torchvision's `source` ResNet without weights, on the meta device (names, types and shapes only)."""
    import torchvision.models as tvm

    with torch.device("meta"):
        return getattr(tvm, source)(weights=None)


def torchvision_init(name: str) -> PartialLoad:
    """The partial load of torchvision's ImageNet ResNet into backbone `name`, worked out from the two architectures
    (no file needed: `load_torchvision` checks that the file holds exactly torchvision's tensors).

    For resnet50_ibn_b this is RobustNet's "IBN-Net" (`--wt_layer 0 0 4 4 4 0 0`; shachoi/RobustNet
    `network/Resnet.py` resnet50 restored by `network/mynn.py` forgiving_state_restore from torchvision's
    resnet50-19c8e357.pth, the weights that IMAGENET1K_V1's resnet50-0676ba61.pth re-serialises, pytorch/vision#2068):
    the stem `bn1` is an affine InstanceNorm and takes BatchNorm's weight and bias (the running statistics have
    nowhere to go), and the InstanceNorm after the residual addition of the last block of layer1 and layer2
    (RobustNet's `instance_norm_layer`, segbench's `IN`) is not in the file, so it keeps its initial weight 1, bias 0.
    """
    from .registries import BACKBONES

    source = torchvision_counterpart(name)
    with torch.device("meta"):
        ours = _module_types(BACKBONES.get(name)())
    theirs = {k: v for k, v in _module_types(_torchvision_resnet(source)).items() if not k.startswith("fc.")}
    loaded = [k for k in ours if k in theirs]
    return PartialLoad(
        backbone=name, source=source, loaded=len(loaded),
        retyped={k: f"{theirs[k]} -> {ours[k]}" for k in loaded if theirs[k] != ours[k]},
        kept={k: ours[k] for k in ours if k not in theirs}, unused=[k for k in theirs if k not in ours])


def init_record(name: str, pretrained) -> dict | None:
    """What a record says about a partial initialisation (`pretrained='torchvision'`); None for the strict ones."""
    return torchvision_init(name).as_record() if pretrained == TORCHVISION else None


def load_torchvision(backbone: nn.Module, name: str) -> PartialLoad:
    """`pretrained='torchvision'`: load what fits by name (see `torchvision_init`); a PartialLoadWarning names the
    rest. The file must hold exactly torchvision's tensors, so what is loaded is what `torchvision_init` says."""
    plan = torchvision_init(name)
    path = official_file(name, TORCHVISION)
    state = backbone_state_dict(read_weights_file(path))
    expected = {k: v.shape for k, v in _torchvision_resnet(plan.source).state_dict().items() if not k.startswith("fc.")}
    wrong = sorted(k for k in expected.keys() | state.keys()
                   if k not in state or k not in expected or state[k].shape != expected[k])
    if wrong:
        raise PretrainedWeightsError(f"{path} is not torchvision's {plan.source}: {len(wrong)} tensors missing, extra "
                                     f"or of another shape, e.g. {wrong[:4]}")
    ours = backbone.state_dict()
    ours.update({k: v for k, v in state.items() if k in ours})
    backbone.load_state_dict(ours, strict=True)  # a shape that differs under the same name fails here, named
    if plan.retyped or plan.kept or plan.unused:
        warnings.warn(plan.message(), PartialLoadWarning, stacklevel=2)
    return plan


def load_pretrained(backbone: nn.Module, name: str, pretrained: str | os.PathLike) -> nn.Module:
    """Load 'imagenet' (official file for `name`) or a local file into `backbone`, strictly; 'torchvision' partially
    (`load_torchvision`); a DINOv2 backbone's weights through vit_weights.load_dinov2."""
    from .vit import DinoV2Backbone

    if isinstance(backbone, DinoV2Backbone):
        from .vit_weights import load_dinov2

        load_dinov2(backbone, name, pretrained)
        return backbone
    if str(pretrained) == TORCHVISION:
        load_torchvision(backbone, name)
        return backbone
    if str(pretrained) == IMAGENET:
        path = fetch_imagenet(name)
    else:
        path = Path(pretrained).expanduser()
        if not path.is_file():
            raise PretrainedWeightsError(f"pretrained file {path} does not exist (or use 'imagenet', or "
                                         f"{SCRATCH_HINT})")
        # a local file is the user's own: its name carries no hash promise (iter-040000.pth is not a sha256)
    obj = read_weights_file(path)
    expected = set(backbone.state_dict())
    state = backbone_state_dict(obj)
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise PretrainedWeightsError(
            f"{path} does not fit backbone {name!r}: {len(missing)} missing keys {missing[:4]}, "
            f"{len(unexpected)} unexpected keys {unexpected[:4]} (a different variant's weights?)")
    backbone.load_state_dict(state, strict=True)
    return backbone
