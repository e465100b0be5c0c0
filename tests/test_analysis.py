"""Analyses (segbench.analysis): appearance transforms, streaming statistics, feature divergence, shift tables.

Everything runs on the embedded domains shrunk to a handful of images and on random-init models in eval mode: the
properties tested (labels untouched, determinism, divergence 0 for identical inputs and growing with the shift, the
files written) do not need a trained network.
"""
import csv
import json

import numpy as np
import pytest
import torch

import minitrees as mt
from segbench.analysis import run_analyses
from segbench.analysis.appearance import TRANSFORMS, ImageTransform, StyleStats, conditions, style_statistics, _lab
from segbench.analysis.cli import build_parser, main
from segbench.analysis.divergence import content_split, feature_points, measure
from segbench.analysis.loading import load_model
from segbench.analysis.shift import ShiftedDataset
from segbench.analysis.stats import ChannelMoments, gaussian_symmetric_kl
from segbench.data import build_dataset
from segbench.data.adapters import synthetic
from segbench.data.transforms import eval_transform_for
from segbench.engine.checkpoint import CheckpointError
from segbench.models import create_model

STYLE = StyleStats(mean=(55.0, -5.0, 8.0), std=(18.0, 6.0, 9.0), source="test")


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    """Both embedded domains with 4 train / 4 val images under a private root."""
    root = tmp_path_factory.mktemp("data")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(synthetic, "SPLIT_SIZES", {"train": 4, "val": 4})
        for name in ("sim", "photo"):
            build_dataset(name, "val", root=root)
        yield root


pytestmark = pytest.mark.usefixtures("one_thread")


# --------------------------------------------------------------------------------------------------------------
# appearance transforms
# --------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,level", conditions(TRANSFORMS))
def test_transform_is_deterministic_and_changes_the_image(name, level):
    image, _ = synthetic.generate_sample("sim", 0, "val")
    t = ImageTransform(name, level, seed=3, style=STYLE)
    a, b = t(image.copy(), 5), ImageTransform(name, level, seed=3, style=STYLE)(image.copy(), 5)
    assert a.shape == image.shape and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert np.abs(a.astype(int) - image).mean() > 0.2, f"{name} {level} left the image (almost) unchanged"


def test_noise_is_seeded_per_image_and_per_seed():
    image, _ = synthetic.generate_sample("sim", 0, "val")
    t = ImageTransform("noise", 20, seed=0)
    assert not np.array_equal(t(image, 0), t(image, 1))
    assert not np.array_equal(t(image, 0), ImageTransform("noise", 20, seed=1)(image, 0))


def test_contrast_scales_the_std_and_keeps_the_mean():
    rng = np.random.default_rng(0)
    image = np.clip(rng.normal(128, 12, (32, 48, 3)), 0, 255).astype(np.uint8)  # no clipping after x1.5
    out = ImageTransform("contrast_up", 1.5)(image, 0).astype(float)
    np.testing.assert_allclose(out.std(axis=(0, 1)), 1.5 * image.std(axis=(0, 1)), rtol=0.03)
    np.testing.assert_allclose(out.mean(axis=(0, 1)), image.mean(axis=(0, 1)), atol=0.6)


def test_full_style_transfer_reaches_the_target_lab_statistics():
    image, _ = synthetic.generate_sample("sim", 1, "val")
    out = ImageTransform("style", 1.0, style=STYLE)(image, 0)
    lab = _lab(out).reshape(-1, 3)
    np.testing.assert_allclose(lab.mean(0), STYLE.mean, atol=2.0)
    np.testing.assert_allclose(lab.std(0), STYLE.std, rtol=0.15)


def test_style_needs_statistics():
    with pytest.raises(ValueError, match="style"):
        ImageTransform("style", 1.0)


@pytest.mark.parametrize("name", list(TRANSFORMS))
def test_shifted_dataset_leaves_labels_untouched(tiny_root, name):
    base = build_dataset("sim", "val", root=tiny_root)
    ds = ShiftedDataset(base, ImageTransform(name, TRANSFORMS[name].levels[-1], style=STYLE), eval_transform_for(base))
    clean = ShiftedDataset(base, None, eval_transform_for(base))
    for i in range(len(base)):
        image, mask = ds[i]
        _, label = base.load_pair(i)
        assert torch.equal(mask, torch.from_numpy(label).long())
        assert not torch.equal(image, clean[i][0])


