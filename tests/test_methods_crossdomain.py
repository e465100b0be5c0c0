"""MixStyle's cross-domain mixing in multi-source training: each sample's source part travels with it from the loader
to the method (`Batch.domains`, `Method.before_forward`), and MixStyle(mix='crossdomain') pairs samples of different
parts as Dassl's DomainMix does (Dassl.pytorch dassl/engine/dg/domain_mix.py)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from segbench.config import TrainSettings
from segbench.data import build_dataset
from segbench.data.adapters import synthetic
from segbench.data.multisource import MultiSourceDataset
from segbench.data.sampler import SeededTransformDataset
from segbench.data.streams import training_stream
from segbench.data.transforms import build_train_transform
from segbench.engine.train import train
from segbench.methods import mixstyle as mixstyle_module
from segbench.methods.base import Batch, Method, MethodError, build_method
from segbench.methods.mixstyle import MixStyle, labelled_crossdomain_partners
from segbench.models import create_model
from tiny_models import PixelModel

CROP = (32, 32)
SEED = 1  # its stream's first two batches of 4 both mix the two sources


@pytest.fixture
def tiny_sources(tmp_path, monkeypatch, one_thread):
    """Two generated domains, 'sim' (6 images) and 'photo' (3), and their union."""
    monkeypatch.setattr(synthetic, "SPLIT_SIZES", {"train": 6, "val": 1})
    sim = build_dataset("sim", "train", root=tmp_path / "data")
    monkeypatch.setattr(synthetic, "SPLIT_SIZES", {"train": 3, "val": 1})
    photo = build_dataset("photo", "train", root=tmp_path / "data")
    return sim, MultiSourceDataset([sim, photo], ["sim", "photo"])


class RecordDomains(Method):
    """ERM that writes down the domains each forward pass is told about."""

    def __init__(self):
        super().__init__()
        self.seen: list[list[int]] = []

    def before_forward(self, model, batch):
        self.seen.append(batch.domains.tolist())


def _settings(iters, batch_size=4, accumulate=1):
    return TrainSettings(iters=iters, batch_size=batch_size, accumulate=accumulate, workers=0, ckpt_every=0)


def _train(tmp_path, model, dataset, settings, method=None, run="a"):
    return train(model, dataset, build_train_transform(CROP, (0.5, 1.0)), settings, seed=SEED,
                 device=torch.device("cpu"), ckpt_dir=tmp_path / run, identity={"run": run}, method=method)


# -- the domains reach the method -----------------------------------------------------------------------------------
@pytest.mark.parametrize("accumulate", [1, 2])
def test_each_forward_is_told_the_source_part_of_its_samples_in_stream_order(tmp_path, tiny_sources, accumulate):
    _, union = tiny_sources
    settings = _settings(iters=3, accumulate=accumulate)
    method = RecordDomains()
    torch.manual_seed(0)
    _train(tmp_path, PixelModel(), union, settings, method)
    # the sampler's own record: which part owns each slot of the block layout, read position by position
    sampler = training_stream(union, settings, seed=SEED, start=0, total=3 * 4)
    owners = []
    for position in range(3 * 4):
        block, slot = divmod(position, sampler.block)
        sampler._layout(block)
        owners.append(int(sampler._owner[slot]))
    micro = 4 // accumulate
    assert method.seen == [owners[k:k + micro] for k in range(0, 12, micro)]
    assert {0, 1} <= set(owners)  # the test would be vacuous on a one-part stream


def test_single_source_samples_are_domain_zero_and_the_pairs_are_unchanged(tiny_sources):
    """The loader's items are the transform's own output for (index, seed), plus the domain."""
    sim, union = tiny_sources
    transform = build_train_transform(CROP, (0.5, 1.0))
    for dataset, index, part in ((sim, 4, 0), (union, 7, 1), (union, 2, 0)):
        image, mask, domain = SeededTransformDataset(dataset, transform)[(index, 1234, -1)]
        raw_image, raw_label = dataset.load_pair(index)
        transform.set_random_seed(1234)
        expected = transform(image=raw_image, mask=raw_label)
        assert torch.equal(image, expected["image"]) and torch.equal(mask, expected["mask"])
        assert domain == part


def test_plain_training_weights_do_not_depend_on_the_domain_hook(tmp_path, tiny_sources):
    """ERM (method=None) and a method that only reads the domains end bit-identical: the hook draws nothing."""
    _, union = tiny_sources
    weights = []
    for run, method in (("plain", None), ("hooked", RecordDomains())):
        torch.manual_seed(0)
        model = PixelModel()
        _train(tmp_path, model, union, _settings(iters=3), method, run=run)
        weights.append(model.state_dict())
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


# -- partners of another domain -------------------------------------------------------------------------------------
def _domainmix_reference(domains: list[int]) -> list[int]:
    """Dassl's DomainMix crossdomain rule, typed out with loops: a random permutation, then for each domain in
    increasing order, partners drawn among the other domains' samples (without replacement when there are enough)."""
    partners = torch.randperm(len(domains)).tolist()
    labels = sorted(set(domains))
    if len(labels) < 2:
        return partners
    for label in labels:
        mine = [i for i, d in enumerate(domains) if d == label]
        others = [i for i, d in enumerate(domains) if d != label]
        draw = torch.ones(len(others)).multinomial(len(mine), replacement=len(mine) > len(others)).tolist()
        for i, k in zip(mine, draw):
            partners[i] = others[k]
    return partners


