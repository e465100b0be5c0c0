"""Weights files of frozen-backbone methods hold the trained parameters and a reference to the pretrained file
(engine/frozen_weights.py): a tiny study with a pretrained file written here with DINOv2's official keys writes
slim checkpoints and model_final.pt, scores from them exactly as from the whole network, resumes from them, and
refuses, by name and hash, a pretrained file other than the one it was trained on."""
from __future__ import annotations

import pytest
import torch

from segbench import run
from segbench.cells import CHECKPOINTS, FINAL_WEIGHTS
from segbench.config import model_settings
from segbench.engine.checkpoint import CheckpointError, list_checkpoints, load_checkpoint
from segbench.engine.frozen_weights import FROZEN, file_sha256, frozen_reference, weights_to_load, weights_to_save
from segbench.engine.train import resume
from segbench.models.pretrained import sha256_of
from segbench.network import build_cell_model, load_trained_model
from test_models_vit import official_state

METHODS = ("rein", "lora")


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """sim -> photo with the debug ViT initialised from a DINOv2-format file, Rein and LoRA (peft renames the frozen
    layers it wraps), two iterations, every checkpoint kept."""
    pytest.importorskip("peft")
    tmp = tmp_path_factory.mktemp("frozen")
    weights = tmp / "dinov2_debug.pth"
    torch.save(official_state(patch=14, grid=8), weights)
    code = run.main(["sim->photo", "--backbones", "vit_debug_p16", "--heads", "linear", "--methods", ",".join(METHODS),
                     "--seeds", "1", "--results", str(tmp / "results"), "--name", "vfm", "--data-root",
                     str(tmp / "data"), *[a for s in (
                         f"model.pretrained={weights}", "model.output_stride=null", "train.iters=2",
                         "train.batch_size=2", "train.optimizer=adamw", "train.lr=0.0001", "train.ckpt_every=1",
                         "train.keep_ckpts=0", "train.keep_ckpts_when_done=true", "train.workers=0",
                         "eval.workers=0") for a in ("--set", s)]])
    assert code == 0
    cells = {d.name.split("+")[1].split("__")[0]: d for d in (tmp / "results" / "vfm" / "cells").iterdir()}
    assert sorted(cells) == sorted(METHODS)
    return weights, cells


def _whole(cell_dir):
    model, _ = load_trained_model(cell_dir)
    return model.state_dict()


@pytest.mark.parametrize("method", METHODS)
def test_the_weights_files_leave_the_frozen_backbone_out_and_name_its_file(study, method):
    weights, cells = study
    final = load_checkpoint(cells[method] / FINAL_WEIGHTS)
    reference = final[FROZEN]
    assert reference["file"] == str(weights) and reference["sha256"] == sha256_of(weights)
    whole = _whole(cells[method])
    frozen = set(reference["keys"])
    # every backbone tensor the file holds is left out (peft's `base_layer` names included), nothing else is
    assert frozen and frozen == {k for k in whole if k.startswith("backbone.vit.") and ".lora_" not in k}
    assert set(final) - {FROZEN} == set(whole) - frozen
    for _, path in list_checkpoints(cells[method] / CHECKPOINTS):
        assert load_checkpoint(path)["model"][FROZEN] == reference
    # the left-out tensors are the pretrained file's, converted as at training time
    fresh, _ = build_cell_model("vit_debug_p16", "linear", model_settings({"pretrained": str(weights),
                                                                          "output_stride": None}), method)
    fresh_state = fresh.state_dict()
    assert all(torch.equal(whole[k], fresh_state[k]) for k in frozen)


def test_a_slim_final_scores_as_the_study_scored(study, tmp_path):
    """`segbench evaluate` rebuilds the network from the pretrained file and gets the record's mIoU."""
    import json

    from segbench.evaluate import main as evaluate_main

    _, cells = study
    record = json.loads((cells["rein"] / "record.json").read_text())
    out = tmp_path / "scored.json"
    data_root = cells["rein"].parents[3] / "data"
    assert evaluate_main([str(cells["rein"]), "--dataset", "photo", "--data-root", str(data_root), "--device", "cpu",
                          "--output", str(out)]) == 0
    assert json.loads(out.read_text())["miou"] == pytest.approx(record["results"]["photo"]["miou"])


def test_a_run_resumes_from_a_slim_checkpoint(study):
    weights, cells = study
    model, _ = build_cell_model("vit_debug_p16", "linear",
                                model_settings({"pretrained": str(weights), "output_stride": None}), "rein")
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params)
    ckpt = cells["rein"] / CHECKPOINTS
    state = load_checkpoint(list_checkpoints(ckpt)[-1][1])
    progress = resume(ckpt, state["identity"], model, optimizer, None, torch.device("cpu"))
    assert progress.start == 2
    whole = _whole(cells["rein"])
    assert all(torch.equal(v, whole[k]) for k, v in model.state_dict().items())


def test_another_pretrained_file_is_refused_by_name_and_hash(study, tmp_path):
    weights, cells = study
    original = weights.read_bytes()
    try:
        torch.save(official_state(patch=14, grid=8, seed=1), weights)
        with pytest.raises(CheckpointError, match=rf"trained on the frozen backbone of {weights} \(sha256 "
                                                  rf"{sha256_of_bytes(original)[:16]}"):
            load_trained_model(cells["rein"])
        weights.unlink()
        with pytest.raises(Exception, match=rf"pretrained file {weights} does not exist"):
            load_trained_model(cells["rein"])
    finally:
        weights.write_bytes(original)
    assert load_trained_model(cells["rein"])  # the original file back: it loads again


def sha256_of_bytes(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def test_full_fine_tuning_and_a_backbone_without_a_file_are_written_whole(tmp_path):
    weights = tmp_path / "w.pth"
    torch.save(official_state(patch=14, grid=8), weights)
    full, _ = build_cell_model("vit_debug_p16", "linear",
                               model_settings({"pretrained": str(weights), "output_stride": None}), "full")
    assert frozen_reference(full) is None and FROZEN not in weights_to_save(full)
    scratch, _ = build_cell_model("vit_debug_p16", "linear",
                                  model_settings({"pretrained": None, "output_stride": None}), "frozen")
    assert frozen_reference(scratch) is None
    frozen, _ = build_cell_model("vit_debug_p16", "linear",
                                 model_settings({"pretrained": str(weights), "output_stride": None}), "frozen")
    slim = weights_to_save(frozen)
    assert set(slim) == {FROZEN} | {k for k in frozen.state_dict() if k.startswith("head.")}
    assert slim[FROZEN]["sha256"] == file_sha256(weights)
    restored = weights_to_load(frozen, slim, tmp_path / "x.pt")
    assert all(torch.equal(restored[k], v) for k, v in frozen.state_dict().items())
