"""Model selection (last / source-val / oracle) from the curves that `eval.every` records during training."""
import json
from contextlib import nullcontext

import pytest
import torch

from segbench import run
from segbench.cells import plan
from segbench.config import DEFAULTS, ConfigError, TrainSettings, apply_overrides, validate
from segbench.data import build_dataset
from segbench.data.adapters import synthetic
from segbench.data.transforms import build_train_transform
from segbench.engine import scoring
from segbench.engine.train import train
from segbench.models import create_model
from segbench.record import RecordError, missing_targets, new_record, write_record
from segbench.report import build_report
from segbench.report import cli as report_cli
from segbench.report.selection import SelectionError, select, source_val_iteration
from segbench.spec import parse_spec


# --- the rules on hand-built records ---------------------------------------------------------------------------------

def _record(source="sim", seed=0, curves=None, results=None, backbone="resnet18"):
    rec = {"cell_id": f"{backbone}-{source}-{seed}", "backbone": backbone, "head": "fcn", "source": source,
           "seed": seed, "targets": list((results or curves or {}).keys()),
           "config": {"model": {}, "train": {"iters": 6}, "eval": {}},
           "results": {t: {"miou": v, "pixel_acc": 90.0} for t, v in (results or {}).items()},
           "protocol": {"sources": [source], "checkpoint": "last"}}
    if curves is not None:
        rec["curves"] = curves
    return rec


SIM = {"sim": [[2, 40.0], [4, 55.0], [6, 50.0]], "photo": [[2, 30.0], [4, 20.0], [6, 35.0]]}


def _mious(record):
    return {t: m["miou"] for t, m in record["results"].items()}


def test_last_is_the_final_results_untouched():
    rec = _record(curves=SIM, results={"sim": 50.0, "photo": 35.0})
    (chosen,) = select([rec], "last")
    assert chosen is rec and _mious(chosen) == {"sim": 50.0, "photo": 35.0}


def test_source_val_takes_every_target_at_the_best_in_domain_iteration():
    (chosen,) = select([_record(curves=SIM, results={"sim": 50.0, "photo": 35.0})], "source-val")
    # in-domain sim peaks at iteration 4 (55); photo there is 20, although photo's own best is 35 at 6
    assert _mious(chosen) == {"sim": 55.0, "photo": 20.0}
    assert {m["iteration"] for m in chosen["results"].values()} == {4}
    assert chosen["protocol"]["checkpoint"] == "source-val"


def test_oracle_takes_each_targets_own_maximum():
    rec = _record(curves=SIM, results={"sim": 50.0, "photo": 35.0})
    (chosen,) = select([rec], "oracle")
    assert _mious(chosen) == {"sim": 55.0, "photo": 35.0}
    assert chosen["results"]["photo"]["iteration"] == 6 and chosen["results"]["sim"]["iteration"] == 4
    assert chosen["protocol"]["checkpoint"] == "oracle"
    assert rec["protocol"]["checkpoint"] == "last" and _mious(rec) == {"sim": 50.0, "photo": 35.0}  # not mutated


def test_ties_go_to_the_earliest_iteration():
    curves = {"sim": [[2, 50.0], [4, 50.0], [6, 45.0]], "photo": [[2, 10.0], [4, 30.0], [6, 30.0]]}
    (chosen,) = select([_record(curves=curves)], "source-val")
    assert _mious(chosen) == {"sim": 50.0, "photo": 10.0}  # iteration 2, not 4
    (oracle,) = select([_record(curves=curves)], "oracle")
    assert oracle["results"]["photo"] == {"iteration": 4, "miou": 30.0}


def test_an_undefined_point_never_wins():
    """A curve point can be NaN (no scored class labelled or predicted in that evaluation): it is skipped, even first
    on the curve, where max() over raw floats would return NaN and match no iteration."""
    curves = {"sim": [[2, float("nan")], [4, 50.0], [6, 45.0]], "photo": [[2, float("nan")], [4, 20.0], [6, 30.0]]}
    assert source_val_iteration(_record(curves=curves)) == (4, 50.0)
    (oracle,) = select([_record(curves=curves)], "oracle")
    assert oracle["results"]["photo"] == {"iteration": 6, "miou": 30.0}


