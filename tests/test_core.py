"""Registry, label space, metrics, specs and config: the small pieces everything else stands on."""
import math

import numpy as np
import pytest
import torch

from segbench.config import ConfigError, apply_overrides, load_config
from segbench.labels import CITYSCAPES_ID_TO_TRAINID, IGNORE_INDEX, NUM_CLASSES, PALETTE, colorize, ids_to_train_ids
from segbench.metrics import ConfusionMatrix
from segbench.registry import Registry
from segbench.spec import SpecError, Transfer, parse_spec, parse_specs


# -- registry -------------------------------------------------------------------------------------------------------
def test_registry_register_get_and_list():
    reg = Registry("widget")

    @reg.register("b")
    def make_b():
        return "b"

    reg.add("a1", lambda: "a1")
    assert reg.get("b")() == "b"
    assert reg.names() == ["a1", "b"]
    assert reg.names("a*") == ["a1"]
    assert "b" in reg and len(reg) == 2


def test_registry_unknown_name_lists_valid_ones():
    reg = Registry("widget")
    reg.add("alpha", object)
    with pytest.raises(KeyError, match=r"unknown widget 'beta'; valid names: alpha"):
        reg.get("beta")


def test_registry_refuses_silent_replacement():
    reg = Registry("widget")
    reg.add("x", int)
    with pytest.raises(KeyError, match="already registered"):
        reg.add("x", float)
    reg.add("x", float, override=True)
    assert reg.get("x") is float


# -- labels ---------------------------------------------------------------------------------------------------------
def test_cityscapes_id_mapping_matches_the_official_table():
    assert len(CITYSCAPES_ID_TO_TRAINID) == NUM_CLASSES
    assert sorted(CITYSCAPES_ID_TO_TRAINID.values()) == list(range(NUM_CLASSES))
    ids = np.array([[7, 8, 11, 26, 33], [0, 6, 9, 18, 30]], np.uint8)
    expected = np.array([[0, 1, 2, 13, 18], [255] * 5], np.uint8)
    np.testing.assert_array_equal(ids_to_train_ids(ids), expected)


def test_every_unlisted_id_is_ignored():
    ids = np.arange(256, dtype=np.uint8)
    out = ids_to_train_ids(ids)
    for i in range(256):
        assert out[i] == CITYSCAPES_ID_TO_TRAINID.get(i, IGNORE_INDEX)


def test_out_of_range_ids_fail_loudly():
    with pytest.raises(ValueError, match="0..255"):
        ids_to_train_ids(np.array([300], np.int32))


def test_colorize_uses_the_palette_and_blacks_out_ignore():
    rgb = colorize(np.array([[0, 13, 255]], np.uint8))
    assert tuple(rgb[0, 0]) == (128, 64, 128) and tuple(rgb[0, 1]) == tuple(PALETTE[13]) and tuple(rgb[0, 2]) == (0, 0, 0)


# -- metrics --------------------------------------------------------------------------------------------------------
def _cm_from(pairs, num_classes=3):
    cm = ConfusionMatrix(num_classes=num_classes)
    gt = torch.tensor([g for g, _ in pairs])
    pr = torch.tensor([p for _, p in pairs])
    cm.update(gt, pr)
    return cm


def test_iou_on_a_hand_built_matrix():
    # class 0: TP 2, FN 1 (predicted 1), class 1: TP 1, FP 1; class 2 absent everywhere
    cm = _cm_from([(0, 0), (0, 0), (0, 1), (1, 1)])
    iou = cm.iou()
    assert iou[0].item() == pytest.approx(2 / 3)
    assert iou[1].item() == pytest.approx(1 / 2)
    assert math.isnan(iou[2].item())  # absent from ground truth and prediction: excluded from the mean
    assert cm.summary()["miou"] == pytest.approx((2 / 3 + 1 / 2) / 2 * 100)
    assert cm.summary()["num_classes_scored"] == 2


def test_class_only_predicted_counts_with_zero_iou():
    cm = _cm_from([(0, 0), (0, 2)])
    iou = cm.iou()
    assert iou[2].item() == 0.0 and iou[0].item() == pytest.approx(0.5)
    assert cm.summary()["miou"] == pytest.approx(25.0)


def test_ignored_pixels_count_nowhere():
    cm = ConfusionMatrix(num_classes=3)
    cm.update(torch.tensor([0, 255, 255]), torch.tensor([0, 1, 2]))
    assert cm.mat.sum().item() == 1 and cm.iou()[0].item() == 1.0
    assert math.isnan(cm.iou()[1].item())


