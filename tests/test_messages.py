"""Every command ends a user's mistake with one message naming the file or value, exit code 2, and no traceback
unless --debug (or SEGBENCH_DEBUG=1) asks for one. Also: what `segbench evaluate --preds` accepts and refuses."""
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

import minitrees as mt

from segbench import cli, errors
from segbench.data import build_dataset
from segbench.data.adapters import synthetic
from segbench.engine import scoring
from segbench.engine.checkpoint import CheckpointError, load_checkpoint
from segbench.labels import PALETTE
from segbench.record import write_record

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def no_debug_env(monkeypatch):
    monkeypatch.delenv(errors.DEBUG_ENV, raising=False)


def _segbench(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _one_clean_line(err, *names):
    """stderr ends in one message (a first line `segbench COMMAND: ...` naming every one of `names`; what a run prints
    about the study and its data as it starts comes before it), with no traceback."""
    assert "Traceback" not in err, err
    first = [line for line in err.strip().splitlines() if line.startswith("segbench ")][-1]
    for name in names:
        assert str(name) in first, (name, err)
    return first


# -- the handler itself ------------------------------------------------------------------------------------------------
def test_a_registry_key_error_is_the_users_but_any_other_key_error_is_a_bug():
    from segbench.models import BACKBONES

    with pytest.raises(KeyError) as unknown:
        BACKBONES.get("resnet7")
    assert errors.is_user_error(unknown.value)
    with pytest.raises(KeyError) as bug:
        {}["backbone"]
    assert not errors.is_user_error(bug.value)


def test_a_bug_keeps_its_traceback():
    def main(argv):
        return {}["oops"]

    with pytest.raises(KeyError):
        errors.run_command(main, [])


def test_debug_flag_is_taken_out_of_argv_and_restores_the_environment(capsys):
    seen = []

    def main(argv):
        seen.append((argv, os.environ.get(errors.DEBUG_ENV)))
        raise errors_config_error("bad value")

    assert errors.run_command(main, ["a", "--debug", "b"], prog="segbench x") == 2
    assert seen == [(["a", "b"], "1")] and errors.DEBUG_ENV not in os.environ
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1] == "segbench x: bad value"


def errors_config_error(message):
    from segbench.config import ConfigError

    return ConfigError(message)


# -- report ------------------------------------------------------------------------------------------------------------
@pytest.fixture
def corrupt_study(tmp_path):
    record = tmp_path / "study" / "cells" / "sim__resnet18__fcn__s0__abc" / "record.json"
    record.parent.mkdir(parents=True)
    record.write_text('{"cell_id": "abc", ')
    return tmp_path / "study", record


def test_report_names_a_corrupt_record(corrupt_study, capsys):
    study, record = corrupt_study
    code, _, err = _segbench(capsys, "report", study, "--no-plot")
    first = _one_clean_line(err, record)
    assert code == 2 and first.startswith("segbench report: ") and "rerun the study" in first


GOOD_RECORD = {"cell_id": "abc", "backbone": "resnet18", "head": "fcn", "source": "sim", "seed": 0,
               "config": {"model": {}}, "results": {"sim": {"miou": 40.0, "per_class_iou": {"road": 80.0}}},
               "curves": {"sim": [[2, 30.0], [4, 40.0]]}}


@pytest.mark.parametrize("field, value, named", [
    ("results", [1], "results=[1]"), ("seed", "x", 'seed="x"'), ("source", 5, "source=5"),
    ("results", {"sim": {"miou": "abc"}}, 'results.sim.miou="abc"'), ("results", {"sim": 5}, "results.sim=5"),
    ("curves", {"sim": [[2]]}, "curves.sim=[[2]]"), ("method", "isw", 'method="isw"'),
])
def test_report_names_a_record_field_of_the_wrong_type(tmp_path, capsys, field, value, named):
    from segbench.record import read_record_or_none

    record = tmp_path / "study" / "cells" / "sim__resnet18__fcn__s0__abc" / "record.json"
    write_record(record.parent, {**GOOD_RECORD, field: value})
    for select in ("last", "oracle"):
        code, _, err = _segbench(capsys, "report", tmp_path / "study", "--no-plot", "--select", select)
        first = _one_clean_line(err, record, named)
        assert code == 2 and "rerun the study: the run keeps it aside as record.json.damaged" in first
    assert read_record_or_none(record.parent) is None  # the runner redoes such a cell instead of failing on it
    write_record(record.parent, GOOD_RECORD)
    assert read_record_or_none(record.parent) == GOOD_RECORD


