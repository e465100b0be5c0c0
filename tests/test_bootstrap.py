"""Per-image confusion matrices (evaluate -> CELL/confusion/TARGET.npz) and the percentile bootstrap of one cell's
mIoU over test images (report/bootstrap.py), each against a computation written out here: plain loops over pixels and
resamples, the binomial law of a two-image-type mixture, and scipy's own percentile bootstrap."""
from __future__ import annotations

import csv
import io
import re
from pathlib import Path

import numpy as np
import pytest
import scipy.stats
import torch

from segbench.cells import CONFUSION
from segbench.engine import scoring
from segbench.labels import CLASS_NAMES, IGNORE_INDEX, NUM_CLASSES
from segbench.metrics import ConfusionMatrix
from segbench.report import build_report
from segbench.report.bootstrap import (bootstrap_miou, load_image_confusions, miou_of, mious_of_resamples,
                                       resample_indices)
from study_files import write_study


# --- the reference: IoU and mIoU typed from the definition, one class and one cell at a time -----------------------

def loop_miou(matrix, classes=None) -> float:
    """mIoU (%) of a C x C+1 matrix (rows ground truth, last column void predictions): IoU_c = TP / (TP + FP + FN),
    FP counting only real-class predictions; classes with TP + FP + FN = 0 are left out of the mean."""
    n = len(matrix)
    ious = []
    for c in (range(n) if classes is None else classes):
        tp = int(matrix[c][c])
        fn = sum(int(matrix[c][j]) for j in range(n + 1)) - tp
        fp = sum(int(matrix[i][c]) for i in range(n)) - tp
        if tp + fp + fn:
            ious.append(tp / (tp + fp + fn))
    return 100 * sum(ious) / len(ious) if ious else float("nan")


def loop_resample_mious(per_image, classes, indices) -> list[float]:
    out = []
    for row in indices:
        total = np.zeros(per_image.shape[1:], dtype=np.int64)
        for i in row:
            total += per_image[i]
        out.append(loop_miou(total, classes))
    return out


def random_counts(rng, n_images, n_classes, high=50):
    counts = rng.integers(0, high, size=(n_images, n_classes, n_classes + 1))
    counts[:, :, n_classes] = rng.integers(0, 3, size=(n_images, n_classes))  # a few void predictions
    counts[0] = 0  # an image with no labelled pixel
    return counts


# --- the bootstrap ---------------------------------------------------------------------------------------------------

def test_the_mIoU_of_one_matrix_follows_the_official_semantics():
    rng = np.random.default_rng(0)
    matrix = random_counts(rng, 2, 5)[1]
    matrix[3, :] = 0
    matrix[:, 3] = 0  # class 3: neither labelled nor predicted, so left out
    assert np.isnan(loop_miou(matrix, [3]))
    for classes in (None, [0, 2, 3], [4]):
        assert miou_of(matrix, classes) == pytest.approx(loop_miou(matrix, classes), abs=1e-12)
    cm = ConfusionMatrix(num_classes=5)
    cm.counts = torch.from_numpy(matrix)
    assert miou_of(matrix) == pytest.approx(cm.summary()["miou"], abs=1e-12)


def test_identical_images_collapse_the_interval_to_the_point():
    rng = np.random.default_rng(1)
    one = random_counts(rng, 2, NUM_CLASSES)[1]
    per_image = np.repeat(one[None], 25, axis=0)
    point = loop_miou(one)
    low, high = bootstrap_miou(per_image, n_boot=200, seed=5)
    assert low == pytest.approx(point, abs=1e-12) and high == pytest.approx(point, abs=1e-12)


def test_the_vectorised_resamples_equal_a_loop_over_the_same_indices():
    rng = np.random.default_rng(2)
    per_image, classes = random_counts(rng, 7, 4), [0, 1, 3]
    indices = resample_indices(7, 60, seed=3)
    # the documented seed semantics: one row per resample, drawn by numpy's Generator in one call
    np.testing.assert_array_equal(indices, np.random.default_rng(3).integers(0, 7, size=(60, 7)))
    expected = loop_resample_mious(per_image, classes, indices)
    np.testing.assert_allclose(mious_of_resamples(per_image, classes, indices), expected, rtol=0, atol=1e-12)
    low, high = bootstrap_miou(per_image, classes, n_boot=60, seed=3, level=0.9)
    assert (low, high) == pytest.approx(tuple(np.quantile(expected, [0.05, 0.95])), abs=1e-12)


