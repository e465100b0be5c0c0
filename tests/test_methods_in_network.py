"""Each DG method inside the network it runs in, against the official network rebuilt in the test: same weights,
same batch, same random draws.

A method's function can equal the official one and still be fed the wrong tensor by the network around it (an
in-place ReLU after a whitening slot once made the loss read post-ReLU features while every unit test passed). So
segbench's model with the method built is compared with:
- iw, irw, isw, sw: RobustNet's DeepR50V3PlusD with its `wt_layer` slots (`robustnet_reference.py`, typed from
  shachoi/RobustNet): logits, the whitening loss and its gradient with respect to the input, ISW's masks after the
  statistics pass over the same images and twins, and SW's start from the ImageNet stem BN;
- mixstyle: Dassl's `resnet50_ms_l123` forward (dassl/modeling/backbone/resnet.py ResNet.featuremaps);
- dsu: DSU's segmentation ResNet.forward (lixiaotong97/DSU semantic-segmentation/core/models/resnet.py, positions
  0-5) and, for `places: [input]`, the same network run the way its feature extractor runs it, through torchvision's
  IntermediateLayerGetter (core/models/feature_extractor.py);
- shade: SHADE's DeepV3Plus forward (HeliosZhao/SHADE network/deepv3.py: the hallucination after layer0, the batch
  doubled, layer4 kept for the retrospection loss).
For mixstyle, dsu and shade the perturbing layer inside the reference is segbench's own module (each is checked
against its official formula on the same draws in test_methods_perturbation.py / test_methods_shade.py): what is
compared here is where the network puts it and what it feeds it, with the draws in the same order. PASTA works on
the image before the crop (test_methods_axis.py) and NP has no official code: neither has an official network.
"""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.models._utils import IntermediateLayerGetter

import robustnet_reference as rn
from segbench.data import build_dataset
from segbench.data.adapters import synthetic
from segbench.data.transforms import normalized_tensor
from segbench.methods import Batch, DistributionUncertainty, MixStyle, StyleHallucination, TrainRun, build_method
from segbench.methods.builtin import ISW_TWIN, whitening_modules
from segbench.models import create_model

pytestmark = pytest.mark.usefixtures("one_thread")

#: RobustNet's R50 scripts (scripts/train_r50os16_gtav_{iw,irw,isw,switchable}.sh): --wt_layer and --relax_denom
WT_LAYER = {"iw": [0, 0, 1, 1, 1, 0, 0], "irw": [0, 0, 1, 1, 1, 0, 0], "isw": [0, 0, 2, 2, 2, 0, 0],
            "sw": [0, 0, 5, 5, 5, 0, 0]}
RELAX_DENOM = {"irw": 64}
CLASSES = 5


def _randomise_running_statistics(model: nn.Module) -> None:
    """Running statistics away from 0 / 1, so an eval-mode BatchNorm path is really compared."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)


def _whitening_pair(name: str, options: dict | None = None):
    """segbench's ResNet-50 + robustnet-deeplabv3plus with the method built, and RobustNet's network with the same
    weights."""
    torch.manual_seed(0)
    model = create_model("resnet50", "robustnet-deeplabv3plus", num_classes=CLASSES)
    method = build_method(name, options)
    method.build(model)
    _randomise_running_statistics(model)
    reference = rn.WhiteningDeepV3Plus(CLASSES, WT_LAYER[name], relax_denom=RELAX_DENOM.get(name, 0))
    reference.load_state_dict(rn.segbench_state_for_reference(model), strict=True)
    return model, method, reference


def _batch(seed: int = 1, size=(96, 96)):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 3, *size, generator=g)
    return x, torch.randint(0, CLASSES, (2, *size), generator=g)


def _whitening_term(method, model, logits, target) -> torch.Tensor:
    """The whitening loss segbench adds, divided by its weight: the quantity RobustNet's forward returns."""
    terms = method.losses(model, {"out": logits}, Batch(image=None, target=target), 0)
    return terms["whitening"] / method.options["weight"]


