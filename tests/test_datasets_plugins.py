"""Datasets added from outside segbench: YAML files, entry points of an installed distribution, the decorator."""
from __future__ import annotations

import importlib
import json
import pickle
import sys
import textwrap

import numpy as np
import pytest
import torch

import minitrees as mt
from segbench.data import plugins
from segbench.data.base import SegmentationDataset
from segbench.data.cli import main as data_main
from segbench.data.factory import build_dataset
from segbench.data.registry import DATASETS, register_dataset
from segbench.data.yaml_dataset import YamlSpecError, register_yaml
from segbench.spec import SpecError, Transfer, is_prepared, parse_spec

MYCITY = """\
segbench_dataset: 1
name: {name}
root: mycity
splits: [train, val]
images: {{dir: "photos/{{split}}", suffix: ".jpg"}}
labels: {{dir: "gt/{{split}}", suffix: "_gt.png"}}
"""


def write_yaml(path, text):
    path.write_text(textwrap.dedent(text))
    return path


def make_mycity(root, label_writer, n=2):
    truth = {}
    for split in ("train", "val"):
        for k in range(n):
            tids = mt.train_ids(k + (10 if split == "val" else 0))
            img = root / "photos" / split / "seq1" / f"f{k}.jpg"
            mt.write_rgb(img, mt.image(k))
            label_writer(root / "gt" / split / "seq1" / f"f{k}_gt.png", tids)
            truth[img] = tids
    return truth


@pytest.mark.parametrize("encoding", ["trainid", "cityscapes", "ids", "palette", "palette-cityscapes", "ids-channel"])
def test_yaml_dataset_each_label_encoding(tmp_path, encoding):
    name = f"mycity-{encoding}"
    extra = {
        "trainid": ("encoding: trainid\n", lambda p, t: mt.write_gray(p, t)),
        "cityscapes": ("encoding: cityscapes\n", lambda p, t: mt.write_gray(p, mt.to_raw(t, mt.CS_ID, 0).astype(np.uint8))),
        # raw ids of a made-up tool: trainId + 100, ignore = 0
        "ids": ("encoding: ids\nids: {" + ", ".join(f"{t + 100}: {t}" for t in range(19)) + ", 0: 255}\n",
                lambda p, t: mt.write_palette(p, np.where(t == 255, 0, t.astype(int) + 100))),
        "palette": ("encoding: palette\ncolors: {0: [128, 64, 128], 255: [0, 0, 0], "
                    + ", ".join(f"{t}: {list(map(int, mt.PALETTE[t]))}" for t in range(1, 19)) + "}\n",
                    lambda p, t: mt.write_rgb(p, np.where((t == 255)[..., None], 0, mt.PALETTE[np.minimum(t, 18)]).astype(np.uint8))),
        "palette-cityscapes": ("encoding: palette\ncolors: cityscapes\n",
                               lambda p, t: mt.write_rgb(p, np.where((t == 255)[..., None], 0, mt.PALETTE[np.minimum(t, 18)]).astype(np.uint8))),
        "ids-channel": ("encoding: ids\nchannel: g\nids: {" + ", ".join(f"{t + 1}: {t}" for t in range(19)) + ", 0: 255}\n",
                        lambda p, t: mt.write_gray(p, np.stack([np.zeros_like(t), np.where(t == 255, 0, t + 1), np.full_like(t, 9)], -1).astype(np.uint8))),
    }[encoding]
    spec = write_yaml(tmp_path / "mycity.yaml", MYCITY.format(name=name) + extra[0])
    truth = make_mycity(tmp_path / "data/mycity", extra[1])
    assert register_yaml(spec) == name
    ds = build_dataset(name, "val", root=tmp_path / "data")
    assert len(ds) == 2
    for i, (image_path, _) in enumerate(ds.pairs):
        np.testing.assert_array_equal(ds[i][1], truth[image_path])
    if encoding.startswith("palette"):  # black is known: listed, or one of the Cityscapes void colours
        _, raw, _ = ds.load_pair_raw(0)
        assert ds.unknown_label_values(raw, ds.pairs[0][1]) == {}


def test_yaml_dataset_unknown_id_is_reported_by_check(tmp_path, capsys):
    from segbench.data.cli import main

    spec = write_yaml(tmp_path / "mycity.yaml", MYCITY.format(name="mycity") + "encoding: ids\nids: {1: 0, 2: 1}\n")
    root = tmp_path / "data/mycity"
    make_mycity(root, lambda p, t: mt.write_gray(p, np.where(t == 255, 7, 1).astype(np.uint8)))
    register_yaml(spec)
    code = main(["check", "mycity", "--root", str(root), "--split", "train", "--quiet"])
    out = capsys.readouterr().out
    assert code == 1 and "label values outside the mapping" in out and "7 (" in out