def test_the_interval_equals_scipys_percentile_bootstrap():
    """scipy.stats.bootstrap draws its resamples from the generator the same way: same seed, same interval."""
    rng = np.random.default_rng(4)
    per_image, classes = random_counts(rng, 12, 3, high=30), [0, 1, 2]

    def statistic(idx, axis=-1):
        idx = np.atleast_2d(idx)
        out = np.array(loop_resample_mious(per_image, classes, idx))
        return out if out.size > 1 else out[0]

    ref = scipy.stats.bootstrap((np.arange(12),), statistic, n_resamples=300, method="percentile",
                                confidence_level=0.95, vectorized=True, rng=np.random.default_rng(9))
    low, high = bootstrap_miou(per_image, classes, n_boot=300, seed=9)
    assert low == pytest.approx(ref.confidence_interval.low, abs=1e-12)
    assert high == pytest.approx(ref.confidence_interval.high, abs=1e-12)


def test_a_two_type_mixture_follows_the_binomial_law():
    """A resample of N images holding k of type A has mIoU f(k), k ~ Binomial(N, nA / N); with f increasing, the
    interval's ends are f at the binomial's 2.5% and 97.5% quantiles, up to one step of Monte-Carlo error."""
    n, n_a = 40, 12
    a = np.zeros((3, 4), np.int64)  # class 0 and 1 labelled, both mostly right; class 2 nowhere (left out)
    a[0, 0], a[0, 1], a[1, 1], a[1, 3] = 90, 10, 50, 5
    b = np.zeros((3, 4), np.int64)  # class 0 labelled, predicted as class 1
    b[0, 1], b[0, 0] = 70, 30
    per_image = np.stack([a] * n_a + [b] * (n - n_a))
    f = [loop_miou(k * a + (n - k) * b) for k in range(n + 1)]
    assert all(x < y for x, y in zip(f, f[1:])), "the check below needs f increasing in k"
    low, high = bootstrap_miou(per_image, n_boot=20000, seed=0)
    k_low, k_high = (int(scipy.stats.binom.ppf(q, n, n_a / n)) for q in (0.025, 0.975))
    assert f[k_low - 1] <= low <= f[k_low + 1]
    assert f[k_high - 1] <= high <= f[k_high + 1]
    assert high - low > 5, "a wide interval: the check is not vacuous"