def test_a_record_missing_a_field_is_redone_not_read(tmp_path):
    """A record.json without `config` (cut by hand, or from another tool) is malformed like one of the wrong types: the
    runner starts the cell afresh instead of failing on record["config"] (pipeline.train_and_score)."""
    from segbench.record import read_record_or_none

    for field in ("config", "results"):
        write_record(tmp_path, {k: v for k, v in GOOD_RECORD.items() if k != field})
        assert read_record_or_none(tmp_path) is None, field


def test_a_study_without_cells_yet_says_so_for_a_baseline(tmp_path, capsys):
    (tmp_path / "study" / "cells").mkdir(parents=True)
    code, _, err = _segbench(capsys, "report", tmp_path / "study", "--no-plot", "--baseline", "erm")
    assert code == 2 and "no scored cell yet" in _one_clean_line(err, "--baseline erm")


def test_debug_shows_the_traceback(corrupt_study, capsys, monkeypatch):
    study, record = corrupt_study
    code, _, err = _segbench(capsys, "report", study, "--no-plot", "--debug")
    assert code == 2 and "Traceback" in err and "RecordError" in err and str(record) in err.splitlines()[-1]
    monkeypatch.setenv(errors.DEBUG_ENV, "1")
    code, _, err = _segbench(capsys, "--debug", "report", study, "--no-plot")
    assert code == 2 and "Traceback" in err


# -- evaluate and analyze: a checkpoint torch.load(weights_only=True) refuses ------------------------------------------
class Payload:
    def __reduce__(self):
        return (print, ("this file ran code",))


@pytest.fixture
def unsafe_cell(tmp_path):
    cell = tmp_path / "cell"
    write_record(cell, {"cell_id": "abc", "backbone": "resnet18", "head": "fcn", "source": "sim", "seed": 0,
                        "config": {"model": {}, "eval": {}}, "results": {}})
    torch.save({"model": Payload()}, cell / "model_final.pt")
    return cell


def test_load_checkpoint_refuses_a_pickle_naming_the_file(unsafe_cell, capsys):
    with pytest.raises(CheckpointError, match=r"model_final\.pt.*not a segbench checkpoint"):
        load_checkpoint(unsafe_cell / "model_final.pt")
    assert "ran code" not in capsys.readouterr().out


@pytest.mark.parametrize("command", [["evaluate", "CELL", "--dataset", "sim"],
                                     ["analyze", "shift", "CELL", "--dataset", "sim"]])
def test_evaluate_and_analyze_refuse_an_unsafe_checkpoint(unsafe_cell, capsys, command):
    code, out, err = _segbench(capsys, *[unsafe_cell if word == "CELL" else word for word in command])
    first = _one_clean_line(err, unsafe_cell / "model_final.pt")
    assert code == 2 and "not a segbench checkpoint" in first and "ran code" not in out


@pytest.mark.parametrize("flag, where", [("--output", "BLOCKER/out.json"), ("--save-preds", "BLOCKER"),
                                         ("--output", "DIR")])
def test_evaluate_checks_where_it_writes_before_scoring(unsafe_cell, tmp_path, capsys, flag, where):
    blocker = tmp_path / "notes.txt"
    blocker.write_text("mine")
    path = where.replace("BLOCKER", str(blocker)).replace("DIR", str(tmp_path))
    code, _, err = _segbench(capsys, "evaluate", unsafe_cell, "--dataset", "sim", flag, path)
    named = blocker if "BLOCKER" in where else f"--output {tmp_path}: a directory"
    first = _one_clean_line(err, named)  # refused before the (unsafe) checkpoint is even opened
    assert code == 2 and "not a segbench checkpoint" not in first and blocker.read_text() == "mine"


