"""Methods as a study axis: the registry, the plan (ids, directories), the settings, where each method puts its
modules, and how its hooks reach the training loop."""
import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from segbench import run
from segbench.cells import plan
from segbench.config import ERM, ConfigError, apply_overrides, load_config
from segbench.data.adapters import synthetic
from segbench.data.transforms import build_train_transform
from segbench.methods import (METHODS, PLUGINS_ENV, InstanceWhitening, Method, MethodError, SwitchWhiten2d, TrainRun,
                              build_method, method_options)
from segbench.models import create_model
from segbench.spec import parse_specs
from segbench.validation import validate_study

TINY = ["--set", "train.iters=2", "--set", "train.batch_size=2", "--set", "train.crop=[32,64]",
        "--set", "train.workers=0", "--set", "train.ckpt_every=0", "--set", "model.pretrained=null",
        "--set", "eval.workers=0"]


def _plan(cfg, methods=None):
    return plan(cfg, parse_specs(cfg["specs"]), cfg["backbones"], cfg["heads"], methods)


# --- the plan -------------------------------------------------------------------------------------------------
def test_erm_changes_no_id_and_no_directory_of_an_existing_study():
    cfg = load_config("embedded")
    before = [(c.cell_id, c.dirname) for c in _plan(cfg)]
    after = [(c.cell_id, c.dirname) for c in _plan(cfg, {ERM: {}})]
    assert before == after


def test_each_method_and_each_option_value_is_its_own_cell():
    cfg = load_config("embedded")
    cfg["seeds"] = [0]
    methods = {ERM: {}, "isw": method_options("isw"), "mixstyle": method_options("mixstyle")}
    cells = _plan(cfg, methods)
    assert len(cells) == 3 * len(cfg["backbones"])
    assert [c.method for c in cells[:3]] == [ERM, "isw", "mixstyle"]  # order: backbone, then method
    assert len({c.cell_id for c in cells}) == len(cells)
    assert cells[1].dirname.startswith(f"sim__{cells[1].backbone}+isw__")
    assert cells[0].dirname.startswith(f"sim__{cells[0].backbone}__")
    reweighted = _plan(cfg, {**methods, "isw": method_options("isw", {"weight": 0.3})})
    changed = [a.method for a, b in zip(cells, reweighted) if a.cell_id != b.cell_id]
    assert set(changed) == {"isw"}


def test_a_methods_revision_gives_its_cells_new_ids_and_its_records_name_it():
    """A fix that changes what a method trains under the same options (IW's loss reading the InstanceNorm output,
    SW's stem start) raises Method.revision: the cells trained before get other ids, so a rerun does not take them
    for today's method, and records say which code trained them. Revision 1 leaves ids and records as they were."""
    cfg = load_config("embedded")
    cfg["seeds"] = [0]
    methods = {ERM: {}, "iw": method_options("iw"), "mixstyle": method_options("mixstyle")}
    assert run.method_revisions(methods) == {ERM: 1, "iw": 2, "mixstyle": 1}
    cfg["backbones"] = cfg["backbones"][:1]
    before = {c.method: c for c in _plan(cfg, methods)}
    after = {c.method: c for c in plan(cfg, parse_specs(cfg["specs"]), cfg["backbones"], cfg["heads"], methods,
                                       run.method_revisions(methods))}
    assert after["iw"].cell_id != before["iw"].cell_id
    assert after["mixstyle"].cell_id == before["mixstyle"].cell_id and after[ERM].cell_id == before[ERM].cell_id
    assert after["iw"].training_identity()["method"]["revision"] == 2
    assert "revision" not in after["mixstyle"].training_identity()["method"]
    from segbench.record import new_record, record_type_problem

    record = new_record(after["iw"])
    assert record["method"] == {"name": "iw", "options": method_options("iw"), "revision": 2}
    assert record_type_problem(record) is None
    assert "revision" in record_type_problem({**record, "method": {**record["method"], "revision": "2"}})
    assert {m: METHODS.get(m).revision for m in ("iw", "irw", "isw", "sw")} == {"iw": 2, "irw": 2, "isw": 2, "sw": 2}