def test_degenerate_inputs_one_image_a_rare_class_and_resamples_without_pixels():
    """By hand. One image: every resample is that image N times, so the interval is the point. A class labelled in one
    image of ten: a resample that missed the image (a share (1 - 1/10)^10 = 0.35 of them) has TP + FP + FN = 0 for it,
    so the class is left out of that resample's mean as the point estimate would leave it out (not scored 0). An image
    with no labelled pixel, drawn for every slot of a resample: that resample has no mIoU and is dropped (not a 0);
    no labelled pixel in any image: no interval."""
    one = random_counts(np.random.default_rng(5), 2, 4)[1:]
    assert bootstrap_miou(one, n_boot=50) == pytest.approx((loop_miou(one[0]),) * 2, abs=1e-12)

    common = np.zeros((3, 4), np.int64)
    common[0, :2], common[1, :2] = (8, 2), (1, 9)  # class 0: IoU 8/11, class 1: IoU 9/12; class 2 nowhere
    rare = common.copy()
    rare[2, 2] = 10  # class 2 labelled and predicted here only: IoU 1
    per_image = np.stack([common] * 9 + [rare])
    without, with_rare = 100 * (8 / 11 + 9 / 12) / 2, 100 * (8 / 11 + 9 / 12 + 1) / 3
    indices = resample_indices(10, 400, seed=1)
    missed = ~(indices == 9).any(1)
    assert 0.25 < missed.mean() < 0.45  # about (1 - 1/10)^10: both kinds of resample occur
    expected = np.where(missed, without, with_rare)
    np.testing.assert_allclose(mious_of_resamples(per_image, None, indices), expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(loop_resample_mious(per_image, None, indices), expected, rtol=0, atol=1e-12)
    low, high = bootstrap_miou(per_image, n_boot=400, seed=1)
    assert (low, high) == pytest.approx((without, with_rare), abs=1e-12)

    empty = np.zeros_like(common)
    labelled = np.stack([empty, common])
    # about 1/4 of the resamples draw [empty, empty]: dropped, so every other one gives `without`
    assert bootstrap_miou(labelled, n_boot=400) == pytest.approx((without, without), abs=1e-12)
    assert all(np.isnan(bootstrap_miou(np.stack([empty, empty]), n_boot=20)))


def test_1000_resamples_of_500_images_are_fast():
    import time

    per_image = np.random.default_rng(0).integers(0, 200_000, size=(500, NUM_CLASSES, NUM_CLASSES + 1))
    start = time.perf_counter()
    bootstrap_miou(per_image)
    assert time.perf_counter() - start < 1.0


@pytest.mark.parametrize("bad, match", [
    (dict(per_image=np.zeros((3, 4, 4), np.int64)), "N x C x C\\+1"),
    (dict(per_image=np.zeros((3, 4, 5))), "integers"),
    (dict(classes=[0, 7]), "0..3"),
    (dict(level=95), "level=95"),
    (dict(n_boot=0), "at least one"),
])
def test_bad_input_is_named(bad, match):
    args = dict(per_image=np.ones((3, 4, 5), np.int64), classes=None, n_boot=10, level=0.95)
    args.update(bad)
    with pytest.raises(ValueError, match=match):
        bootstrap_miou(**args)


# --- per-image matrices from a real evaluate ------------------------------------------------------------------------

class ChannelZeroModel(torch.nn.Module):
    """Predicts at each pixel the class written in the image's first channel (one-hot logits)."""

    def forward(self, x):
        cls = x[:, 0].round().long().clamp(0, NUM_CLASSES - 1)
        return {"out": torch.nn.functional.one_hot(cls, NUM_CLASSES).permute(0, 3, 1, 2).float()}


class KnownPredictions(torch.utils.data.Dataset):
    """Images of two sizes carrying the prediction in channel 0, labels agreeing on about half the pixels, some
    ignored; listed as (image, label) paths like a real dataset."""

    def __init__(self, n: int = 5):
        rng = np.random.default_rng(0)
        self.frames = []
        for i in range(n):
            h, w = (6, 10) if i % 2 else (8, 4)
            pred = rng.integers(0, NUM_CLASSES, (h, w))
            label = np.where(rng.random((h, w)) < 0.5, pred, rng.integers(0, NUM_CLASSES, (h, w)))
            label[rng.random((h, w)) < 0.2] = IGNORE_INDEX
            self.frames.append((pred, label))
        self.pairs = [(Path(f"/data/img/f{i}.png"), Path(f"/data/gt/f{i}.png")) for i in range(n)]

    def __len__(self):
        return len(self.frames)

    def __getitem__(self, i):
        pred, label = self.frames[i]
        return torch.from_numpy(pred).float()[None].repeat(3, 1, 1), torch.from_numpy(label)


def expected_matrices(ds: KnownPredictions) -> np.ndarray:
    out = np.zeros((len(ds), NUM_CLASSES, NUM_CLASSES + 1), np.int64)
    for n, (pred, label) in enumerate(ds.frames):
        for p, t in zip(pred.ravel(), label.ravel()):
            if t != IGNORE_INDEX:
                out[n, t, p] += 1
    return out


def test_evaluate_writes_one_matrix_per_image_in_dataset_order(tmp_path, monkeypatch, one_thread):
    whole = []

    class RecordingMatrix(ConfusionMatrix):
        def summary(self, *a, **k):
            whole.append(self.counts.clone())
            return super().summary(*a, **k)

    monkeypatch.setattr(scoring, "ConfusionMatrix", RecordingMatrix)
    ds = KnownPredictions()
    path = tmp_path / CONFUSION / "known.npz"
    result = scoring.evaluate(ChannelZeroModel(), ds, device=torch.device("cpu"), workers=0, batch_size=2,
                              per_image_path=path)
    counts, images = load_image_confusions(path)
    assert counts.shape == (5, NUM_CLASSES, NUM_CLASSES + 1) and counts.dtype == np.int64
    np.testing.assert_array_equal(counts, expected_matrices(ds))
    assert images == [str(image) for image, _ in ds.pairs]
    np.testing.assert_array_equal(counts.sum(0), whole[0].numpy())  # exactly the split's matrix
    assert miou_of(counts.sum(0)) == pytest.approx(result["miou"], abs=1e-9)
    assert [p.name for p in path.parent.iterdir()] == ["known.npz"]  # no temp file left behind


def _rank(rank: int, store: str, out: str) -> None:
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        scoring.evaluate(ChannelZeroModel(), KnownPredictions(), device=torch.device("cpu"), workers=0,
                         per_image_path=Path(out))
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_processes_write_the_file_of_one(tmp_path, one_thread):
    """5 images over 2 ranks (3 + 2): gathered and interleaved back, the file is the 1-process one."""
    one, two = tmp_path / "one.npz", tmp_path / "two.npz"
    scoring.evaluate(ChannelZeroModel(), KnownPredictions(), device=torch.device("cpu"), workers=0,
                     per_image_path=one)
    torch.multiprocessing.spawn(_rank, args=(str(tmp_path / "store"), str(two)), nprocs=2)
    (c1, i1), (c2, i2) = load_image_confusions(one), load_image_confusions(two)
    np.testing.assert_array_equal(c2, c1)
    assert i2 == i1
    np.testing.assert_array_equal(c1, expected_matrices(KnownPredictions()))


def test_a_scored_cell_keeps_its_per_image_matrices(tmp_path, monkeypatch, one_thread):
    """run_cell on a trained cell: scoring the target writes confusion/TARGET.npz beside the record."""
    from segbench import network, pipeline
    from segbench.cells import FINAL_WEIGHTS, plan
    from segbench.record import new_record, read_record, write_record
    from segbench.config import EMBEDDED_DEFAULT, load_config
    from segbench.data.adapters import synthetic
    from segbench.io import save_torch
    from segbench.spec import parse_specs
    from tiny_models import PixelModel

    monkeypatch.setattr(synthetic, "SPLIT_SIZES", {"train": 1, "val": 2})
    monkeypatch.setattr(network, "create_model", lambda *a, **k: PixelModel())
    (cell,) = plan(load_config(EMBEDDED_DEFAULT), parse_specs(["sim->sim"]), ["resnet18"], ["fcn"])[:1]
    cell_dir = cell.directory(tmp_path / "results")
    cell_dir.mkdir(parents=True)
    write_record(cell_dir, new_record(cell))
    torch.manual_seed(0)
    save_torch(cell_dir / FINAL_WEIGHTS, PixelModel().state_dict())
    pipeline.run_cell(cell, cell_dir, data_root=tmp_path / "data", device=torch.device("cpu"))
    result = read_record(cell_dir)["results"]["sim"]
    counts, images = load_image_confusions(cell_dir / CONFUSION / "sim.npz")
    assert len(counts) == len(images) == result["images"] == 2
    classes = [CLASS_NAMES.index(c) for c in result["per_class_iou"]]
    assert miou_of(counts.sum(0), classes) == pytest.approx(result["miou"], abs=1e-9)


# --- the report ------------------------------------------------------------------------------------------------------

def _record(backbone, seed, mious, cell_id):
    return {"cell_id": cell_id, "backbone": backbone, "head": "fcn", "source": "gta", "seed": seed,
            "targets": ["gta", "city"], "config": {"model": {}, "train": {"iters": 3}},
            "results": {t: {"miou": m, "pixel_acc": 50.0, "images": 30, "per_class_iou": {"road": m, "sky": m}}
                        for t, m in mious.items()}}


def _cell_dir(root, rec):
    return root / "cells" / f"gta__{rec['backbone']}__fcn__s{rec['seed']}__{rec['cell_id']}"


def _scored_per_image(rng, n=30):
    """Per-image matrices over road (0) and sky (10), with the record's mIoU computed from them by the loop."""
    counts = np.zeros((n, NUM_CLASSES, NUM_CLASSES + 1), np.int64)
    counts[:, 0, 0] = rng.integers(50, 100, n)
    counts[:, 0, 10] = rng.integers(0, 60, n)
    counts[:, 10, 10] = rng.integers(20, 80, n)
    counts[:, 10, 0] = rng.integers(0, 40, n)
    return counts, loop_miou(counts.sum(0), [0, 10])


def _study(tmp_path, with_files=True):
    rng = np.random.default_rng(7)
    gta, city = _scored_per_image(rng), _scored_per_image(rng)
    one_seed = _record("r18", 0, {"gta": gta[1], "city": city[1]}, "aaa")
    two_seeds = [_record("r50", s, {"gta": 60.0 + s, "city": 40.0 + 2 * s}, f"b{s}") for s in (0, 1)]
    write_study(tmp_path, [one_seed, *two_seeds])
    if with_files:
        for target, (counts, _) in (("gta", gta), ("city", city)):
            scoring.save_image_confusions(_cell_dir(tmp_path, one_seed) / CONFUSION / f"{target}.npz", counts,
                                          [f"img{i}" for i in range(len(counts))])
    return {"gta": gta, "city": city}


def _expected_interval(counts):
    indices = np.random.default_rng(0).integers(0, len(counts), size=(1000, len(counts)))
    return np.quantile(loop_resample_mious(counts, [0, 10], indices), [0.025, 0.975])


def _expected_entries(per_target) -> dict[str, str]:
    """target -> `MIOU [LOW, HIGH]` as a one-seed cell shows it, from the loop bootstrap; each interval holds its mIoU."""
    shown = {}
    for target, (counts, miou) in per_target.items():
        low, high = _expected_interval(counts)
        assert low < miou < high
        shown[target] = f"{miou:.1f} [{low:.1f}, {high:.1f}]"
    return shown


def test_one_seed_rows_show_the_bootstrap_interval_and_others_the_spread(tmp_path):
    per_target = _study(tmp_path)
    build_report(tmp_path, plot=False)
    shown = _expected_entries(per_target)
    table = (tmp_path / "table.md").read_text()
    assert f"| r18 | {shown['gta']} (n=1) | {shown['city']} (n=1) |" in table
    assert "| r50 | 60.5 ± 0.5 | 41.0 ± 1.0 |" in table  # standard error over the 2 seeds, as before
    assert "95% percentile bootstrap interval over its test images (1000 resamples)" in table
    dg_md = (tmp_path / "dg.md").read_text()
    assert f"| r18 | {shown['gta']} (n=1) | {shown['city']} (n=1) |" in dg_md
    assert "percentile bootstrap" in dg_md

    rows = {r["backbone"]: r for r in csv.DictReader(io.StringIO((tmp_path / "table.csv").read_text()))}
    low, high = _expected_interval(per_target["city"][0])
    assert rows["r18"]["train gta / test city bootstrap low"] == f"{low:.2f}"
    assert rows["r18"]["train gta / test city bootstrap high"] == f"{high:.2f}"
    assert rows["r50"]["train gta / test city bootstrap low"] == ""
    boot = list(csv.DictReader(io.StringIO((tmp_path / "bootstrap.csv").read_text())))
    assert [(r["cell_id"], r["target"]) for r in boot] == [("aaa", "gta"), ("aaa", "city")]
    for r in boot:
        counts, miou = per_target[r["target"]]
        low, high = _expected_interval(counts)
        assert float(r["miou"]) == pytest.approx(miou, abs=1e-4)
        assert (float(r["low"]), float(r["high"])) == pytest.approx((low, high), abs=1e-4)
        assert r["images"] == "30" and r["n_boot"] == "1000"


def test_latex_tables_show_the_bootstrap_interval_the_markdown_shows(tmp_path):
    """README: table.tex and dg.tex hold the markdown's entries, so a one-seed row keeps its interval there too (and
    the caption says what it is); bold marks only the mean."""
    per_target = _study(tmp_path)
    build_report(tmp_path, plot=False)
    shown = {target: f"{entry} (n=1)" for target, entry in _expected_entries(per_target).items()}
    for name in ("table.tex", "dg.tex"):
        tex = re.sub(r"\\textbf\{([0-9.]+)\}", r"\1", (tmp_path / name).read_text())
        assert f"r18 & {shown['gta']} & {shown['city']} \\\\" in tex, name
        assert r"r50 & 60.5\,$\pm$\,0.5 & 41.0\,$\pm$\,1.0 \\" in tex, name
        assert r"95\% percentile bootstrap interval over its test images (1000 resamples)" in tex, name


def test_records_without_per_image_files_keep_todays_tables(tmp_path):
    _study(tmp_path, with_files=False)
    build_report(tmp_path, plot=False)
    table = (tmp_path / "table.md").read_text()
    assert "bootstrap" not in table and "bootstrap" not in (tmp_path / "table.csv").read_text()
    assert not (tmp_path / "bootstrap.csv").exists()
    assert "| r18 |" in table and "[" not in table.split("| r18 |")[1].splitlines()[0]


def test_a_per_image_file_that_disagrees_with_its_record_is_left_out(tmp_path):
    per_target = _study(tmp_path)
    counts = per_target["gta"][0]
    path = next((tmp_path / "cells").glob("*aaa")) / CONFUSION / "gta.npz"
    scoring.save_image_confusions(path, counts[:-1], [f"img{i}" for i in range(len(counts) - 1)])
    with pytest.warns(UserWarning, match="gta.npz.*29 images"):
        build_report(tmp_path, plot=False)
    boot = list(csv.DictReader(io.StringIO((tmp_path / "bootstrap.csv").read_text())))
    assert [r["target"] for r in boot] == ["city"]


class Payload:
    def __reduce__(self):
        return (print, ("this file ran code",))


@pytest.mark.parametrize("damage", ["truncated", "object-array"])
def test_a_damaged_per_image_file_is_named_and_its_interval_marked_missing(tmp_path, capsys, damage):
    """Not a BadZipFile traceback naming no file, and not an interval that quietly disappears."""
    from segbench.report.cli import main

    per_target = _study(tmp_path)
    path = next((tmp_path / "cells").glob("*aaa")) / CONFUSION / "city.npz"
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:100])
    else:
        np.savez(path, counts=np.array([Payload()], dtype=object), images=np.array(["a"]))
    with pytest.warns(UserWarning, match=rf"{path}: .*rerun the study to score city again"):
        assert main([str(tmp_path), "--no-plot"]) == 0
    assert "ran code" not in capsys.readouterr().out
    gta = _expected_entries({"gta": per_target["gta"]})["gta"]
    for name in ("table.md", "dg.md"):
        text = (tmp_path / name).read_text()
        assert f"| r18 | {gta} (n=1) | {per_target['city'][1]:.1f} [n/a] (n=1) |" in text, name
        assert "[n/a]: no bootstrap interval" in text, name
    assert "[n/a]" in (tmp_path / "table.tex").read_text()


