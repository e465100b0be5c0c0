"""RobustNet's network rebuilt from its source, for tests that compare segbench's against it (same weights, same
batch): shachoi/RobustNet `network/deepv3.py` (DeepV3Plus: the decoder, the `wt_layer` forward that collects the
whitened features, the `cal_covstat` pass), `network/Resnet.py` (ResNet and Bottleneck with their whitening slots:
codes 1/2 IW/ISW, 3/4 IN, 5 SW; `ReLU(inplace=False)` after IW/ISW), `network/instance_whitening.py`,
`network/cov_settings.py` (CovMatrix_IRW / CovMatrix_ISW), `network/switchwhiten.py` (single-process SW),
`network/mynn.py` (Upsample, initialize_weights, forgiving_state_restore) and `train.py` (the selection loop).

Typed from the official files, not from segbench: the point is that nothing here shares code with what it checks.
The `.cuda()` calls and printing are left out; kmeans1d is the package RobustNet calls.
"""
from __future__ import annotations

import kmeans1d
import torch
import torch.nn.functional as F
import torchvision
from torch import nn


def robustnet_upsample(x, size):  # mynn.Upsample
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


def cbr(cin, cout, k, dilation=1):
    return [nn.Conv2d(cin, cout, k, padding=dilation * (k // 2), dilation=dilation, bias=False), nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True)]


class ReferenceASPP(nn.Module):
    def __init__(self, in_dim, output_stride, rates=(6, 12, 18)):
        super().__init__()
        rates = {8: [2 * r for r in rates], 16: list(rates), 32: [r // 2 for r in rates]}[output_stride]
        self.features = nn.ModuleList([nn.Sequential(*cbr(in_dim, 256, 1))] +
                                      [nn.Sequential(*cbr(in_dim, 256, 3, r)) for r in rates])
        self.img_pooling = nn.AdaptiveAvgPool2d(1)
        self.img_conv = nn.Sequential(*cbr(in_dim, 256, 1))

    def forward(self, x):
        out = robustnet_upsample(self.img_conv(self.img_pooling(x)), x.shape[2:])
        for f in self.features:
            out = torch.cat((out, f(x)), 1)
        return out


def dilate_like_robustnet(layers: dict[str, nn.Module], output_stride: int) -> None:
    """DeepV3Plus's `variant` loop: every block of a dilated stage gets the dilation on conv2, stride 1."""
    dilate = {16: {"layer4": 2}, 8: {"layer3": 2, "layer4": 4}, 32: {}}[output_stride]
    for layer, d in dilate.items():
        for n, m in layers[layer].named_modules():
            if "conv2" in n:
                m.dilation, m.padding, m.stride = (d, d), (d, d), (1, 1)
            elif "downsample.0" in n:
                m.stride = (1, 1)


class ReferenceDecoder(nn.Module):
    """DeepV3Plus's ASPP and decoder (aspp, bot_fine, bot_aspp, final1, final2)."""

    def __init__(self, num_classes, output_stride):
        super().__init__()
        self.aspp = ReferenceASPP(2048, output_stride)
        self.bot_fine = nn.Sequential(*cbr(256, 48, 1))
        self.bot_aspp = nn.Sequential(*cbr(1280, 256, 1))
        self.final1 = nn.Sequential(*cbr(304, 256, 3), *cbr(256, 256, 3))
        self.final2 = nn.Sequential(nn.Conv2d(256, num_classes, 1, bias=True))

    def decode(self, x_deep, low_level, size):
        dec0_up = robustnet_upsample(self.bot_aspp(self.aspp(x_deep)), low_level.shape[2:])
        dec0 = torch.cat([self.bot_fine(low_level), dec0_up], 1)
        return robustnet_upsample(self.final2(self.final1(dec0)), size)


class ReferenceDeepV3Plus(ReferenceDecoder):
    """torchvision's ResNet-50 as RobustNet's `variant` loop leaves it, and RobustNet's decoder."""

    def __init__(self, num_classes, output_stride):
        super().__init__(num_classes, output_stride)
        resnet = torchvision.models.resnet50()
        self.layer0 = nn.Sequential(resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool)
        self.layer1, self.layer2, self.layer3, self.layer4 = resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4
        dilate_like_robustnet({"layer3": self.layer3, "layer4": self.layer4}, output_stride)

    def forward(self, x):
        low_level = self.layer1(self.layer0(x))
        return self.decode(self.layer4(self.layer3(self.layer2(low_level))), low_level, x.shape[2:])


def segbench_state_for_reference(model) -> dict:
    """segbench's keys in RobustNet's names: the backbone's are torchvision's (the stem under layer0, a post-addition
    slot `IN` as `instance_norm_layer`), the head's RobustNet's own. segbench's InstanceWhitening keeps its mask as
    buffers, which RobustNet keeps outside the network (CovMatrix_*): they are left out."""
    state = {}
    for key, value in model.state_dict().items():
        if key.startswith("backbone."):
            key = key[len("backbone."):]
            for stem, ref in (("conv1.", "layer0.0."), ("bn1.", "layer0.1.")):
                key = ref + key[len(stem):] if key.startswith(stem) else key
            key = key.replace(".IN.", ".instance_norm_layer.")
            if key.endswith((".mask", ".mask_selected")):
                continue
        elif key.startswith("head."):
            key = key[len("head."):]
        else:
            continue  # an aux head: RobustNet's dsn is not compared here
        state[key] = value
    return state


# ---------------------------------------------------------------- whitening slots (network/Resnet.py, wt_layer codes)

class InstanceWhitening(nn.Module):  # network/instance_whitening.py
    def __init__(self, dim):
        super().__init__()
        self.instance_standardization = nn.InstanceNorm2d(dim, affine=False)

    def forward(self, x):
        x = self.instance_standardization(x)
        w = x
        return x, w


def get_covariance_matrix(f_map, eye=None):
    eps = 1e-5
    b, c, h, w = f_map.shape
    hw = h * w
    if eye is None:
        eye = torch.eye(c)
    f_map = f_map.contiguous().view(b, c, -1)
    f_cor = torch.bmm(f_map, f_map.transpose(1, 2)).div(hw - 1) + (eps * eye)
    return f_cor, b


def instance_whitening_loss(f_map, eye, mask_matrix, margin, num_remove_cov):
    f_cor, b = get_covariance_matrix(f_map, eye=eye)
    f_cor_masked = f_cor * mask_matrix
    off_diag_sum = torch.sum(torch.abs(f_cor_masked), dim=(1, 2), keepdim=True) - margin
    loss = torch.clamp(torch.div(off_diag_sum, num_remove_cov), min=0)
    return torch.sum(loss) / b


class SwitchWhiten2d(nn.Module):
    """network/switchwhiten.py, sw_type 2 (BW + IW), as RobustNet builds it (num_pergroup 16, T 5, eps 1e-5,
    momentum 0.99); single process (SyncSwitchWhiten2d's all-reduces are identities on one process)."""

    def __init__(self, num_features, num_pergroup=16, T=5, eps=1e-5, momentum=0.99):
        super().__init__()
        self.num_features, self.num_pergroup = num_features, num_pergroup
        self.num_groups = num_features // num_pergroup
        self.T, self.eps, self.momentum = T, eps, momentum
        self.sw_mean_weight = nn.Parameter(torch.ones(2))
        self.sw_var_weight = nn.Parameter(torch.ones(2))
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(self.num_groups, num_pergroup, 1))
        self.register_buffer("running_cov", torch.zeros(self.num_groups, num_pergroup, num_pergroup))

    def forward(self, x):
        n, c_all, h, w = x.size()
        c, g = self.num_pergroup, self.num_groups
        in_data_t = x.transpose(0, 1).contiguous().view(g, c, -1)
        if self.training:
            mean_bn = in_data_t.mean(-1, keepdim=True)
            in_data_bn = in_data_t - mean_bn
            cov_bn = torch.bmm(in_data_bn, in_data_bn.transpose(1, 2)).div(h * w * n)
            self.running_mean.mul_(self.momentum)
            self.running_mean.add_((1 - self.momentum) * mean_bn.data)
            self.running_cov.mul_(self.momentum)
            self.running_cov.add_((1 - self.momentum) * cov_bn.data)
        else:
            mean_bn, cov_bn = self.running_mean, self.running_cov
        mean_bn = mean_bn.view(1, g, c, 1).expand(n, g, c, 1).contiguous().view(n * g, c, 1)
        cov_bn = cov_bn.view(1, g, c, c).expand(n, g, c, c).contiguous().view(n * g, c, c)
        in_data = x.view(n * g, c, -1)
        eye = torch.eye(c, dtype=x.dtype).view(1, c, c).expand(n * g, c, c)
        mean_in = in_data.mean(-1, keepdim=True)
        x_in = in_data - mean_in
        cov_in = torch.bmm(x_in, torch.transpose(x_in, 1, 2)).div(h * w)
        mean_weight = torch.softmax(self.sw_mean_weight, 0)
        var_weight = torch.softmax(self.sw_var_weight, 0)
        mean = mean_weight[0] * mean_bn + mean_weight[1] * mean_in
        cov = var_weight[0] * cov_bn + var_weight[1] * cov_in + self.eps * eye
        ng, c, _ = cov.size()
        p = torch.eye(c).to(cov).expand(ng, c, c)
        r_tr = (cov * p).sum((1, 2), keepdim=True).reciprocal_()
        cov_n = cov * r_tr
        for _ in range(self.T):
            p = torch.baddbmm(p, torch.matrix_power(p, 3), cov_n, beta=1.5, alpha=-0.5)
        wm = p.mul_(r_tr.sqrt())
        x_hat = torch.bmm(wm, in_data - mean).view(n, c_all, h, w)
        return x_hat * self.weight.view(1, c_all, 1, 1) + self.bias.view(1, c_all, 1, 1)


def slot(code: int, channels: int) -> tuple[nn.Module | None, nn.ReLU]:
    """The module a `wt_layer` code puts in a slot and the ReLU built after it (Resnet.py's if/elif chains)."""
    if code in (1, 2):
        return InstanceWhitening(channels), nn.ReLU(inplace=False)
    if code in (3, 4):
        return nn.InstanceNorm2d(channels, affine=code == 4), nn.ReLU(inplace=True)
    if code == 5:
        return SwitchWhiten2d(channels), nn.ReLU(inplace=True)
    return None, nn.ReLU(inplace=True)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None, iw=0):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.downsample = downsample
        self.iw = iw
        norm, self.relu = slot(iw, planes * self.expansion)
        if norm is not None:
            self.instance_norm_layer = norm

    def forward(self, x_tuple):
        x, w_arr = x_tuple
        residual = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.downsample is not None:
            residual = self.downsample(x)
        out += residual
        if self.iw >= 1:
            if self.iw in (1, 2):
                out, w = self.instance_norm_layer(out)
                w_arr.append(w)
            else:
                out = self.instance_norm_layer(out)
        out = self.relu(out)
        return [out, w_arr]


class ResNet50(nn.Module):
    """Resnet.py ResNet with Bottleneck blocks [3, 4, 6, 3] and the seven `wt_layer` slots (2: the stem norm, 3-6:
    the last block of layer1..layer4)."""

    def __init__(self, wt_layer):
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        norm, self.relu = slot(wt_layer[2], 64)
        self.bn1 = norm if norm is not None else nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(64, 3, wt_layer=wt_layer[3])
        self.layer2 = self._make_layer(128, 4, stride=2, wt_layer=wt_layer[4])
        self.layer3 = self._make_layer(256, 6, stride=2, wt_layer=wt_layer[5])
        self.layer4 = self._make_layer(512, 3, stride=2, wt_layer=wt_layer[6])

    def _make_layer(self, planes, blocks, stride=1, wt_layer=0):
        downsample = None
        if stride != 1 or self.inplanes != planes * 4:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes * 4, kernel_size=1, stride=stride, bias=False),
                                       nn.BatchNorm2d(planes * 4))
        layers = [Bottleneck(self.inplanes, planes, stride, downsample, iw=0)]
        self.inplanes = planes * 4
        for index in range(1, blocks):
            layers.append(Bottleneck(self.inplanes, planes, iw=0 if (wt_layer > 0 and index < blocks - 1) else wt_layer))
        return nn.Sequential(*layers)


def forgiving_state_restore(net, loaded_dict):  # network/mynn.py
    net_state_dict = net.state_dict()
    new_loaded_dict = {k: loaded_dict[k] for k in net_state_dict
                       if k in loaded_dict and net_state_dict[k].size() == loaded_dict[k].size()}
    net_state_dict.update(new_loaded_dict)
    net.load_state_dict(net_state_dict)
    return net


class CovMatrixIRW:  # network/cov_settings.py CovMatrix_IRW
    def __init__(self, dim, relax_denom=0):
        self.i = torch.eye(dim, dim)
        self.reversal_i = torch.ones(dim, dim).triu(diagonal=1)
        self.num_off_diagonal = torch.sum(self.reversal_i)
        self.margin = 0 if relax_denom == 0 else self.num_off_diagonal // relax_denom

    def get_mask_matrix(self):
        return self.i, self.reversal_i, self.margin, self.num_off_diagonal


class CovMatrixISW:  # network/cov_settings.py CovMatrix_ISW, relax_denom 0
    def __init__(self, dim, clusters=3):
        self.dim = dim
        self.i = torch.eye(dim, dim)
        self.reversal_i = torch.ones(dim, dim).triu(diagonal=1)
        self.num_sensitive = 0
        self.var_matrix = None
        self.count_var_cov = 0
        self.mask_matrix = None
        self.clusters = clusters

    def get_eye_matrix(self):
        return self.i, self.reversal_i

    def get_mask_matrix(self):
        if self.mask_matrix is None:
            self.set_mask_matrix()
        return self.i, self.mask_matrix, 0, self.num_sensitive

    def reset_mask_matrix(self):
        self.mask_matrix = None

    def set_mask_matrix(self):
        self.var_matrix = self.var_matrix / self.count_var_cov
        var_flatten = torch.flatten(self.var_matrix)
        clusters, _ = kmeans1d.cluster(var_flatten, self.clusters)
        num_sensitive = var_flatten.size()[0] - clusters.count(0)
        _, indices = torch.topk(var_flatten, k=int(num_sensitive))
        mask_matrix = torch.flatten(torch.zeros(self.dim, self.dim))
        mask_matrix[indices] = 1
        if self.mask_matrix is not None:
            self.mask_matrix = (self.mask_matrix.int() & mask_matrix.view(self.dim, self.dim).int()).float()
        else:
            self.mask_matrix = mask_matrix.view(self.dim, self.dim)
        self.num_sensitive = torch.sum(self.mask_matrix)
        self.var_matrix = None
        self.count_var_cov = 0

    def set_variance_of_covariance(self, var_cov):
        self.var_matrix = var_cov if self.var_matrix is None else self.var_matrix + var_cov
        self.count_var_cov += 1


class WhiteningDeepV3Plus(ReferenceDecoder):
    """DeepR50V3PlusD (variant D16) with `args.wt_layer`, its single-input-layer forward, the whitening loss
    (train.py: `use_wtloss`, `relax_denom`, `clusters`) and the `cal_covstat` pass. `resnet` is the ResNet50 above,
    already restored from a state dict where the test wants ImageNet-like weights (Resnet.resnet50 does that before
    DeepV3Plus takes its parts)."""

    def __init__(self, num_classes, wt_layer, resnet=None, relax_denom=0, clusters=3):
        super().__init__(num_classes, 16)
        resnet = ResNet50(wt_layer) if resnet is None else resnet
        self.wt_layer = wt_layer
        self.layer0 = nn.Sequential(resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool)
        self.layer1, self.layer2, self.layer3, self.layer4 = resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4
        dilate_like_robustnet({"layer4": self.layer4}, 16)
        self.eps = 1e-5
        channels = [0, 0, 64, 256, 512, 1024, 2048]
        self.cov_matrix_layer = [CovMatrixIRW(channels[i], relax_denom) if code == 1 else CovMatrixISW(channels[i],
                                                                                                        clusters)
                                 for i, code in enumerate(wt_layer) if code in (1, 2)]

    def set_mask_matrix(self):
        for layer in self.cov_matrix_layer:
            layer.set_mask_matrix()

    def reset_mask_matrix(self):
        for layer in self.cov_matrix_layer:
            layer.reset_mask_matrix()

    def forward(self, x, cal_covstat=False, apply_wtloss=True):
        """Logits and the whitening loss (train mode), None after a `cal_covstat` pass."""
        w_arr = []
        if cal_covstat:
            x = torch.cat(x, dim=0)
        x_size = x.size()
        x = self.layer0[0](x)
        if self.wt_layer[2] in (1, 2):
            x, w = self.layer0[1](x)
            w_arr.append(w)
        else:
            x = self.layer0[1](x)
        x = self.layer0[2](x)
        x = self.layer0[3](x)
        x_tuple = self.layer1([x, w_arr])
        low_level = x_tuple[0]
        x_tuple = self.layer4(self.layer3(self.layer2(x_tuple)))
        x, w_arr = x_tuple
        if cal_covstat:
            for index, f_map in enumerate(w_arr):
                b, c, h, w = f_map.shape
                f_map = f_map.contiguous().view(b, c, -1)
                eye, reverse_eye = self.cov_matrix_layer[index].get_eye_matrix()
                f_cor = torch.bmm(f_map, f_map.transpose(1, 2)).div(h * w - 1) + (self.eps * eye)
                off_diag_elements = f_cor * reverse_eye
                self.cov_matrix_layer[index].set_variance_of_covariance(torch.var(off_diag_elements, dim=0))
            return None
        main_out = self.decode(x, low_level, x_size[2:])
        wt_loss = None
        if self.training and w_arr:
            wt_loss = torch.zeros(1)
            if apply_wtloss:
                for index, f_map in enumerate(w_arr):
                    eye, mask_matrix, margin, num_remove_cov = self.cov_matrix_layer[index].get_mask_matrix()
                    wt_loss = wt_loss + instance_whitening_loss(f_map, eye, mask_matrix, margin, num_remove_cov)
            wt_loss = wt_loss / len(w_arr)
        return main_out, wt_loss