def test_partners_are_dassl_domainmix_draws_and_always_of_another_domain():
    generator = np.random.default_rng(0)  # the test's own choice of batches; the module draws from torch
    for trial in range(400):
        batch = int(generator.integers(2, 10))
        domains = generator.integers(0, int(generator.integers(1, 4)), size=batch).tolist()
        torch.manual_seed(trial)
        partners = labelled_crossdomain_partners(torch.tensor(domains)).tolist()
        torch.manual_seed(trial)
        assert partners == _domainmix_reference(domains)
        if len(set(domains)) > 1:
            assert all(domains[j] != domains[i] for i, j in enumerate(partners))
            for label in set(domains):  # distinct partners when the other domains hold enough samples
                mine = [partners[i] for i, d in enumerate(domains) if d == label]
                if len(mine) <= batch - len(mine):
                    assert len(set(mine)) == len(mine)


def test_two_domains_in_halves_give_a_one_to_one_map_onto_the_other_half_like_the_official_rule():
    domains = torch.tensor([0, 0, 0, 1, 1, 1])
    torch.manual_seed(0)
    seen = set()
    for _ in range(300):
        partners = labelled_crossdomain_partners(domains).tolist()
        assert sorted(partners[:3]) == [3, 4, 5] and sorted(partners[3:]) == [0, 1, 2]
        seen.add(tuple(partners))
    assert len(seen) == 36  # 3! maps each way, as the official reversed halves shuffled independently


def test_one_domain_in_the_batch_falls_back_to_random_mixing():
    x = torch.randn(5, 3, 4, 4, dtype=torch.float64)
    labelled = MixStyle(p=1.0, alpha=0.3, mix="crossdomain").train()
    labelled.domains = torch.full((5,), 2)
    torch.manual_seed(7)
    out = labelled(x)
    torch.manual_seed(7)
    assert torch.equal(out, MixStyle(p=1.0, alpha=0.3, mix="random").train()(x))
    labelled.domains = torch.tensor([1])
    assert labelled(x[:1]).shape == (1, 3, 4, 4)  # one sample, one domain: no batch-of-2 requirement


def test_labelled_crossdomain_mixstyle_matches_the_formula_with_those_partners():
    x = torch.randn(6, 3, 5, 4, dtype=torch.float64)
    domains = torch.tensor([1, 0, 0, 2, 1, 0])
    module = MixStyle(p=1.0, alpha=0.3, eps=1e-6, mix="crossdomain").train()
    module.domains = domains
    torch.manual_seed(11)
    out = module(x)
    torch.manual_seed(11)
    torch.rand(())  # the coin
    lam = torch.distributions.Beta(torch.tensor(0.3), torch.tensor(0.3)).sample((6,)).double().numpy()
    perm = _domainmix_reference(domains.tolist())
    xs = x.numpy()
    mu = xs.mean(axis=(2, 3), keepdims=True)
    sigma = np.sqrt(xs.var(axis=(2, 3), ddof=1, keepdims=True) + 1e-6)
    own, other = lam.reshape(-1, 1, 1, 1), (1 - lam).reshape(-1, 1, 1, 1)
    expected = (xs - mu) / sigma * (own * sigma + other * sigma[perm]) + own * mu + other * mu[perm]
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-6, atol=1e-9)


