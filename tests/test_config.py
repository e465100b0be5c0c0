"""config.py: experiment files and `--set` overrides over the defaults, and the settings whose fields those defaults
(and the rules, the non-identity keys and the added settings) are views of. Value checks: test_config_validation.py."""
from dataclasses import dataclass, fields

import pytest

from segbench.config import (ADDED_SETTINGS, DEFAULTS, NON_IDENTITY_KEYS, RULES, SECTIONS, ConfigError, EvalSettings,
                             apply_overrides, eval_settings, identity_view, integer, load_config, one_of, setting,
                             train_settings)


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


# -- settings: one field each, the tables views of them ----------------------------------------------------------------
def test_a_setting_declares_its_default_rule_identity_and_history_in_one_field():
    @dataclass
    class Section:
        iters: int = setting(40000, integer(1))
        workers: int = setting(4, integer(0), identity=False)
        optimizer: str = setting("sgd", one_of("sgd", "adamw"), before="sgd")
        crop: tuple = setting((8, 8))  # no rule: its default's type

    iters, workers, optimizer, crop = fields(Section)
    assert Section().iters == 40000 and Section().crop == (8, 8)
    assert iters.metadata["identity"] and not workers.metadata["identity"]
    assert optimizer.metadata["before"] == "sgd" and repr(iters.metadata["before"]) == "<there from the start>"
    assert iters.metadata["rule"].expected == "an integer >= 1" and crop.metadata["rule"] is None


def test_the_tables_are_views_of_the_fields():
    for name, section in SECTIONS.items():
        assert list(DEFAULTS[name]) == [f.name for f in fields(section)] == list(RULES[name])
        assert NON_IDENTITY_KEYS[name] == {f.name for f in fields(section) if not f.metadata["identity"]}
    speed = NON_IDENTITY_KEYS["train"]
    assert {"workers", "ckpt_every", "compile"} <= speed and "iters" not in speed
    assert ADDED_SETTINGS["train"].items() >= {"accumulate": 1, "photometric": None, "source_weights": None}.items()
    assert DEFAULTS["train"]["crop"] == [768, 768]  # tuples as lists: what YAML and JSON round-trip to
    assert identity_view("train", {"iters": 5, "workers": 2, "accumulate": 1, "photometric": "robustnet"}) == {
        "iters": 5, "photometric": "robustnet"}


def test_a_section_as_the_code_reads_it_takes_the_values_as_given_and_defaults_for_the_rest():
    settings = train_settings({"iters": 7, "no_longer_a_setting": 1})
    assert settings.iters == 7 and settings.batch_size == DEFAULTS["train"]["batch_size"]
    ecfg = {**DEFAULTS["eval"], "mode": "slide", "window": [32, 64], "scales": [1, 2]}
    assert eval_settings(ecfg) == EvalSettings(mode="slide", window=(32, 64), scales=(1.0, 2.0))
