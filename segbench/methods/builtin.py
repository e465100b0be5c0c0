"""segbench's own methods, each with the defaults of its official GTA5 -> Cityscapes setting.

Each class is glue: the modules and functions it places are plain PyTorch in this package (whitening.py,
switchable.py, mixstyle.py, dsu.py, perturbation.py, pasta.py, shade.py), usable in any network.
"""
from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .. import distributed as dist_utils
from ..data.multisource import source_datasets
from ..data.transforms import Photometric
from .base import METHODS, Batch, Method, MethodError, OptionError, TrainRun
from .dsu import DistributionUncertainty
from .mixstyle import MIX_MODES, MixStyle
from .pasta import PASTA, pasta
from .perturbation import NormalizationPerturbation
from .places import insert_after, place_channels, place_module, resnet_of
from .shade import (RETROSPECTION_CLASSES, BackboneTap, StyleHallucination, basis_styles, features_at, instance_style,
                    retrospection_loss, retrospection_mask, style_consistency_loss)
from .switchable import SwitchWhiten2d
from .whitening import CovarianceVariance, InstanceWhitening, irw_margin, isw_mask

#: RobustNet's R50 scripts: `--wt_layer 0 0 c c c 0 0` = the stem norm and the end of layer1 and layer2
ROBUSTNET_PLACES = ["stem.norm", "layer1.post_add", "layer2.post_add"]


def whitening_modules(model: nn.Module) -> list[InstanceWhitening]:
    return [m for m in model.modules() if isinstance(m, InstanceWhitening)]


class _Whitening(Method):
    """IW / IRW / ISW (Choi et al., "RobustNet: Improving Domain Generalization in Urban-Scene Segmentation via
    Instance Selective Whitening", CVPR 2021): InstanceNorm without affine at `places`, and a loss pushing the
    selected entries of each IN output's covariance to zero, weighted by `weight` (shachoi/RobustNet
    network/Resnet.py, network/instance_whitening.py, train.py). The loss is the mean over the whitened places."""

    code = "shachoi/RobustNet network/instance_whitening.py, network/cov_settings.py, network/Resnet.py"
    relaxed = False  # IRW: margin N_M // 64
    revision = 2  # 2: the loss reads the InstanceNorm output, not the in-place ReLU's (places.py)

    def build(self, model: nn.Module) -> None:
        for place in self.options["places"]:
            place_module(model, place, InstanceWhitening(place_channels(model, place)))

    def active(self, module: InstanceWhitening) -> bool:
        return True

    def losses(self, model: nn.Module, outputs: dict, batch: Batch, iteration: int) -> dict[str, torch.Tensor]:
        modules = [m for m in whitening_modules(model) if self.active(m)]
        if not modules:
            return {}
        terms = [m.whitening_loss(irw_margin(m.mask.shape[0]) if self.relaxed else 0.0) for m in modules]
        return {"whitening": self.options["weight"] * torch.stack(terms).mean()}


@METHODS.register("iw")
class InstanceWhiteningMethod(_Whitening):
    name = "iw"
    paper = "Choi et al., RobustNet, CVPR 2021 (IW: instance whitening of every covariance entry)"
    defaults = {"weight": 0.8, "places": ROBUSTNET_PLACES}


@METHODS.register("irw")
class InstanceRelaxedWhiteningMethod(_Whitening):
    name = "irw"
    paper = "Choi et al., RobustNet, CVPR 2021 (IRW: instance relaxed whitening, margin N_M // 64)"
    defaults = {"weight": 0.6, "places": ROBUSTNET_PLACES}
    relaxed = True


#: the photometric twin of ISW's statistics pass: ColorJitter(0.8, 0.8, 0.8, 0.3) always, then RobustNet's blur
#: (shachoi/RobustNet train.py / datasets: the `extra_transform` of the covariance statistics loader)
ISW_TWIN = Photometric(jitter_p=1.0, brightness=0.8, contrast=0.8, saturation=0.8, hue=0.3, blur_sigma=(0.15, 1.3))