def test_multi_source_selects_on_the_mean_of_the_parts():
    # gta5 alone would pick iteration 1 (60); the mean (gta5 + synthia) / 2 is 45 at 1 and 50 at 2
    curves = {"gta5": [[1, 60.0], [2, 50.0]], "synthia": [[1, 30.0], [2, 50.0]],
              "cityscapes": [[1, 33.0], [2, 31.0]]}
    rec = _record(source="gta5+synthia", curves=curves)
    assert source_val_iteration(rec) == (2, 50.0)
    (chosen,) = select([rec], "source-val")
    assert _mious(chosen) == {"gta5": 50.0, "synthia": 50.0, "cityscapes": 31.0}


def test_a_record_without_curves_names_the_cell_and_the_fix(tmp_path):
    rec = _record(results={"sim": 50.0})
    rec["_dir"] = tmp_path / "cells" / "sim__resnet18__fcn__s0__abc"
    for rule in ("source-val", "oracle"):
        with pytest.raises(SelectionError, match=r"sim__resnet18__fcn__s0__abc.*trained again.*--set eval\.every=N"):
            select([rec], rule)
    assert issubclass(SelectionError, RecordError)  # a user error: `segbench report` exits 2 with the message
    with pytest.raises(ValueError, match="unknown model-selection rule 'best'"):
        select([rec], "best")


def test_a_target_scored_after_training_has_no_curve_and_is_named():
    rec = _record(curves={"sim": [[2, 40.0]]}, results={"sim": 40.0, "fog": 12.0})
    with pytest.raises(SelectionError, match=r"fog have no curve.*scored after training"):
        select([rec], "oracle")


# --- the report: tables per rule, selection.md ------------------------------------------------------------------

def _study(tmp_path, records):
    for rec in records:
        cell = tmp_path / "study" / "cells" / f"{rec['source']}__{rec['backbone']}__fcn__s{rec['seed']}"
        cell.mkdir(parents=True)
        (cell / "record.json").write_text(json.dumps(rec))
    return tmp_path / "study"


TWO_SEEDS = [_record(seed=0, curves=SIM, results={"sim": 50.0, "photo": 35.0}),
             _record(seed=1, curves={"sim": [[2, 60.0], [4, 52.0], [6, 58.0]],
                                     "photo": [[2, 25.0], [4, 29.0], [6, 27.0]]},
                     results={"sim": 58.0, "photo": 27.0})]


def test_selection_md_puts_the_three_rules_side_by_side(tmp_path):
    study = _study(tmp_path, TWO_SEEDS)
    build_report(study, plot=False, select_rule="all")
    md = (study / "selection.md").read_text()
    # photo, by hand: last 35, 27; source-val (sim best at 4, then at 2) 20, 25; oracle 35, 29.
    # mean of two, standard error of two = |a - b| / 2; gaps per seed: last-oracle 0, -2; source-val-oracle -15, -4
    expected = "| resnet18 | photo | 31.0 ± 4.0 | 22.5 ± 2.5 | 32.0 ± 3.0 | -1.0 ± 1.0 | -9.5 ± 5.5 | 2 |"
    assert expected in md, md
    # sim: last 50, 58; source-val 55, 60; oracle 55, 60
    assert "| resnet18 | sim | 54.0 ± 4.0 | 57.5 ± 2.5 | 57.5 ± 2.5 | -3.5 ± 1.5 | 0.0 ± 0.0 | 2 |" in md
    assert "upper bound" in md.lower() and "earliest on ties" in md
    csv_line = next(line for line in (study / "selection.csv").read_text().splitlines() if ",photo," in line)
    assert csv_line.startswith("sim,resnet18,photo,31.00,5.66,4.00,2,22.50,3.54,2.50,2,32.00,4.24,3.00,2")
    assert (study / "table.md").read_text().count("Model selection") == 0  # `all` keeps today's tables


def test_oracle_tables_say_oracle_and_last_tables_are_unchanged(tmp_path):
    study = _study(tmp_path, TWO_SEEDS)
    build_report(study, plot=False)
    last = (study / "table.md").read_text()
    build_report(study, plot=False, select_rule="oracle")
    oracle = (study / "table.md").read_text()
    assert oracle.startswith("**Model selection: oracle**") and oracle.rstrip().endswith("not a result).")
    assert "| resnet18 (oracle) | 57.5 ± 2.5 | 32.0 ± 3.0 |" in oracle
    assert "oracle" not in last and "| resnet18 | 54.0 ± 4.0 | 31.0 ± 4.0 |" in last
    # a study without curves builds the same last tables as before curves existed
    plain = _study(tmp_path / "plain", [{k: v for k, v in r.items() if k != "curves"} for r in TWO_SEEDS])
    build_report(plain, plot=False)
    assert (plain / "table.md").read_text() == last


