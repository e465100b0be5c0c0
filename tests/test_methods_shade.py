"""SHADE (Zhao et al., ECCV 2022) against computations written here.

References typed from the paper and the official code, HeliosZhao/SHADE: network/style_hallucination.py (the module),
utils/fps.py (farthest point sampling), train.py (`validate_for_prototype`, the consistency loss), loss.py
(`calc_feat_dist`, `downscale_label_ratio`). Where the module draws, the test re-seeds torch and draws the same
Dirichlet weights, then computes the output with numpy.
"""
from __future__ import annotations

import copy
import itertools

import numpy as np
import pytest
import torch

from segbench.data import build_dataset
from segbench.data.adapters import synthetic
from segbench.data.transforms import build_train_transform, normalized_tensor
from segbench.methods import (MethodError, StyleHallucination, TrainRun, basis_styles, build_method,
                              farthest_point_sampling, instance_style, retrospection_loss, retrospection_mask,
                              style_consistency_loss)
from segbench.methods.base import Batch
from segbench.models import create_model

pytestmark = pytest.mark.usefixtures("one_thread")

THINGS = {6, 7, 11, 12, 13, 14, 15, 16, 17, 18}


def _module(channels=3, styles=5, concentration=0.5, seed=0):
    g = torch.Generator().manual_seed(seed)
    module = StyleHallucination(channels, styles, concentration)
    module.set_basis(torch.randn(styles, channels, generator=g) * 2, 0.5 + torch.rand(styles, channels, generator=g))
    return module


def _features(batch=2, channels=3, height=4, width=5, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, channels, height, width, generator=g) * 3 + 1


def _dirichlet(styles, concentration, batch):
    return torch.distributions.Dirichlet(torch.full((styles,), concentration)).sample((batch,)).double().numpy()


# ------------------------------------------------------------------------------------------------ style hallucination

def test_the_hallucinated_half_has_the_drawn_mixture_of_basis_styles():
    module, x = _module().train(), _features()
    torch.manual_seed(7)
    out = module(x)
    torch.manual_seed(7)
    w = _dirichlet(5, 0.5, 2)
    xs, pm, ps = x.double().numpy(), module.basis_mean.double().numpy(), module.basis_std.double().numpy()
    assert out.shape == (4, 3, 4, 5) and torch.equal(out[:2], x)
    mu, sigma = xs.mean(axis=(2, 3), keepdims=True), xs.std(axis=(2, 3), ddof=1, keepdims=True) + 1e-7
    expected = (xs - mu) / sigma * (w @ ps)[:, :, None, None] + (w @ pm)[:, :, None, None]
    np.testing.assert_allclose(out[2:].double().numpy(), expected, rtol=1e-5, atol=1e-5)
    new = out[2:].double().numpy()
    np.testing.assert_allclose(new.mean(axis=(2, 3)), w @ pm, atol=1e-5)
    np.testing.assert_allclose(new.std(axis=(2, 3), ddof=1), w @ ps, rtol=1e-5)


def test_mean_and_std_are_detached_so_the_gradient_is_the_rescaling():
    module, x = _module().train(), _features().requires_grad_(True)
    upstream = _features(seed=3)
    torch.manual_seed(2)
    (module(x)[2:] * upstream).sum().backward()
    torch.manual_seed(2)
    w = _dirichlet(5, 0.5, 2)
    sigma = x.detach().double().numpy().std(axis=(2, 3), ddof=1, keepdims=True) + 1e-7
    scale = (w @ module.basis_std.double().numpy())[:, :, None, None] / sigma
    np.testing.assert_allclose(x.grad.double().numpy(), upstream.double().numpy() * scale, rtol=1e-5, atol=1e-6)


def test_eval_mode_is_the_identity_and_draws_nothing():
    module, x = _module().eval(), _features()
    state = torch.get_rng_state()
    assert module(x) is x
    assert torch.equal(torch.get_rng_state(), state)


def test_basis_styles_are_buffers_and_bad_shapes_are_named():
    module = StyleHallucination(64)
    assert set(module.state_dict()) == {"basis_mean", "basis_std"} and module.basis_mean.shape == (64, 64)
    assert not list(module.parameters())
    with pytest.raises(ValueError, match=r"basis styles of shape \(3, 64\)"):
        module.set_basis(torch.zeros(3, 64), torch.zeros(3, 64))
    with pytest.raises(ValueError, match="N x 64 x H x W"):
        module.train()(torch.zeros(2, 8, 4, 4))
    with pytest.raises(ValueError, match="concentration=0"):
        StyleHallucination(64, concentration=0)


# ------------------------------------------------------------------------------------------------- basis styles