@pytest.mark.parametrize("name", ["iw", "irw"])
def test_iw_and_irw_inside_the_network_equal_robustnets(name):
    """Logits, the whitening loss and its gradient with respect to the input. Before the fix the loss read the
    features after the in-place ReLU (IW 0.127 against 0.058 on this kind of batch)."""
    model, method, reference = _whitening_pair(name)
    model.train(), reference.train()
    x, target = _batch()
    ours_x, theirs_x = x.clone().requires_grad_(), x.clone().requires_grad_()
    logits = model(ours_x)["out"]
    loss = _whitening_term(method, model, logits, target)
    ref_logits, ref_loss = reference(theirs_x)
    torch.testing.assert_close(logits, ref_logits, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(loss, ref_loss.squeeze(), rtol=1e-5, atol=1e-7)
    assert loss > 0
    grad, = torch.autograd.grad(loss, ours_x)
    ref_grad, = torch.autograd.grad(ref_loss.sum(), theirs_x)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-4, atol=1e-9)
    # the gradient of the whole objective (logits and loss together) reaches the input the same way
    logits = model(ours_x)["out"]
    total = logits.square().mean() + _whitening_term(method, model, logits, target)
    ref_logits, ref_loss = reference(theirs_x)
    (ref_logits.square().mean() + ref_loss.sum()).backward()
    total.backward()
    _assert_same_gradient(ours_x.grad, theirs_x.grad)


def _assert_same_gradient(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    """Equal to float32 rounding through a ResNet-50 and a decoder: within 1e-3 of the gradient's largest entry."""
    scale = theirs.abs().max().item()
    assert scale > 0
    torch.testing.assert_close(ours, theirs, rtol=1e-3, atol=1e-3 * scale)


def test_the_eval_logits_of_the_whitening_network_equal_robustnets():
    model, _, reference = _whitening_pair("isw")
    x, _ = _batch(2)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x)["out"], reference.eval()(x)[0], rtol=1e-4, atol=1e-5)


def test_isw_masks_after_the_statistics_pass_and_its_loss_equal_robustnets(tmp_path, monkeypatch):
    """The selection pass over the same source images and photometric twins, 2 trials: segbench's masks equal those
    RobustNet's `cal_covstat` pass and CovMatrix_ISW.set_mask_matrix select (kmeans1d, topk, trials ANDed), and the
    ISW loss with them equals RobustNet's."""
    monkeypatch.setattr(synthetic, "SPLIT_SIZES", {"train": 3, "val": 1})
    dataset = build_dataset("sim", "train", tmp_path)
    model, method, reference = _whitening_pair("isw", {"stat_images": 3, "trials": 2})
    run = TrainRun(dataset=dataset, normalize=normalized_tensor, device=torch.device("cpu"), seed=7, iters=10,
                   batch_size=2)
    modules = whitening_modules(model)
    for module, mask in zip(modules, method.select(model, modules, run)):
        module.set_mask(mask.bool())

    reference.eval()
    reference.reset_mask_matrix()
    for trial in range(2):  # train.py: for trial in range(args.trials): validate_for_cov_stat; set_mask_matrix
        rng = np.random.default_rng([7, trial])
        for index in rng.permutation(len(dataset))[:3]:
            image, _ = dataset.load_pair(int(index))
            twin = ISW_TWIN(rng, image)
            with torch.no_grad():
                reference([normalized_tensor(twin)[None], normalized_tensor(image)[None]], cal_covstat=True)
        reference.set_mask_matrix()
    for module, layer in zip(modules, reference.cov_matrix_layer):
        assert torch.equal(module.mask, layer.mask_matrix.bool())
        assert 0 < int(module.mask.sum()) < module.mask.shape[0] * (module.mask.shape[0] - 1) // 2

    model.train(), reference.train()
    x, target = _batch(3)
    ours_x, theirs_x = x.clone().requires_grad_(), x.clone().requires_grad_()
    loss = _whitening_term(method, model, model(ours_x)["out"], target)
    _, ref_loss = reference(theirs_x)
    torch.testing.assert_close(loss, ref_loss.squeeze(), rtol=1e-5, atol=1e-7)
    grad, = torch.autograd.grad(loss, ours_x)
    ref_grad, = torch.autograd.grad(ref_loss.sum(), theirs_x)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-4, atol=1e-9)


