"""Switchable Whitening (Pan, Zhan, Shi, Tang, Luo, ICCV 2019, "Switchable Whitening for Deep Representation
Learning"), the sw_type=2 variant (batch whitening + instance whitening) that RobustNet uses for `--wt_layer` code 5.

Official code: XingangPan/Switchable-Whitening `models/ops/switchwhiten.py` (SwitchWhiten2d) and
`models/ops/sync_switchwhiten.py` (SyncSwitchWhiten2d, which RobustNet copies as `network/sync_switchwhiten.py` and
builds in `network/Resnet.py` with num_pergroup=16, sw_type=2, T=5, tie_weight=False, eps=1e-5, momentum=0.99).
"""
from __future__ import annotations

import torch
from torch import nn


def newton_inverse_sqrt(cov: torch.Tensor, iterations: int) -> torch.Tensor:
    """n x c x c SPD -> approximately cov^(-1/2), by Newton's iteration on cov / tr(cov) (eigenvalues in (0, 1],
    where it converges): P_0 = I, P_k = (3 P - P^3 S_N) / 2, result P_T / sqrt(tr(cov)).

    A few iterations (official T=5) are the point: they whiten partially and differentiably. This uncoupled form
    amplifies rounding once converged, so tens of iterations diverge."""
    n, c, _ = cov.shape
    p = torch.eye(c, dtype=cov.dtype, device=cov.device).expand(n, c, c)
    reciprocal_trace = (cov * p).sum((1, 2), keepdim=True).reciprocal()
    normalised = cov * reciprocal_trace
    for _ in range(iterations):
        p = torch.baddbmm(p, torch.matrix_power(p, 3), normalised, beta=1.5, alpha=-0.5)
    return p * reciprocal_trace.sqrt()


