"""`python -m segbench.run` end to end on a tiny budget, and its error paths."""
import json

import pytest

from segbench import run
from segbench.data.adapters import synthetic

TINY = ["--set", "train.iters=2", "--set", "train.batch_size=2", "--set", "train.crop=[32,64]",
        "--set", "train.workers=0", "--set", "train.ckpt_every=1", "--set", "model.pretrained=null"]


@pytest.fixture
def tiny_domains(monkeypatch):
    monkeypatch.setattr(synthetic, "SPLIT_SIZES", {"train": 4, "val": 2})


def _main(tmp_path, *args):
    return run.main(["--data-root", str(tmp_path / "data"), "--results", str(tmp_path / "results"), *args])


@pytest.mark.slow
def test_embedded_study_end_to_end_then_skips_finished_cells(tmp_path, tiny_domains, capsys):
    args = ["sim->photo", "--backbones", "resnet18", "resnet18_ibn_b", "--name", "tiny", *TINY]
    assert _main(tmp_path, *args) == 0
    out = capsys.readouterr().out
    study = tmp_path / "results" / "tiny"
    assert "| backbone | train sim / test sim | train sim / test photo |" in out
    for name in ("table.md", "table.csv", "per_seed.csv", "table.png"):
        assert (study / name).stat().st_size > 0, name
    records = sorted(study.glob("cells/*/record.json"))
    assert len(records) == 2
    rec = json.loads(records[0].read_text())
    assert set(rec["results"]) == {"sim", "photo"}
    assert 0 <= rec["results"]["photo"]["miou"] <= 100
    assert rec["config"]["train"]["iters"] == 2 and rec["provenance"]["torch"]
    assert (records[0].parent / "done").exists() and (records[0].parent / "model_final.pt").exists()
    csv_text = (study / "table.csv").read_text()
    assert "resnet18_ibn_b" in csv_text and "train sim / test photo mIoU" in csv_text

    # the standalone evaluator rebuilds the model from the cell and gets the runner's number
    from segbench import evaluate as evaluate_cli

    assert evaluate_cli.main([str(records[0].parent), "--dataset", "photo", "--data-root", str(tmp_path / "data"),
                              "--set", "eval.workers=0", "--device", "cpu", "--output", str(tmp_path / "ev.json")]) == 0
    assert json.loads((tmp_path / "ev.json").read_text())["miou"] == pytest.approx(rec["results"]["photo"]["miou"])
    samples = rec["results"]["photo"]["samples"]
    assert samples and (records[0].parent / samples[0]["pred"]).is_file()

    mtimes = [r.stat().st_mtime_ns for r in records]
    assert _main(tmp_path, *args) == 0
    assert "2 finished cell(s) skipped" in capsys.readouterr().out
    assert [r.stat().st_mtime_ns for r in records] == mtimes


@pytest.mark.slow
def test_new_target_is_evaluated_without_retraining(tmp_path, tiny_domains, capsys):
    base = ["--backbones", "resnet18", "--name", "grow", *TINY]
    assert _main(tmp_path, "sim->sim", *base) == 0
    (record,) = (tmp_path / "results" / "grow").glob("cells/*/record.json")
    weights = record.parent / "model_final.pt"
    before = weights.stat().st_mtime_ns
    assert _main(tmp_path, "sim->photo", *base) == 0
    assert weights.stat().st_mtime_ns == before  # not retrained
    assert set(json.loads(record.read_text())["results"]) == {"sim", "photo"}


@pytest.mark.slow
def test_a_cell_that_fails_in_training_makes_the_study_exit_1(tmp_path, tiny_domains, one_thread, capsys):
    """lr 1e30 really diverges (NonFiniteLoss at the second iteration); the study still reports, names the failed
    cell with its error log and exits 1, so a script or CI job sees the failure. (Written 1.0e+30: YAML reads the
    spelling 1e30 as a string.)"""
    code = _main(tmp_path, "sim->sim", "--backbones", "resnet18", "--name", "nan", "--device", "cpu", *TINY,
                 "--set", "train.lr=1.0e+30")
    err = capsys.readouterr().err
    assert code == 1
    assert "1 cell(s) FAILED" in err and "NonFiniteLoss" in err
    (log,) = (tmp_path / "results" / "nan").glob("cells/*/launcher.log")
    assert str(log) in err and "NonFiniteLoss" in log.read_text()
    assert not (log.parent / "done").exists()
    assert (tmp_path / "results" / "nan" / "table.md").is_file()  # the report is still written


def test_unquoted_arrow_gets_a_quoting_hint(tmp_path, capsys):
    assert _main(tmp_path, "gta5-") == 2
    err = capsys.readouterr().err
    assert "redirect" in err and "gta5:TARGET" in err


def test_unknown_dataset_lists_valid_names(tmp_path, capsys):
    assert _main(tmp_path, "nosuch->sim") == 2
    err = capsys.readouterr().err
    assert "unknown dataset 'nosuch'" in err and "sim" in err and "photo" in err