def test_the_report_keeps_records_of_two_revisions_of_a_method_apart():
    from segbench.report.records import row_labels

    base = {"backbone": "resnet18", "head": "fcn", "source": "sim", "config": {}}
    old = {**base, "method": {"name": "iw", "options": {"weight": 0.8}}}
    new = {**base, "method": {"name": "iw", "options": {"weight": 0.8}, "revision": 2}}
    erm = {**base, "method": {"name": "erm", "options": {}}}
    assert row_labels([old, new, erm]) == ["resnet18 + iw(revision=1)", "resnet18 + iw(revision=2)", "resnet18 + erm"]
    assert row_labels([new, new, erm]) == ["resnet18 + iw", "resnet18 + iw", "resnet18 + erm"]


def test_methods_and_their_options_from_the_command_line(tmp_path, capsys):
    assert run.main(["--dry-run", "--results", str(tmp_path), "--methods", "erm,isw", "mix*",
                     "--set", "method.isw.weight=0.3", "--seeds", "1", "--backbones", "resnet18"]) == 0
    out = capsys.readouterr().out
    assert "3 cells" in out and "resnet18+isw" in out and "resnet18+mixstyle" in out
    args = run.build_parser().parse_args(["--methods", "isw", "--backbones", "resnet18", "--set", "method.isw.trials=2"])
    assert run.resolve_config(args)["method"] == {"isw": {"trials": 2}}


@pytest.mark.parametrize("methods, settings, expected", [
    (["nosuch"], {}, "methods: unknown method 'nosuch'; valid names: dsu, erm"),
    (["erm"], {"nosuch": {"x": 1}}, "method.nosuch: unknown method"),
    (["isw"], {"isw": {"wieght": 1}}, "method.isw.wieght: unknown option; isw's options: weight, places"),
    (["isw"], {"isw": {"trials": "many"}}, "method.isw.trials='many': expected an integer (default 10)"),
    (["mixstyle"], {"mixstyle": {"p": "high"}}, "method.mixstyle.p='high': expected a number (default 0.5)"),
])
def test_bad_method_settings_name_the_key_and_the_valid_choices(methods, settings, expected):
    cfg = {**load_config("embedded"), "methods": methods, "method": settings}
    with pytest.raises(ConfigError) as e:
        validate_study(cfg, None)
    assert expected in str(e.value)


def test_a_method_setting_must_name_method_and_option():
    with pytest.raises(ConfigError, match=r"expected method\.NAME\.OPTION=VALUE"):
        apply_overrides(load_config(None), ["method.isw=1"])


# --- placement --------------------------------------------------------------------------------------------------
def _keys(model):
    return set(model.state_dict())