def _brute_force_fps(points, count, start):
    """Each next point: the largest distance to its nearest chosen point, lowest index on ties, by plain loops."""
    chosen = [start]
    while len(chosen) < count:
        best, best_d = 0, -1.0
        for i, p in enumerate(points):
            d = min(sum((a - b) ** 2 for a, b in zip(p, points[c])) for c in chosen)
            if d > best_d:
                best, best_d = i, d
        chosen.append(best)
    return chosen


POINTS = [(0.0, 0.0), (1.0, 0.0), (5.0, 1.0), (2.0, 4.0), (-3.0, 2.0), (0.5, 0.5), (4.0, -2.0)]


@pytest.mark.parametrize("start", range(len(POINTS)))
def test_farthest_point_sampling_matches_brute_force(start):
    got = farthest_point_sampling(torch.tensor(POINTS, dtype=torch.float64), 5, start)
    assert got.tolist() == _brute_force_fps(POINTS, 5, start)


def test_more_samples_than_points_repeat_index_0_after_all_points_as_the_official_loop():
    got = farthest_point_sampling(torch.tensor(POINTS[:3], dtype=torch.float64), 5, 1).tolist()
    assert sorted(got[:3]) == [0, 1, 2] and got[3:] == [0, 0]


def test_basis_styles_are_the_sampled_images_mean_and_std_together():
    g = torch.Generator().manual_seed(0)
    means, stds = torch.randn(9, 3, generator=g, dtype=torch.float64), torch.rand(9, 3, generator=g, dtype=torch.float64)
    mean, std = basis_styles(means, stds, 4, 2)
    points = [tuple(m) + tuple(s) for m, s in zip(means.tolist(), stds.tolist())]
    chosen = _brute_force_fps(points, 4, 2)
    assert torch.equal(mean, means[chosen]) and torch.equal(std, stds[chosen])


def test_instance_style_is_mean_and_sqrt_of_unbiased_variance_plus_eps():
    x = _features().double()
    mean, std = instance_style(x)
    xs = x.numpy()
    np.testing.assert_allclose(mean.numpy(), xs.mean(axis=(2, 3)), rtol=1e-12)
    np.testing.assert_allclose(std.numpy(), np.sqrt(xs.var(axis=(2, 3), ddof=1) + 1e-7), rtol=1e-12)


def test_bad_fps_arguments_are_named():
    with pytest.raises(ValueError, match="start=7"):
        farthest_point_sampling(torch.zeros(7, 2), 3, 7)
    with pytest.raises(ValueError, match="count=0"):
        farthest_point_sampling(torch.zeros(7, 2), 0, 0)


# ------------------------------------------------------------------------------------------------------ losses

def _numpy_js(a, b):
    """Typed from train.py: softmax, m = clamp((p + q) / 2, 1e-7, 1), KL(q||m) and KL(p||m) each summed over classes
    and divided by the pixel count, then averaged; 0 log 0 = 0."""
    def softmax(z):
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    p, q = softmax(a), softmax(b)
    m = np.clip((p + q) / 2, 1e-7, 1)
    pixels = p.size // p.shape[1]
    total = 0.0
    for dist in (p, q):
        safe = np.where(dist > 0, dist, 1.0)
        total += np.sum(np.where(dist > 0, dist * (np.log(safe) - np.log(m)), 0.0)) / pixels
    return total / 2


def test_style_consistency_loss_matches_the_numpy_formula():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, 5, 3, 4, generator=g) * 3, torch.randn(2, 5, 3, 4, generator=g) * 3
    a[0, 0, 0, 0] = 40.0  # a near-one-hot pixel
    a[0, 1, 0, 1] = b[0, 1, 0, 1] = 300.0  # one-hot in float32 in both: p = q = m = 0 elsewhere, log 0 without the clamp
    got = style_consistency_loss(a, b)
    assert torch.isfinite(got)
    np.testing.assert_allclose(got.item(), _numpy_js(a.double().numpy(), b.double().numpy()), rtol=1e-5)
    assert style_consistency_loss(a, a).item() == pytest.approx(0.0, abs=1e-6)


def _numpy_mask(label, h, w, stride, num_classes, classes=THINGS, min_ratio=0.75, ignore=255):
    """Plain loops: pad with `ignore` to h*stride x w*stride, count labels per cell (ignore as its own class), keep a
    cell whose most frequent label covers >= min_ratio and is a kept class."""
    n = label.shape[0]
    out = np.zeros((n, h, w), dtype=bool)
    for b, i, j in itertools.product(range(n), range(h), range(w)):
        counts = {}
        for y in range(i * stride, (i + 1) * stride):
            for x in range(j * stride, (j + 1) * stride):
                v = int(label[b, y, x]) if y < label.shape[1] and x < label.shape[2] else ignore
                v = v if 0 <= v < num_classes else ignore
                counts[v] = counts.get(v, 0) + 1
        top, count = max(counts.items(), key=lambda kv: kv[1])
        out[b, i, j] = top != ignore and top in classes and count >= min_ratio * stride * stride
    return out