def test_report_command_refuses_source_val_without_curves(tmp_path, capsys):
    study = _study(tmp_path, [{k: v for k, v in r.items() if k != "curves"} for r in TWO_SEEDS])
    assert report_cli.main([str(study), "--no-plot", "--select", "source-val"]) == 2
    assert "--set eval.every=N" in capsys.readouterr().err


def test_select_all_without_curves_names_all_and_writes_nothing(tmp_path, capsys):
    study = _study(tmp_path, [{k: v for k, v in r.items() if k != "curves"} for r in TWO_SEEDS])
    assert report_cli.main([str(study), "--no-plot", "--select", "all", "--baseline", "resnet18"]) == 2
    err = capsys.readouterr().err
    assert "--select all needs the mIoU curves" in err and "--set eval.every=N" in err
    assert sorted(p.name for p in study.iterdir()) == ["cells"]  # no report half rebuilt (paired.md) before it


# --- eval.every in the configuration and the cell id -----------------------------------------------------------

def test_eval_every_is_validated_and_leaves_ids_and_scores_alone(tmp_path):
    assert DEFAULTS["eval"]["every"] == 0
    with pytest.raises(ConfigError, match=r"eval.every=-1: expected an integer >= 0"):
        validate(apply_overrides(DEFAULTS, ["eval.every=-1"]))
    cfg = {**DEFAULTS, "backbones": ["resnet18"]}
    (off,) = plan(cfg, parse_spec("sim->photo"), ["resnet18"], ["fcn"])
    (on,) = plan(apply_overrides(cfg, ["eval.every=500"]), parse_spec("sim->photo"), ["resnet18"], ["fcn"])
    assert on.cell_id == off.cell_id and on.eval_identity() == off.eval_identity()
    cell_dir = tmp_path / "cell"
    cell_dir.mkdir()
    scored = {t: {"miou": 1.0, "eval": off.eval_identity()} for t in off.eval_targets}
    write_record(cell_dir, {**new_record(off), "results": scored})
    assert missing_targets(on, cell_dir) == []  # scores made without eval.every still count


# --- the training loop: exactness, timing, resume ---------------------------------------------------------------

@pytest.fixture
def tiny_sim(tmp_path, monkeypatch):
    monkeypatch.setattr(synthetic, "SPLIT_SIZES", {"train": 4, "val": 2})
    return tmp_path / "data"


def _train(root, ckpt_dir, iters=4):
    """A run without periodic evaluation (eval.every=0: the pipeline passes no on_eval)."""
    torch.manual_seed(0)
    model = create_model("resnet18", head="fcn", pretrained=None)
    settings = TrainSettings(iters=iters, batch_size=2, workers=0, ckpt_every=2, keep_ckpts=5)
    stats = train(model, build_dataset("sim", "train", root=root), build_train_transform((32, 32), (0.5, 1.0)),
                  settings, seed=0, device=torch.device("cpu"), ckpt_dir=ckpt_dir, identity={"a": 1},
                  eval_every=0, on_eval=None)
    return model, stats


def _scorer(root, model_box, calls):
    """Scores the sim val split as the pipeline does, and draws from the global RNG besides (as a method might)."""
    val = build_dataset("sim", "val", root=root)
    classes = scoring.prepare_for_scoring(val, {})

    def on_eval(iteration):
        calls.append((iteration, model_box[0].training))
        torch.rand(3)
        return {"sim": scoring.evaluate(model_box[0], val, device=torch.device("cpu"), eval_classes=classes,
                                                 workers=0)["miou"]}
    return on_eval


