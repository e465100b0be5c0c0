"""Damaged datasets and hostile data-root files, as a new user would meet them, on generated miniatures (issue 12).

* a raw label value outside the dataset's table: `data check` names the file and the value (exit 1); reading it for
  training or evaluation stops with the file, the value and the fix; `train.unknown_labels: ignore` trains it as
  ignored and counts it in the record. The same for every adapter, the synthetic domains, YAML datasets and the cache.
* YAML files in the data root: only files declaring `segbench_dataset: 1` are datasets; their paths stay inside their
  bases; a built-in name cannot be taken.
* every `segbench data` command takes --data-root; `data check --split all` checks every split.
"""
from __future__ import annotations

import json
import textwrap
import warnings

import numpy as np
import pytest
import torch

import minitrees as mt
from segbench.data import base as data_base
from segbench.data import plugins
from segbench.data.adapters import synthetic
from segbench.data.base import DatasetError
from segbench.data.cli import main as data_main
from segbench.data.factory import build_dataset
from segbench.data.factory import prepare_dataset
from segbench.data.registry import DATASETS
from segbench.data.yaml_dataset import YamlSpecError, register_yaml
from tiny_models import PixelModel

SMALL_SIM = {"train": 2, "val": 1}


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """Scan caches under tmp_path, small synthetic domains, and YAML datasets unregistered afterwards."""
    monkeypatch.setenv("SEGBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(plugins.YAML_PATH_ENV, raising=False)
    monkeypatch.setattr(synthetic, "SPLIT_SIZES", dict(SMALL_SIM))
    yield


def write_yaml(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def data_cli(capsys, *argv):
    code = data_main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def count_unknown_labels(dataset, **kwargs):
    from segbench.data.label_scan import count_unknown_labels as count  # here: a failure is one test's, not the file's

    return count(dataset, **kwargs)


def quietly(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


# ------------------------------------------------------------------------------------------------ one damaged frame
MYCITY = """\
segbench_dataset: 1
name: {name}
root: mycity
splits: [train, val]
images: {{dir: "photos/{{split}}", suffix: ".png"}}
labels: {{dir: "gt/{{split}}", suffix: "_gt.png"}}
"""


def make_mycity(root, write_label):
    for split in ("train", "val"):
        for k in range(2):
            mt.write_rgb(root / "photos" / split / f"f{k}.png", mt.image(k))
            write_label(root / "gt" / split / f"f{k}_gt.png", mt.train_ids(k))


def damaged(case: str, data_root):
    """A miniature of `case` under `data_root` with one label holding 5 pixels of a raw value outside its table.
    Returns (dataset name, split, the damaged label file, how messages show the value)."""
    if case == "sim":
        build_dataset("sim", "train", root=data_root)  # generates the tree
        label = data_root / "synthetic/sim/labels/train/00001.png"
        mt.poke_label(label, 200)
        return "sim", "train", label, "200"
    if case == "cityscapes":
        mt.make_cityscapes(data_root / "cityscapes")
        label = sorted((data_root / "cityscapes/gtFine/train").rglob("*_labelIds.png"))[0]
        mt.poke_label(label, 40)
        return "cityscapes", "train", label, "40"
    if case == "acdc-fog":
        mt.make_acdc(data_root / "acdc", conditions=("fog",))
        label = sorted((data_root / "acdc/gt/fog/train").rglob("*.png"))[0]
        mt.poke_label(label, 40)  # a trainId file: 19..254 are outside it
        return "acdc-fog", "train", label, "40"
    if case == "gta5":
        mt.make_gta5(data_root / "gta5", count=2)
        label = data_root / "gta5/labels/00002.png"
        mt.poke_label(label, 40)
        return "gta5", "all", label, "40"
    if case == "synthia":
        mt.make_synthia(data_root / "synthia", count=2)
        label = data_root / "synthia/GT/LABELS/0000001.png"
        mt.poke_label(label, 300)
        return "synthia", "all", label, "300"
    if case == "bdd100k":
        mt.make_bdd100k(data_root / "bdd100k")
        label = sorted((data_root / "bdd100k/labels/sem_seg/masks/train").glob("*.png"))[0]
        mt.poke_label(label, 40)
        return "bdd100k", "train", label, "40"
    if case == "mapillary":
        mt.make_mapillary(data_root / "mapillary")
        label = sorted((data_root / "mapillary/training/labels").glob("*.png"))[0]
        mt.poke_label(label, 70)
        return "mapillary", "train", label, "70"
    if case == "yaml-ids":
        write_yaml(data_root / "mycity.yaml", MYCITY.format(name="mycity-ids")
                   + "encoding: ids\nids: {" + ", ".join(f"{t + 1}: {t}" for t in range(19)) + ", 0: 255}\n")
        make_mycity(data_root / "mycity", lambda p, t: mt.write_gray(p, np.where(t == 255, 0, t + 1).astype(np.uint8)))
        label = data_root / "mycity/gt/train/f1_gt.png"
        mt.poke_label(label, 77)
        return "mycity-ids", "train", label, "77"
    if case == "yaml-palette":
        write_yaml(data_root / "mycity.yaml", MYCITY.format(name="mycity-palette") + "encoding: palette\ncolors: cityscapes\n")
        colour = lambda t: np.where((t == 255)[..., None], 0, mt.PALETTE[np.minimum(t, 18)]).astype(np.uint8)
        make_mycity(data_root / "mycity", lambda p, t: mt.write_rgb(p, colour(t)))
        label = data_root / "mycity/gt/train/f1_gt.png"
        mt.poke_label(label, (1, 2, 3))
        return "mycity-palette", "train", label, "rgb(1, 2, 3)"
    if case == "prepared":
        mt.make_cityscapes(data_root / "cityscapes")
        quietly(prepare_dataset, "cityscapes", (64, 32), data_root_dir=data_root, progress=False)
        label = sorted((data_root / "prepared/cityscapes@64x32/labels").glob("*train*.png"))[0]
        mt.poke_label(label, 200)  # a damaged cache: labels there are trainIds
        return "cityscapes@64x32", "train", label, "200"
    raise ValueError(case)


CASES = ["sim", "cityscapes", "acdc-fog", "gta5", "synthia", "bdd100k", "mapillary", "yaml-ids", "yaml-palette", "prepared"]


@pytest.mark.parametrize("case", CASES)
def test_label_value_outside_the_table_is_reported_refused_or_counted(tmp_path, capsys, case):
    root = tmp_path / "data"
    name, split, label_path, shown = damaged(case, root)

    # data check: the file and the value, exit 1 (it used to count the value under "ignored" and say "no problems")
    code, out, _ = data_cli(capsys, "check", name, "--data-root", str(root), "--split", split, "--quiet")
    assert code == 1, out
    assert "PROBLEMS" in out and str(label_path) in out and f"value {shown}: 5 px" in out

    # training and evaluation read through load_pair: it stops, naming the file, the value and the fix
    ds = quietly(build_dataset, name, split, root=root)
    index = [label for _, label in ds.pairs].index(label_path)
    with pytest.raises(data_base.UnknownLabelError) as info:
        ds.load_pair(index)
    message = str(info.value)
    assert str(label_path) in message and f"{shown} (5 px)" in message and "train.unknown_labels=ignore" in message
    assert isinstance(info.value, DatasetError)

    # the explicit option: the pixels become ignore, and the pre-pass counts them exactly
    ds.unknown_labels = "ignore"
    _, label = ds.load_pair(index)
    assert (label[0, :5] == 255).all()
    counted = count_unknown_labels(ds)
    assert (counted.pixels, counted.files) == (5, 1) and list(counted.values.values()) == [5]


def test_the_message_survives_a_dataloader_worker(tmp_path):
    """torch re-raises a worker's error as "Caught X in DataLoader worker process N. Original Traceback ..."; the
    message a user sees must still start with the file."""
    root = tmp_path / "data"
    name, split, label_path, _ = damaged("sim", root)
    ds = build_dataset(name, split, root=root)
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=1)
    with pytest.raises(data_base.UnknownLabelError) as info:
        list(loader)
    assert str(info.value).startswith(f"label {label_path} holds raw values outside the sim label table: 200")
    assert "Traceback" not in str(info.value)


def test_clean_frames_of_every_adapter_still_read(tmp_path):
    """The strict default changes nothing for labels that are all in the table (every raw id occurs in each frame)."""
    root = tmp_path / "data"
    mt.make_cityscapes(root / "cityscapes")
    mt.make_gta5(root / "gta5", count=1)
    mt.make_synthia(root / "synthia", count=1)
    mt.make_mapillary(root / "mapillary")
    for name, split in (("cityscapes", "train"), ("gta5", "all"), ("synthia", "all"), ("mapillary", "val"), ("sim", "val")):
        ds = quietly(build_dataset, name, split, root=root)
        ds.load_pair(0)
        assert count_unknown_labels(ds).pixels == 0


def test_unknown_label_scan_is_cached_and_sees_a_rewritten_label(tmp_path):
    root = tmp_path / "data"
    name, split, label_path, _ = damaged("sim", root)
    ds = build_dataset(name, split, root=root)
    assert count_unknown_labels(ds).pixels == 5
    assert list((tmp_path / "cache").rglob("*.json")), "the scan is cached"
    assert count_unknown_labels(ds, workers=2).pixels == 5  # same answer from the cache
    mt.poke_label(label_path, 200, count=7)
    assert count_unknown_labels(ds).pixels == 7


def test_unknown_label_policy_must_be_known():
    """Checked once, with every other setting, before any dataset is opened."""
    from segbench.config import ConfigError, apply_overrides, load_config, validate

    with pytest.raises(ConfigError, match=r"train.unknown_labels='skip': expected one of 'error', 'ignore'"):
        validate(apply_overrides(load_config(None), ["train.unknown_labels=skip"]))


# ------------------------------------------------------------------------------------------------ through a cell
def sim_cell(*overrides: str):
    from segbench.cells import plan
    from segbench.config import apply_overrides, load_config
    from segbench.spec import parse_spec

    cfg = apply_overrides(load_config(), [
        "train.iters=1", "train.batch_size=2", "train.crop=[32,64]", "train.workers=0", "train.ckpt_every=1",
        "model.pretrained=null", "eval.workers=0", "eval.dump=0", *overrides])
    (cell,) = plan(cfg, parse_spec("sim->sim"), ["resnet18"], ["fcn"])
    return cell


@pytest.fixture
def pixel_model(monkeypatch, one_thread):
    """Cells train a 1x1 conv: what is tested here is the data path, in well under a second."""
    from segbench import network

    monkeypatch.setattr(network, "create_model", lambda *a, **k: PixelModel())


def test_training_stops_naming_the_file_value_and_fix(tmp_path, pixel_model):
    from segbench.pipeline import run_cell

    root = tmp_path / "data"
    _, _, label_path, _ = damaged("sim", root)
    cell = sim_cell()
    with pytest.raises(data_base.UnknownLabelError, match=rf"(?s){label_path}.*200 \(5 px\).*train.unknown_labels=ignore"):
        run_cell(cell, cell.directory(tmp_path / "results"), data_root=root, device=torch.device("cpu"))


def test_ignore_option_trains_and_counts_the_pixels_in_the_record(tmp_path, pixel_model, capsys):
    from segbench.pipeline import run_cell

    root = tmp_path / "data"
    damaged("sim", root)
    cell = sim_cell("train.unknown_labels=ignore")
    record = run_cell(cell, cell.directory(tmp_path / "results"), data_root=root, device=torch.device("cpu"))
    assert record["training"]["unknown_label_pixels"] == 5
    assert record["training"]["unknown_label_values"] == {"200": 5}
    assert record["training"]["unknown_label_files"] == 1
    assert "5 pixels in 1 label file(s)" in capsys.readouterr().err
    on_disk = json.loads((cell.directory(tmp_path / "results") / "record.json").read_text())
    assert on_disk["training"]["unknown_label_pixels"] == 5


def test_unknown_label_policy_does_not_change_the_cell_id():
    assert sim_cell().cell_id == sim_cell("train.unknown_labels=ignore").cell_id


def test_evaluation_refuses_unknown_values_too(tmp_path, pixel_model):
    from segbench.data.transforms import eval_transform_for
    from segbench.engine.scoring import evaluate

    root = tmp_path / "data"
    build_dataset("sim", "val", root=root)
    label_path = root / "synthetic/sim/labels/val/00000.png"
    mt.poke_label(label_path, 200)
    ds = build_dataset("sim", "val", root=root)
    ds.transform = eval_transform_for(ds, None)
    with pytest.raises(data_base.UnknownLabelError, match=str(label_path)):
        evaluate(PixelModel(), ds, device=torch.device("cpu"), workers=0)


def test_prepare_leaves_out_frames_with_unknown_values_and_says_why(tmp_path, capsys):
    root = tmp_path / "data"
    name, _, label_path, _ = damaged("gta5", root)
    code, _, _ = data_cli(capsys, "prepare", "gta5", "--size", "32x16", "--data-root", str(root), "--quiet")
    assert code == 1
    manifest = json.loads((root / "prepared/gta5@32x16/manifest.json").read_text())
    assert manifest["splits"]["all"] == ["images__00001"]
    (left,) = [p for p in manifest["left_out"] if p["kind"] == "label values outside the mapping"]
    assert "00002.png" in left["path"] and "40 (5 px)" in left["detail"]


# ------------------------------------------------------------------------------------------------ YAML files in the data root
ENVIRONMENT_YML = """\
name: myenv
channels: [conda-forge]
dependencies: [python=3.11, numpy]
"""


def test_unrelated_yaml_in_the_data_root_is_ignored_without_a_word(tmp_path, capsys):
    root = tmp_path / "data"
    write_yaml(root / "environment.yml", ENVIRONMENT_YML)
    write_yaml(root / "notes.yaml", "- [not: a mapping\n")  # not even valid YAML
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert plugins.load_plugins(root) == []
        build_dataset("sim", "val", root=root)
    capsys.readouterr()  # what generating sim said: not about the YAML files
    code, out, err = data_cli(capsys, "list", "--data-root", str(root))
    assert code == 0 and err == "" and "myenv" not in out and "sim" in out


def test_a_declared_dataset_file_with_an_error_still_fails_naming_it(tmp_path, capsys):
    root = tmp_path / "data"
    write_yaml(root / "mycity.yaml", "segbench_dataset: 1\nname: [unclosed\n")
    code, _, err = data_cli(capsys, "list", "--data-root", str(root))
    assert code == 2 and "mycity.yaml" in err and "not valid YAML" in err


def test_a_file_named_explicitly_must_declare_itself(tmp_path):
    path = write_yaml(tmp_path / "mycity.yaml", MYCITY.format(name="mycity").replace("segbench_dataset: 1\n", "")
                      + "encoding: trainid\n")
    with pytest.raises(YamlSpecError, match=r"mycity.yaml.*segbench_dataset: 1"):
        register_yaml(path)
    write_yaml(tmp_path / "v2.yaml", MYCITY.format(name="mycity").replace(": 1\n", ": 2\n") + "encoding: trainid\n")
    with pytest.raises(YamlSpecError, match=r"v2.yaml: field 'segbench_dataset'"):
        register_yaml(tmp_path / "v2.yaml")


@pytest.mark.parametrize("name", ["cityscapes", "sim"])
def test_yaml_dataset_cannot_take_a_built_in_name(tmp_path, capsys, name):
    root = tmp_path / "data"
    spec = write_yaml(root / "mine.yaml", MYCITY.format(name=name) + "encoding: trainid\n")
    with pytest.raises(DatasetError, match=rf"mine.yaml: field 'name' '{name}' is a built-in dataset"):
        register_yaml(spec)
    code, _, err = data_cli(capsys, "list", "--data-root", str(root))
    assert code == 2 and str(spec) in err and f"'{name}'" in err
    assert DATASETS.get(name).__module__.startswith("segbench.data.adapters")


@pytest.mark.parametrize(
    "edit, field",
    [
        (("root: mycity", "root: ../../etc"), "root"),
        (('dir: "photos/{split}"', 'dir: "../../../etc/{split}"'), "images.dir"),
        (('dir: "gt/{split}"', 'dir: "gt/../../{split}"'), "labels.dir"),
        (("splits: [train, val]", "splits: [train, ../../../etc]"), "splits"),
    ],
)
def test_yaml_paths_cannot_climb_out_of_their_base(tmp_path, capsys, edit, field):
    root = tmp_path / "data"
    spec = write_yaml(root / "mycity.yaml", MYCITY.format(name="mycity").replace(*edit) + "encoding: trainid\n")
    with pytest.raises(YamlSpecError, match=rf"mycity.yaml: field '{field}'.*outside"):
        register_yaml(spec)
    code, _, err = data_cli(capsys, "check", "mycity", "--data-root", str(root), "--quiet")
    assert code == 2 and "mycity.yaml" in err and field in err


def test_yaml_paths_resolve_under_the_data_root_and_absolute_when_written_so(tmp_path):
    root = tmp_path / "data"
    make_mycity(root / "mycity", mt.write_gray)
    write_yaml(root / "a.yaml", MYCITY.format(name="mycity-rel") + "encoding: trainid\n")
    elsewhere = tmp_path / "elsewhere"
    make_mycity(elsewhere, mt.write_gray)
    write_yaml(root / "b.yaml", MYCITY.format(name="mycity-abs").replace("root: mycity", f"root: {elsewhere}")
               + "encoding: trainid\n")
    assert build_dataset("mycity-rel", "val", root=root).root == root / "mycity"
    assert build_dataset("mycity-abs", "val", root=root).root == elsewhere
    # `..` that stays inside its base is fine
    write_yaml(root / "c.yaml", MYCITY.format(name="mycity-dots").replace('dir: "gt/{split}"', 'dir: "x/../gt/{split}"')
               + "encoding: trainid\n")
    assert len(build_dataset("mycity-dots", "val", root=root)) == 2


# ------------------------------------------------------------------------------------------------ the data commands
def test_every_data_command_takes_data_root(tmp_path, capsys):
    root = tmp_path / "data"
    write_yaml(root / "mycity.yaml", MYCITY.format(name="mycity") + "encoding: trainid\n")
    make_mycity(root / "mycity", mt.write_gray)
    code, out, _ = data_cli(capsys, "list", "--data-root", str(root))
    assert code == 0 and "mycity" in out
    code, out, _ = data_cli(capsys, "check", "mycity", "--data-root", str(root), "--quiet")
    assert code == 0
    code, out, _ = data_cli(capsys, "prepare", "mycity", "--size", "32x16", "--data-root", str(root), "--quiet")
    assert code == 0 and (root / "prepared/mycity@32x16/manifest.json").is_file()


def test_check_split_all_checks_every_split(tmp_path, capsys):
    root = tmp_path / "data"
    mt.make_cityscapes(root / "cityscapes")
    bad = sorted((root / "cityscapes/gtFine/val").rglob("*_labelIds.png"))[0]
    mt.poke_label(bad, 40)
    code, out, _ = data_cli(capsys, "check", "cityscapes", "--data-root", str(root), "--quiet")
    assert code == 0 and "split 'train'" in out  # the default: the first split only
    code, out, _ = data_cli(capsys, "check", "cityscapes", "--data-root", str(root), "--split", "all", "--quiet")
    assert code == 1 and "split 'train'" in out and "split 'val'" in out and str(bad) in out
    code, out, _ = data_cli(capsys, "check", "cityscapes", "--data-root", str(root), "--split", "all", "--quiet", "--json")
    report = json.loads(out)
    assert code == 1 and not report["ok"] and [r["split"] for r in report["splits"]] == ["train", "val"]
    assert [r["ok"] for r in report["splits"]] == [True, False]


def test_check_split_all_names_a_split_that_cannot_be_opened(tmp_path, capsys):
    """val's images are there but its label directory is not: a damaged copy (a split with no image directory at
    all is merely absent: tests/test_data_check.py)."""
    import shutil

    root = tmp_path / "data"
    mt.make_cityscapes(root / "cityscapes")
    shutil.rmtree(root / "cityscapes/gtFine/val")
    code, out, _ = data_cli(capsys, "check", "cityscapes", "--data-root", str(root), "--split", "all", "--quiet")
    assert code == 1 and "split 'val' cannot be opened" in out and "cityscapes/gtFine/val" in out


def test_check_split_all_uses_a_datasets_own_all_split(tmp_path, capsys):
    """GTA5's `all` is the union of its other splits: --split all checks it, once, not every frame twice."""
    root = tmp_path / "data"
    mt.make_gta5(root / "gta5", count=2)
    code, out, _ = data_cli(capsys, "check", "gta5", "--data-root", str(root), "--split", "all", "--quiet", "--json")
    assert code == 0 and json.loads(out)["split"] == "all"


def test_check_split_all_of_a_prepared_copy_checks_the_splits_of_its_manifest(tmp_path, capsys):
    root = tmp_path / "data"
    mt.make_cityscapes(root / "cityscapes")
    quietly(prepare_dataset, "cityscapes", (32, 16), data_root_dir=root, progress=False)
    code, out, _ = data_cli(capsys, "check", "cityscapes@32x16", "--data-root", str(root), "--split", "all", "--json",
                            "--quiet")
    assert code == 0 and [r["split"] for r in json.loads(out)["splits"]] == ["train", "val"]


def test_documented_yaml_example_is_a_dataset(tmp_path):
    """The documented example (docs/plugins.md) follows the rules it states: it declares itself and registers as
    written."""
    from pathlib import Path

    page = (Path(__file__).resolve().parent.parent / "docs" / "plugins.md").read_text()
    section = page[page.index("### Without code: a YAML file"):]
    example = section[section.index("```yaml\n") + len("```yaml\n"):section.index("```\n", section.index("```yaml"))]
    spec = write_yaml(tmp_path / "data" / "mycity.yaml", example)
    assert plugins.yaml_files(tmp_path / "data") == [spec]
    assert register_yaml(spec) == "mycity"