def test_sw_inside_the_network_equals_robustnets_and_starts_from_the_imagenet_stem_bn(tmp_path):
    """RobustNet restores the ImageNet state dict into its ResNet with forgiving_state_restore, which loads
    `bn1.weight` and `bn1.bias` into the stem's switchable-whitening layer; segbench loads the same file with
    model.pretrained=PATH, then builds the method. Every backbone tensor then matches, and so do the logits and the
    gradients in training mode (batch statistics) and the logits in eval mode."""
    torch.manual_seed(4)
    imagenet = torchvision.models.resnet50()
    with torch.no_grad():
        for m in imagenet.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5), m.bias.uniform_(-0.2, 0.2)
    path = tmp_path / "resnet50-imagenet.pth"
    torch.save(imagenet.state_dict(), path)

    torch.manual_seed(0)
    model = create_model("resnet50", "robustnet-deeplabv3plus", num_classes=CLASSES, pretrained=path)
    build_method("sw").build(model)
    stem = model.backbone.bn1
    torch.testing.assert_close(stem.weight, imagenet.bn1.weight, rtol=0, atol=0)
    torch.testing.assert_close(stem.bias, imagenet.bn1.bias, rtol=0, atol=0)

    resnet = rn.ResNet50(WT_LAYER["sw"])
    rn.forgiving_state_restore(resnet, imagenet.state_dict())
    reference = rn.WhiteningDeepV3Plus(CLASSES, WT_LAYER["sw"], resnet=resnet)
    ours = rn.segbench_state_for_reference(model)
    theirs = reference.state_dict()
    assert set(ours) == set(theirs)
    backbone = [k for k in theirs if k.startswith(("layer0", "layer1", "layer2", "layer3", "layer4"))]
    for key in backbone:  # what each side loaded from the ImageNet file, or initialised without it
        assert torch.equal(ours[key], theirs[key]), key
    reference.load_state_dict({k: ours[k] for k in theirs}, strict=True)  # the decoder's random init too

    model.train(), reference.train()
    x, _ = _batch(5)
    ours_x, theirs_x = x.clone().requires_grad_(), x.clone().requires_grad_()
    logits, (ref_logits, _) = model(ours_x)["out"], reference(theirs_x)
    torch.testing.assert_close(logits, ref_logits, rtol=1e-4, atol=1e-5)
    logits.square().mean().backward(), ref_logits.square().mean().backward()
    _assert_same_gradient(ours_x.grad, theirs_x.grad)
    for key in ("layer0.1.running_cov", "layer1.2.instance_norm_layer.running_mean"):
        torch.testing.assert_close(rn.segbench_state_for_reference(model)[key], reference.state_dict()[key])
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x)["out"], reference.eval()(x)[0], rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------- the perturbation methods' official placements

def _torchvision_state(model) -> dict:
    """segbench's backbone state under torchvision's names (the same names, without the `backbone.` prefix)."""
    return {k[len("backbone."):]: v for k, v in model.state_dict().items() if k.startswith("backbone.")}


class DasslResNet(nn.Module):
    """Dassl's ResNet.featuremaps with `ms_layers = ["layer1", "layer2", "layer3"]` (resnet*_ms_l123): one MixStyle
    module, applied after layer1, layer2 and layer3."""

    def __init__(self, resnet: nn.Module, mixstyle: nn.Module):
        super().__init__()
        self.resnet, self.mixstyle = resnet, mixstyle
        self.ms_layers = ["layer1", "layer2", "layer3"]

    def forward(self, x):
        r = self.resnet
        x = r.maxpool(r.relu(r.bn1(r.conv1(x))))
        for layer in ("layer1", "layer2", "layer3"):
            x = getattr(r, layer)(x)
            if layer in self.ms_layers:
                x = self.mixstyle(x)
        return r.layer4(x)


def test_mixstyle_sits_where_dasslss_resnet_ms_l123_puts_it():
    torch.manual_seed(0)
    model = create_model("resnet50", "fcn", num_classes=CLASSES, output_stride=32)
    build_method("mixstyle", {"p": 1.0}).build(model)
    resnet = torchvision.models.resnet50()
    resnet.load_state_dict(_torchvision_state(model), strict=False)
    reference = DasslResNet(resnet, MixStyle(p=1.0, alpha=0.1)).train()
    model.train()
    x, _ = _batch(6, (64, 64))
    torch.manual_seed(11)
    ours = model.backbone(x)[-1]
    torch.manual_seed(11)
    theirs = reference(x)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)
    torch.manual_seed(12)  # and the draws do change it: the comparison is not of two unperturbed networks
    assert not torch.allclose(model.backbone(x)[-1], ours)


class DSUResNet(nn.Module):
    """DSU's segmentation ResNet (semantic-segmentation/core/models/resnet.py): the one perturbation module is
    registered before conv1, and forward applies it at the positions in `pos` (0: after conv1, before bn1; 1: after
    max pooling; 2-5: after layer1-4). Built from torchvision's ResNet-50 with replace_stride_with_dilation
    [False, True, True], as its feature extractor builds it."""

    def __init__(self, resnet: nn.Module, perturbation: nn.Module, pos=(0, 1, 2, 3, 4, 5)):
        super().__init__()
        self.perbutation = perturbation  # the official name and registration order: first child
        for name in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"):
            setattr(self, name, getattr(resnet, name))
        self.pos = list(pos)

    def forward(self, x):
        x = self.conv1(x)
        if 0 in self.pos:
            x = self.perbutation(x)
        x = self.maxpool(self.relu(self.bn1(x)))
        for position, layer in ((1, None), (2, self.layer1), (3, self.layer2), (4, self.layer3), (5, self.layer4)):
            if layer is not None:
                x = layer(x)
            if position in self.pos:
                x = self.perbutation(x)
        return x