def test_style_statistics_tell_the_domains_apart(tiny_root):
    sim = style_statistics(build_dataset("sim", "val", root=tiny_root), None)
    photo = style_statistics(build_dataset("photo", "val", root=tiny_root), None)
    assert photo.std[0] < sim.std[0]  # photo is the low-contrast domain


# --------------------------------------------------------------------------------------------------------------
# streaming statistics
# --------------------------------------------------------------------------------------------------------------
def test_channel_moments_match_batch_statistics():
    x = torch.randn(103, 7, dtype=torch.float64) * torch.arange(1, 8) + 1000.0  # offset: naive sumsq would cancel
    m = ChannelMoments()
    for chunk in torch.split(x, [1, 10, 2, 50, 40]):
        m.update(chunk)
    assert m.count == 103
    torch.testing.assert_close(m.mean, x.mean(0))
    torch.testing.assert_close(m.var, x.var(0))


def test_symmetric_kl_closed_form():
    one = torch.tensor([1.0])
    assert gaussian_symmetric_kl(one, one, one, one, eps=0).item() == 0
    # N(0,1) vs N(1,4): KL = log2 + (1+1)/8 - 1/2 and back: -log2 + (4+1)/2 - 1/2; the sum drops the logs
    value = gaussian_symmetric_kl(torch.tensor([0.0]), one, torch.tensor([1.0]), torch.tensor([4.0]), eps=0).item()
    assert value == pytest.approx(2 / 8 + 5 / 2 - 1)
    assert value == pytest.approx(gaussian_symmetric_kl(torch.tensor([1.0]), torch.tensor([4.0]),
                                                        torch.tensor([0.0]), one, eps=0).item())


# --------------------------------------------------------------------------------------------------------------
# divergence
# --------------------------------------------------------------------------------------------------------------
def _random_model(backbone="resnet18"):
    torch.manual_seed(0)
    return create_model(backbone, "fcn", output_stride=32).eval()


def test_feature_points_cover_stem_and_every_block():
    names = [n for n, _ in feature_points(_random_model().backbone)]
    assert names == ["stem"] + [f"layer{s}.{b}" for s in range(1, 5) for b in range(2)]


def test_divergence_of_a_domain_with_itself_is_zero_and_grows_with_brightness(tiny_root):
    model = _random_model()
    base = build_dataset("sim", "val", root=tiny_root)
    curves = {}
    for level in (0, 15, 40, 80):
        rows = measure(model, base, base_b=base, appearance=ImageTransform("brightness", level), content_class=None,
                       batch_size=4, label="r18")
        curves[level] = {(r.pair, r.layer): r.divergence for r in rows}
    layers = [layer for (pair, layer) in curves[0] if pair == "appearance"]
    for layer in layers:
        assert curves[0][("appearance", layer)] == pytest.approx(0, abs=1e-9)
        assert curves[0][("domain", layer)] == pytest.approx(0, abs=1e-9)
    mean = {lv: np.mean([c[("appearance", layer)] for layer in layers]) for lv, c in curves.items()}
    assert mean[0] < mean[15] < mean[40] < mean[80], mean
    stem = [curves[lv][("appearance", "stem")] for lv in (0, 15, 40, 80)]
    assert stem == sorted(stem) and stem[-1] > 0, stem


def test_content_split_is_disjoint_and_ordered_by_class_fraction(tiny_root):
    base = build_dataset("sim", "val", root=tiny_root)
    lo, hi = content_split(base, list(range(len(base))), 13)
    assert len(lo) == len(hi) == 2 and not set(lo) & set(hi)
    frac = lambda i: (base.load_pair(i)[1] == 13).mean()  # noqa: E731 (all pixels are labelled in sim)
    assert max(frac(i) for i in lo) <= min(frac(i) for i in hi)