def test_retrospection_mask_on_a_hand_made_label():
    label = torch.zeros(1, 8, 12, dtype=torch.long)  # 2 x 3 cells of 4 x 4
    label[0, 0:4, 0:4] = 13  # a car cell: kept
    label[0, 0:4, 4:8] = 11
    label[0, 0:1, 4:8] = 0  # person on 12 of 16 pixels = 0.75: kept
    label[0, 0:4, 8:12] = 11
    label[0, 0:2, 8:12] = 0
    label[0, 2, 8] = 0  # person on 7 of 16: dropped
    # row 1: road (a stuff class, dropped); 12 ignored + 4 car (the ignore label dominates: dropped); 8 car + 8 person
    label[0, 4:8, 4:8] = 255
    label[0, 4, 4:8] = 13
    label[0, 4:8, 8:10] = 13
    label[0, 4:8, 10:12] = 11
    expected = torch.tensor([[[True, True, False], [False, False, False]]])
    assert torch.equal(retrospection_mask(label, (2, 3), 4, 19), expected)


def test_retrospection_mask_matches_loops_on_random_labels_including_a_padded_input():
    g = torch.Generator().manual_seed(0)
    # few values, so many cells reach 75%; 19 and 40 are outside the classes and count as ignored
    values = torch.tensor([0, 6, 11, 13, 13, 13, 13, 255, 19, 40])
    for (height, width), (h, w) in [((8, 12), (2, 3)), ((7, 10), (2, 3))]:
        label = values[torch.randint(0, len(values), (2, height, width), generator=g)]
        label[0, :4, :4] = 13
        got = retrospection_mask(label, (h, w), 4, 19)
        assert torch.equal(got, torch.from_numpy(_numpy_mask(label.numpy(), h, w, 4, 19)))
        assert got.any()
    with pytest.raises(ValueError, match="larger than 2x2 feature cells of stride 4"):
        retrospection_mask(torch.zeros(1, 8, 12, dtype=torch.long), (2, 2), 4, 19)


def test_retrospection_loss_is_the_masked_mean_of_the_channel_mean_squared_error():
    g = torch.Generator().manual_seed(0)
    f, r = torch.randn(2, 3, 2, 3, generator=g), torch.randn(2, 3, 2, 3, generator=g)
    mask = torch.tensor([[[True, False, True], [False, False, False]], [[False, False, False], [False, True, False]]])
    fs, rs = f.double().numpy(), r.double().numpy()
    terms = [np.mean((fs[b, :, i, j] - rs[b, :, i, j]) ** 2) for b, i, j in zip(*np.nonzero(mask.numpy()))]
    assert retrospection_loss(f, r, mask).item() == pytest.approx(np.mean(terms), rel=1e-6)
    assert retrospection_loss(f, r, torch.zeros_like(mask)).item() == 0.0


# ------------------------------------------------------------------------------------------------- the method

def _run(dataset, iters=2, batch_size=2, pretrained="imagenet"):
    return TrainRun(dataset=dataset, normalize=normalized_tensor, device=torch.device("cpu"), seed=0, iters=iters,
                    batch_size=batch_size, pretrained=pretrained)


def test_the_basis_is_recomputed_every_basis_epochs_until_95_percent():
    method = build_method("shade", {"basis_epochs": 0.75, "retrospection": 0})

    def due(iters):
        return [i for i in range(iters) if method.basis_due(i, _run(list(range(8)), iters=iters))]

    assert due(10) == [0, 3, 6, 9]  # period 0.75 * 8 / 2 = 3 iterations; 9 < 9.5
    assert due(9) == [0, 3, 6]  # 0.95 * 9 = 8.55
    official = build_method("shade")  # every 3 epochs of 10 images at batch 4 = 7.5 iterations: 0, round(7.5)=8, 15
    assert [i for i in range(20) if official.basis_due(i, _run(list(range(10)), iters=20, batch_size=4))] == [0, 8, 15]


def test_the_frozen_copy_is_outside_the_model_and_a_no_pretrained_run_names_the_fix():
    torch.manual_seed(0)
    model = create_model("resnet18", "fcn")
    keys_before = set(model.state_dict())
    initial = copy.deepcopy(model.backbone.state_dict())
    method = build_method("shade")
    method.build(model)
    frozen = method.frozen_backbone
    assert set(model.state_dict()) - keys_before == {"method_modules.maxpool.basis_mean",
                                                     "method_modules.maxpool.basis_std"}
    assert not {id(p) for p in frozen.parameters()} & {id(p) for p in model.parameters()}
    assert not frozen.training and not any(p.requires_grad for p in frozen.parameters())
    assert all(torch.equal(frozen.state_dict()[k], v) for k, v in initial.items())
    with pytest.raises(MethodError, match=r"model.pretrained=imagenet.*method.shade.retrospection=0"):
        method.before_step(model, 0, _run([], pretrained=None))