def _train_with_eval(root, ckpt_dir, every, iters=4, fail_at=None):
    box, calls = [None], []  # box: the model the scorer sees, set once built (train() trains it in place)
    scorer = _scorer(root, box, calls)

    def on_eval(iteration):
        if iteration == fail_at:
            raise RuntimeError("killed")
        return scorer(iteration)
    torch.manual_seed(0)
    model = create_model("resnet18", head="fcn", pretrained=None)
    box[0] = model
    settings = TrainSettings(iters=iters, batch_size=2, workers=0, ckpt_every=2, keep_ckpts=5)
    stats = train(model, build_dataset("sim", "train", root=root), build_train_transform((32, 32), (0.5, 1.0)),
                  settings, seed=0, device=torch.device("cpu"), ckpt_dir=ckpt_dir, identity={"a": 1},
                  eval_every=every, on_eval=on_eval)
    return model, stats, calls


def _same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_periodic_evaluation_leaves_the_trained_weights_bit_identical(tiny_sim, tmp_path, one_thread, monkeypatch):
    plain, plain_stats = _train(tiny_sim, tmp_path / "plain")
    scored, stats, calls = _train_with_eval(tiny_sim, tmp_path / "scored", every=3)
    assert _same_weights(plain, scored)
    assert [it for it, _ in calls] == [3, 4] and all(training for _, training in calls)  # every 3, and the last
    assert [it for it, _ in stats["curves"]["sim"]] == [3, 4]
    assert stats["eval_seconds"] > 0 and "curves" in plain_stats and plain_stats["curves"] == {}
    # the fork is what keeps it exact: without it the scorer's draws shift the training draws after it
    monkeypatch.setattr(torch.random, "fork_rng", lambda **kw: nullcontext())
    unforked, _, _ = _train_with_eval(tiny_sim, tmp_path / "unforked", every=3)
    assert not _same_weights(plain, unforked)


def test_a_resumed_run_keeps_the_curve_points_before_its_checkpoint(tiny_sim, tmp_path, one_thread):
    whole, whole_stats, _ = _train_with_eval(tiny_sim, tmp_path / "whole", every=2)
    with pytest.raises(RuntimeError, match="killed"):  # dies at iteration 4, after the checkpoint of iteration 2
        _train_with_eval(tiny_sim, tmp_path / "resumed", every=2, fail_at=4)
    resumed, stats, calls = _train_with_eval(tiny_sim, tmp_path / "resumed", every=2)
    assert stats["resumed_from"] == 2 and [it for it, _ in calls] == [4]
    assert stats["curves"] == whole_stats["curves"] and [it for it, _ in stats["curves"]["sim"]] == [2, 4]
    assert _same_weights(whole, resumed)


# --- end to end ----------------------------------------------------------------------------------------------------

TINY = ["--set", "train.iters=2", "--set", "train.batch_size=2", "--set", "train.crop=[32,64]",
        "--set", "train.workers=0", "--set", "train.ckpt_every=1", "--set", "model.pretrained=null",
        "--set", "eval.workers=0"]


def test_a_study_with_eval_every_records_curves_ending_at_the_results(tiny_sim, tmp_path, one_thread):
    assert run.main(["sim->photo", "--backbones", "resnet18", "--name", "curves", "--data-root", str(tiny_sim),
                     "--results", str(tmp_path / "results"), *TINY, "--set", "eval.every=1"]) == 0
    study = tmp_path / "results" / "curves"
    (path,) = study.glob("cells/*/record.json")
    rec = json.loads(path.read_text())
    assert set(rec["curves"]) == {"sim", "photo"}
    for target, curve in rec["curves"].items():
        assert [it for it, _ in curve] == [1, 2]
        assert curve[-1][1] == rec["results"][target]["miou"]  # same weights, same evaluation
    assert rec["training"]["eval_seconds"] > 0
    assert "Model selection" not in (study / "table.md").read_text()  # the run's own report: last
    assert (study / "curves.png").stat().st_size > 0
    assert report_cli.main([str(study), "--no-plot", "--select", "all"]) == 0
    assert "| resnet18 | photo |" in (study / "selection.md").read_text()
    # rescored under other eval settings, without training: the old curves no longer describe these scores
    assert run.main(["sim->photo", "--backbones", "resnet18", "--name", "curves", "--data-root", str(tiny_sim),
                     "--results", str(tmp_path / "results"), *TINY, "--set", "eval.every=1",
                     "--set", "eval.flip=true"]) == 0
    rescored = json.loads(path.read_text())
    assert rescored["results"]["photo"]["eval"]["flip"] is True and rescored["curves"] == {}