STEM_BN = {f"backbone.bn1.{k}" for k in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")}


@pytest.mark.parametrize("name", ["iw", "irw", "isw"])
def test_whitening_in_replaces_the_stem_bn_and_sits_after_the_last_add_of_layer1_and_layer2(name):
    """RobustNet's `--wt_layer 0 0 c c c 0 0`: IN without affine (no weight/bias keys), only mask buffers."""
    plain = create_model("resnet18", "fcn")
    model = create_model("resnet18", "fcn")
    build_method(name).build(model)
    added, removed = _keys(model) - _keys(plain), _keys(plain) - _keys(model)
    assert removed == STEM_BN
    assert added == {f"{where}.{b}" for where in ("backbone.bn1", "backbone.layer1.1.IN", "backbone.layer2.1.IN")
                     for b in ("mask", "mask_selected")}
    assert isinstance(model.backbone.bn1, InstanceWhitening)
    assert model.backbone.layer2[1].IN.mask.shape == (128, 128)
    assert model.backbone.layer1[0].IN is None and model.backbone.layer3[-1].IN is None


def test_sw_takes_the_same_three_places_with_its_own_parameters():
    model = create_model("resnet50", "fcn")
    build_method("sw").build(model)
    placed = [model.backbone.bn1, model.backbone.layer1[-1].IN, model.backbone.layer2[-1].IN]
    assert all(isinstance(m, SwitchWhiten2d) for m in placed)
    assert [m.num_features for m in placed] == [64, 256, 512]
    assert {"backbone.bn1.sw_mean_weight", "backbone.layer2.3.IN.sw_var_weight"} <= _keys(model)


@pytest.mark.parametrize("name", ["iw", "isw", "sw"])
def test_a_slot_ibn_b_already_fills_is_a_clear_error(name):
    with pytest.raises(MethodError, match=r"InstanceNorm2d.*use a plain ResNet or an IBN-a backbone"):
        build_method(name).build(create_model("resnet18_ibn_b", "fcn"))


def test_ibn_a_backbones_take_the_whitening_layers():
    model = create_model("resnet18_ibn_a", "fcn")
    build_method("isw").build(model)
    assert isinstance(model.backbone.layer1[-1].IN, InstanceWhitening)


@pytest.mark.parametrize("name, places", [("mixstyle", ["layer1", "layer2", "layer3"]),
                                          ("dsu", ["conv1", "maxpool", "layer1", "layer2", "layer3", "layer4"]),
                                          ("np", ["stem", "layer1"])])
def test_perturbations_act_after_their_places_in_training_and_vanish_in_eval(name, places):
    torch.manual_seed(0)
    plain = create_model("resnet18", "fcn").train()
    model = copy.deepcopy(plain)
    build_method(name, {"p": 1.0} if "p" in METHODS.get(name).defaults else {}).build(model)
    assert list(model.method_modules) == places
    seen = []
    for place in places:
        model.method_modules[place].register_forward_hook(lambda m, i, o, place=place: seen.append(place))
    x = torch.randn(2, 3, 64, 64)
    model.load_state_dict(plain.state_dict())  # same weights: the method adds no parameter
    with torch.no_grad():
        plain.eval(), model.eval()
        assert torch.equal(model(x)["out"], plain(x)["out"])
        assert seen == places  # in forward order, once each (and the identity in eval mode)
        plain.train(), model.train()
        assert not torch.allclose(model(x)["out"], plain(x)["out"])


# --- hooks reach the training loop ---------------------------------------------------------------------------------
def test_a_method_image_step_sees_the_full_frame_and_leaves_crop_and_flip_as_plain_training_has_them():
    seen = []

    def invert(image, rng):
        seen.append(image.shape)
        return 255 - image

    image = np.random.default_rng(0).integers(0, 256, (60, 80, 3), dtype=np.uint8)
    mask = np.random.default_rng(1).integers(0, 19, (60, 80), dtype=np.uint8)
    plain, method = build_train_transform((32, 48)), build_train_transform((32, 48), image_method=invert)
    for seed in range(5):
        plain.set_random_seed(seed), method.set_random_seed(seed)
        a, b = plain(image=image, mask=mask), method(image=image, mask=mask)
        assert torch.equal(a["mask"], b["mask"])  # the same crop, scale and flip
        assert not torch.allclose(a["image"], b["image"])
    assert seen == [(60, 80, 3)] * 5


class AddConstantLoss(Method):
    """A loss term c * sum(w) on the head's last conv: the first SGD step then moves every weight by exactly lr*c
    more than plain training does (momentum buffers start at the gradient)."""

    name = "addconst"
    defaults = {"c": 3.0}

    def losses(self, model, outputs, batch, iteration):
        return {"const": self.options["c"] * model.head[-1].weight.sum()}


def test_method_loss_terms_enter_the_training_step(tmp_path, monkeypatch, one_thread):
    from segbench.config import TrainSettings
    from segbench.data import build_dataset
    from segbench.engine.train import train

    monkeypatch.setattr(synthetic, "SPLIT_SIZES", {"train": 2, "val": 1})
    dataset = build_dataset("sim", "train", tmp_path)
    settings = TrainSettings(iters=1, batch_size=2, lr=0.01, weight_decay=0.0, workers=0, ckpt_every=0,
                             crop=(32, 64), amp=False)
    weights = []
    for i, method in enumerate([Method(), AddConstantLoss()]):
        torch.manual_seed(0)
        model = create_model("resnet18", "fcn")
        train(model, dataset, build_train_transform((32, 64)), settings, seed=0, device=torch.device("cpu"),
              ckpt_dir=tmp_path / f"ck{i}", identity={}, method=method)
        weights.append(model.head[-1].weight.detach().clone())
    torch.testing.assert_close(weights[0] - weights[1], torch.full_like(weights[0], 0.01 * 3.0), rtol=0, atol=1e-6)


def test_isw_selects_after_the_sixth_epoch_as_robustnets_cov_stat_epoch_5():
    """train.py runs the pass after `train(epoch=5)`, epochs counting from 0: after six epochs, i.e. at iteration
    6 x 12388 / 16 = 4645.5 -> 4646 of RobustNet's GTA5 run, and the loss applies from epoch 6 on."""

    class Source:
        def __len__(self):
            return 12388

    method = build_method("isw")
    assert method.options["stat_epochs"] == 6.0
    robustnet = TrainRun(dataset=Source(), normalize=None, device=torch.device("cpu"), seed=0, iters=40000,
                         batch_size=16)
    assert method.selection_iteration(robustnet) == 4646


def test_isw_selects_its_masks_at_the_end_of_the_scheduled_epoch(tmp_path, monkeypatch, one_thread):
    from segbench.config import TrainSettings
    from segbench.data import build_dataset
    from segbench.engine.train import train

    monkeypatch.setattr(synthetic, "SPLIT_SIZES", {"train": 4, "val": 1})
    dataset = build_dataset("sim", "train", tmp_path)
    settings = TrainSettings(iters=3, batch_size=2, workers=0, ckpt_every=0, crop=(32, 64), amp=False)
    method = build_method("isw", {"stat_epochs": 1, "stat_images": 2, "trials": 2})  # epoch 1 = iteration 2
    calls = []
    real = method.select
    monkeypatch.setattr(method, "select", lambda *a: calls.append(a[0].training) or real(*a))
    model = create_model("resnet18", "fcn")
    method.build(model)
    train(model, dataset, build_train_transform((32, 64)), settings, seed=0, device=torch.device("cpu"),
          ckpt_dir=tmp_path / "ck", identity={}, method=method)
    assert calls == [True]  # once, from training mode (the pass itself runs in eval mode)
    for module in (model.backbone.bn1, model.backbone.layer1[-1].IN, model.backbone.layer2[-1].IN):
        upper = torch.ones_like(module.mask).triu(1)
        assert bool(module.mask_selected) and 0 < module.mask.sum() < upper.sum()
        assert not (module.mask & ~upper).any()  # a subset of the strict upper triangle
    with pytest.raises(MethodError, match=r"isw selects .* iteration 6 .* training stops at 3"):
        fresh = build_method("isw", {"stat_epochs": 3})
        fresh.build(create_model("resnet18", "fcn"))
        train(create_model("resnet18", "fcn"), dataset, build_train_transform((32, 64)), settings, seed=0,
              device=torch.device("cpu"), ckpt_dir=tmp_path / "ck2", identity={}, method=fresh)


# --- methods from outside segbench ---------------------------------------------------------------------------------
def documented_method() -> str:
    """The documentation's worked example of a method defined outside segbench (docs/methods.md), as printed there."""
    text = (Path(__file__).resolve().parent.parent / "docs" / "methods.md").read_text()
    block = text.split("<!-- method-example -->", 1)[1]
    return block.split("```python", 1)[1].split("```", 1)[0]


@pytest.mark.slow
def test_a_method_defined_outside_segbench_runs_in_a_study(tmp_path, monkeypatch, capsys, one_thread):
    """The worked example of docs/methods.md, verbatim: a file named in $SEGBENCH_METHODS, a study over erm and it."""
    plugin = tmp_path / "my_method.py"
    plugin.write_text(documented_method())
    monkeypatch.setenv(PLUGINS_ENV, str(plugin))
    monkeypatch.setattr(synthetic, "SPLIT_SIZES", {"train": 4, "val": 2})
    with METHODS.scoped():
        assert run.main(["sim->photo", "--data-root", str(tmp_path / "data"), "--results", str(tmp_path / "r"),
                         "--name", "ext", "--backbones", "resnet18", "--methods", "erm", "featnoise",
                         "--set", "method.featnoise.std=0.2", *TINY]) == 0
        out = capsys.readouterr().out
        assert "| resnet18 + featnoise |" in out and "| resnet18 + erm |" in out
        records = [json.loads(p.read_text()) for p in sorted((tmp_path / "r/ext/cells").glob("*/record.json"))]
        assert sorted((r["method"] for r in records), key=lambda m: m["name"]) == [
            {"name": "erm", "options": {}}, {"name": "featnoise", "options": {"std": 0.2, "place": "layer1"}}]
        assert run.main(["sim->photo", "--data-root", str(tmp_path / "data"), "--results", str(tmp_path / "r"),
                         "--name", "ext", "--backbones", "resnet18", "--methods", "erm", "featnoise",
                         "--set", "method.featnoise.std=0.2", *TINY]) == 0
        assert "2 finished cell(s) skipped" in capsys.readouterr().out

        from segbench.network import load_trained_model

        (cell,) = (tmp_path / "r/ext/cells").glob("*+featnoise*")
        model, _ = load_trained_model(cell)
        assert "layer1" in model.method_modules  # rebuilt with its method: the strict load found every key


def test_a_missing_plugin_file_is_named(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv(PLUGINS_ENV, str(tmp_path / "nope.py"))
    assert run.main(["--dry-run", "--results", str(tmp_path)]) == 2
    assert f"{tmp_path / 'nope.py'} does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("content, words", [
    ("def broken(:\n", "SyntaxError at line 1"),
    ("import no_such_module_for_segbench\n", "No module named 'no_such_module_for_segbench'"),
    ("from segbench.methods import METHODS, Method\n@METHODS.register('isw')\nclass Mine(Method):\n    pass\n",
     "method 'isw' is already registered (by segbench.methods.builtin."),
])
def test_a_plugin_that_fails_to_import_is_named_with_the_fix(monkeypatch, tmp_path, capsys, content, words):
    from segbench.methods.cli import main

    plugin = tmp_path / "my_method.py"
    plugin.write_text(content)
    monkeypatch.setenv(PLUGINS_ENV, str(plugin))
    with METHODS.scoped():
        assert main([]) == 2  # `segbench methods`: no traceback
        err = capsys.readouterr().err
        assert "Traceback" not in err and str(plugin) in err and words in err
        assert f"take it out of ${PLUGINS_ENV}" in err
        assert run.main(["--dry-run", "--results", str(tmp_path)]) == 2
        assert str(plugin) in capsys.readouterr().err


