"""Every config value is checked before any work (issue 12, case 3): types, ranges, known datasets, backbones and
heads, with one message that lists every bad key; `--dry-run` runs the same checks."""
import copy
import json

import pytest

from segbench import run
from segbench.cells import plan
from segbench.config import DEFAULTS, ConfigError, apply_overrides, experiments_dir, load_config, validate
from segbench.spec import parse_specs


def _with(*overrides: str) -> dict:
    return apply_overrides(load_config(None), list(overrides))


def _main(tmp_path, *args):
    return run.main(["--data-root", str(tmp_path / "data"), "--results", str(tmp_path / "results"), *args])


# -- valid configs pass unchanged (cell ids hash the train section) --------------------------------------------------
@pytest.mark.parametrize("path", [None, *sorted(experiments_dir().glob("*.yaml"))],
                         ids=lambda p: getattr(p, "name", "defaults"))
def test_valid_configs_come_back_identical(path):
    cfg = load_config(path)
    checked = validate(cfg)
    assert json.dumps(checked, sort_keys=True) == json.dumps(cfg, sort_keys=True)
    (cell,) = plan(cfg, parse_specs(["sim->photo"]), ["resnet18"], ["fcn"])[:1]
    (same,) = plan(checked, parse_specs(["sim->photo"]), ["resnet18"], ["fcn"])[:1]
    assert same.cell_id == cell.cell_id


def test_ints_given_for_float_keys_stay_ints():
    """`train.lr=1` was valid before validation existed: its cell id must not change, so the int is not made a float."""
    cfg = validate(_with("train.lr=1", "train.weight_decay=0", "train.scale_range=[1, 2]"))
    assert cfg["train"]["lr"] == 1 and type(cfg["train"]["lr"]) is int
    assert type(cfg["train"]["weight_decay"]) is int and cfg["train"]["scale_range"] == [1, 2]


# -- YAML 1.1 numbers --------------------------------------------------------------------------------------------------
def test_yaml_1_1_exponent_strings_are_read_as_numbers():
    """pyyaml reads `1e30` and `5e-4` (no dot) as strings; for number keys they are converted, lists included."""
    cfg = _with("train.lr=1e30", "train.weight_decay=5e-4", "train.scale_range=[5e-1, 2]", "eval.scales=[1, 15e-1]")
    assert cfg["train"]["lr"] == "1e30"  # what YAML gives
    cfg = validate(cfg)
    assert cfg["train"]["lr"] == 1e30 and cfg["train"]["weight_decay"] == 5e-4
    assert cfg["train"]["scale_range"] == [0.5, 2] and cfg["eval"]["scales"] == [1, 1.5]