def test_yaml_dataset_pickles_into_dataloader_workers(tmp_path):
    register_yaml(write_yaml(tmp_path / "m.yaml", MYCITY.format(name="mycity") + "encoding: trainid\n"))
    make_mycity(tmp_path / "data/mycity", mt.write_gray)
    ds = build_dataset("mycity", "train", root=tmp_path / "data")
    clone = pickle.loads(pickle.dumps(ds))
    np.testing.assert_array_equal(clone[1][1], ds[1][1])
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=1, multiprocessing_context="spawn")
    image, label = next(iter(loader))
    assert tuple(label.shape) == (mt.H, mt.W)


@pytest.mark.parametrize(
    "body, field, fix",
    [
        ("encoding: trainid\nimags: {dir: x, suffix: .png}\n", "imags", "valid fields"),
        ("encoding: rgb\n", "encoding", "trainid, cityscapes, ids, palette"),
        ("encoding: palette\n", "colors", "cityscapes"),
        ("encoding: palette\ncolors: {0: [300, 0, 0]}\n", "colors.0", r"\[r, g, b\]"),
        ("encoding: palette\ncolors: {0: [1, 2, 3], 1: [1, 2, 3]}\n", "colors.1", "one class"),
        ("encoding: ids\nids: {7: 19}\n", "ids.7", r"0..18 or 255"),
        ("encoding: trainid\neval_classes: [0, 25]\n", "eval_classes", "0..18"),
        ("encoding: trainid\nchannel: alpha\n", "channel", "r, g or b"),
    ],
)
def test_yaml_bad_fields_name_file_field_and_fix(tmp_path, body, field, fix):
    spec = write_yaml(tmp_path / "bad.yaml", MYCITY.format(name="bad-one") + body)
    with pytest.raises(YamlSpecError, match=rf"(?s)bad.yaml: field '{field}'.*{fix}"):
        register_yaml(spec)
    assert "bad-one" not in DATASETS


def test_yaml_structural_errors(tmp_path):
    with pytest.raises(YamlSpecError, match="not valid YAML"):
        register_yaml(write_yaml(tmp_path / "a.yaml", "name: [unclosed\n"))
    with pytest.raises(YamlSpecError, match="field 'labels' is missing"):
        register_yaml(write_yaml(tmp_path / "b.yaml", "segbench_dataset: 1\nname: x\nsplits: [train]\nimages: {dir: a, suffix: .png}\nencoding: trainid\n"))
    with pytest.raises(YamlSpecError, match=r"field 'images.dir' has a bad placeholder"):
        register_yaml(write_yaml(tmp_path / "c.yaml", MYCITY.format(name="c").replace("{split}", "{spilt}", 1) + "encoding: trainid\n"))
    with pytest.raises(YamlSpecError, match="'gta5' is a built-in dataset"):
        register_yaml(write_yaml(tmp_path / "d.yaml", MYCITY.format(name="gta5") + "encoding: trainid\n"))


def test_yaml_files_found_through_env_and_data_root(tmp_path, monkeypatch):
    (tmp_path / "env").mkdir()
    write_yaml(tmp_path / "env/a.yaml", MYCITY.format(name="from-env") + "encoding: trainid\n")
    (tmp_path / "data").mkdir()
    write_yaml(tmp_path / "data" / "b.yml", MYCITY.format(name="from-root") + "encoding: trainid\n")
    monkeypatch.setenv(plugins.YAML_PATH_ENV, str(tmp_path / "env"))
    assert sorted(plugins.load_yaml_datasets(tmp_path / "data")) == ["from-env", "from-root"]
    assert "from-env" in DATASETS and "from-root" in DATASETS


# ------------------------------------------------------------------------------------------------ entry points
def fake_distribution(tmp_path, entry_points: str, modules: dict[str, str]):
    """An installed distribution as importlib.metadata sees it: a *.dist-info directory on sys.path."""
    site = tmp_path / "site"
    info = site / "segbench_fakeplugin-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: segbench-fakeplugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(textwrap.dedent(entry_points))
    for name, code in modules.items():
        (site / f"{name}.py").write_text(textwrap.dedent(code))
    return site


PLUGIN_MODULE = """\
from pathlib import Path
from segbench.data.base import SegmentationDataset
from segbench.data.registry import register_dataset
from segbench.data.tables import TRAINID_LUT, TRAINID_KNOWN


class Flat(SegmentationDataset):
    default_dir = "flat"
    layout = "  img/*.png + lab/*.png"
    splits = ("all",)
    label_lut = TRAINID_LUT
    known_label_values = TRAINID_KNOWN

    def find_pairs(self, split):
        return [(p, self.root / "lab" / p.name) for p in sorted((self.root / "img").glob("*.png"))]


@register_dataset("flat-registered-on-import")
class FlatToo(Flat):
    pass
"""


