"""MixStyle, DSU, Normalization Perturbation and PASTA against computations written here.

References typed from the papers and the official code: MixStyle (KaiyangZhou/Dassl.pytorch
`dassl/modeling/ops/mixstyle.py`), DSU (lixiaotong97/DSU `dsu.py`), NP (Fan et al., ICLR 2023, no official code),
PASTA (ksarangmath/PASTA_robustnet `datasets/pasta.py`). Where a module's output depends on its draws, the test
re-seeds torch and draws the same variables in the documented order, then computes the output with numpy;
distributional claims are checked over many draws with tolerances of 4 standard errors.
"""
from __future__ import annotations

import pickle
import random

import numpy as np
import pytest
import torch

from segbench.methods.dsu import DistributionUncertainty
from segbench.methods.mixstyle import MixStyle, crossdomain_permutation
from segbench.methods.pasta import PASTA, amplitude_sigma, frequency_radius, pasta
from segbench.methods.perturbation import NormalizationPerturbation

pytestmark = pytest.mark.usefixtures("one_thread")

Z = 4.0  # standard errors allowed in every statistical check


def _features(batch=4, channels=3, height=5, width=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    scale = 0.5 + torch.rand(batch, channels, 1, 1, generator=g, dtype=torch.float64) * 2
    shift = 1.0 + torch.randn(batch, channels, 1, 1, generator=g, dtype=torch.float64)
    return torch.randn(batch, channels, height, width, generator=g, dtype=torch.float64) * scale + shift


def _stats(x):
    """Per-sample, per-channel mean and unbiased std over H, W (numpy, float64)."""
    return x.mean(axis=(2, 3), keepdims=True), x.std(axis=(2, 3), ddof=1, keepdims=True)


MAKERS = {
    "mixstyle-random": lambda p: MixStyle(p=p),
    "mixstyle-crossdomain": lambda p: MixStyle(p=p, mix="crossdomain"),
    "dsu": lambda p: DistributionUncertainty(p=p),
    "np": lambda p: NormalizationPerturbation(p=p),
}


# ---------------------------------------------------------------------------------------------- all three modules

@pytest.mark.parametrize("name", MAKERS)
def test_eval_mode_is_the_identity_and_draws_nothing(name):
    module, x = MAKERS[name](1.0).eval(), _features()
    state = torch.get_rng_state()
    assert module(x) is x
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize("name", MAKERS)
def test_p0_is_the_identity_and_p1_always_perturbs(name):
    x = _features()
    never, always = MAKERS[name](0.0).train(), MAKERS[name](1.0).train()
    torch.manual_seed(0)
    largest_change = 0.0
    for _ in range(20):
        assert never(x) is x
        out = always(x)  # a new tensor every call (MixStyle may still come close to x: lam near 1)
        assert out is not x and out.shape == x.shape and out.dtype == x.dtype
        largest_change = max(largest_change, (out - x).abs().max().item())
    assert largest_change > 0.1


@pytest.mark.parametrize("name", MAKERS)
def test_fraction_of_perturbed_calls_is_p(name):
    p, calls = 0.3, 1500
    module, x = MAKERS[name](p).train(), _features(height=2, width=2)
    torch.manual_seed(1)
    perturbed = sum(module(x) is not x for _ in range(calls))
    assert abs(perturbed - calls * p) <= Z * (calls * p * (1 - p)) ** 0.5


@pytest.mark.parametrize("name", MAKERS)
def test_randomness_comes_from_torch_only(name):
    module, x = MAKERS[name](1.0).train(), _features()
    python_state, numpy_state = random.getstate(), np.random.get_state()
    torch.manual_seed(2)
    for _ in range(5):
        module(x)
    assert random.getstate() == python_state
    after = np.random.get_state()
    assert all(np.array_equal(a, b) for a, b in zip(after, numpy_state))


@pytest.mark.parametrize("name", MAKERS)
def test_bad_feature_maps_are_rejected(name):
    module = MAKERS[name](1.0).train()
    with pytest.raises(ValueError, match="B x C x H x W"):
        module(torch.zeros(2, 3, 4))


def test_bad_settings_are_rejected():
    for build in (lambda: MixStyle(p=1.5), lambda: MixStyle(alpha=0.0), lambda: MixStyle(mix="swap"),
                  lambda: DistributionUncertainty(p=-0.1), lambda: DistributionUncertainty(factor=-1.0),
                  lambda: NormalizationPerturbation(std=-0.5), lambda: NormalizationPerturbation(p=2.0)):
        with pytest.raises(ValueError):
            build()
    x = _features(batch=1)
    with pytest.raises(ValueError, match="batch of at least 2"):
        DistributionUncertainty(p=1.0).train()(x)  # the batch variance of one sample is undefined
    with pytest.raises(ValueError, match="batch of at least 2"):
        MixStyle(p=1.0, mix="crossdomain").train()(x)
    with pytest.raises(ValueError, match="pixels"):
        MixStyle(p=1.0).train()(_features(height=1, width=1))  # an unbiased variance of one pixel is undefined
    switched = MixStyle(p=1.0).train()
    switched.mix = "swap"
    with pytest.raises(ValueError, match="swap"):
        switched(_features())


# ------------------------------------------------------------------------------------------------------ MixStyle

def _mixstyle_reference(x, weights, perm, eps):
    """The paper's Eq.: normalise with own statistics, re-style with the lam-mix of own and partner's (numpy)."""
    x = x.detach().numpy()
    mu, _ = _stats(x)
    sigma = np.sqrt(x.var(axis=(2, 3), ddof=1, keepdims=True) + eps)
    own, other = (w.reshape(-1, 1, 1, 1) for w in weights)
    return (x - mu) / sigma * (own * sigma + other * sigma[perm]) + own * mu + other * mu[perm]


def _draw_mixstyle(alpha, batch, mix):
    """The module's draws in its order: coin, lam ~ Beta(alpha, alpha), then the permutation. Weights lam and
    1 - lam as the official code forms them, in the sampler's float32."""
    torch.rand(())
    lam = torch.distributions.Beta(torch.tensor(alpha), torch.tensor(alpha)).sample((batch,))
    lam = (lam.double().numpy(), (1 - lam).double().numpy())
    if mix == "random":
        return lam, torch.randperm(batch).numpy()
    half = batch // 2  # even batch: partners of the first half are the second half reversed, then shuffled
    first = np.arange(batch - 1, half - 1, -1)[torch.randperm(half).numpy()]
    second = np.arange(half - 1, -1, -1)[torch.randperm(half).numpy()]
    return lam, np.concatenate([first, second])


@pytest.mark.parametrize("mix", ["random", "crossdomain"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mixstyle_matches_the_formula_from_the_same_draws(mix, seed):
    x, alpha, eps = _features(batch=6), 0.3, 1e-6
    module = MixStyle(p=1.0, alpha=alpha, eps=eps, mix=mix).train()
    torch.manual_seed(seed)
    out = module(x)
    torch.manual_seed(seed)
    lam, perm = _draw_mixstyle(alpha, 6, mix)
    np.testing.assert_allclose(out.numpy(), _mixstyle_reference(x, lam, perm, eps), rtol=1e-12, atol=1e-12)


def test_mixstyle_mix_can_be_switched_between_calls():
    x, module = _features(batch=4), MixStyle(p=1.0, alpha=0.3).train()
    module.mix = "crossdomain"
    torch.manual_seed(5)
    out = module(x)
    torch.manual_seed(5)
    lam, perm = _draw_mixstyle(0.3, 4, "crossdomain")
    np.testing.assert_allclose(out.numpy(), _mixstyle_reference(x, lam, perm, 1e-6), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("batch", [2, 4, 6, 5])
def test_crossdomain_partners_come_from_the_other_half(batch):
    torch.manual_seed(0)
    first_len = (batch + 1) // 2  # torch.chunk puts the odd sample in the first chunk, as the official code does
    seen = set()
    for _ in range(200):
        perm = crossdomain_permutation(batch).tolist()
        assert sorted(perm) == list(range(batch))
        assert set(perm[:first_len]) == set(range(batch - first_len, batch))
        assert set(perm[first_len:]) == set(range(batch - first_len))
        seen.add(tuple(perm))
    if batch == 4:
        assert len(seen) == 4  # both halves are shuffled: 2! * 2! orders


def test_mixstyle_statistics_are_detached():
    x, alpha, eps = _features(batch=4).requires_grad_(), 0.3, 1e-6
    weight = torch.randn(x.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    torch.manual_seed(3)
    (MixStyle(p=1.0, alpha=alpha, eps=eps).train()(x) * weight).sum().backward()
    torch.manual_seed(3)
    (own, other), perm = _draw_mixstyle(alpha, 4, "random")
    own, other = own.reshape(-1, 1, 1, 1), other.reshape(-1, 1, 1, 1)
    # mu, sigma constants: out is affine in x with slope sigma_mix / sigma
    xn = x.detach().numpy()
    sigma = np.sqrt(xn.var(axis=(2, 3), ddof=1, keepdims=True) + eps)
    expected = weight.numpy() * (own * sigma + other * sigma[perm]) / sigma
    np.testing.assert_allclose(x.grad.numpy(), expected, rtol=1e-10, atol=1e-12)
    # the same mix with statistics left in the graph has another gradient, so the check above can fail
    live = x.detach().clone().requires_grad_()
    mu, sig = live.mean(dim=(2, 3), keepdim=True), (live.var(dim=(2, 3), keepdim=True) + eps).sqrt()
    own_t, other_t, perm_t = torch.from_numpy(own), torch.from_numpy(other), torch.from_numpy(perm)
    out = (live - mu) / sig * (own_t * sig + other_t * sig[perm_t]) + own_t * mu + other_t * mu[perm_t]
    (out * weight).sum().backward()
    assert (live.grad - x.grad).abs().max() > 1e-3


# ----------------------------------------------------------------------------------------------------------- DSU

def _dsu_by_hand(x, e1, e2, factor, eps, detach):
    """The paper's Eqs. in plain torch ops, statistics optionally detached."""
    mu = x.mean(dim=(2, 3), keepdim=True)
    sigma = (x.var(dim=(2, 3), keepdim=True) + eps).sqrt()
    if detach:
        mu, sigma = mu.detach(), sigma.detach()
    spread_mu = (mu.var(dim=0, keepdim=True) + eps).sqrt()
    spread_sigma = (sigma.var(dim=0, keepdim=True) + eps).sqrt()
    beta, gamma = mu + e1 * factor * spread_mu, sigma + e2 * factor * spread_sigma
    return gamma * (x - mu) / sigma + beta


def _draw_dsu(shape):
    torch.rand(())
    return torch.randn(shape, dtype=torch.float64), torch.randn(shape, dtype=torch.float64)


def test_dsu_matches_the_formula_from_the_same_draws():
    x, factor, eps = _features(), 0.7, 1e-6
    torch.manual_seed(4)
    out = DistributionUncertainty(p=1.0, factor=factor, eps=eps).train()(x)
    torch.manual_seed(4)
    e1, e2 = (e.numpy() for e in _draw_dsu((4, 3, 1, 1)))
    xn = x.numpy()
    mu = xn.mean(axis=(2, 3), keepdims=True)
    sigma = np.sqrt(xn.var(axis=(2, 3), ddof=1, keepdims=True) + eps)
    beta = mu + e1 * factor * np.sqrt(mu.var(axis=0, ddof=1, keepdims=True) + eps)
    gamma = sigma + e2 * factor * np.sqrt(sigma.var(axis=0, ddof=1, keepdims=True) + eps)
    np.testing.assert_allclose(out.numpy(), gamma * (xn - mu) / sigma + beta, rtol=1e-12, atol=1e-12)


def test_dsu_gradient_flows_through_the_statistics():
    weight = torch.randn(4, 3, 5, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(8))
    grads = {}
    for key in ("module", "live", "detached"):
        x = _features().requires_grad_()
        torch.manual_seed(6)
        if key == "module":
            out = DistributionUncertainty(p=1.0).train()(x)
        else:
            e1, e2 = _draw_dsu((4, 3, 1, 1))
            out = _dsu_by_hand(x, e1, e2, 1.0, 1e-6, detach=key == "detached")
        (out * weight).sum().backward()
        grads[key] = x.grad
    torch.testing.assert_close(grads["module"], grads["live"], rtol=1e-10, atol=1e-12)
    assert (grads["module"] - grads["detached"]).abs().max() > 1e-3


def test_dsu_resampled_statistics_have_the_batch_spread():
    """Over draws on a fixed input: the output's instance mean is beta ~ N(mu, (factor Sigma_mu)^2) and its
    contrast gamma ~ N(sigma, (factor Sigma_sigma)^2), per sample and channel."""
    x, factor, eps, draws = _features(), 0.7, 1e-6, 2000
    module = DistributionUncertainty(p=1.0, factor=factor, eps=eps).train()
    xn = x.numpy()
    mu = xn.mean(axis=(2, 3), keepdims=True)
    sigma = np.sqrt(xn.var(axis=(2, 3), ddof=1, keepdims=True) + eps)
    centred = xn - mu
    torch.manual_seed(7)
    outs = np.stack([module(x).numpy() for _ in range(draws)])
    beta = outs.mean(axis=(3, 4))
    # out - beta = gamma (x - mu) / sigma: gamma by least squares, signed
    gamma = ((outs - beta[..., None, None]) * centred).sum(axis=(3, 4)) / (centred ** 2).sum(axis=(2, 3)) \
        * sigma[..., 0, 0]
    for sample, centre in ((beta, mu[..., 0, 0]), (gamma, sigma[..., 0, 0])):
        spread = factor * np.sqrt(centre.var(axis=0, ddof=1, keepdims=True) + eps)
        assert np.all(np.abs(sample.mean(axis=0) - centre) <= Z * spread / np.sqrt(draws))
        ratio = sample.std(axis=0, ddof=1) / spread
        assert np.all(np.abs(ratio - 1) <= Z / np.sqrt(2 * (draws - 1)))


# ------------------------------------------------------------------------------------- Normalization Perturbation

def _draw_np(shape, std):
    torch.rand(())
    alpha = 1 + std * torch.randn(shape, dtype=torch.float64)
    return alpha.numpy(), (1 + std * torch.randn(shape, dtype=torch.float64)).numpy()


def test_np_rescales_contrast_by_alpha_and_brightness_by_beta():
    x, std = _features(), 0.75
    torch.manual_seed(10)
    out = NormalizationPerturbation(std=std, p=1.0).train()(x).numpy()
    torch.manual_seed(10)
    alpha, beta = _draw_np((4, 3, 1, 1), std)
    xn = x.numpy()
    mu, sd = _stats(xn)
    out_mu, out_sd = _stats(out)
    np.testing.assert_allclose(out_mu, beta * mu, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(out_sd, np.abs(alpha) * sd, rtol=1e-10)
    np.testing.assert_allclose(out, alpha * (xn - mu) + beta * mu, rtol=1e-12, atol=1e-12)


def test_np_gradient_keeps_the_mean_in_the_graph():
    x, std = _features().requires_grad_(), 0.75
    weight = torch.randn(x.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(11))
    torch.manual_seed(12)
    (NormalizationPerturbation(std=std, p=1.0).train()(x) * weight).sum().backward()
    torch.manual_seed(12)
    alpha, beta = _draw_np((4, 3, 1, 1), std)
    w = weight.numpy()
    w_mean = w.mean(axis=(2, 3), keepdims=True)
    # d/dx sum w (alpha (x - mean x) + beta mean x) = alpha w + (beta - alpha) mean(w)
    np.testing.assert_allclose(x.grad.numpy(), alpha * w + (beta - alpha) * w_mean, rtol=1e-10, atol=1e-12)


def test_np_factors_are_normal_around_one_with_the_given_std():
    """alpha and beta read back from the outputs alone (least squares and mean ratio)."""
    x, std, draws = _features(), 0.75, 1000
    module = NormalizationPerturbation(std=std, p=1.0).train()
    xn = x.numpy()
    mu, _ = _stats(xn)
    centred = xn - mu
    torch.manual_seed(13)
    outs = np.stack([module(x).numpy() for _ in range(draws)])
    alpha = ((outs - outs.mean(axis=(3, 4), keepdims=True)) * centred).sum(axis=(3, 4)) \
        / (centred ** 2).sum(axis=(2, 3))
    beta = outs.mean(axis=(3, 4)) / mu[..., 0, 0]
    n = alpha.size
    for factor in (alpha, beta):
        assert abs(factor.mean() - 1) <= Z * std / np.sqrt(n)
        assert abs(factor.std(ddof=1) / std - 1) <= Z / np.sqrt(2 * (n - 1))
    assert abs(np.corrcoef(alpha.ravel(), beta.ravel())[0, 1]) <= Z / np.sqrt(n)  # drawn independently


# --------------------------------------------------------------------------------------------------------- PASTA

def _official_grid_sigma(height, width, alpha, k, beta):
    """Typed from ksarangmath/PASTA_robustnet datasets/pasta.py, mode 'prop' (one channel)."""
    def axis(n):
        if n % 2 == 1:
            return np.arange(-1 * (n // 2), (n // 2) + 1)
        return np.concatenate([np.arange(-1 * (n // 2) + 1, 1), np.arange(0, n // 2)])

    xx, yy = np.meshgrid(axis(width), axis(height))
    inv = np.sqrt(np.square(xx) + np.square(yy))
    inv *= (1 / inv.max()) * alpha
    inv = np.power(inv, k)
    inv += beta
    return np.fft.fftshift(inv, axes=[-2, -1])


def _official_pasta(image, rng, alpha, k, beta):
    """The official forward in numpy (float64), with the official ToPILImage truncation back to uint8."""
    img = np.transpose(image, (2, 0, 1)) / 255.0
    fft = np.fft.fftn(img, axes=[-2, -1])
    amp, pha = np.abs(fft), np.angle(fft)
    prop = np.tile(_official_grid_sigma(*image.shape[:2], alpha, k, beta), (3, 1, 1))
    amp = amp * rng.normal(np.ones(prop.shape), prop)
    aug = np.real(np.fft.ifftn(amp * np.exp(1j * pha), axes=[-2, -1]))
    return np.transpose((np.clip(aug, 0, 1) * 255).astype(np.uint8), (1, 2, 0))


def _image(height, width, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


@pytest.mark.parametrize("size", [(4, 6), (5, 7), (4, 5), (8, 8), (1, 4), (31, 64)])
def test_pasta_frequency_grid_is_the_official_one(size):
    for alpha, k, beta in ((3.0, 2, 0.25), (1.5, 1, 0.0), (0.0, 2, 0.5)):
        np.testing.assert_array_equal(amplitude_sigma(*size, alpha, k, beta),
                                      _official_grid_sigma(*size, alpha, k, beta))


def test_pasta_even_axis_repeats_zero_as_official():
    np.testing.assert_array_equal(frequency_radius(1, 4), [[1.0, 0.0, 0.0, 1.0]])  # axis -1, 0, 0, 1
    # (2 r / 1)^2 + 0.5 = [4.5, 0.5, 0.5, 4.5], then fftshift by 2: DC and frequency -1 both get 0.5
    np.testing.assert_array_equal(amplitude_sigma(1, 4, alpha=2.0, k=2, beta=0.5), [[0.5, 4.5, 4.5, 0.5]])
    np.testing.assert_array_equal(frequency_radius(3, 1), [[1.0], [0.0], [1.0]])


def test_pasta_odd_axis_is_shifted_by_one_as_official():
    # axis -2..2 (radius 2 1 0 1 2) put through fftshift, not ifftshift: the DC term gets radius 1, frequency -1 gets 0
    np.testing.assert_array_equal(amplitude_sigma(1, 5, alpha=2.0, k=1, beta=0.0), [[1.0, 2.0, 2.0, 1.0, 0.0]])


@pytest.mark.parametrize("size", [(37, 50), (32, 48), (33, 33)])
def test_pasta_matches_the_official_forward_from_the_same_draws(size):
    image = _image(*size)
    out = pasta(image, np.random.default_rng(3))
    np.testing.assert_array_equal(out, _official_pasta(image, np.random.default_rng(3), 3.0, 2, 0.25))


def test_pasta_output_type_range_and_determinism():
    image = _image(24, 40, seed=1)
    before = image.copy()
    out = pasta(image, np.random.default_rng(0))
    assert out.dtype == np.uint8 and out.shape == image.shape and out.flags["C_CONTIGUOUS"]
    assert np.array_equal(image, before)
    assert np.array_equal(out, pasta(image, np.random.default_rng(0)))
    assert not np.array_equal(out, pasta(image, np.random.default_rng(1)))
    assert np.abs(out.astype(int) - image.astype(int)).mean() > 1.0  # the defaults really perturb
    transform = pickle.loads(pickle.dumps(PASTA(alpha=2.0, k=1, beta=0.1)))
    assert np.array_equal(transform(image, np.random.default_rng(4)),
                          pasta(image, np.random.default_rng(4), alpha=2.0, k=1, beta=0.1))
    assert repr(transform) == "PASTA(alpha=2.0, k=1, beta=0.1)"


def test_pasta_without_noise_truncates_like_to_pil_image():
    """sigma = 0 everywhere: the image only goes through FFT, inverse FFT and x * 255 truncated, so each pixel
    comes back equal or one level lower (round-off below an integer), never higher."""
    image = _image(20, 30, seed=2)
    out = pasta(image, np.random.default_rng(0), alpha=0.0, k=2, beta=0.0).astype(int)
    assert np.all((image.astype(int) - out >= 0) & (image.astype(int) - out <= 1))


def test_pasta_rejects_bad_input():
    rng = np.random.default_rng(0)
    for bad in (np.zeros((8, 8, 3), np.float32), np.zeros((8, 8), np.uint8), np.zeros((8, 8, 4), np.uint8)):
        with pytest.raises(ValueError, match="H x W x 3 uint8"):
            pasta(bad, rng)
    with pytest.raises(ValueError, match="Generator"):
        pasta(_image(8, 8), np.random.RandomState(0))
    with pytest.raises(ValueError, match="alpha"):
        PASTA(alpha=-1.0)
    with pytest.raises(ValueError, match="more than 2"):
        pasta(_image(2, 2), rng)  # the official grid is all zeros there


@pytest.mark.parametrize("size, waves", [
    ((5, 9), [(0, 1), (0, 3), (2, 0)]),  # odd sizes: the grid is symmetric
    ((4, 8), [(0, 1), (0, 3), (1, 0)]),  # even sizes: f and -f get different sigma on the official grid
])
def test_pasta_scales_each_amplitude_with_the_predicted_spread(size, waves):
    """A constant plus cosines at known frequencies. The output's Fourier coefficient over the input's is
    (n_f + n_-f) / 2, the real part of the inverse FFT averaging the two independent factors of f and -f
    (n_f ~ N(1, sigma_f^2)); at the DC term it is n_0. sigma comes from the official construction typed above,
    off-by-one shifts included (the DC term's sigma is 0.15 on the odd grid, not beta)."""
    height, width = size
    alpha, k, beta, draws, amplitude = 1.0, 2, 0.05, 3000, 0.06
    rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    field = 0.5 + sum(amplitude * np.cos(2 * np.pi * (fy * rows / height + fx * cols / width)) for fy, fx in waves)
    image = np.repeat(np.round(field * 255).astype(np.uint8)[..., None], 3, axis=2)
    spectrum_in = np.fft.fft2(image[..., 0] / 255.0)
    sigma = _official_grid_sigma(height, width, alpha, k, beta)
    rng = np.random.default_rng(21)
    outs = np.stack([pasta(image, rng, alpha, k, beta) for _ in range(draws)])  # draws x H x W x 3
    # truncation to uint8 lowers each pixel by half a level on average; add it back for the DC term
    spectra = np.fft.fft2(np.moveaxis(outs, -1, 1) / 255.0, axes=(-2, -1))
    dc = (outs.mean(axis=(1, 2)) + 0.5) / 255.0 / (image[..., 0].mean() / 255.0)
    checks = [(dc, sigma[0, 0])]
    for fy, fx in waves:
        ratio = (spectra[:, :, fy, fx] / spectrum_in[fy, fx]).real
        checks.append((ratio, np.hypot(sigma[fy, fx], sigma[-fy, -fx]) / 2))
    for ratio, predicted in checks:  # ratio: draws x 3 channels, independent
        n = ratio.size
        assert abs(ratio.mean() - 1) <= Z * predicted / np.sqrt(n) + 1e-3
        assert abs(ratio.std(ddof=1) / predicted - 1) <= Z / np.sqrt(2 * (n - 1)) + 0.01
    # the predicted spreads differ enough (at least threefold) that the checks tell frequencies apart
    spreads = [p for _, p in checks]
    assert max(spreads) > 3 * min(spreads)