def test_experiment_file_exponent_string_is_converted(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("specs: ['sim->photo']\ntrain:\n  weight_decay: 1e-4\n")
    assert validate(load_config(path))["train"]["weight_decay"] == 1e-4


# -- bad values: key, value and what is expected ---------------------------------------------------------------------
@pytest.mark.parametrize("override, expected", [
    ("train.iters=0", "train.iters=0: expected an integer >= 1"),
    ("train.iters=2.5", "train.iters=2.5: expected an integer >= 1"),
    ("train.iters=true", "train.iters=True: expected an integer >= 1"),
    ("train.lr=abc", "train.lr='abc': expected a number > 0"),
    ("train.lr=0", "train.lr=0: expected a number > 0"),
    ("train.lr=.inf", "train.lr=inf: expected a number > 0"),
    ("train.batch_size=0", "train.batch_size=0: expected an integer >= 1"),
    ("train.momentum=1", "train.momentum=1: expected a number in [0, 1)"),
    ("train.weight_decay=-1e-4", "train.weight_decay='-1e-4': expected a number >= 0"),
    ("train.power=-1", "train.power=-1: expected a number >= 0"),
    ("train.aux_weight=-0.4", "train.aux_weight=-0.4: expected a number >= 0"),
    ("train.workers=-1", "train.workers=-1: expected an integer >= 0"),
    ("train.ckpt_every=-5", "train.ckpt_every=-5: expected an integer >= 0"),
    ("train.keep_ckpts=-1", "train.keep_ckpts=-1: expected an integer >= 0"),
    ("train.amp=maybe", "train.amp='maybe': expected true or false"),
    ("train.channels_last=1", "train.channels_last=1: expected true or false"),
    ("train.compile=null", "train.compile=None: expected true or false"),
    ("train.class_uniform=1.5", "train.class_uniform=1.5: expected a number in [0, 1]"),
    ("train.split=''", "train.split='': expected a non-empty name"),
    ("train.crop=768", "train.crop=768: expected [H, W], two integers >= 1"),
    ("train.crop=[0, 768]", "train.crop=[0, 768]: expected [H, W], two integers >= 1"),
    ("train.crop=[768, 768, 3]", "expected [H, W]"),
    ("train.crop=[512.5, 768]", "expected [H, W]"),
    ("train.scale_range=[2, 0.5]", "train.scale_range=[2, 0.5]: expected [LOW, HIGH] with 0 < LOW <= HIGH"),
    ("train.scale_range=[0, 1]", "expected [LOW, HIGH] with 0 < LOW <= HIGH"),
    ("train.hflip=2", "train.hflip=2: expected a number in [0, 1]"),
    ("train.unknown_labels=skip", "train.unknown_labels='skip': expected one of 'error', 'ignore'"),
    ("eval.split=5", "eval.split=5: expected a non-empty name"),
    ("eval.size=[512]", "eval.size=[512]: expected null or [H, W], two integers >= 1"),
    ("eval.batch_size=0", "eval.batch_size=0: expected an integer >= 1"),
    ("eval.workers=-2", "eval.workers=-2: expected an integer >= 0"),
    ("eval.mode=tiles", "eval.mode='tiles': expected one of 'whole', 'slide'"),
    ("eval.window=[0, 10]", "eval.window=[0, 10]: expected null or [H, W], two integers >= 1"),
    ("eval.stride=7", "eval.stride=7: expected null or [H, W], two integers >= 1"),
    ("eval.flip=yes please", "eval.flip='yes please': expected true or false"),
    ("eval.scales=[]", "eval.scales=[]: expected a non-empty list of numbers > 0"),
    ("eval.scales=[1, -0.5]", "eval.scales=[1, -0.5]: expected a non-empty list of numbers > 0"),
    ("eval.dump=-1", "eval.dump=-1: expected an integer >= 0"),
    ("model.output_stride=12", "model.output_stride=12: expected one of null, 8, 16, 32"),
    ("model.pretrained=3", "model.pretrained=3: expected null, 'imagenet', 'torchvision', 'dinov2' or the path of a state dict"),
    ("model.aux=sometimes", "model.aux='sometimes': expected false, true (FCN aux head) or 'robustnet'"),
    ("seeds=[-1]", "seeds=[-1]: expected a non-empty list of distinct integers >= 0"),
    ("seeds=[0, 0]", "expected a non-empty list of distinct integers >= 0"),
    ("seeds=3", "seeds=3: expected a non-empty list of distinct integers >= 0 (--seeds N runs seeds 0..N-1)"),
    ("backbones=[]", "backbones=[]: expected a name or a non-empty list of names"),
    ("heads=[fcn, 3]", "heads=['fcn', 3]: expected a name or a non-empty list of names"),
    ("specs=[[a]]", "specs=[['a']]: expected a spec or a list of specs"),
    ("name=../elsewhere", "name='../elsewhere': expected a relative directory name without '..'"),
])
def test_bad_value_names_key_value_and_expectation(override, expected):
    with pytest.raises(ConfigError) as info:
        validate(_with(override))
    assert expected in str(info.value)


def test_every_key_of_defaults_is_checked():
    """No key escapes validation: a mapping is never a valid value for any setting."""
    def leaves(section, prefix=""):
        for key, value in section.items():
            if isinstance(value, dict):
                yield from leaves(value, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}"

    for key in leaves(DEFAULTS):
        cfg = copy.deepcopy(DEFAULTS)
        node, *path = [cfg, *key.split(".")]
        for part in path[:-1]:
            node = node[part]
        node[path[-1]] = {"not": "a value"}
        with pytest.raises(ConfigError, match=f"^{key}="):
            validate(cfg)


def test_every_setting_has_its_own_rule():
    """Ranges, not only types: every setting declares its rule in its field (config.setting's `rule`; the type of its
    default is only the safety net), and RULES, a view of the fields, covers DEFAULTS, another view of them."""
    from dataclasses import fields

    from segbench.config import FREE_SECTIONS, RULES, SECTIONS, StudySettings

    for section in (StudySettings, *SECTIONS.values()):
        for f in fields(section):
            assert f.metadata["rule"] is not None, f"{section.__name__}.{f.name} declares no rule"
    for key, value in DEFAULTS.items():
        assert key in RULES, key
        if isinstance(value, dict) and key not in FREE_SECTIONS:  # `method`: checked against the method registry
            assert set(value) == set(RULES[key]), (key, set(value) ^ set(RULES[key]))


def test_one_message_lists_every_bad_key():
    with pytest.raises(ConfigError) as info:
        validate(_with("train.iters=0", "train.lr=abc", "eval.mode=tiles", "train.crop=[32]"))
    message = str(info.value)
    assert message.startswith("4 bad settings:")
    for key in ("train.iters=0", "train.lr='abc'", "eval.mode='tiles'", "train.crop=[32]"):
        assert key in message


@pytest.mark.parametrize("overrides, expected", [
    (["eval.mode=slide"], "eval.window=None: eval.mode='slide' needs a window, e.g. --set eval.window=[512,1024]"),
    (["eval.mode=slide", "eval.window=[32, 64]", "eval.stride=[48, 32]"],
     "eval.stride=[48, 32]: larger than eval.window=[32, 64] leaves pixels unscored; expected each <= the window"),
    (["eval.mode=slide", "eval.window=7", "eval.stride=[48, 32]"], "eval.window=7: expected null or [H, W]"),
])
def test_sliding_window_settings_fit_together(overrides, expected):
    with pytest.raises(ConfigError) as info:
        validate(_with(*overrides))
    assert expected in str(info.value)


def test_sections_can_be_checked_alone():
    """`segbench evaluate` checks its eval section only; a bad train section elsewhere is not its business."""
    cfg = _with("train.iters=0", "eval.mode=tiles")
    with pytest.raises(ConfigError) as info:
        validate({"eval": cfg["eval"]}, sections=("eval",))
    assert "eval.mode" in str(info.value) and "train.iters" not in str(info.value)


def test_unknown_keys_are_named():
    cfg = load_config(None)
    cfg["train"]["itres"] = 5
    with pytest.raises(ConfigError, match=r"train.itres: unknown key; valid keys here: .*iters"):
        validate(cfg)


# -- the runner: before any work, --dry-run included -----------------------------------------------------------------
def test_zero_iterations_are_refused_before_any_work(tmp_path, capsys):
    """Before: train.iters=0 trained nothing, scored the random model (mIoU 0.1) and marked the cell done."""
    assert _main(tmp_path, "sim->photo", "--backbones", "resnet18", "--set", "train.iters=0") == 2
    assert "train.iters=0: expected an integer >= 1" in capsys.readouterr().err
    assert not (tmp_path / "results").exists()


def test_dry_run_refuses_an_unknown_target(tmp_path, capsys):
    """Before: `sim->nosuch --dry-run` printed a plan and exited 0."""
    assert _main(tmp_path, "sim->nosuch", "--dry-run") == 2
    err = capsys.readouterr().err
    assert "unknown dataset 'nosuch'" in err and "photo" in err


def test_dry_run_refuses_a_non_number_lr(tmp_path, capsys):
    """Before: `train.lr=abc` was planned, and failed inside torch once the cell started."""
    assert _main(tmp_path, "sim->photo", "--set", "train.lr=abc", "--dry-run") == 2
    assert "train.lr='abc': expected a number > 0" in capsys.readouterr().err


def test_runner_lists_config_and_study_problems_in_one_message(tmp_path, capsys):
    assert _main(tmp_path, "sim->nosuch", "--backbones", "resnet7", "--heads", "smp-unet",
                 "--set", "model.output_stride=8", "--set", "train.split=trian", "--set", "train.iters=0",
                 "--dry-run") == 2
    err = capsys.readouterr().err
    assert "5 bad settings:" in err
    for part in ("train.iters=0", "unknown dataset 'nosuch'", "unknown backbone 'resnet7'",
                 "model.output_stride=8: head 'smp-unet' supports 32",
                 "train.split='trian': sim has no split 'trian'; its splits: train, val"):
        assert part in err, part


def test_valid_study_still_plans(tmp_path, capsys):
    assert _main(tmp_path, "sim->photo", "--backbones", "resnet18", "--set", "train.lr=1e-2", "--dry-run") == 0
    assert capsys.readouterr().out.startswith("1 cells")


# -- segbench evaluate ------------------------------------------------------------------------------------------------
def test_evaluate_checks_its_eval_settings():
    from segbench.evaluate import eval_section

    with pytest.raises(ConfigError, match=r"eval.scales=\[0\]: expected a non-empty list of numbers > 0"):
        eval_section(["eval.scales=[0]"])
    assert eval_section(["eval.scales=[1, 15e-1]"])["scales"] == [1, 1.5]


@pytest.fixture
def yaml_dataset_in_data_root(tmp_path):
    """`c3tiny`, a declared YAML dataset in the data root (nothing on disk but the file: the dry run opens nothing)."""
    root = tmp_path / "data"
    root.mkdir()
    (root / "c3tiny.yaml").write_text("segbench_dataset: 1\nname: c3tiny\nsplits: [train, val]\n"
                                      "images: {dir: 'images/{split}', suffix: .png}\n"
                                      "labels: {dir: 'labels/{split}', suffix: .png}\nencoding: trainid\n")
    return root


def test_yaml_datasets_of_the_data_root_are_known_with_their_splits(tmp_path, yaml_dataset_in_data_root, capsys):
    assert _main(tmp_path, "c3tiny->sim", "--backbones", "resnet18", "--dry-run") == 0
    assert _main(tmp_path, "c3tiny->sim", "--backbones", "resnet18", "--set", "eval.split=test", "--dry-run") == 2
    err = capsys.readouterr().err
    assert "eval.split='test': c3tiny has no split 'test'; its splits: train, val" in err
    assert "sim has no split 'test'" in err


def test_a_broken_yaml_dataset_is_listed_with_the_other_problems(tmp_path, capsys):
    root = tmp_path / "data"
    root.mkdir()
    (root / "broken.yaml").write_text("segbench_dataset: 1\nname: [unclosed\n")
    assert _main(tmp_path, "sim->photo", "--set", "train.iters=0", "--dry-run") == 2
    err = capsys.readouterr().err
    assert "2 bad settings:" in err and "train.iters=0" in err and "broken.yaml" in err


def test_prepared_copies_are_checked_by_name_only(tmp_path, capsys):
    """`NAME@WxH` is opened (manifest, splits) by check_datasets after the plan; the dry run checks the size only."""
    assert _main(tmp_path, "sim@64x32->photo", "--backbones", "resnet18", "--dry-run") == 0
    assert _main(tmp_path, "sim@64->photo", "--backbones", "resnet18", "--dry-run") == 2
    assert "bad size '64'" in capsys.readouterr().err
