"""RobustNet's whitening family (IW / IRW / ISW) and Switchable Whitening against references written here.

The references are typed from the papers and the official code (shachoi/RobustNet `network/instance_whitening.py`,
`network/cov_settings.py`, `network/deepv3.py`; XingangPan/Switchable-Whitening `models/ops/switchwhiten.py`) as
plain loops in numpy float64: covariance S = F F^T / (HW - 1) + 1e-5 I; loss max(0, (sum |S_ij| over the mask -
margin) / |mask|) averaged over images; ISW keeps the entries above the lowest cluster of an exact 1-D 3-means
(brute force over split points); SW whitens each group of channels with a softmax mix of batch and instance statistics
and Newton's iteration P <- (3 P - P^3 S/tr S) / 2.
"""
from __future__ import annotations

import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from segbench.methods.switchable import SwitchWhiten2d
from segbench.methods.whitening import (CovarianceVariance, InstanceWhitening, covariance, instance_whitening_loss,
                                        irw_margin, isw_mask, strict_upper)

pytestmark = pytest.mark.usefixtures("one_thread")
EPS = 1e-5
ROOT = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------- references

def ref_covariance(x: np.ndarray) -> np.ndarray:
    b, c, h, w = x.shape
    out = np.zeros((b, c, c))
    for n in range(b):
        f = x[n].reshape(c, h * w)
        for i in range(c):
            for j in range(c):
                out[n, i, j] = sum(f[i, p] * f[j, p] for p in range(h * w)) / (h * w - 1) + (EPS if i == j else 0.0)
    return out


def ref_loss(x: np.ndarray, mask: np.ndarray, margin: float) -> float:
    cov = ref_covariance(x)
    entries = [(i, j) for i in range(mask.shape[0]) for j in range(mask.shape[1]) if mask[i, j]]
    per_image = [max(0.0, (sum(abs(cov[n, i, j]) for i, j in entries) - margin) / len(entries))
                 for n in range(x.shape[0])]
    return sum(per_image) / len(per_image)


def ref_isw_mask(variance: np.ndarray) -> np.ndarray:
    """Exact 3-means in 1-D: the clusters are runs of the sorted values, so try every pair of split points; keep the
    entries strictly above the largest value of the lowest run."""
    values = np.sort(variance.ravel())
    n = len(values)

    def sse(a, b):
        part = values[a:b]
        return float(((part - part.mean()) ** 2).sum())

    best = min((sse(0, i) + sse(i, j) + sse(j, n), i) for i in range(1, n - 1) for j in range(i + 1, n))
    lowest_run_top = values[best[1] - 1]
    return variance > lowest_run_top


def ref_newton_whitening_matrix(cov: np.ndarray, iterations: int) -> np.ndarray:
    trace = np.trace(cov)
    normalised = cov / trace
    p = np.eye(cov.shape[0])
    for _ in range(iterations):
        p = 0.5 * (3 * p - p @ p @ p @ normalised)
    return p / math.sqrt(trace)


def ref_zca_matrix(cov: np.ndarray) -> np.ndarray:
    values, vectors = torch.linalg.eigh(torch.from_numpy(cov))
    return (vectors @ torch.diag(values.rsqrt()) @ vectors.T).numpy()