def test_entry_points_register_classes_and_modules(tmp_path, monkeypatch):
    site = fake_distribution(
        tmp_path,
        """\
        [segbench.datasets]
        flat-by-class = fakeplugin_sets:Flat
        flat-module = fakeplugin_sets
        broken = fakeplugin_missing:Nope
        """,
        {"fakeplugin_sets": PLUGIN_MODULE},
    )
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    with pytest.warns(plugins.PluginWarning, match=r"'broken'.*segbench-fakeplugin.*ModuleNotFoundError"):
        loaded = plugins.load_entry_points()
    assert sorted(loaded) == ["flat-by-class", "flat-module"]
    assert "flat-registered-on-import" in DATASETS and "flat-module" not in DATASETS

    root = tmp_path / "data/flat"
    mt.write_rgb(root / "img/a.png", mt.image(0))
    mt.write_gray(root / "lab/a.png", mt.train_ids(0))
    ds = build_dataset("flat-by-class", "all", root=tmp_path / "data")
    np.testing.assert_array_equal(ds[0][1], mt.train_ids(0))
    assert plugins.load_entry_points() == []  # idempotent
    sys.modules.pop("fakeplugin_sets", None)


def test_decorator_is_the_registry_decorator():

    @register_dataset("inline")
    class Inline(SegmentationDataset):
        pass

    assert DATASETS.get("inline") is Inline


# ------------------------------------------------------------------------------------------------ names
@pytest.mark.parametrize("name", ["..", ".", "my_city#1", "a/b", "city@2x", "night-", ""])
def test_a_name_that_is_not_a_plain_token_is_refused_saying_what_a_name_may_hold(tmp_path, name):
    """A name is a directory under the data root (`root` defaults to it) and under each cell: `..` would escape them,
    and `my_city#1` would register here only for the spec parser to refuse it later."""
    spec = write_yaml(tmp_path / "odd.yaml", MYCITY.format(name=json.dumps(name)).replace("root: mycity\n", "")
                      + "encoding: trainid\n")
    with pytest.raises(YamlSpecError, match=r"odd.yaml: field 'name' .*letters, digits, '_', '-' or '.'"):
        register_yaml(spec)
    assert str(name) not in DATASETS
    if name:  # no name: the decorator takes the class name
        with pytest.raises(ValueError, match="letters, digits"):
            register_dataset(str(name))(type("Odd", (SegmentationDataset,), {}))
    if isinstance(name, str) and not is_prepared(name):  # `city@2x` is a spec's way to name a prepared copy of `city`
        with pytest.raises(SpecError, match="letters, digits"):
            parse_spec(f"gta5->{name}")


def test_data_check_of_a_dotdot_dataset_names_the_file_instead_of_reading_the_parent(tmp_path, capsys):
    """Before, `name: ".."` without a root registered and `data check ..` read the parent of the data root."""
    data = tmp_path / "data"
    data.mkdir()
    spec = write_yaml(data / "up.yaml", MYCITY.format(name='".."').replace("root: mycity\n", "") + "encoding: trainid\n")
    make_mycity(tmp_path, lambda p, t: mt.write_gray(p, t))  # a tree one level above the data root, in the layout
    code = data_main(["check", "..", "--data-root", str(data), "--split", "val", "--quiet"])
    out, err = capsys.readouterr()
    assert code == 2 and out == "" and str(spec) in err and "letters, digits" in err


def test_plain_names_with_dots_digits_and_dashes_still_register(tmp_path):
    for name in ("city.v2", "2night", "my_city-1"):
        register_yaml(write_yaml(tmp_path / f"{name}.yaml", MYCITY.format(name=name) + "encoding: trainid\n"))
        assert parse_spec(f"gta5->{name}") == [Transfer("gta5", (name,))]


# ------------------------------------------------------------------------------------------------ undeclared files
def test_an_unknown_name_that_a_skipped_yaml_file_describes_names_the_file_and_the_line(tmp_path, capsys):
    """A file written before the declaration existed is skipped by the scan (it could be anyone's YAML); asking for
    the dataset it describes says which file that is and the line to add, instead of only "unknown dataset"."""
    data = tmp_path / "data"
    data.mkdir()
    old = write_yaml(data / "night.yaml", MYCITY.format(name="night").replace("segbench_dataset: 1\n", "")
                     + "encoding: trainid\n")
    write_yaml(data / "environment.yml", "name: night-env\ndependencies: [python]\n")  # a stranger: not named
    code = data_main(["check", "night", "--data-root", str(data), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "unknown dataset 'night'" in err and str(old) in err and "`segbench_dataset: 1`" in err
    assert "environment.yml" not in err
    from segbench import run

    assert run.main(["sim->night", "--data-root", str(data), "--results", str(tmp_path / "r"), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert str(old) in err and "`segbench_dataset: 1`" in err
    old.write_text("segbench_dataset: 1\n" + old.read_text())  # the fix the message gives
    make_mycity(data / "mycity", lambda p, t: mt.write_gray(p, t))
    assert data_main(["check", "night", "--data-root", str(data), "--quiet"]) == 0