# --------------------------------------------------------------------------------------------------------------
# checkpoints, CLI, runner entry point
# --------------------------------------------------------------------------------------------------------------
def _fake_cell(study, backbone, seed=0):
    cell = study / "cells" / f"sim__{backbone}__fcn__s{seed}"
    cell.mkdir(parents=True)
    torch.manual_seed(seed)
    torch.save(create_model(backbone, "fcn", output_stride=32).state_dict(), cell / "model_final.pt")
    record = {"cell_id": f"{backbone}-s{seed}", "backbone": backbone, "head": "fcn", "source": "sim", "seed": seed,
              "config": {"model": {"output_stride": 32, "pretrained": None, "aux": False}, "train": {}, "eval": {}},
              "results": {"sim": {"miou": 1.0}, "photo": {"miou": 1.0}}}
    (cell / "record.json").write_text(json.dumps(record))
    return cell


def test_load_model_errors_name_the_file(tmp_path):
    cell = _fake_cell(tmp_path / "study", "resnet18")
    assert load_model(cell).label == load_model(cell / "model_final.pt").label == "resnet18"
    (cell / "record.json").rename(cell / "other.json")
    with pytest.raises(CheckpointError, match=str(cell / "record.json")):
        load_model(cell)
    record = json.loads((cell / "other.json").read_text())
    (cell / "record.json").write_text(json.dumps(dict(record, backbone="resnet18_ibn_b")))
    with pytest.raises(CheckpointError, match="model_final.pt.*do not match"):
        load_model(cell)
    (cell / "record.json").write_text(json.dumps({"backbone": "resnet18"}))
    with pytest.raises(CheckpointError, match="record.json: missing cell_id"):
        load_model(cell)


def test_labels_add_only_what_tells_models_apart(tmp_path):
    from segbench.analysis.loading import load_models

    cells = [_fake_cell(tmp_path / "s", "resnet18", 0), _fake_cell(tmp_path / "s", "resnet18", 1),
             _fake_cell(tmp_path / "s", "resnet18_ibn_a", 0)]
    assert [m.label for m in load_models(cells)] == ["resnet18 s0", "resnet18 s1", "resnet18_ibn_a"]


def _read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_shift_cli_writes_table_and_plot(tiny_root, tmp_path, capsys):
    study = tmp_path / "results" / "toy"
    cells = [_fake_cell(study, "resnet18"), _fake_cell(study, "resnet18_ibn_b")]
    rc = main(["shift", *map(str, cells), "--dataset", "sim", "--data-root", str(tiny_root), "--max-images", "2",
               "--transforms", "brightness,style", "--style-images", "2"])
    assert rc == 0, capsys.readouterr().err
    out = study  # next to the study's table.md
    rows = _read_csv(out / "shift_sim_val.csv")
    assert len(rows) == 2 * (1 + 3 + 3)
    for model in ("resnet18", "resnet18_ibn_b"):
        mine = [r for r in rows if r["model"] == model]
        clean = float(mine[0]["miou"])
        assert mine[0]["transform"] == "clean" and float(mine[0]["drop"]) == 0
        for r in mine[1:]:
            assert float(r["drop"]) == pytest.approx(clean - float(r["miou"]), abs=0.011)
    assert "| style | style 100% |" in (out / "shift_sim_val.md").read_text()
    assert (out / "shift_sim_val.png").read_bytes()[:4] == b"\x89PNG"


def test_run_analyses_divergence_on_the_embedded_default(tiny_root, tmp_path):
    study = tmp_path / "results" / "toy"
    cells = [_fake_cell(study, "resnet18"), _fake_cell(study, "resnet18_ibn_a")]
    paths = run_analyses(["divergence"], cells, study, data_root=tiny_root, device="cpu")
    assert [p.name for p in paths] == ["divergence_sim_photo.csv", "divergence_sim_photo.md", "divergence_sim_photo.png"]
    rows = _read_csv(paths[0])
    assert {r["pair"] for r in rows} == {"appearance", "content", "null", "domain"}
    assert len(rows) == 2 * 4 * 9
    assert all(float(r["divergence"]) >= 0 for r in rows)
    assert paths[2].read_bytes()[:4] == b"\x89PNG"


def test_cli_reports_a_missing_record(tmp_path, capsys):
    (tmp_path / "model_final.pt").write_bytes(b"")
    assert main(["divergence", str(tmp_path), "--domains", "sim"]) == 2
    assert "record.json" in capsys.readouterr().err