class SwitchWhiten2d(nn.Module):
    """Whitening of channel groups with a learned softmax mix of batch (BW) and per-image (IW) mean and covariance.

    Names, defaults and state-dict keys are the official ones: `sw_mean_weight` / `sw_var_weight` are the softmax
    logits (index 0: batch, 1: instance), `running_mean` (groups x c x 1) and `running_cov` (groups x c x c) start at
    zero as after the official reset_parameters, and `momentum` is the share KEPT per step:
    running = momentum * running + (1 - momentum) * batch (the opposite of BatchNorm's convention). Batch statistics
    are biased (divided by N*H*W), instance ones too (H*W). In eval mode the batch terms come from the running
    statistics while the instance terms are still per image.

    sync=True averages the batch mean and covariance over the processes of the default group when training under
    torch.distributed, as the official SyncSwitchWhiten2d (RobustNet's choice) does; gradients flow through the
    reduction. Statistics and whitening run in float32 at least, outside autocast (Newton's iteration in float16
    diverges); the output has the input's dtype.
    """

    def __init__(self, num_features: int, num_pergroup: int = 16, sw_type: int = 2, T: int = 5,
                 tie_weight: bool = False, eps: float = 1e-5, momentum: float = 0.99, affine: bool = True,
                 *, sync: bool = False):
        super().__init__()
        if sw_type != 2:
            raise ValueError(f"only sw_type=2 (BW + IW, the variant RobustNet uses) is implemented, got {sw_type}")
        if num_pergroup < 1 or num_features < 1 or num_features % num_pergroup:
            raise ValueError(f"num_features ({num_features}) must be a positive multiple of num_pergroup "
                             f"({num_pergroup}); pick a group size that divides the channel count")
        if T < 1:
            raise ValueError(f"T (Newton iterations) must be >= 1, got {T}")
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum is the share of the running statistics kept per step, in [0, 1] "
                             f"(official 0.99), got {momentum}")
        self.num_features = num_features
        self.num_pergroup = num_pergroup
        self.num_groups = num_features // num_pergroup
        self.sw_type = sw_type
        self.T = T
        self.tie_weight = tie_weight
        self.eps = eps
        self.momentum = momentum
        self.affine = affine
        self.sync = sync

        self.sw_mean_weight = nn.Parameter(torch.ones(sw_type))
        if tie_weight:
            self.register_parameter("sw_var_weight", None)
        else:
            self.sw_var_weight = nn.Parameter(torch.ones(sw_type))
        if affine:
            self.weight = nn.Parameter(torch.ones(num_features))
            self.bias = nn.Parameter(torch.zeros(num_features))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        self.register_buffer("running_mean", torch.zeros(self.num_groups, num_pergroup, 1))
        self.register_buffer("running_cov", torch.zeros(self.num_groups, num_pergroup, num_pergroup))

    def extra_repr(self) -> str:
        return (f"{self.num_features}, num_pergroup={self.num_pergroup}, sw_type={self.sw_type}, T={self.T}, "
                f"tie_weight={self.tie_weight}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
                f"sync={self.sync}")

    def _world_size(self) -> int:
        if not self.sync:
            return 1
        import torch.distributed as dist

        return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1

    def _batch_statistics(self, grouped: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """groups x c x (N*H*W) -> mean (groups x c x 1), biased covariance (groups x c x c); across processes
        when synchronised (each process's covariance is taken about the global mean, then averaged)."""
        world = self._world_size()
        if world > 1:
            from torch.distributed.nn.functional import all_reduce
        mean = grouped.mean(-1, keepdim=True)
        if world > 1:
            mean = all_reduce(mean) / world
        centred = grouped - mean
        cov = torch.bmm(centred, centred.transpose(1, 2)).div(grouped.shape[-1])
        if world > 1:
            cov = all_reduce(cov) / world
        return mean, cov

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.num_features:
            raise ValueError(f"SwitchWhiten2d({self.num_features}) needs N x {self.num_features} x H x W input, "
                             f"got shape {tuple(x.shape)}")
        n, channels, h, w = x.shape
        g, c = self.num_groups, self.num_pergroup
        dtype = torch.promote_types(x.dtype, torch.float32)
        with torch.autocast(device_type=x.device.type, enabled=False):
            xf = x.to(dtype)
            if self.training:
                mean_bn, cov_bn = self._batch_statistics(xf.transpose(0, 1).reshape(g, c, -1))
                with torch.no_grad():
                    self.running_mean.mul_(self.momentum).add_((1 - self.momentum) * mean_bn.detach())
                    self.running_cov.mul_(self.momentum).add_((1 - self.momentum) * cov_bn.detach())
            else:
                mean_bn, cov_bn = self.running_mean.to(dtype), self.running_cov.to(dtype)
            mean_bn = mean_bn.unsqueeze(0).expand(n, g, c, 1).reshape(n * g, c, 1)
            cov_bn = cov_bn.unsqueeze(0).expand(n, g, c, c).reshape(n * g, c, c)

            per_image = xf.reshape(n * g, c, h * w)  # image-major: row k is group k % g of image k // g
            mean_in = per_image.mean(-1, keepdim=True)
            centred_in = per_image - mean_in
            cov_in = torch.bmm(centred_in, centred_in.transpose(1, 2)).div(h * w)

            mean_weight = torch.softmax(self.sw_mean_weight.to(dtype), dim=0)
            var_weight = mean_weight if self.tie_weight else torch.softmax(self.sw_var_weight.to(dtype), dim=0)
            eye = torch.eye(c, dtype=dtype, device=x.device)
            mean = mean_weight[0] * mean_bn + mean_weight[1] * mean_in
            cov = var_weight[0] * cov_bn + var_weight[1] * cov_in + self.eps * eye

            out = torch.bmm(newton_inverse_sqrt(cov, self.T), per_image - mean).view(n, channels, h, w)
            if self.affine:
                out = out * self.weight.to(dtype).view(1, -1, 1, 1) + self.bias.to(dtype).view(1, -1, 1, 1)
        return out.to(x.dtype)
