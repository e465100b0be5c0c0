"""`segbench predict`: a trained cell segments an image or a folder, as the study scored it."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from segbench import run
from segbench.cli import main as segbench
from segbench.data.adapters import synthetic

TINY = ["--set", "train.iters=1", "--set", "train.batch_size=1", "--set", "train.crop=[32,64]",
        "--set", "eval.dump=0"]


def test_a_folder_without_images_or_an_out_over_the_inputs_is_refused_before_loading(tmp_path, capsys):
    """Both refused in one line before the model is even looked for (the cell path here does not exist)."""
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("")
    assert segbench(["predict", str(tmp_path / "cell"), str(tmp_path / "notes"), "--out", str(tmp_path / "o")]) == 2
    assert f"{tmp_path / 'notes'}: no image in it" in capsys.readouterr().err
    frames = tmp_path / "frames"
    frames.mkdir()
    cv2.imwrite(str(frames / "f1.png"), np.zeros((8, 8, 3), np.uint8))
    assert segbench(["predict", str(tmp_path / "cell"), str(frames), "--out", str(frames)]) == 2
    err = capsys.readouterr().err
    assert "would overwrite the input image" in err and str(frames / "f1.png") in err and len(err.splitlines()) == 1


@pytest.mark.slow
def test_predict_writes_what_the_cell_scored_with_overlays(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(synthetic, "SPLIT_SIZES", {"train": 2, "val": 2})
    data, results = tmp_path / "data", tmp_path / "results"
    assert run.main(["sim->photo", "--backbones", "resnet18", "--name", "p", "--data-root", str(data),
                     "--results", str(results), *TINY]) == 0
    (cell,) = (results / "p" / "cells").iterdir()
    frames = data / "synthetic" / "photo" / "images" / "val"
    assert segbench(["predict", str(cell), str(frames), "--out", str(tmp_path / "pred"), "--overlay"]) == 0
    assert "2 prediction(s) of resnet18 + fcn" in capsys.readouterr().out
    # the runner's own scoring path, one image per pass, saving every prediction: the same pixels
    assert segbench(["evaluate", str(cell), "--dataset", "photo", "--data-root", str(data), "--device", "cpu",
                     "--set", "eval.batch_size=1", "--save-preds", str(tmp_path / "scored")]) == 0
    for frame in sorted(frames.iterdir()):
        pred = cv2.imread(str(tmp_path / "pred" / frame.name), cv2.IMREAD_UNCHANGED)
        scored = cv2.imread(str(tmp_path / "scored" / frame.name), cv2.IMREAD_UNCHANGED)
        assert pred.shape == (96, 192) and pred.dtype == np.uint8 and pred.max() < 19
        np.testing.assert_array_equal(pred, scored)
        overlay = cv2.imread(str(tmp_path / "pred" / f"{frame.stem}_overlay.png"))
        assert overlay.shape == (96, 192, 3) and not np.array_equal(overlay, cv2.imread(str(frame)))
    one = frames / "00001.png"
    assert segbench(["predict", str(cell / "model_final.pt"), str(one), "--out", str(tmp_path / "one")]) == 0
    assert sorted(p.name for p in (tmp_path / "one").iterdir()) == ["00001.png"]