def test_a_method_unknown_to_segbench_points_at_the_plugin_variable(tmp_path, capsys):
    assert run.main(["--dry-run", "--results", str(tmp_path), "--methods", "featnoise"]) == 2
    err = capsys.readouterr().err
    assert "unknown method 'featnoise'" in err and f"${PLUGINS_ENV}" in err


@pytest.mark.parametrize("setting, words", [
    ("method.isw.places=[layer9]", "method.isw: unknown place 'layer9'; places: input, conv1, stem, maxpool"),
    ("method.shade.place=stem.norm", "method.shade: unknown place 'stem.norm'; places after an output"),
    ("method.mixstyle.p=5", "method.mixstyle: MixStyle: p=5 is not a probability"),
    ("method.np.std=-1", "method.np: NormalizationPerturbation: std=-1 must be >= 0"),
    ("method.pasta.alpha=-1", "method.pasta: PASTA: alpha=-1 must be >= 0"),
    ("method.isw.trials=0", "method.isw.trials=0: the selection pass needs at least 1"),
    ("method.shade.basis_epochs=0", "method.shade.basis_epochs=0: the basis is recomputed"),
])
def test_an_option_value_a_method_refuses_is_named_once_before_any_work(tmp_path, capsys, setting, words):
    name = setting.split(".")[1]
    assert run.main(["--dry-run", "--results", str(tmp_path), "--methods", name, "--set", setting,
                     "--set", "method.shade.retrospection=0", "--backbones", "resnet18", "resnet18_ibn_a"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and words in err, err
    assert f"change that option (--set method.{name}.OPTION=VALUE" in err
    assert err.count(words) == 1 and "leave that backbone" not in err  # the option's fault, not a backbone's


def test_segbench_methods_lists_every_method_with_paper_and_defaults(capsys):
    from segbench.methods.cli import main

    assert main([]) == 0
    out = capsys.readouterr().out
    for name in ("erm", "iw", "irw", "isw", "sw", "mixstyle", "dsu", "np", "pasta"):
        assert f"\n{name} " in out
    assert "stat_epochs=6.0" in out and "ICLR 2021" in out and "alpha=3.0" in out


def test_unknown_method_options_are_refused_by_the_class():
    with pytest.raises(MethodError, match=r"method 'mixstyle' has no option 'beta'; its options: p, alpha"):
        build_method("mixstyle", {"beta": 1})
    assert isinstance(build_method(ERM), Method) and build_method(ERM).options == {}
    assert nn  # imported for the documented example's namespace


def test_a_study_pairing_a_whitening_method_with_ibn_b_fails_before_any_work(tmp_path, capsys):
    assert run.main(["--dry-run", "--results", str(tmp_path), "--methods", "erm", "isw", "mixstyle",
                     "--backbones", "resnet18", "resnet18_ibn_b"]) == 2
    err = capsys.readouterr().err
    assert "isw on resnet18_ibn_b + fcn" in err and "leave that backbone or method out" in err
    assert "mixstyle on" not in err and "on resnet18 +" not in err  # only the combination that cannot be built


def test_a_batch_grown_inside_the_network_is_trained_with_its_labels_repeated():
    """SHADE appends hallucinated copies after the stem: CE over [x, x'] with the labels duplicated, as its code does."""
    from segbench.engine.train import segmentation_loss

    torch.manual_seed(0)
    logits, target = torch.randn(4, 19, 5, 6), torch.randint(0, 19, (2, 5, 6))
    target[0, 0, 0] = 255
    expected = torch.nn.functional.cross_entropy(logits, torch.cat([target, target]), ignore_index=255)
    torch.testing.assert_close(segmentation_loss({"out": logits}, target, 0.4), expected, rtol=0, atol=0)
    with pytest.raises(ValueError, match="3 predictions for 2 labels"):
        segmentation_loss({"out": logits[:3]}, target, 0.4)


def test_two_settings_of_one_method_are_two_rows_and_each_pairs_with_erm():
    """`iw` at its default weight and at weight 0 (the IN layers alone) in one study: never averaged as seeds."""
    from segbench.report.paired import paired_tables
    from segbench.report.records import scores

    def record(method, options, seed, photo):
        return {"cell_id": f"{method}{options}{seed}", "backbone": "resnet18", "head": "fcn", "source": "sim",
                "seed": seed, "config": {"model": {}, "train": {}}, "targets": ["sim", "photo"],
                "method": {"name": method, "options": options}, "results": {"photo": {"miou": photo}}}

    records = [record("erm", {}, s, 10.0 + s) for s in range(3)]
    records += [record("iw", {"weight": 0.8}, s, 30.0 + s) for s in range(3)]
    records += [record("iw", {"weight": 0.0}, s, 25.0 + 2 * s) for s in range(3)]
    rows = {s.row for s in scores(records)}
    assert rows == {"resnet18 + erm", "resnet18 + iw(weight=0.8)", "resnet18 + iw(weight=0.0)"}
    md, _ = paired_tables(scores(records), "erm")
    assert "| resnet18 + iw(weight=0.8) − resnet18 + erm | +20.0 [+20.0, +20.0]* |" in md
    assert "| resnet18 + iw(weight=0.0) − resnet18 + erm | +16.0 [+13.5, +18.5]* |" in md


def test_each_backbone_lists_plain_training_before_its_methods():
    from segbench.report.records import ordered_rows, scores

    def record(backbone, method, seed):
        return {"cell_id": f"{backbone}{method}{seed}", "backbone": backbone, "head": "fcn", "source": "sim",
                "seed": seed, "config": {"model": {}, "train": {}}, "targets": ["sim"],
                "method": {"name": method, "options": {}}, "results": {"sim": {"miou": 1.0}}}

    # the order of their directories: `resnet18+isw` sorts before `resnet18__`, which sorts before `resnet18_ibn_b`
    records = [record("resnet18", "isw", 0), record("resnet18", "erm", 0), record("resnet18_ibn_b", "mixstyle", 0),
               record("resnet18_ibn_b", "erm", 0)]
    assert ordered_rows(scores(records)) == ["resnet18 + erm", "resnet18 + isw", "resnet18_ibn_b + erm",
                                             "resnet18_ibn_b + mixstyle"]