@METHODS.register("isw")
class InstanceSelectiveWhiteningMethod(_Whitening):
    """ISW: the whitening loss only on the covariance entries that vary most under photometric change.

    The entries are chosen once, after `stat_epochs` epochs of training (an epoch = one pass over the source at the
    global batch). The default, 6, is RobustNet's `--cov_stat_epoch 5`: its epochs count from 0, and the pass runs
    after `train(epoch=5)` returns, i.e. after the sixth epoch; the loss applies from epoch 6 on (`curr_epoch > 5`,
    train.py). The pass: in eval mode, without gradients, the first `stat_images` images of a seeded permutation of the
    source, each at full resolution with its photometric twin (ISW_TWIN); per whitened place, the variance over the
    pair of each covariance entry, averaged over the images; `isw_mask` (1-D k-means, `clusters`) per trial, masks of
    `trials` trials intersected. Before that iteration the IN layers are on and the loss is off, as in RobustNet. The
    masks are buffers of the IN modules, so checkpoints carry them and a resumed run does not redo the pass.

    One difference from the official code, on purpose: RobustNet lets each GPU select a mask from its own images and
    never syncs them, so its processes train with different masks; here every process runs the same seeded pass and
    rank 0's masks are broadcast, so N processes train the model one process would."""

    name = "isw"
    paper = "Choi et al., RobustNet, CVPR 2021 (ISW: instance selective whitening)"
    defaults = {"weight": 0.6, "places": ROBUSTNET_PLACES, "stat_epochs": 6.0, "stat_images": 500, "trials": 10,
                "clusters": 3}

    def __init__(self, **options):
        super().__init__(**options)
        for key in ("trials", "stat_images"):  # 0 would select every entry (trials) or none (images), silently
            if not self.options[key] >= 1:
                raise OptionError(f"method.isw.{key}={self.options[key]!r}: the selection pass needs at least 1 "
                                  f"(official: {self.defaults[key]})")

    def active(self, module: InstanceWhitening) -> bool:
        return bool(module.mask_selected)

    def selection_iteration(self, run: TrainRun) -> int:
        """The iteration at whose start the pass runs: after `stat_epochs` epochs."""
        at = round(self.options["stat_epochs"] * len(run.dataset) / run.batch_size)
        if at >= run.iters:
            raise MethodError(f"isw selects its covariance entries after {self.options['stat_epochs']} epochs = "
                              f"iteration {at} ({len(run.dataset)} images at batch {run.batch_size}), but training "
                              f"stops at {run.iters}: lower method.isw.stat_epochs or raise train.iters")
        return at

    def before_step(self, model: nn.Module, iteration: int, run: TrainRun) -> None:
        modules = whitening_modules(model)
        if iteration < self.selection_iteration(run) or all(bool(m.mask_selected) for m in modules):
            return
        masks = self.select(model, modules, run)
        for module, mask in zip(modules, masks):
            if dist_utils.is_dist():  # every rank computed it; rank 0's is the one all use
                torch.distributed.broadcast(mask, 0)
            module.set_mask(mask.bool())

    @torch.no_grad()
    def select(self, model: nn.Module, modules: list[InstanceWhitening], run: TrainRun) -> list[torch.Tensor]:
        was_training = model.training
        model.eval()
        captured: dict[int, torch.Tensor] = {}
        hooks = [m.register_forward_hook(lambda mod, _i, out, k=k: captured.__setitem__(k, out))
                 for k, m in enumerate(modules)]
        count = min(self.options["stat_images"], len(run.dataset))
        bar = tqdm(total=self.options["trials"] * count, desc="  isw: covariance statistics", unit="img",
                   dynamic_ncols=True, disable=not dist_utils.is_main(), leave=False)
        try:
            masks = [torch.ones_like(m.mask, dtype=torch.bool) for m in modules]
            for trial in range(self.options["trials"]):
                rng = np.random.default_rng([run.seed, trial])
                order = rng.permutation(len(run.dataset))[:count]
                stats = [CovarianceVariance(m.mask.shape[0]) for m in modules]
                for index in order:
                    image, _ = run.dataset.load_pair(int(index))
                    twin = ISW_TWIN(rng, image)
                    batch = torch.stack([run.normalize(image), run.normalize(twin)]).to(run.device)
                    model(batch)
                    for k, stat in enumerate(stats):
                        stat.update(captured[k][:1], captured[k][1:])
                    bar.update(1)
                for k, stat in enumerate(stats):
                    masks[k] &= isw_mask(stat.variance(), clusters=self.options["clusters"]).to(masks[k].device)
        finally:
            bar.close()
            for h in hooks:
                h.remove()
            model.train(was_training)
        return masks