def _dsu_pair(places=None):
    torch.manual_seed(0)
    model = create_model("resnet50", "fcn", num_classes=CLASSES, output_stride=8)
    build_method("dsu", {"p": 0.5, **({"places": places} if places else {})}).build(model)
    resnet = torchvision.models.resnet50(replace_stride_with_dilation=[False, True, True])
    resnet.load_state_dict(_torchvision_state(model), strict=False)
    reference = DSUResNet(resnet, DistributionUncertainty(p=0.5))
    return model.train(), reference.train()


def test_dsu_default_places_are_the_six_positions_of_dsus_resnet_forward():
    model, reference = _dsu_pair()
    x, _ = _batch(7, (64, 64))
    for seed in range(4):  # p = 0.5: different seeds perturb different subsets of the six positions
        torch.manual_seed(seed)
        ours = model.backbone(x)[-1]
        torch.manual_seed(seed)
        torch.testing.assert_close(ours, reference(x), rtol=1e-4, atol=1e-5)


def test_dsu_input_place_is_what_the_official_segmentation_code_runs():
    """The official feature extractor wraps the ResNet in IntermediateLayerGetter, which calls its children in order
    (the perturbation first, on the image) and never calls ResNet.forward."""
    model, reference = _dsu_pair(["input"])
    getter = IntermediateLayerGetter(reference, return_layers={"layer4": "out"})
    x, _ = _batch(8, (64, 64))
    perturbed = 0
    for seed in range(4):
        torch.manual_seed(seed)
        ours = model.backbone(x)[-1]
        torch.manual_seed(seed)
        torch.testing.assert_close(ours, getter(x)["out"], rtol=1e-4, atol=1e-5)
        with torch.no_grad():
            perturbed += not torch.allclose(ours, model.eval().backbone(x)[-1])
        model.train()
    assert perturbed > 0


class ShadeDeepV3Plus(rn.ReferenceDeepV3Plus):
    """SHADE's DeepV3Plus.forward with style_hallucination=True: layer0, the hallucination module (its output and the
    hallucinated copy concatenated on the batch), layer1-4 (layer4 kept in f_style for the retrospection loss), the
    RobustNet decoder (SHADE's network/deepv3.py is RobustNet's D16 DeepV3Plus)."""

    def __init__(self, num_classes, shm):
        super().__init__(num_classes, 16)
        self.SHM = shm

    def forward(self, x):
        size = x.shape[2:]
        x = self.SHM(self.layer0(x))  # segbench's module returns torch.cat((x, x_style)) itself
        low_level = self.layer1(x)
        layer4 = self.layer4(self.layer3(self.layer2(low_level)))
        return self.decode(layer4, low_level, size), layer4


def test_shade_hallucinates_after_layer0_and_keeps_layer4_as_shades_network_does():
    torch.manual_seed(0)
    model = create_model("resnet50", "robustnet-deeplabv3plus", num_classes=CLASSES)
    method = build_method("shade", {"basis_styles": 4})
    method.build(model)
    hallucination = method.hallucination(model)
    hallucination.set_basis(torch.rand(4, 64) - 0.5, torch.rand(4, 64) + 0.5)
    reference = ShadeDeepV3Plus(CLASSES, StyleHallucination(64, 4))
    reference.load_state_dict({**rn.segbench_state_for_reference(model),
                               "SHM.basis_mean": hallucination.basis_mean, "SHM.basis_std": hallucination.basis_std})
    model.train(), reference.train()
    x, _ = _batch(9, (64, 64))
    torch.manual_seed(3)
    logits = model(x)["out"]
    kept = method._tap.layer4
    torch.manual_seed(3)
    ref_logits, ref_layer4 = reference(x)
    assert logits.shape[0] == 4
    torch.testing.assert_close(logits, ref_logits, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(kept, ref_layer4, rtol=1e-4, atol=1e-5)
    assert torch.equal(method._tap.input, x)


def test_shades_frozen_backbone_is_the_plain_imagenet_one():
    """The retrospection target is layer4 of the ImageNet backbone on the original images: the frozen copy has no
    hallucination module and never trains."""
    torch.manual_seed(0)
    model = create_model("resnet50", "robustnet-deeplabv3plus", num_classes=CLASSES)
    plain = copy.deepcopy(model.backbone)
    method = build_method("shade")
    method.build(model)
    x, _ = _batch(10, (64, 64))
    with torch.no_grad():
        torch.testing.assert_close(method.frozen_backbone(x)[-1], plain.eval()(x)[-1])
    assert not any(p.requires_grad for p in method.frozen_backbone.parameters())
    assert not method.frozen_backbone.training