def test_domains_that_do_not_fit_the_batch_are_refused():
    module = MixStyle(p=1.0, mix="crossdomain").train()
    module.domains = torch.tensor([0, 1, 0])
    with pytest.raises(ValueError, match=r"domains of shape \(3,\) for a batch of 4"):
        module(torch.randn(4, 2, 3, 3))
    with pytest.raises(ValueError, match="1-D"):
        labelled_crossdomain_partners(torch.zeros(2, 2, dtype=torch.long))


# -- the method in a study ------------------------------------------------------------------------------------------
def test_crossdomain_mixstyle_trains_two_iterations_on_a_multi_source_union(tmp_path, tiny_sources, monkeypatch):
    _, union = tiny_sources
    calls = []
    real = mixstyle_module.labelled_crossdomain_partners

    def spy(domains):
        partners = real(domains)
        calls.append((domains.tolist(), partners.tolist()))
        return partners

    monkeypatch.setattr(mixstyle_module, "labelled_crossdomain_partners", spy)
    torch.manual_seed(0)
    model = create_model("resnet18", "fcn")
    method = build_method("mixstyle", {"mix": "crossdomain", "p": 1.0})
    method.build(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    stats = _train(tmp_path, model, union, _settings(iters=2), method)
    assert stats["resumed_from"] == 0
    assert len(calls) == 2 * 3  # each of the 3 places, each iteration: p=1
    for domains, partners in calls:
        if len(set(domains)) > 1:
            assert all(domains[j] != domains[i] for i, j in enumerate(partners))
    assert any(len(set(domains)) > 1 for domains, _ in calls), calls
    assert not all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_crossdomain_mixstyle_on_one_source_is_refused_before_the_first_step(tmp_path, tiny_sources):
    sim, _ = tiny_sources
    torch.manual_seed(0)
    model = create_model("resnet18", "fcn")
    method = build_method("mixstyle", {"mix": "crossdomain"})
    method.build(model)  # build cannot know the source: it is also how scoring rebuilds a trained cell
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(MethodError, match=r"mix='crossdomain'.*sim is one domain.*gta5\+synthia->cityscapes"):
        _train(tmp_path, model, sim, _settings(iters=2), method)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_random_mixstyle_ignores_the_domains():
    x = torch.randn(4, 3, 4, 4)
    module = MixStyle(p=1.0, alpha=0.3).train()
    torch.manual_seed(2)
    plain = module(x)
    build_method("mixstyle").before_forward(module, Batch(x, torch.zeros(4, 4), torch.tensor([0, 0, 1, 1])))
    assert module.domains is not None
    torch.manual_seed(2)
    assert torch.equal(module(x), plain)


def test_an_unknown_mix_mode_is_a_method_error_at_build():
    with pytest.raises(MethodError, match=r"method.mixstyle.mix='halves' is unknown; use one of"):
        build_method("mixstyle", {"mix": "halves"}).build(create_model("resnet18", "fcn"))


def test_a_single_source_study_with_crossdomain_mixing_fails_its_validation_before_any_work(tmp_path, capsys):
    from segbench import run

    assert run.main(["--dry-run", "--results", str(tmp_path), "--methods", "erm", "mixstyle", "--backbones", "resnet18",
                     "--set", "method.mixstyle.mix=crossdomain"]) == 2
    assert "methods: mixstyle on sim: method.mixstyle.mix='crossdomain'" in capsys.readouterr().err
    assert run.main(["sim+photo->sim", "--dry-run", "--results", str(tmp_path), "--methods", "mixstyle",
                     "--backbones", "resnet18", "--set", "method.mixstyle.mix=crossdomain"]) == 0