def test_size_is_width_by_height_like_every_segbench_command():
    args = build_parser().parse_args(["shift", "cell", "--dataset", "sim", "--size", "1024x512"])
    assert args.size == (512, 1024)  # the eval transform takes (H, W)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["shift", "cell", "--dataset", "sim", "--size", "1024"])


def scored_by_shift_and_evaluate(tmp_path, monkeypatch, capsys, eval_section=None) -> dict:
    """caller ("analyze" / "evaluate") -> {(model input size, scored classes, flip)} of one Mapillary frame scored by
    `analyze shift` and by `segbench evaluate` on a cell whose record holds `eval_section`; no forward pass."""
    import segbench.engine.scoring as engine_scoring
    from segbench.config import EvalSettings
    from segbench.evaluate import main as evaluate_main

    data_root = tmp_path / "data"
    mt.make_mapillary(data_root / "mapillary")
    cell = _fake_cell(tmp_path / "results" / "toy", "resnet18")
    if eval_section is not None:
        record = json.loads((cell / "record.json").read_text())
        record["config"]["eval"] = eval_section
        (cell / "record.json").write_text(json.dumps(record))
    seen = {}

    def fake_evaluate(model, dataset, **kwargs):
        caller = "analyze" if isinstance(dataset, ShiftedDataset) else "evaluate"
        transform = dataset.eval_transform if caller == "analyze" else dataset.transform
        seen.setdefault(caller, set()).add((transform.target_size(mt.H, mt.W), tuple(kwargs["eval_classes"]),
                                            kwargs.get("settings", EvalSettings()).flip))
        return {"miou": 0.0}

    monkeypatch.setattr(engine_scoring, "evaluate", fake_evaluate)
    common = ["--dataset", "mapillary", "--data-root", str(data_root)]
    assert main(["shift", str(cell), *common, "--transforms", "brightness", "--max-images", "1",
                 "--out", str(tmp_path / "out")]) == 0, capsys.readouterr().err
    assert evaluate_main([str(cell), *common, "--device", "cpu"]) == 0, capsys.readouterr().err
    return seen


def test_shift_sizes_images_as_evaluate_does(tmp_path, monkeypatch, capsys):
    """Mapillary is scored at its protocol height (1536): `analyze shift` must feed the model what `evaluate` does."""
    seen = scored_by_shift_and_evaluate(tmp_path, monkeypatch, capsys)
    sizes = {caller: {size for size, _, _ in scored} for caller, scored in seen.items()}
    assert sizes["analyze"] == sizes["evaluate"] == {(1536, round(mt.W * 1536 / mt.H))}


# --------------------------------------------------------------------------------------------------------------
# the divergence against the paper's definition, computed independently
# --------------------------------------------------------------------------------------------------------------
class _Frames:
    """A bare adapter: random RGB frames of the given (H, W) sizes, all-ignore labels; native evaluation size."""

    def __init__(self, sizes, seed):
        rng = np.random.default_rng(seed)
        self.frames = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in sizes]

    def __len__(self):
        return len(self.frames)

    def load_pair(self, i):
        return self.frames[i], np.full(self.frames[i].shape[:2], 255, np.uint8)


def _gaussian_kl(m1, s1, m2, s2):
    """KL(N(m1, s1^2) || N(m2, s2^2)) in closed form, log terms included."""
    return np.log(s2 / s1) + (s1 ** 2 + (m1 - m2) ** 2) / (2 * s2 ** 2) - 0.5