@METHODS.register("sw")
class SwitchableWhiteningMethod(Method):
    """Switchable Whitening (Pan et al., ICCV 2019) in place of the norms RobustNet's `--wt_layer 0 0 5 5 5 0 0` puts
    it at: the stem BN and post-addition at the end of layer1 and layer2; no whitening loss.

    The SW layer in place of the stem BN starts from that BN's weight and bias, as in RobustNet: its layer is named
    `bn1` there, and `forgiving_state_restore` (network/mynn.py) loads the ImageNet `bn1.weight` and `bn1.bias` into
    it (the running statistics differ in shape and are skipped). The post-addition layers start at 1 and 0."""

    name = "sw"
    paper = "Pan et al., Switchable Whitening for Deep Representation Learning, ICCV 2019 (RobustNet's SW row)"
    code = "XingangPan/Switchable-Whitening; shachoi/RobustNet network/sync_switchwhiten.py, network/Resnet.py"
    defaults = {"places": ROBUSTNET_PLACES, "num_pergroup": 16, "T": 5}
    revision = 2  # 2: the stem layer inherits the stem BN's affine parameters

    def build(self, model: nn.Module) -> None:
        for place in self.options["places"]:
            replaced = resnet_of(model).bn1 if place == "stem.norm" else None
            # synchronised across processes, as RobustNet's SyncSwitchWhiten2d
            layer = place_module(model, place, SwitchWhiten2d(place_channels(model, place), sync=dist_utils.is_dist(),
                                                              num_pergroup=self.options["num_pergroup"],
                                                              T=self.options["T"]))
            if replaced is not None and replaced.affine and layer.affine:
                with torch.no_grad():
                    layer.weight.copy_(replaced.weight)
                    layer.bias.copy_(replaced.bias)


class _AfterOutputs(Method):
    """A feature-statistics perturbation inserted after each output place in `places` (training only)."""

    def make(self) -> nn.Module:
        raise NotImplementedError

    def build(self, model: nn.Module) -> None:
        for place in self.options["places"]:
            insert_after(model, place, self.make())


@METHODS.register("mixstyle")
class MixStyleMethod(_AfterOutputs):
    """MixStyle after `places`. `mix: crossdomain` mixes each sample with one of another source part of a
    multi-source study (`gta5+synthia->...`), drawn from the domains `before_forward` hands the layers
    (`mixstyle.labelled_crossdomain_partners`): the stream draws each sample's part by weight, so batches are not the
    two halves the official layer assumes. A single-source study has one domain and is refused before any step."""

    name = "mixstyle"
    paper = "Zhou et al., Domain Generalization with MixStyle, ICLR 2021"
    code = "KaiyangZhou/mixstyle-release; Dassl dassl/modeling/ops/mixstyle.py, dassl/engine/dg/domain_mix.py"
    defaults = {"p": 0.5, "alpha": 0.1, "mix": "random", "places": ["layer1", "layer2", "layer3"]}

    def build(self, model: nn.Module) -> None:
        if self.options["mix"] not in MIX_MODES:
            raise OptionError(f"method.mixstyle.mix={self.options['mix']!r} is unknown; use one of {MIX_MODES}")
        super().build(model)

    def make(self) -> nn.Module:
        return MixStyle(p=self.options["p"], alpha=self.options["alpha"], mix=self.options["mix"])

    def source_problem(self, sources: list[str]) -> str | None:
        if self.options["mix"] == "crossdomain" and len(sources) < 2:
            return (f"method.mixstyle.mix='crossdomain' mixes styles across source domains, and {'+'.join(sources)} "
                    "is one domain: train on several sources (a spec like gta5+synthia->cityscapes) or use mix "
                    "'random'")
        return None

    def before_step(self, model: nn.Module, iteration: int, run: TrainRun) -> None:
        # also here, for train() called directly (a study's validation asks source_problem first)
        names = [getattr(d, "dataset_name", type(d).__name__) for d in source_datasets(run.dataset)]
        problem = self.source_problem(names)
        if problem:
            raise MethodError(problem)

    def before_forward(self, model: nn.Module, batch: Batch) -> None:
        for module in model.modules():
            if isinstance(module, MixStyle):
                module.domains = batch.domains