def test_confusion_matrix_matches_a_straightforward_reference():
    g = torch.Generator().manual_seed(0)
    gt = torch.randint(0, NUM_CLASSES, (4, 32, 32), generator=g)
    gt[gt == 3] = IGNORE_INDEX
    pred = torch.randint(0, NUM_CLASSES, (4, 32, 32), generator=g)
    cm = ConfusionMatrix()
    for i in range(4):
        cm.update(gt[i], pred[i])
    for c in range(NUM_CLASSES):
        valid = gt != IGNORE_INDEX
        tp = ((gt == c) & (pred == c) & valid).sum().item()
        fp = ((gt != c) & (pred == c) & valid).sum().item()
        fn = ((gt == c) & (pred != c)).sum().item()
        ref = tp / (tp + fp + fn) if tp + fp + fn else float("nan")
        got = cm.iou()[c].item()
        assert (math.isnan(ref) and math.isnan(got)) or got == pytest.approx(ref)


def test_eval_classes_restrict_the_mean():
    cm = _cm_from([(0, 0), (1, 2), (2, 2)], num_classes=3)
    assert cm.summary([0, 2])["miou"] == pytest.approx((1.0 + 0.5) / 2 * 100)
    assert list(cm.summary([0, 2])["per_class_iou"]) == ["0", "2"]


def test_void_predictions_are_false_negatives_only():
    cm = ConfusionMatrix(num_classes=3)
    cm.update(torch.tensor([0, 0, 1]), torch.tensor([0, 255, 1]))
    iou = cm.iou()
    assert iou[0].item() == pytest.approx(0.5) and iou[1].item() == 1.0
    assert cm.pixel_accuracy() == pytest.approx(2 / 3)


def test_shape_mismatch_is_explained():
    with pytest.raises(ValueError, match="upsample logits"):
        ConfusionMatrix().update(torch.zeros(4, 4, dtype=torch.long), torch.zeros(2, 2, dtype=torch.long))


# -- specs ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("spec, expected", [
    ("gta5->cityscapes", [Transfer("gta5", ("cityscapes",))]),
    ("gta5->cityscapes,bdd100k", [Transfer("gta5", ("cityscapes", "bdd100k"))]),
    ("gta5:cityscapes", [Transfer("gta5", ("cityscapes",))]),
    ("a<->b", [Transfer("a", ("b",)), Transfer("b", ("a",))]),
    ("acdc-fog->acdc-night", [Transfer("acdc-fog", ("acdc-night",))]),
])
def test_spec_grammar(spec, expected):
    assert parse_spec(spec) == expected


def test_unquoted_arrow_is_detected_and_explained():
    with pytest.raises(SpecError) as err:
        parse_spec("gta5-")
    msg = str(err.value)
    assert "redirect" in msg and "'gta5->TARGET'" in msg and "gta5:TARGET" in msg


@pytest.mark.parametrize("bad", ["gta5", "a,b->c", "->c", "a->", "a<->b,c", "a->b c"])
def test_bad_specs_fail_with_the_grammar(bad):
    with pytest.raises(SpecError, match="->"):
        parse_spec(bad)


def test_specs_with_one_source_merge():
    assert parse_specs(["a->b", "a:c,b"]) == [Transfer("a", ("b", "c"))]


# -- config ---------------------------------------------------------------------------------------------------------
def test_overrides_parse_yaml_values():
    cfg = apply_overrides(load_config(None), ["train.iters=20", "model.pretrained=null", "train.crop=[32, 64]"])
    assert cfg["train"]["iters"] == 20 and cfg["model"]["pretrained"] is None and cfg["train"]["crop"] == [32, 64]


@pytest.mark.parametrize("bad, match", [
    ("train.iterz=3", "unknown key 'iterz' under train; valid keys: "),
    ("train=3", "is a section"),
    ("noequals", "expected KEY=VALUE"),
])
def test_bad_overrides_name_the_key(bad, match):
    with pytest.raises(ConfigError, match=match):
        apply_overrides(load_config(None), [bad])


def test_experiment_file_unknown_key_names_the_file(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("train:\n  itres: 5\n")
    with pytest.raises(ConfigError, match=r"exp.yaml: train: unknown key 'itres'"):
        load_config(path)


def test_every_shipped_experiment_file_loads():
    from segbench.config import experiments_dir

    files = sorted(experiments_dir().glob("*.yaml"))
    assert files
    for f in files:
        assert load_config(f)["specs"], f
