"""`eval.geometries`: one trained cell scored under a second evaluation protocol as views of its targets
(`cityscapes~native` beside `cityscapes`), each view scored exactly as a cell under that protocol would be, recorded
with what it was scored under, and averaged only with the views of its own protocol."""
from __future__ import annotations

import pytest
import torch

import minitrees as mt
from segbench import network, pipeline
from segbench.cells import FINAL_WEIGHTS, plan, scored_datasets, view_eval
from segbench.config import ConfigError, apply_overrides, load_config, validate
from segbench.io import save_torch
from segbench.record import is_done, missing_targets
from segbench.report.records import scores
from segbench.report.tables import MEAN_UNSEEN, dg_aggs, dg_layout
from segbench.spec import is_in_domain, parse_specs, scoring_view, view_name
from tiny_models import PixelModel

BASE = ["eval.workers=0", "eval.dump=0", "eval.in_domain=false", "eval.protocol=rein"]


def test_a_view_name_is_the_dataset_and_a_protocol():
    assert view_name("cityscapes", "native") == "cityscapes~native"
    assert scoring_view("cityscapes~native") == ("cityscapes", "native")
    assert scoring_view("cityscapes") == ("cityscapes", None)
    assert is_in_domain("gta5", "gta5~native") and not is_in_domain("gta5", "cityscapes~native")


def test_views_follow_the_scored_datasets_in_protocol_order():
    ecfg = {"in_domain": True, "geometries": ["native", "robustnet"]}
    assert scored_datasets("gta5", ["cityscapes"], ecfg) == (
        "gta5", "cityscapes", "gta5~native", "cityscapes~native", "gta5~robustnet", "cityscapes~robustnet")
    assert scored_datasets("gta5", ["cityscapes"], ecfg, views=False) == ("gta5", "cityscapes")
    # a view is scored under its protocol at the dataset's own size: `eval.size` belongs to the cell's protocol
    assert view_eval({"protocol": "native", "size": [32, 64]}, "cityscapes~rein") == {"protocol": "rein", "size": None}
    assert view_eval({"protocol": "native", "size": [32, 64]}, "cityscapes")["size"] == [32, 64]


@pytest.mark.parametrize("value, words", [(["cubist"], "a list of eval protocols"), ("native", "a list"),
                                          (["native", "native"], "a list"), (["rein"], "holds eval.protocol='rein'")])
def test_geometries_are_checked_before_any_work(value, words):
    with pytest.raises(ConfigError, match=words):
        validate(apply_overrides(load_config(None), BASE + [f"eval.geometries={value!r}".replace("'", '"')]))


@pytest.fixture
def scored_twice(tmp_path, monkeypatch):
    """gta5 -> cityscapes, bdd100k under Rein's protocol with native views; a trained PixelModel (per-pixel, so the
    two geometries give different scores only through what they resize)."""
    data_root = tmp_path / "data"
    mt.make_gta5(data_root / "gta5")
    mt.make_cityscapes(data_root / "cityscapes")
    mt.make_bdd100k(data_root / "bdd100k")
    monkeypatch.setattr(network, "create_model", lambda *a, **k: PixelModel())
    torch.manual_seed(0)
    weights = PixelModel().state_dict()

    def score(overrides: list[str], name: str):
        cfg = apply_overrides(load_config(None), BASE + overrides)
        (cell,) = plan(cfg, parse_specs(["gta5->cityscapes,bdd100k"]), ["resnet50"], ["deeplabv3plus"])
        cell_dir = cell.directory(tmp_path / name)
        cell_dir.mkdir(parents=True)
        save_torch(cell_dir / FINAL_WEIGHTS, weights)  # trained: the cell only scores
        return cell, cell_dir, pipeline.run_cell(cell, cell_dir, data_root=data_root, device=torch.device("cpu"))
    return score


def test_a_view_scores_what_a_cell_under_its_protocol_scores(scored_twice):
    cell, cell_dir, record = scored_twice(["eval.geometries=[native]"], "views")
    assert list(record["results"]) == ["cityscapes", "bdd100k", "cityscapes~native", "bdd100k~native"]
    assert is_done(cell, cell_dir) and missing_targets(cell, cell_dir) == []
    _, _, native = scored_twice(["eval.protocol=native"], "native")
    for target in ("cityscapes", "bdd100k"):
        view = record["results"][f"{target}~native"]
        assert view["miou"] == pytest.approx(native["results"][target]["miou"])
        assert view["eval"] == native["results"][target]["eval"]
        # (an identity leaves out a setting at the value it had before the setting existed: native, here)
        assert "protocol" not in view["eval"] and record["results"][target]["eval"]["protocol"] == "rein"
        assert record["protocol"]["targets"][f"{target}~native"]["eval"] == view["eval"]
        assert "eval" not in record["protocol"]["targets"][target]
    # Rein's geometry resizes the frames before the model sees them: the two views differ
    assert record["results"]["cityscapes"]["miou"] != pytest.approx(record["results"]["cityscapes~native"]["miou"])


def test_each_protocol_has_its_own_mean(scored_twice):
    _, _, record = scored_twice(["eval.geometries=[native]"], "views")
    ((rows, columns, table),) = dg_aggs(scores([record])).values()
    native_mean = view_name(MEAN_UNSEEN, "native")
    assert columns == ["cityscapes", "bdd100k", MEAN_UNSEEN, "cityscapes~native", "bdd100k~native", native_mean]
    res = record["results"]
    for mean, targets in ((MEAN_UNSEEN, ["cityscapes", "bdd100k"]),
                          (native_mean, ["cityscapes~native", "bdd100k~native"])):
        assert table[(rows[0], mean)].mean == pytest.approx(sum(res[t]["miou"] for t in targets) / 2)
    assert "over their views under eval protocol P" in dg_layout(scores([record])).markdown()


def test_dropping_a_geometry_keeps_the_cell_done_and_adding_one_scores_only_the_views(scored_twice):
    cell, cell_dir, record = scored_twice([], "plain")
    assert list(record["results"]) == ["cityscapes", "bdd100k"]
    cell.eval = {**cell.eval, "geometries": ["native"]}
    assert missing_targets(cell, cell_dir) == ["cityscapes~native", "bdd100k~native"]
