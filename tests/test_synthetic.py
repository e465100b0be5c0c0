"""The embedded domains: deterministic, same layouts across domains, different looks, read back by the adapter."""
import json

import numpy as np
import pytest

from segbench.data import DATASETS, DatasetError, build_dataset
from segbench.data.adapters import synthetic
from segbench.data.adapters.synthetic import ensure_generated, generate_sample


def test_generator_is_deterministic():
    a_img, a_lab = generate_sample("sim", 3, "train", seed=7)
    b_img, b_lab = generate_sample("sim", 3, "train", seed=7)
    np.testing.assert_array_equal(a_img, b_img)
    np.testing.assert_array_equal(a_lab, b_lab)
    c_img, _ = generate_sample("sim", 4, "train", seed=7)
    assert not np.array_equal(a_img, c_img)


def test_scenes_cover_enough_classes():
    seen = set()
    for i in range(40):
        _, lab = generate_sample("sim", i, "train")
        seen |= set(np.unique(lab).tolist())
    seen.discard(255)
    assert len(seen) >= 8, seen


def test_domains_share_layout_statistics_but_not_appearance():
    """Class frequencies agree between domains; per-class colour statistics do not."""
    def stats(domain):
        freq = np.zeros(19)
        color = {c: [] for c in (0, 2, 10)}
        for i in range(30):
            img, lab = generate_sample(domain, i, "train")
            freq += np.bincount(lab[lab < 19].ravel(), minlength=19)
            for c in color:
                if (lab == c).any():
                    color[c].append(img[lab == c].mean(0))
        return freq / freq.sum(), {c: np.mean(v, 0) for c, v in color.items()}

    f_sim, c_sim = stats("sim")
    f_photo, c_photo = stats("photo")
    assert np.abs(f_sim - f_photo).sum() < 0.15  # same content distribution (independent draws)
    for c in c_sim:
        assert np.abs(c_sim[c] - c_photo[c]).max() > 20  # clearly different look, 8-bit levels


def test_same_scene_index_gives_same_layout_in_both_domains_only_by_distribution():
    _, lab_sim = generate_sample("sim", 0, "train")
    _, lab_photo = generate_sample("photo", 0, "train")
    assert lab_sim.shape == lab_photo.shape == synthetic.IMAGE_SIZE


def test_tree_written_once_and_regenerated_when_generator_changes(tmp_path, monkeypatch):
    monkeypatch.setattr(synthetic, "SPLIT_SIZES", {"train": 3, "val": 2})
    root = tmp_path / "sim"
    assert ensure_generated(root, "sim") is True
    assert ensure_generated(root, "sim") is False  # up to date: nothing rewritten
    assert len(list((root / "images" / "train").glob("*.png"))) == 3
    meta = json.loads((root / "meta.json").read_text())
    assert meta["generator_version"] == synthetic.GENERATOR_VERSION
    monkeypatch.setattr(synthetic, "GENERATOR_VERSION", synthetic.GENERATOR_VERSION + 1)
    assert ensure_generated(root, "sim") is True
    assert not list(tmp_path.glob(".sim-*"))  # no temp trees left behind


def test_dataset_reads_its_own_files_back(tmp_path, monkeypatch):
    monkeypatch.setattr(synthetic, "SPLIT_SIZES", {"train": 2, "val": 2})
    ds = build_dataset("photo", "val", root=tmp_path)
    assert len(ds) == 2 and ds.root == tmp_path / "synthetic" / "photo"
    image, label = ds.load_pair(1)
    ref_img, ref_lab = generate_sample("photo", 1, "val")
    np.testing.assert_array_equal(image, ref_img)  # PNG round trip is lossless
    np.testing.assert_array_equal(label, ref_lab)


def test_both_domains_are_registered():
    assert {"sim", "photo"} <= set(DATASETS.names())


def test_unknown_split_names_the_valid_ones(tmp_path, monkeypatch):
    monkeypatch.setattr(synthetic, "SPLIT_SIZES", {"train": 1, "val": 1})
    with pytest.raises(DatasetError, match="unknown split 'test'.*valid splits: train, val"):
        build_dataset("sim", "test", root=tmp_path)


def test_generation_says_what_it_writes(tmp_path, monkeypatch, capsys):
    """Generating the embedded domains takes about 15 s before the first cell: a line names the domain, the sizes
    and the place; a tree already there is read silently."""
    monkeypatch.setenv(synthetic.SIZES_ENV, "train=2,val=1")
    assert ensure_generated(tmp_path / "sim", "sim")
    err = capsys.readouterr().err
    assert f"generated the embedded domain 'sim': 2 train, 1 val images in {tmp_path / 'sim'}" in err
    assert not ensure_generated(tmp_path / "sim", "sim")
    assert capsys.readouterr().err == ""