#: DSU's positions 0-5 (lixiaotong97/DSU dsu.py UResNet.featuremaps, semantic-segmentation/core/models/resnet.py
#: ResNet.forward): after conv1 (before bn1), after max pooling, after layer1, 2, 3 and 4
DSU_PLACES = ["conv1", "maxpool", "layer1", "layer2", "layer3", "layer4"]


@METHODS.register("dsu")
class DSUMethod(_AfterOutputs):
    """DSU at the six positions its code defines (`DSU_PLACES`, the default): what the paper intends.

    The official segmentation run (semantic-segmentation/configs/deeplabv2_ur101_src.yaml, `POS: [0,1,2,3,4,5]`)
    does not apply them: its backbone goes through torchvision's IntermediateLayerGetter
    (core/models/feature_extractor.py), which calls the ResNet's children in registration order and skips
    ResNet.forward, so the one perturbation module, registered before conv1, runs once, on the input image. That
    reading is `--set 'method.dsu.places=[input]'`. The same config also freezes BatchNorm (`FREEZE_BN: True`), which
    segbench does not: that is the recipe's choice, not the method's."""

    name = "dsu"
    paper = "Li et al., Uncertainty Modeling for Out-of-Distribution Generalization, ICLR 2022"
    code = "lixiaotong97/DSU dsu.py, semantic-segmentation/core/models/resnet.py"
    defaults = {"p": 0.5, "factor": 1.0, "places": DSU_PLACES}

    def make(self) -> nn.Module:
        return DistributionUncertainty(p=self.options["p"], factor=self.options["factor"])


@METHODS.register("np")
class NormalizationPerturbationMethod(_AfterOutputs):
    """Normalization Perturbation after the shallow stages. The paper says "shallow layers" without code; segbench
    perturbs the stem output and layer1's (`places`), with the module's default probability: both are options."""

    name = "np"
    paper = "Fan et al., Normalization Perturbation, ICLR 2023"
    code = "no official code published"
    defaults = {"std": 0.75, "p": 0.5, "places": ["stem", "layer1"]}

    def make(self) -> nn.Module:
        return NormalizationPerturbation(std=self.options["std"], p=self.options["p"])