def ref_switch_whiten(x, group, mean_logits, var_logits, gamma, beta, iterations, batch_stats=None, zca=False):
    """x: N x C x H x W float64 numpy. batch_stats: per group (mean c, cov c x c) to use instead of this batch's
    (eval mode). Returns the output and this batch's per-group (mean, biased cov)."""
    n, c_all, h, w = x.shape
    wm = np.exp(mean_logits) / np.exp(mean_logits).sum()
    wv = np.exp(var_logits) / np.exp(var_logits).sum()
    out = np.zeros_like(x)
    this_batch = []
    for g in range(c_all // group):
        channels = slice(g * group, (g + 1) * group)
        pooled = np.concatenate([x[k, channels].reshape(group, h * w) for k in range(n)], axis=1)
        mean_b = pooled.mean(axis=1)
        cov_b = (pooled - mean_b[:, None]) @ (pooled - mean_b[:, None]).T / pooled.shape[1]
        this_batch.append((mean_b, cov_b))
        if batch_stats is not None:
            mean_b, cov_b = batch_stats[g]
        for k in range(n):
            f = x[k, channels].reshape(group, h * w)
            mean_i = f.mean(axis=1)
            cov_i = (f - mean_i[:, None]) @ (f - mean_i[:, None]).T / (h * w)
            mean = wm[0] * mean_b + wm[1] * mean_i
            cov = wv[0] * cov_b + wv[1] * cov_i + EPS * np.eye(group)
            whiten = ref_zca_matrix(cov) if zca else ref_newton_whitening_matrix(cov, iterations)
            y = whiten @ (f - mean[:, None])
            out[k, channels] = (y * gamma[channels, None] + beta[channels, None]).reshape(group, h, w)
    return out, this_batch


# ---------------------------------------------------------------- covariance and loss

def test_covariance_matches_a_per_image_loop():
    x = torch.randn(2, 3, 2, 3, dtype=torch.float64)
    np.testing.assert_allclose(covariance(x).numpy(), ref_covariance(x.numpy()), rtol=1e-12, atol=1e-15)
    x32 = x.float()
    np.testing.assert_allclose(covariance(x32).numpy(), ref_covariance(x32.double().numpy()), rtol=1e-5, atol=1e-6)


def test_covariance_of_half_input_is_float32_and_a_single_pixel_is_refused():
    x = torch.randn(1, 2, 3, 3)
    half = covariance(x.half())
    assert half.dtype == torch.float32
    np.testing.assert_allclose(half.numpy(), ref_covariance(x.half().double().numpy()), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="H\\*W >= 2"):
        covariance(torch.randn(2, 3, 1, 1))


def test_strict_upper_is_the_triangle_above_the_diagonal():
    expected = [[i < j for j in range(4)] for i in range(4)]
    assert strict_upper(4).tolist() == expected
    with pytest.raises(ValueError, match="channels"):
        strict_upper(0)


def _in_features(*shape):
    return F.instance_norm(torch.randn(*shape, dtype=torch.float64))


@pytest.mark.parametrize("channels", [5, 16])
def test_iw_and_irw_losses_match_a_loop_over_the_upper_pairs(channels):
    x = _in_features(3, channels, 3, 4)
    mask = strict_upper(channels)
    np.testing.assert_allclose(float(instance_whitening_loss(x, mask)), ref_loss(x.numpy(), mask.numpy(), 0.0),
                               rtol=1e-10)
    margin = irw_margin(channels)
    np.testing.assert_allclose(float(instance_whitening_loss(x, mask, margin)),
                               ref_loss(x.numpy(), mask.numpy(), margin), rtol=1e-10)


def test_irw_margin_is_the_upper_pair_count_floored_by_64():
    for channels, expected in [(8, 0.0), (16, 1.0), (64, 31.0), (256, 510.0), (2048, 32752.0)]:
        assert expected == math.floor(channels * (channels - 1) / 2 / 64)  # the formula, typed independently
        assert irw_margin(channels) == expected
    with pytest.raises(ValueError, match="relax_denom"):
        irw_margin(16, relax_denom=0)


def test_loss_on_a_random_mask_and_its_clamp_at_zero():
    torch.manual_seed(3)
    x = _in_features(2, 6, 3, 3)
    mask = torch.rand(6, 6) < 0.4
    mask[0, 1] = True
    np.testing.assert_allclose(float(instance_whitening_loss(x, mask)), ref_loss(x.numpy(), mask.numpy(), 0.0),
                               rtol=1e-10)
    assert float(instance_whitening_loss(x, mask, margin=1e6)) == 0.0


def test_batch_average_counts_clamped_images_as_zero():
    correlated = torch.randn(1, 1, 4, 4, dtype=torch.float64).repeat(1, 4, 1, 1)  # all channels equal: |S_ij| big
    x = F.instance_norm(torch.cat([correlated, torch.randn(1, 4, 4, 4, dtype=torch.float64)]))
    mask = strict_upper(4)
    per_image = [ref_loss(x[n:n + 1].numpy(), mask.numpy(), 0.0) for n in range(2)]
    margin = 6 * (per_image[0] + per_image[1]) / 2  # between the two images' sums (6 entries each)
    assert per_image[1] * 6 < margin < per_image[0] * 6
    expected = (per_image[0] * 6 - margin) / 6 / 2  # image 1 clamps to 0; the mean divides by B = 2
    np.testing.assert_allclose(float(instance_whitening_loss(x, mask, margin)), expected, rtol=1e-10)


def test_loss_refuses_a_bad_or_empty_mask():
    x = _in_features(1, 4, 3, 3)
    with pytest.raises(ValueError, match="4 x 4 bool"):
        instance_whitening_loss(x, strict_upper(4).float())
    with pytest.raises(ValueError, match="4 x 4 bool"):
        instance_whitening_loss(x, strict_upper(5))
    with pytest.raises(ValueError, match="selects no covariance entry"):
        instance_whitening_loss(x, torch.zeros(4, 4, dtype=torch.bool))


# ---------------------------------------------------------------- ISW selection

@pytest.mark.parametrize("seed", [0, 1, 2])
def test_isw_mask_matches_brute_force_three_means_on_a_strict_upper_variance(seed):
    gen = torch.Generator().manual_seed(seed)
    channels = 8
    variance = torch.rand(channels, channels, generator=gen, dtype=torch.float64) ** 3 * strict_upper(channels)
    mask = isw_mask(variance)
    assert mask.dtype == torch.bool
    assert mask.tolist() == ref_isw_mask(variance.numpy()).tolist()
    assert not (mask & ~strict_upper(channels)).any()  # the zeros below the diagonal fall in the lowest cluster


def test_isw_mask_with_ties_inside_clusters():
    channels = 6
    levels = torch.tensor([0.1, 0.1, 0.1, 0.2, 0.2, 1.0, 1.0, 1.0, 1.1, 3.0, 3.0, 3.0, 3.0, 0.1, 1.0],
                          dtype=torch.float64)
    variance = torch.zeros(channels, channels, dtype=torch.float64)
    variance[strict_upper(channels)] = levels
    mask = isw_mask(variance)
    assert mask.tolist() == ref_isw_mask(variance.numpy()).tolist()
    # every copy of a tied value gets the same verdict
    for level in levels.unique():
        assert len(set(mask[variance == level].tolist())) == 1


def test_isw_mask_keeps_an_obvious_top_cluster():
    variance = torch.zeros(4, 4)
    variance[0, 1], variance[0, 2], variance[0, 3] = 0.01, 0.02, 0.015
    variance[1, 2], variance[1, 3], variance[2, 3] = 5.0, 5.0, 9.0
    expected = torch.zeros(4, 4, dtype=torch.bool)
    expected[1, 2] = expected[1, 3] = expected[2, 3] = True
    assert torch.equal(isw_mask(variance), expected)


def test_isw_mask_refuses_bad_input():
    with pytest.raises(ValueError, match="square"):
        isw_mask(torch.rand(3, 4))
    with pytest.raises(ValueError, match="NaN"):
        isw_mask(torch.tensor([[0.0, float("nan")], [0.0, 0.0]]))
    with pytest.raises(ValueError, match="clusters"):
        isw_mask(torch.rand(3, 3), clusters=0)


def test_covariance_variance_on_a_pair_known_in_closed_form():
    # channels 0 and 1 identical, channel 2 orthogonal to both: F F^T has a 4 at (0, 1) and zeros elsewhere off the
    # diagonal, so S_01 = 4 / (HW - 1) = 4/3. A twin scaled by s has S_01 = 4 s^2 / 3; the unbiased variance of the
    # pair is (4/3)^2 (1 - s^2)^2 / 2: 8 for s = 2, 8/9 for s = 0.
    f = torch.tensor([[1.0, 1, -1, -1], [1, 1, -1, -1], [1, -1, 1, -1]], dtype=torch.float64).view(1, 3, 2, 2)
    acc = CovarianceVariance(3)
    acc.update(torch.cat([f, f]), torch.cat([2 * f, 0 * f]))
    assert acc.images == 2
    expected = torch.zeros(3, 3, dtype=torch.float64)
    expected[0, 1] = (8 + 8 / 9) / 2
    torch.testing.assert_close(acc.variance(), expected, rtol=1e-12, atol=1e-12)
    one_at_a_time = CovarianceVariance(3)
    one_at_a_time.update(f, 2 * f)
    one_at_a_time.update(f, 0 * f)
    torch.testing.assert_close(one_at_a_time.variance(), expected, rtol=1e-12, atol=1e-12)


def test_covariance_variance_refuses_misuse():
    acc = CovarianceVariance(3)
    with pytest.raises(ValueError, match="no image pair"):
        acc.variance()
    with pytest.raises(ValueError, match="same shape"):
        acc.update(torch.randn(2, 3, 2, 2), torch.randn(1, 3, 2, 2))
    with pytest.raises(ValueError, match="B x 3 x H x W"):
        acc.update(torch.randn(1, 4, 2, 2), torch.randn(1, 4, 2, 2))


# ---------------------------------------------------------------- InstanceWhitening

def test_instance_whitening_is_instance_norm_and_keeps_its_training_output():
    layer = InstanceWhitening(4)
    x = torch.randn(2, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    layer.double().train()
    out = layer(x)
    torch.testing.assert_close(out, F.instance_norm(x, eps=EPS), rtol=0, atol=0)
    assert layer.output is out
    loss = layer.whitening_loss()
    np.testing.assert_allclose(loss.item(), ref_loss(out.detach().numpy(), strict_upper(4).numpy(), 0.0), rtol=1e-10)
    loss.backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    layer.eval()
    torch.testing.assert_close(layer(x), F.instance_norm(x, eps=EPS), rtol=0, atol=0)
    assert layer.output is None
    with pytest.raises(RuntimeError, match="train"):
        layer.whitening_loss()


def test_instance_whitening_state_is_the_mask_and_survives_a_reload():
    layer = InstanceWhitening(5)
    state = layer.state_dict()
    assert list(state) == ["mask", "mask_selected"]
    assert torch.equal(state["mask"], strict_upper(5)) and not bool(state["mask_selected"])
    chosen = torch.zeros(5, 5, dtype=torch.bool)
    chosen[0, 3] = chosen[2, 4] = True
    layer.set_mask(chosen)
    resumed = InstanceWhitening(5)
    resumed.load_state_dict(layer.state_dict())
    assert torch.equal(resumed.mask, chosen) and bool(resumed.mask_selected)
    with pytest.raises(ValueError, match="5 x 5 bool"):
        resumed.set_mask(torch.ones(4, 4, dtype=torch.bool))


# ---------------------------------------------------------------- SwitchWhiten2d

def _switch_whiten(channels=32, group=16, mean_logits=(0.0, 0.0), var_logits=(0.0, 0.0), **kw):
    layer = SwitchWhiten2d(channels, num_pergroup=group, **kw).double()
    with torch.no_grad():
        layer.sw_mean_weight.copy_(torch.tensor(mean_logits, dtype=torch.float64))
        layer.sw_var_weight.copy_(torch.tensor(var_logits, dtype=torch.float64))
        layer.weight.copy_(torch.linspace(0.5, 1.5, channels))
        layer.bias.copy_(torch.linspace(-0.2, 0.3, channels))
    return layer


def _affine(layer):
    return layer.weight.detach().numpy(), layer.bias.detach().numpy()


@pytest.mark.parametrize("logits", [(30.0, -30.0), (-30.0, 30.0), (0.3, -0.4)], ids=["pure_bw", "pure_iw", "mix"])
def test_switch_whiten_training_output_matches_group_whitening(logits):
    torch.manual_seed(0)
    var_logits = logits if logits[0] != 0.3 else (-0.5, 0.2)
    layer = _switch_whiten(mean_logits=logits, var_logits=var_logits).train()
    x = torch.randn(3, 32, 4, 5, dtype=torch.float64) * 2 + 0.5
    expected, _ = ref_switch_whiten(x.numpy(), 16, np.array(logits), np.array(var_logits), *_affine(layer), 5)
    np.testing.assert_allclose(layer(x).detach().numpy(), expected, rtol=1e-9, atol=1e-10)


def test_switch_whiten_with_enough_iterations_is_zca_and_whitens_the_batch():
    # on this conditioning (about 20) 12 iterations reach ZCA to 1e-11; 5, the official count, stops near 1e-2 by
    # design, and many more diverge: this uncoupled Newton iteration amplifies rounding once it has converged
    torch.manual_seed(1)
    layer = _switch_whiten(mean_logits=(30.0, -30.0), var_logits=(30.0, -30.0), T=12).train()
    with torch.no_grad():
        layer.weight.fill_(1.0)
        layer.bias.zero_()
    mixing = torch.randn(32, 32, dtype=torch.float64) * 0.15 + torch.eye(32, dtype=torch.float64)
    x = torch.einsum("dc,nchw->ndhw", mixing, torch.randn(4, 32, 8, 8, dtype=torch.float64))  # correlated channels
    out = layer(x).detach()
    zca, _ = ref_switch_whiten(x.numpy(), 16, np.array([1.0, -1e9]), np.array([1.0, -1e9]), np.ones(32),
                               np.zeros(32), 0, zca=True)
    np.testing.assert_allclose(out.numpy(), zca, rtol=1e-8, atol=1e-9)
    for g in range(2):
        pooled = out[:, 16 * g:16 * (g + 1)].transpose(0, 1).reshape(16, -1)
        cov = pooled @ pooled.T / pooled.shape[1]
        torch.testing.assert_close(cov, torch.eye(16, dtype=torch.float64), rtol=0, atol=1e-3)


def test_switch_whiten_running_statistics_and_eval_mode():
    torch.manual_seed(2)
    momentum = 0.9
    logits = (0.7, -0.2)
    layer = _switch_whiten(channels=16, group=8, mean_logits=logits, var_logits=logits, momentum=momentum)
    state = layer.state_dict()
    assert sorted(state) == ["bias", "running_cov", "running_mean", "sw_mean_weight", "sw_var_weight", "weight"]
    assert state["running_mean"].shape == (2, 8, 1) and state["running_cov"].shape == (2, 8, 8)
    run_mean = [np.zeros(8) for _ in range(2)]
    run_cov = [np.zeros((8, 8)) for _ in range(2)]  # both start at zero, as after the official reset_parameters
    layer.train()
    for _ in range(3):
        x = torch.randn(2, 16, 3, 3, dtype=torch.float64) + 1.0
        layer(x)
        _, batch = ref_switch_whiten(x.numpy(), 8, np.array(logits), np.array(logits), *_affine(layer), 5)
        for g, (mean_b, cov_b) in enumerate(batch):
            run_mean[g] = momentum * run_mean[g] + (1 - momentum) * mean_b
            run_cov[g] = momentum * run_cov[g] + (1 - momentum) * cov_b
    for g in range(2):
        np.testing.assert_allclose(layer.running_mean[g, :, 0].numpy(), run_mean[g], rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(layer.running_cov[g].numpy(), run_cov[g], rtol=1e-12, atol=1e-14)

    layer.eval()
    before = layer.running_cov.clone()
    x = torch.randn(2, 16, 3, 3, dtype=torch.float64)
    expected, _ = ref_switch_whiten(x.numpy(), 8, np.array(logits), np.array(logits), *_affine(layer), 5,
                                    batch_stats=list(zip(run_mean, run_cov)))
    np.testing.assert_allclose(layer(x).detach().numpy(), expected, rtol=1e-9, atol=1e-10)
    assert torch.equal(layer.running_cov, before)


def test_switch_whiten_gradients_flow_and_agree_with_finite_differences():
    layer = _switch_whiten(channels=32, mean_logits=(0.2, -0.1), var_logits=(-0.3, 0.4)).train()
    x = torch.randn(2, 32, 3, 3, dtype=torch.float64, requires_grad=True)
    (layer(x) * torch.randn(2, 32, 3, 3, dtype=torch.float64)).sum().backward()
    for name, tensor in [("x", x), *layer.named_parameters()]:
        assert tensor.grad is not None and torch.isfinite(tensor.grad).all() and tensor.grad.abs().sum() > 0, name
    small = _switch_whiten(channels=4, group=2, mean_logits=(0.2, -0.1), var_logits=(-0.3, 0.4)).train()
    inputs = (torch.randn(2, 4, 2, 3, dtype=torch.float64, requires_grad=True),)
    assert torch.autograd.gradcheck(small, inputs)


def test_switch_whiten_half_input_is_whitened_in_float32():
    torch.manual_seed(4)
    layer = SwitchWhiten2d(16).train()
    x = torch.randn(2, 16, 4, 4).half()
    out = layer(x)
    assert out.dtype == torch.float16 and torch.isfinite(out).all()
    expected, _ = ref_switch_whiten(x.double().numpy(), 16, np.zeros(2), np.zeros(2), np.ones(16), np.zeros(16), 5)
    np.testing.assert_allclose(out.double().detach().numpy(), expected, rtol=1e-2, atol=1e-2)


def test_switch_whiten_refuses_bad_configuration_and_input():
    with pytest.raises(ValueError, match="multiple of num_pergroup"):
        SwitchWhiten2d(24)
    with pytest.raises(ValueError, match="sw_type=2"):
        SwitchWhiten2d(32, sw_type=5)
    with pytest.raises(ValueError, match="N x 32 x H x W"):
        SwitchWhiten2d(32)(torch.randn(2, 16, 3, 3))
    tied = SwitchWhiten2d(32, tie_weight=True)
    assert tied.sw_var_weight is None and "sw_var_weight" not in tied.state_dict()


SYNC_WORKER = """
import sys, torch, torch.distributed as dist
from segbench.methods.switchable import SwitchWhiten2d
dist.init_process_group("gloo")
rank = dist.get_rank()
torch.manual_seed(0)
x = torch.randn(4, 32, 3, 3, dtype=torch.float64)
weights = torch.randn(4, 32, 3, 3, dtype=torch.float64)
layer = SwitchWhiten2d(32, sync=True).double().train()
with torch.no_grad():
    layer.sw_mean_weight.copy_(torch.tensor([0.4, -0.3])); layer.sw_var_weight.copy_(torch.tensor([0.1, 0.2]))
part = slice(2 * rank, 2 * rank + 2)
mine = x[part].clone().requires_grad_(True)
out = layer(mine)
(out * weights[part]).sum().backward()
torch.save({"out": out.detach(), "x_grad": mine.grad, "running_cov": layer.running_cov,
            "grads": {k: p.grad for k, p in layer.named_parameters()}}, sys.argv[1])
dist.destroy_process_group()
"""


def test_switch_whiten_sync_over_two_processes_equals_one_process_on_the_whole_batch(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    script = tmp_path / "worker.py"
    script.write_text(SYNC_WORKER)
    procs = []
    for rank in range(2):
        env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                   PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
        procs.append(subprocess.Popen([sys.executable, str(script), str(tmp_path / f"rank{rank}.pt")], env=env,
                                      stderr=subprocess.PIPE, text=True))
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]

    torch.manual_seed(0)
    x = torch.randn(4, 32, 3, 3, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(4, 32, 3, 3, dtype=torch.float64)
    whole = SwitchWhiten2d(32).double().train()
    with torch.no_grad():
        whole.sw_mean_weight.copy_(torch.tensor([0.4, -0.3]))
        whole.sw_var_weight.copy_(torch.tensor([0.1, 0.2]))
    out = whole(x)
    (out * weights).sum().backward()
    for r in range(2):
        torch.testing.assert_close(ranks[r]["out"], out[2 * r:2 * r + 2].detach())
        torch.testing.assert_close(ranks[r]["x_grad"], x.grad[2 * r:2 * r + 2])
        torch.testing.assert_close(ranks[r]["running_cov"], whole.running_cov)
    for name, p in whole.named_parameters():  # DDP sums (then averages) the per-process parameter gradients
        torch.testing.assert_close(ranks[0]["grads"][name] + ranks[1]["grads"][name], p.grad)


def test_the_brute_force_reference_finds_three_well_separated_runs():
    variance = np.array([[0.0, 0.0, 0.1], [0.0, 5.0, 5.1], [9.0, 9.2, 0.05]])
    assert ref_isw_mask(variance).tolist() == (variance > 0.1).tolist()