def test_missing_data_root_names_directory_layout_and_fix(tmp_path, capsys):
    assert _main(tmp_path, "gta5->cityscapes") == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "data" / "gta5") in err or str(tmp_path / "data") in err
    assert "--data-root" in err and "SEGBENCH_DATA" in err
    assert "images/" in err  # the expected layout is shown


def test_unknown_backbone_lists_valid_names(tmp_path, capsys):
    assert _main(tmp_path, "sim->photo", "--backbones", "resnet7") == 2
    assert "resnet18_ibn_a" in capsys.readouterr().err


def test_dry_run_prints_the_plan_without_running(tmp_path, capsys):
    assert _main(tmp_path, "sim->photo", "--backbones", "resnet18*", "--seeds", "2", "--dry-run") == 0
    out = capsys.readouterr().out
    assert out.startswith("6 cells") and out.count("pending") == 6
    assert not (tmp_path / "results").exists()


def test_shell_safe_spelling_plans_the_same_cells(tmp_path, capsys):
    assert _main(tmp_path, "sim:photo", "--name", "x", "--dry-run") == 0
    colon = capsys.readouterr().out
    assert _main(tmp_path, "sim->photo", "--name", "x", "--dry-run") == 0
    assert capsys.readouterr().out.splitlines()[:-1] == colon.splitlines()[:-1]


def test_cell_ids_change_with_config_and_generator_version(monkeypatch):
    from segbench.config import load_config
    from segbench.cells import plan
    from segbench.spec import parse_specs

    cfg = load_config(None)
    (cell,) = plan(cfg, parse_specs(["sim->photo"]), ["resnet18"], ["fcn"])
    before = cell.cell_id
    assert plan(cfg, parse_specs(["sim->photo"]), ["resnet18"], ["fcn"])[0].cell_id == before  # re-plan: same id
    assert plan(cfg, parse_specs(["sim->sim"]), ["resnet18"], ["fcn"])[0].cell_id == before  # targets: same id
    monkeypatch.setattr(synthetic.SimDomain, "data_version", synthetic.GENERATOR_VERSION + 1)
    assert plan(cfg, parse_specs(["sim->photo"]), ["resnet18"], ["fcn"])[0].cell_id != before
    monkeypatch.undo()
    cfg["train"]["iters"] += 1
    assert plan(cfg, parse_specs(["sim->photo"]), ["resnet18"], ["fcn"])[0].cell_id != before
    cfg["train"]["iters"] -= 1
    cfg["train"]["workers"] += 3  # speed knob: same id
    assert plan(cfg, parse_specs(["sim->photo"]), ["resnet18"], ["fcn"])[0].cell_id == before