@METHODS.register("pasta")
class PASTAMethod(Method):
    """PASTA on every training image at full resolution, before crop, flip and photometric augmentation, as
    ksarangmath/PASTA_robustnet applies it inside RobustNet's pipeline (not in ISW's pass, not at evaluation)."""

    name = "pasta"
    paper = "Chattopadhyay et al., PASTA: Proportional Amplitude Spectrum Training Augmentation, ICCV 2023"
    code = "prithv1/PASTA; ksarangmath/PASTA_robustnet datasets/pasta.py"
    defaults = {"alpha": 3.0, "k": 2, "beta": 0.25}

    def __init__(self, **options):
        super().__init__(**options)
        PASTA(**self.options)  # its checks, here and not first in a data-loader worker

    def transform_image(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return pasta(image, rng, alpha=self.options["alpha"], k=self.options["k"], beta=self.options["beta"])



@METHODS.register("shade")
class ShadeMethod(Method):
    """SHADE: style hallucination after the stem's max pooling (the official `layer0` = conv1-bn1-relu-maxpool), a
    style consistency loss between the predictions for the original and the hallucinated halves, and a retrospection
    loss pulling layer4 towards a frozen copy of the backbone's ImageNet weights on thing-class cells
    (HeliosZhao/SHADE network/deepv3.py, network/style_hallucination.py, loss.py, train.py, utils/fps.py).

    Defaults: the official GTA5 runs (scripts/train_r50os16_gtav.sh, which sets none of these, so train.py's argument
    defaults): 64 basis styles, concentration 0.0156, basis recomputed every 3 epochs while the iteration is below
    0.95 x iterations (from iteration 0, on the ImageNet model), consistency weight 10 (`--sc_weight`), retrospection
    on layer4 with weight 1 (`--rc_layers layer4 --rc_weights 1.0`; loss.py's `imnet_feature_dist_lambda` = 0.005 is
    never used). The frozen copy is deep-copied from the backbone in `build` and lives on this object only: not in the
    model's parameters or checkpoints, in eval mode, without gradients.

    The basis pass, at iteration round(k x basis_epochs x len(source) / global batch) for k = 0, 1, ...: in eval
    mode, without gradients, each source image's per-channel (mean, sqrt(var + 1e-7)) at `place`; farthest point
    sampling over [mean; std] from a start index drawn from a torch.Generator seeded by (seed, iteration). It
    neither reads nor advances the global RNG, so a resumed run repeats it exactly; the basis is a buffer of the
    module, so checkpoints carry it.

    Where this differs from the official code, on purpose:
    - the pass reads each image at full resolution without augmentation (`TrainRun.dataset.load_pair`), one at a
      time; the official pass runs the training loader with class-uniform sampling off, i.e. random scale 0.5-2,
      768 crop, flip, colour jitter and blur, in batches (BatchNorm is in eval mode, so batching changes nothing).
      `basis_images` > 0 caps the pass at that many images of a seeded permutation (0 = all, as official);
    - the FPS start index comes from that seeded generator (official: numpy's global `np.random.randint`), and the
      distances are float64 on the CPU (official: float32 on the GPU);
    - under DDP every rank runs the same pass and rank 0's basis is broadcast (official: each rank gathers all
      ranks' styles and runs FPS with its own numpy state);
    - an epoch is len(source) / global batch iterations (official: the class-uniform loader's length);
    - the retrospection mask's cells are the backbone's output stride (official: label width // feature width, the
      same when the crop divides it); a label smaller than the padded input is padded with 255.
    The retrospection loss compares both halves of the batch with the frozen model's features of the originals,
    duplicated, as train.py does. It needs ImageNet weights: with `model.pretrained` null, the first step fails with
    the fix (`retrospection=0` trains without it)."""

    name = "shade"
    paper = ("Zhao et al., Style-Hallucinated Dual Consistency Learning for Domain Generalized Semantic "
             "Segmentation, ECCV 2022")
    code = "HeliosZhao/SHADE network/style_hallucination.py, loss.py, train.py, utils/fps.py"
    defaults = {"place": "maxpool", "basis_styles": 64, "concentration": 0.0156, "basis_epochs": 3.0,
                "basis_until": 0.95, "basis_images": 0, "consistency": 10.0, "retrospection": 1.0,
                "retrospection_classes": list(RETROSPECTION_CLASSES), "retrospection_ratio": 0.75}

    def __init__(self, **options):
        super().__init__(**options)
        if not self.options["basis_epochs"] > 0:
            raise OptionError(f"method.shade.basis_epochs={self.options['basis_epochs']!r}: the basis is recomputed "
                              "every that many epochs, so it must be > 0 (official: 3)")
        if self.options["basis_images"] < 0:
            raise OptionError(f"method.shade.basis_images={self.options['basis_images']!r}: give a count of images, "
                              "or 0 for all of them (official)")
        self.frozen_backbone: nn.Module | None = None  # the ImageNet backbone, outside the model (see build)
        self._tap = BackboneTap()
        self._stride: int | None = None

    def build(self, model: nn.Module) -> None:
        resnet = resnet_of(model)
        if self.options["retrospection"] > 0:
            # copied before the hallucination module is hooked in: the frozen copy is the plain backbone
            self.frozen_backbone = copy.deepcopy(resnet).eval().requires_grad_(False)
            resnet.conv1.register_forward_pre_hook(self._tap.keep_input)
            resnet.layer4.register_forward_hook(self._tap.keep_layer4)
            stride = getattr(resnet, "output_stride", None)
            self._stride = stride if isinstance(stride, int) else None
        place = self.options["place"]
        insert_after(model, place, StyleHallucination(place_channels(model, place), self.options["basis_styles"],
                                                      self.options["concentration"]))

    def hallucination(self, model: nn.Module) -> StyleHallucination:
        modules = getattr(model, "method_modules", None)
        module = modules[self.options["place"]] if modules is not None and self.options["place"] in modules else None
        if not isinstance(module, StyleHallucination):
            raise MethodError("this model holds no StyleHallucination module: call the method's build(model) first")
        return module

    def basis_due(self, iteration: int, run: TrainRun) -> bool:
        """True at the start of every `basis_epochs`-th epoch while iteration < basis_until x iterations."""
        if iteration >= self.options["basis_until"] * run.iters:
            return False
        period = self.options["basis_epochs"] * len(run.dataset) / run.batch_size
        k = int(iteration // period)
        return any(round(j * period) == iteration for j in (k - 1, k, k + 1) if j >= 0)

    def before_step(self, model: nn.Module, iteration: int, run: TrainRun) -> None:
        if self.options["retrospection"] > 0 and run.pretrained is None:
            raise MethodError(f"method.shade.retrospection={self.options['retrospection']} keeps layer4 close to the "
                              "backbone's ImageNet weights, but this model starts from model.pretrained=null: use "
                              "`--set model.pretrained=imagenet`, or train without it: "
                              "`--set method.shade.retrospection=0`")
        if not self.basis_due(iteration, run):
            return
        module = self.hallucination(model)
        mean, std = self.compute_basis(model, iteration, run)
        module.set_basis(mean, std)
        if dist_utils.is_dist():  # every rank computed it; rank 0's is the one all use
            torch.distributed.broadcast(module.basis_mean, 0)
            torch.distributed.broadcast(module.basis_std, 0)

    @torch.no_grad()
    def compute_basis(self, model: nn.Module, iteration: int, run: TrainRun) -> tuple[torch.Tensor, torch.Tensor]:
        """The basis styles (mean, std), K x C each, from the source images' styles at `place` (eval mode)."""
        resnet, place = resnet_of(model), self.options["place"]
        total, cap = len(run.dataset), self.options["basis_images"]
        order = (np.random.default_rng([run.seed, iteration]).permutation(total)[:cap] if 0 < cap < total
                 else np.arange(total))
        was_training = model.training
        model.eval()
        means, stds = [], []
        bar = tqdm(total=len(order), desc="  shade: basis styles", unit="img", dynamic_ncols=True,
                   disable=not dist_utils.is_main(), leave=False)
        try:
            for index in order:
                image, _ = run.dataset.load_pair(int(index))
                features = features_at(resnet, place, run.normalize(image)[None].to(run.device)).double()
                mean, std = instance_style(features)
                means.append(mean.cpu())
                stds.append(std.cpu())
                bar.update(1)
        finally:
            bar.close()
            model.train(was_training)
        seed = int(np.random.SeedSequence([run.seed, iteration]).generate_state(1)[0])
        start = int(torch.randint(len(order), (1,), generator=torch.Generator().manual_seed(seed)))
        mean, std = basis_styles(torch.cat(means), torch.cat(stds), self.options["basis_styles"], start)
        return mean.float(), std.float()

    def losses(self, model: nn.Module, outputs: dict, batch: Batch, iteration: int) -> dict[str, torch.Tensor]:
        logits, n = outputs["out"], batch.target.shape[0]
        if logits.shape[0] != 2 * n:
            raise MethodError(f"shade expects predictions for the {n} images and their {n} hallucinated copies, got "
                              f"{logits.shape[0]}: is the StyleHallucination module in training mode?")
        terms = {}
        if self.options["consistency"] > 0:
            terms["style_consistency"] = self.options["consistency"] * style_consistency_loss(logits[:n], logits[n:])
        if self.options["retrospection"] > 0:
            terms["retrospection"] = self.options["retrospection"] * self.retrospection(logits.shape[1], batch)
        self._tap.clear()
        return terms

    def retrospection(self, num_classes: int, batch: Batch) -> torch.Tensor:
        images, features = self._tap.input, self._tap.layer4
        if images is None or features is None:
            raise MethodError("shade's retrospection saw no training forward of the backbone this step: build the "
                              "method on the model that is trained")
        frozen = self.frozen_backbone
        if next(frozen.parameters()).device != images.device:
            frozen.to(images.device)  # first use: built on the CPU before the model moved
        with torch.no_grad():
            reference = features_at(frozen, "layer4", images)
        copies = features.shape[0] // reference.shape[0]
        stride = self._stride or batch.target.shape[-1] // features.shape[-1]
        mask = retrospection_mask(batch.target, features.shape[-2:], stride, num_classes,
                                  self.options["retrospection_classes"], self.options["retrospection_ratio"])
        return retrospection_loss(features, reference.repeat(copies, 1, 1, 1), mask.repeat(copies, 1, 1))