# -- run and evaluate: a device, weights or a batch the user must change -----------------------------------------------
@pytest.fixture
def tiny_run(tmp_path, monkeypatch):
    """`segbench run sim->sim` on 6 training images, set to train for one iteration at a tiny crop."""
    monkeypatch.setattr(synthetic, "SPLIT_SIZES", {"train": 6, "val": 1})

    def run(capsys, *settings, device="cpu"):
        sets = [a for s in ("train.iters=1", "train.crop=[32,32]", "train.batch_size=2", "train.workers=0",
                            "eval.workers=0", "model.pretrained=null", *settings) for a in ("--set", s)]
        return _segbench(capsys, "run", "sim->sim", "--backbones", "resnet18", "--results", tmp_path / "results",
                         "--data-root", tmp_path / "data", "--device", device, *sets)
    return run


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_device_cuda_without_a_gpu_is_one_line_with_the_fix(unsafe_cell, tiny_run, capsys):
    code, _, err = tiny_run(capsys, device="cuda")
    assert code == 2 and "--device cpu" in _one_clean_line(err, "--device cuda", "no CUDA GPU")
    code, _, err = _segbench(capsys, "evaluate", unsafe_cell, "--dataset", "sim", "--device", "cuda")
    assert code == 2 and "--device cpu" in _one_clean_line(err, "--device cuda", "no CUDA GPU")


@pytest.mark.parametrize("content", ["payload", "yaml"])
def test_pretrained_weights_that_are_no_state_dict_are_named_before_training(tmp_path, tiny_run, capsys, content):
    from segbench.models import create_model
    from segbench.models.pretrained import PretrainedWeightsError

    weights = tmp_path / f"weights.{'pt' if content == 'payload' else 'yaml'}"
    if content == "payload":
        torch.save({"model": Payload()}, weights)
    else:
        weights.write_text("model:\n  backbone: resnet18\n  lr: 0.01\n")
    code, out, err = tiny_run(capsys, f"model.pretrained={weights}")
    first = _one_clean_line(err, f"model.pretrained='{weights}'")
    assert code == 2 and not (tmp_path / "results").exists() and "ran code" not in out
    assert ("not a plain state dict" if content == "payload" else "not a torch file") in first
    assert "weights_only` set to `False`" not in err and "if you trust" not in err  # torch's advice, not followed
    with pytest.raises(PretrainedWeightsError, match=str(weights)):  # the same message from inside a cell
        create_model("resnet18", "fcn", pretrained=str(weights))


def test_a_global_batch_larger_than_the_training_split_is_refused_before_training(tiny_run, tmp_path, capsys):
    code, _, err = tiny_run(capsys, "train.batch_size=12")
    first = _one_clean_line(err, "train.batch_size=12", "6 images")
    assert code == 2 and "--set train.batch_size=6" in first and not (tmp_path / "results").exists()


# -- data ------------------------------------------------------------------------------------------------------------
BUILTIN_AGAIN = """segbench_dataset: 1
name: sim
splits: [train]
images: {dir: img, suffix: .png}
labels: {dir: lab, suffix: .png}
encoding: trainid
"""


@pytest.mark.parametrize("command", [["list"], ["check", "photo"], ["prepare", "photo", "--size", "32x16"]])
def test_data_commands_name_a_bad_yaml_plugin(tmp_path, monkeypatch, capsys, command):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    monkeypatch.setenv("SEGBENCH_DATASETS", str(bad))
    code, _, err = _segbench(capsys, "data", *command)
    assert code == 2 and "Traceback" not in err and str(bad) in err.splitlines()[0]


def test_data_check_names_a_yaml_that_reregisters_a_builtin(tmp_path, monkeypatch, capsys):
    again = tmp_path / "again.yaml"
    again.write_text(BUILTIN_AGAIN)
    monkeypatch.setenv("SEGBENCH_DATASETS", str(again))
    code, _, err = _segbench(capsys, "data", "check", "sim")
    assert code == 2 and "Traceback" not in err and str(again) in err.splitlines()[0] and "'sim'" in err


def test_data_prepare_into_a_file_names_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(synthetic, "SPLIT_SIZES", {"train": 2, "val": 1})
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("")
    build_dataset("photo", "val", root=tmp_path / "data")  # generated beforehand: its own lines are not the message
    capsys.readouterr()
    code, _, err = _segbench(capsys, "data", "prepare", "photo", "--data-root", tmp_path / "data", "--size", "32x16",
                             "--out", blocker / "cache", "--quiet")
    assert code == 2
    _one_clean_line(err, blocker)


# -- run, models -------------------------------------------------------------------------------------------------------
def test_run_names_a_yaml_that_reregisters_a_builtin(tmp_path, monkeypatch, capsys):
    again = tmp_path / "again.yaml"
    again.write_text(BUILTIN_AGAIN)
    monkeypatch.setenv("SEGBENCH_DATASETS", str(again))
    code, _, err = _segbench(capsys, "run", "sim->photo", "--results", tmp_path / "results", "--data-root",
                             tmp_path / "data", "--set", "model.pretrained=null")
    assert code == 2
    _one_clean_line(err, again)