def test_losses_of_one_step_match_the_formulas_with_the_frozen_backbone_on_the_originals():
    torch.manual_seed(0)
    model = create_model("resnet18", "fcn")
    imagenet = copy.deepcopy(model.backbone).eval()
    method = build_method("shade", {"basis_styles": 3})
    method.build(model)
    g = torch.Generator().manual_seed(1)
    method.hallucination(model).set_basis(torch.rand(3, 64, generator=g), 0.5 + torch.rand(3, 64, generator=g))
    seen = {}
    model.backbone.layer4.register_forward_hook(lambda m, i, o: seen.__setitem__("layer4", o.detach()))
    image = torch.randn(2, 3, 32, 64, generator=g)
    target = torch.full((2, 32, 64), 13, dtype=torch.long)  # all car: every layer4 cell (stride 8) is kept
    target[1, :, :8] = 0  # but one column of cells of the second image is road
    outputs = model.train()(image)
    terms = method.losses(model, outputs, Batch(image, target), 0)
    assert set(terms) == {"style_consistency", "retrospection"}
    logits = outputs["out"].detach().double().numpy()
    assert terms["style_consistency"].item() == pytest.approx(10 * _numpy_js(logits[:2], logits[2:]), rel=1e-5)
    with torch.no_grad():
        reference = imagenet(image)[-1].double().numpy()
    student = seen["layer4"].double().numpy()
    assert student.shape[0] == 4
    keep = np.ones((2, 4, 8), dtype=bool)
    keep[1, :, 0] = False
    per_cell = ((student - np.concatenate([reference, reference])) ** 2).mean(axis=1)
    expected = per_cell[np.concatenate([keep, keep])].mean()
    assert terms["retrospection"].item() == pytest.approx(expected, rel=1e-5)


def test_two_training_iterations_compute_the_basis_from_the_source_images_and_keep_the_frozen_copy(
        tmp_path, monkeypatch):
    from segbench.config import TrainSettings
    from segbench.engine.train import train

    monkeypatch.setattr(synthetic, "SPLIT_SIZES", {"train": 4, "val": 1})
    dataset = build_dataset("sim", "train", tmp_path)
    torch.manual_seed(0)
    model = create_model("resnet18", "fcn")  # random weights standing in for ImageNet's: no download here
    initial = copy.deepcopy(model).eval()
    method = build_method("shade")
    method.build(model)
    frozen_before = copy.deepcopy(method.frozen_backbone.state_dict())
    recorded = []
    real_losses = method.losses
    monkeypatch.setattr(method, "losses", lambda *a: recorded.append(real_losses(*a)) or recorded[-1])
    settings = TrainSettings(iters=2, batch_size=2, workers=0, ckpt_every=0, crop=(32, 64), amp=False)
    train(model, dataset, build_train_transform((32, 64)), settings, seed=0, device=torch.device("cpu"),
          ckpt_dir=tmp_path / "ck", identity={}, method=method, pretrained="imagenet")

    # the basis of iteration 0: the four images' styles after max pooling, by the initial (eval-mode) weights
    styles = []
    with torch.no_grad():
        for i in range(4):
            b = initial.backbone
            x = normalized_tensor(dataset.load_pair(i)[0])[None]
            f = b.maxpool(b.relu(b.bn1(b.conv1(x)))).double().numpy()[0]
            styles.append(np.concatenate([f.mean(axis=(1, 2)), np.sqrt(f.var(axis=(1, 2), ddof=1) + 1e-7)]))
    sh = model.method_modules.maxpool
    basis = torch.cat([sh.basis_mean, sh.basis_std], dim=1).double().numpy()
    assert basis.shape == (64, 128)
    matches = [[np.allclose(row, s, rtol=1e-4, atol=1e-5) for s in styles] for row in basis]
    assert sorted(m.index(True) for m in matches[:4]) == [0, 1, 2, 3]  # every image once, then index 0 repeats
    assert all(m.index(True) == 0 for m in matches[4:])

    assert len(recorded) == 2
    for terms in recorded:
        assert set(terms) == {"style_consistency", "retrospection"}
        assert all(torch.isfinite(t) and t.item() >= 0 for t in terms.values())
    assert recorded[0]["style_consistency"].item() > 0
    frozen = method.frozen_backbone.state_dict()
    assert all(torch.equal(frozen[k], v) for k, v in frozen_before.items())
    assert not torch.equal(model.backbone.conv1.weight, frozen["conv1.weight"])  # while the trained one moved