def test_divergence_matches_the_papers_definition_computed_with_numpy():
    """IBN-Net (arXiv:1807.09441, feature-divergence appendix): per channel, a Gaussian fitted to the per-image channel
    means of each domain, D = KL(A||B) + KL(B||A); the layer's value is the mean over channels. Checked for the stem
    (max-pool output) and the last block, with the features taken by hand from the modules, not from the hooks."""
    from segbench.analysis.stats import VAR_EPS

    model = _random_model()
    a, b = _Frames([(40, 56)] * 5, seed=1), _Frames([(40, 56)] * 4, seed=2)
    b.frames = [np.clip(f.astype(int) + 40, 0, 255).astype(np.uint8) for f in b.frames]  # a brighter domain
    rows = measure(model, a, base_b=b, content_class=None, batch_size=3, label="r18")
    got = {r.layer: r.divergence for r in rows if r.pair == "domain"}

    def means(base):
        out = {"stem": [], "layer4.1": []}
        net = model.backbone
        with torch.no_grad():
            for i in range(len(base)):
                x = eval_transform_for(base)(image=base.load_pair(i)[0], mask=base.load_pair(i)[1])["image"][None]
                x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
                out["stem"].append(x.double().mean(dim=(2, 3))[0].numpy())
                out["layer4.1"].append(net.layer4(net.layer3(net.layer2(net.layer1(x)))).double().mean(dim=(2, 3))[0]
                                       .numpy())
        return {k: np.stack(v) for k, v in out.items()}

    fa, fb = means(a), means(b)
    for layer in ("stem", "layer4.1"):
        m1, m2 = fa[layer].mean(0), fb[layer].mean(0)
        s1 = np.sqrt(fa[layer].var(0, ddof=1) + VAR_EPS)
        s2 = np.sqrt(fb[layer].var(0, ddof=1) + VAR_EPS)
        expected = np.mean(_gaussian_kl(m1, s1, m2, s2) + _gaussian_kl(m2, s2, m1, s1))
        assert expected > 1e-3  # the check has something to compare
        assert got[layer] == pytest.approx(expected, rel=1e-4), layer


def test_divergence_takes_frames_of_different_sizes():
    """Mapillary frames keep their aspect ratio at the 1536 evaluation height, so a batch mixes widths: the per-image
    spatial means do not need equal sizes, and the result must not depend on how frames are batched."""
    model = _random_model()
    a = _Frames([(40, 56), (40, 72), (40, 56), (48, 40), (40, 72)], seed=3)
    together = measure(model, a, content_class=None, batch_size=4, label="r18")
    alone = measure(model, a, content_class=None, batch_size=1, label="r18")
    assert [r.divergence for r in together] == pytest.approx([r.divergence for r in alone], rel=1e-6)


def test_divergence_plot_and_table_put_each_value_at_its_own_layer(tmp_path, monkeypatch):
    """Models of different depths (resnet18's 2 blocks per stage, resnet34's 3-4-6-3) in one figure: every plotted
    point must sit at the tick naming the layer it was measured at, and the table must list layers in network order."""
    from segbench.analysis import plots
    from segbench.analysis.divergence import DivergenceRow, divergence_markdown

    def names(blocks):
        return ["stem"] + [f"layer{s}.{b}" for s, n in enumerate(blocks, 1) for b in range(n)]

    rows = []
    for model, blocks in (("r18", (2, 2, 2, 2)), ("r34", (3, 4, 6, 3))):
        for depth, layer in enumerate(names(blocks)):
            rows.append(DivergenceRow(model, "domain", depth, layer, 64, 1.0 + depth + (100 if model == "r34" else 0),
                                      4, 4, "A vs B"))
    figures = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, path: figures.append(fig) or path)
    plots.plot_divergence(rows, tmp_path / "d.png")
    ax = figures[0].axes[0]
    ticks = {round(t): label.get_text() for t, label in zip(ax.get_xticks(), ax.get_xticklabels())}
    measured = {(r.model, r.divergence): r.layer for r in rows}
    for line in ax.get_lines():
        for x, y in zip(line.get_xdata(), line.get_ydata()):
            assert ticks[round(x)] == measured[(line.get_label(), y)]
    table = [line.split("|")[1].strip() for line in divergence_markdown(rows).splitlines() if line.startswith("| ")]
    assert table[1:] == names((3, 4, 6, 3))


def test_shift_scores_clean_frames_as_the_cell_was_evaluated(tmp_path, monkeypatch, capsys):
    """A cell scored under eval.protocol=robustnet (Mapillary: 1536x1536 centre crop), eval.classes=16 and flipped
    inference (segbench/experiments/robustnet_dg.yaml, synthia_dg.yaml): `segbench evaluate` reads that eval section
    from record.json, so `analyze shift`'s clean row, said to be the evaluated mIoU, must be scored the same way."""
    seen = scored_by_shift_and_evaluate(tmp_path, monkeypatch, capsys,
                                        {"protocol": "robustnet", "classes": 16, "flip": True})
    assert seen["analyze"] == seen["evaluate"] and len(seen["analyze"]) == 1
    (size, classes, flip), = seen["analyze"]
    assert size == (1536, 1536) and len(classes) == 16 and flip