def test_models_names_a_pattern_that_matches_nothing(capsys):
    code, _, err = _segbench(capsys, "models", "nothing*")
    assert code == 2 and "resnet18_ibn_a" in _one_clean_line(err, "'nothing*'")
    code, _, err = _segbench(capsys, "models", "resnet18", "--heads", "nohead*")
    assert code == 2 and "fcn" in _one_clean_line(err, "'nohead*'")


def test_python_m_segbench_run_goes_through_the_same_handler(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != errors.DEBUG_ENV}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    config = tmp_path / "bad.yaml"
    config.write_text("train: [not, a, mapping\n")
    argv = [sys.executable, "-m", "segbench.run", "--config", str(config), "--results", str(tmp_path / "r")]
    plain = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert plain.returncode == 2 and "Traceback" not in plain.stderr and str(config) in plain.stderr
    debug = subprocess.run([*argv, "--debug"], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert debug.returncode == 2 and "Traceback" in debug.stderr


# -- evaluate --preds: what is scored, what is refused -----------------------------------------------------------------
@pytest.fixture
def photo(tmp_path, monkeypatch):
    monkeypatch.setattr(synthetic, "SPLIT_SIZES", {"train": 2, "val": 3})
    return build_dataset("photo", "val", root=tmp_path / "data")


def _labels(ds):
    return [(Path(image).stem, ds.load_pair(i)[1]) for i, (image, _) in enumerate(ds.pairs)]


def _write(directory, labels, write=lambda path, lab: cv2.imwrite(str(path), lab), suffix=""):
    directory.mkdir(parents=True, exist_ok=True)
    for stem, label in labels:
        write(directory / f"{stem}{suffix}.png", label)


def test_two_predictions_for_one_image_are_an_error_naming_both(photo, tmp_path, capsys):
    labels = _labels(photo)
    preds = tmp_path / "preds"
    _write(preds / "b_good", labels)
    _write(preds / "a_stale", [(stem, np.zeros_like(lab)) for stem, lab in labels])  # sorts first
    with pytest.raises(scoring.PredictionError) as e:
        scoring.score_prediction_dir(photo, preds, "trainid")
    stem = labels[0][0]
    stale, good = preds / "a_stale" / f"{stem}.png", preds / "b_good" / f"{stem}.png"
    assert str(stale) in str(e.value) and str(good) in str(e.value)
    code, out, err = _segbench(capsys, "evaluate", "--preds", preds, "--dataset", "photo",
                               "--data-root", tmp_path / "data")
    assert code == 2 and out == ""
    _one_clean_line(err, stale, good)


def test_a_prediction_and_its_suffixed_twin_are_ambiguous(photo, tmp_path):
    labels = _labels(photo)
    _write(tmp_path / "preds", labels)
    _write(tmp_path / "preds", labels[:1], suffix="_pred")
    with pytest.raises(scoring.PredictionError, match=rf"{labels[0][0]}\.png.*{labels[0][0]}_pred\.png"):
        scoring.score_prediction_dir(photo, tmp_path / "preds", "trainid")


def _write_palette(path, label):
    image = Image.fromarray(label, mode="P")
    palette = np.zeros((256, 3), np.uint8)
    palette[: len(PALETTE)] = PALETTE
    image.putpalette(palette.ravel().tolist())
    image.save(path)


def test_palette_predictions_are_scored_by_their_index(photo, tmp_path):
    _write(tmp_path / "preds", _labels(photo), write=_write_palette)
    assert Image.open(next((tmp_path / "preds").glob("*.png"))).mode == "P"
    assert scoring.score_prediction_dir(photo, tmp_path / "preds", "trainid")["miou"] == pytest.approx(100.0)


def test_16bit_predictions_scaled_by_256_are_refused_naming_file_and_value(photo, tmp_path):
    labels = _labels(photo)
    _write(tmp_path / "preds", [(s, lab.astype(np.uint16) * 256) for s, lab in labels])
    with pytest.raises(scoring.PredictionError, match=r"\.png.*value (256|512|[0-9]+) .*trainId") as e:
        scoring.score_prediction_dir(photo, tmp_path / "preds", "trainid")
    assert "x 256" in str(e.value)


@pytest.mark.parametrize("encoding, value, refused", [("trainid", 19, True), ("trainid", 255, False),
                                                      ("cityscapes", 34, True), ("cityscapes", 33, False)])
def test_values_outside_the_encoding_are_refused(photo, tmp_path, encoding, value, refused):
    labels = _labels(photo)
    first = labels[0][1].copy()
    first[0, 0] = value
    _write(tmp_path / "preds", [(labels[0][0], first)] + [(s, lab) for s, lab in labels[1:]])
    if refused:
        with pytest.raises(scoring.PredictionError, match=rf"{labels[0][0]}\.png.*value {value}\b"):
            scoring.score_prediction_dir(photo, tmp_path / "preds", encoding)
    else:
        scoring.score_prediction_dir(photo, tmp_path / "preds", encoding)


def _as_cityscapes_ids(label):
    """trainIds -> the Cityscapes label id of each class (255 stays void), from the independent table."""
    out = np.full_like(label, 255)
    for train_id, label_id in mt.CS_ID.items():
        out[label == train_id] = label_id
    return out


def test_trainid_predictions_scored_as_cityscapes_ids_are_refused_naming_the_flag(photo, tmp_path, capsys):
    """Perfect trainId predictions with --encoding cityscapes scored 0.0 without a word (0..18 are Cityscapes ids
    too): read the other way they score far higher, which is said, with the flag to use. The reverse mistake comes
    from the same check."""
    labels = _labels(photo)
    assert all(set(np.unique(lab).tolist()) <= {*range(19), 255} for _, lab in labels)  # trainIds, so 0..18 and void
    _write(tmp_path / "trainids", labels)
    with pytest.raises(scoring.PredictionError, match=r"trainids: these look like trainIds, not Cityscapes label "
                                                      r"ids: .* score 100\.0 mIoU read with --encoding trainid against "
                                                      r"[0-9.]+ with --encoding cityscapes; pass --encoding trainid"):
        scoring.score_prediction_dir(photo, tmp_path / "trainids", "cityscapes")
    code, out, err = _segbench(capsys, "evaluate", "--preds", tmp_path / "trainids", "--dataset", "photo",
                               "--data-root", tmp_path / "data", "--encoding", "cityscapes")
    (line,) = [line for line in err.splitlines() if "segbench evaluate:" in line]  # after the progress bar
    assert code == 2 and out == "" and "Traceback" not in err and str(tmp_path / "trainids") in line
    assert line.endswith("pass --encoding trainid")
    assert scoring.score_prediction_dir(photo, tmp_path / "trainids", "trainid")["miou"] == pytest.approx(100.0)

    _write(tmp_path / "ids", [(stem, _as_cityscapes_ids(lab)) for stem, lab in labels])
    assert scoring.score_prediction_dir(photo, tmp_path / "ids", "cityscapes")["miou"] == pytest.approx(100.0)
    with pytest.raises(scoring.PredictionError, match=r"pass --encoding cityscapes"):  # the reverse, still caught
        scoring.score_prediction_dir(photo, tmp_path / "ids", "trainid")


def test_a_prediction_without_its_image_is_refused_or_counted(photo, tmp_path, capsys):
    """Before, a prediction matching no image was ignored without a word; an image without a prediction was refused
    already. eval.missing_pairs=skip scores the matched pairs and counts both kinds."""
    labels = _labels(photo)
    _write(tmp_path / "preds", labels[1:] + [("stray_frame", labels[0][1])])
    with pytest.raises(scoring.PredictionError) as e:
        scoring.score_prediction_dir(photo, tmp_path / "preds", "trainid")
    message = str(e.value)
    assert f"1 of 3 images have no prediction (e.g. {labels[0][0]})" in message
    assert "1 prediction(s) match no image of photo 'val' (stray_frame.png)" in message
    assert "eval.missing_pairs=skip" in message
    code, out, err = _segbench(capsys, "evaluate", "--preds", tmp_path / "preds", "--dataset", "photo",
                               "--data-root", tmp_path / "data", "--set", "eval.missing_pairs=skip")
    assert code == 0 and json.loads(out)["missing_pairs"] == 2 and json.loads(out)["miou"] == pytest.approx(100.0)
    assert json.loads(out)["images"] == 2  # the pairs scored