@pytest.mark.slow
def test_analyses_can_be_asked_for_from_the_runner(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(synthetic, "SPLIT_SIZES", {"train": 4, "val": 4})
    args = ["sim->photo", "--backbones", "resnet18_ibn_b", "--name", "an", "--analyze", "shift,divergence",
            "--analyze-images", "4", *TINY]
    assert _main(tmp_path, *args) == 0
    out = capsys.readouterr().out
    study = tmp_path / "results" / "an"
    produced = sorted(p.name for p in study.iterdir() if p.name.startswith(("shift", "divergence")))
    assert any(n.endswith(".csv") for n in produced) and any(n.endswith(".png") for n in produced), produced
    assert out.count("analysis: ") >= 2


def test_unknown_analysis_is_refused_before_any_work(tmp_path, capsys):
    assert _main(tmp_path, "sim->photo", "--analyze", "shift,colour") == 2
    assert "unknown colour; choose from shift, divergence" in capsys.readouterr().err
    assert not (tmp_path / "results").exists()


def test_missing_pretrained_weights_fail_once_before_training(tmp_path, tiny_domains, monkeypatch, capsys):
    import urllib.error

    from segbench.models import pretrained as P

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def offline(url, dst, timeout=None):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(P, "download", offline)
    code = _main(tmp_path, "sim->photo", "--backbones", "resnet18_ibn_a", "--set", "model.pretrained=imagenet",
                 "--set", "train.batch_size=2")
    err = capsys.readouterr().err
    assert code == 2 and err.count("could not download") == 1
    assert "resnet18_ibn_a" in err and str(tmp_path / "torch") in err and "pretrained=null" in err
    assert not (tmp_path / "results").exists()
    assert _main(tmp_path, "sim->photo", "--set", "model.pretrained=/no/such.pth", "--set", "train.batch_size=2") == 2
    assert "/no/such.pth" in capsys.readouterr().err


# -- issue 23: what a study says about itself as it starts ------------------------------------------------------------
def _ids(out: str) -> list[str]:
    return [line.split()[0] for line in out.splitlines() if line.startswith("  ")]


def test_a_spec_of_embedded_domains_takes_the_embedded_recipe_and_says_so(tmp_path, capsys):
    """A bare 'sim->photo' used to train on 768 x 768 crops of 96 x 192 frames (segbench's real-data defaults): it
    now takes embedded.yaml's recipe, says so, and plans the embedded default's own cells."""
    assert _main(tmp_path, "sim->photo", "--backbones", "resnet18", "--dry-run") == 0
    out, err = capsys.readouterr()
    first = err.splitlines()[0]
    assert first.startswith("settings: the model/train/eval recipe of ") and "embedded.yaml" in first
    assert "(sim, photo)" in first
    assert _main(tmp_path, "--config", "embedded", "--backbones", "resnet18", "--seeds", "1", "--dry-run") == 0
    assert _ids(out) == _ids(capsys.readouterr().out)  # the same cells as the embedded default's


def test_a_spec_with_a_real_dataset_names_the_real_data_recipe_and_what_is_missing(tmp_path, capsys):
    from segbench.launchers import usable_cores

    cores = usable_cores()
    assert _main(tmp_path, "sim->gta5", "--backbones", "resnet18", "--dry-run",
                 "--set", f"train.workers={cores + 1}", "--set", f"eval.workers={cores}") == 0
    out, err = capsys.readouterr()
    assert err.splitlines()[0].startswith("settings: segbench's defaults, the real-data recipe (train.crop=[768, 768]")
    assert f"warning: train.workers={cores + 1} loader processes on {cores} usable CPU core(s)" in err
    assert "eval.workers" not in err  # as many as the cores: no warning
    (line,) = [ln for ln in out.splitlines() if ln.startswith("datasets under")]
    assert f"MISSING: gta5 (expected at {tmp_path / 'data' / 'gta5'})" in line and "generated on first use: sim" in line
    assert "(from --data-root)" in line


def test_print_config_prints_the_yaml_that_runs(tmp_path, capsys):
    """--print-config's output, given back with --config, plans exactly the cells of the command that printed it."""
    args = ["sim->photo", "--backbones", "resnet18", "resnet18_ibn_b", "--seeds", "2", "--set", "train.iters=3",
            "--name", "mine"]
    assert _main(tmp_path, *args, "--print-config") == 0
    printed = capsys.readouterr().out
    assert "train.iters=3" in printed.splitlines()[0] and "iters: 3" in printed and "name: mine" in printed
    config = tmp_path / "mine.yaml"
    config.write_text(printed)
    assert _main(tmp_path, *args, "--dry-run") == 0
    planned = capsys.readouterr().out
    assert _main(tmp_path, "--config", str(config), "--dry-run") == 0
    again = capsys.readouterr().out
    assert len(_ids(planned)) == 4 and _ids(again) == _ids(planned)
    assert again.splitlines()[0] == planned.splitlines()[0]  # same study directory: results/mine


@pytest.mark.slow
def test_a_study_says_what_it_runs_as_it_starts(tmp_path, tiny_domains, capsys):
    """The settings it took, the embedded data being generated, how many cells run and how many are done, a crop no
    training image holds, and after each cell how long it took."""
    args = ["sim->photo", "--backbones", "resnet18", "--name", "start", "--set", "train.iters=1",
            "--set", "train.batch_size=1", "--set", "train.crop=[100,200]"]
    assert _main(tmp_path, *args) == 0
    err = capsys.readouterr().err
    assert err.startswith("settings: the model/train/eval recipe of ")
    assert "generated the embedded domain 'sim': 4 train, 2 val images" in err
    assert f"1 cells -> {tmp_path / 'results' / 'start'}: 0 done, 1 to run" in err
    assert ("warning: train.crop=[100, 200] is larger than every training image of sim read (4 of 4, the smallest "
            "96x192, scaled x1.0 at most by train.scale_range)") in err
    assert err.index("1 to run") < err.index("generated the embedded domain")  # said before the wait
    assert "[1/1] sim__resnet18__fcn__s0__" in err and ": done after " in err
    assert _main(tmp_path, *args) == 0
    assert "1 done, 0 to run" in capsys.readouterr().err


def test_the_crop_warning_names_a_yaml_dataset_by_its_name_and_stays_quiet_when_the_crop_fits(tmp_path):
    """The issue's case: 'sim->mycity' style studies on small frames of one's own, under the real-data recipe."""
    import cv2
    import numpy as np

    from segbench.config import load_config
    from segbench.data import build_dataset

    data = tmp_path / "data"
    for split in ("train", "val"):
        for i in range(2):
            for kind, array in (("images", np.zeros((32, 64, 3), np.uint8)), ("labels", np.zeros((32, 64), np.uint8))):
                (data / "mycity" / kind / split).mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(data / "mycity" / kind / split / f"{i}.png"), array)
    (data / "mycity.yaml").write_text("segbench_dataset: 1\nname: mycity\nsplits: [train, val]\nencoding: trainid\n"
                                      "images: {dir: 'images/{split}', suffix: .png}\n"
                                      "labels: {dir: 'labels/{split}', suffix: .png}\n")
    cfg = load_config(None)
    train = build_dataset("mycity", "train", root=data)
    (line,) = run.crop_warnings(cfg, {"mycity": train})
    assert line.startswith("warning: train.crop=[768, 768] is larger than every training image of mycity read "
                           "(2 of 2, the smallest 32x64, scaled x2.0 at most by train.scale_range)")
    cfg["train"]["crop"] = [64, 128]  # fits a 32x64 frame scaled x2
    assert run.crop_warnings(cfg, {"mycity": train}) == []