def test_a_per_image_file_the_record_names_and_that_is_gone_is_marked_missing(tmp_path):
    _study(tmp_path)
    cell = next((tmp_path / "cells").glob("*aaa"))
    (cell / CONFUSION / "city.npz").unlink()
    with pytest.warns(UserWarning, match=r"city\.npz: missing; rerun the study to score city again"):
        build_report(tmp_path, plot=False)
    assert "[n/a] (n=1)" in (tmp_path / "table.md").read_text()


def test_an_interval_is_computed_once_and_again_when_its_file_changes(tmp_path, monkeypatch):
    """A report over a thousand cells must not bootstrap every cell again: the interval is cached beside its file,
    under the file's content and the bootstrap settings."""
    from segbench.report import bootstrap

    per_target = _study(tmp_path)
    computed = []
    real = bootstrap.bootstrap_miou
    monkeypatch.setattr(bootstrap, "bootstrap_miou",
                        lambda counts, *a: computed.append(len(counts)) or real(counts, *a))
    build_report(tmp_path, plot=False)
    first = (tmp_path / "table.md").read_text()
    assert computed == [30, 30]
    build_report(tmp_path, plot=False)
    assert computed == [30, 30] and (tmp_path / "table.md").read_text() == first  # from the cache, same entries

    counts = per_target["gta"][0][::-1]  # the same images in another order: same mIoU, other resamples
    path = next((tmp_path / "cells").glob("*aaa")) / CONFUSION / "gta.npz"
    scoring.save_image_confusions(path, counts, [f"img{i}" for i in range(len(counts))])
    build_report(tmp_path, plot=False)
    assert computed == [30, 30, 30]
    low, high = _expected_interval(counts)
    assert f"{per_target['gta'][1]:.1f} [{low:.1f}, {high:.1f}] (n=1)" in (tmp_path / "table.md").read_text()
