"""Rein's recipe as an experiment file (experiments/rein_dg.yaml): it plans and validates its five cells, its protocol
card differs from RobustNet's exactly where the two recipes differ, and the same file, with overrides that only
shrink it (a tiny ViT, tiny crops, two iterations), trains and scores every method end to end on miniatures of the
real datasets' layouts, in one process and in two gloo processes."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import minitrees
from segbench import run
from segbench.cells import plan
from segbench.config import apply_overrides, load_config
from segbench.protocol_card import protocol_card
from segbench.spec import parse_specs

ROOT = Path(__file__).resolve().parents[1]

#: the overrides that shrink the recipe to a CPU test, and nothing else: the model's size, the crops, the schedule
#: length, the loaders, and the tiny frames scored at their own size (Rein's geometry would enlarge 32 x 64 frames to
#: 1024 x 512, and the native protocol Mapillary's to a height of 1536, before sliding windows over them)
TINY = ["model.pretrained=null", "train.iters=2", "train.batch_size=2", "train.crop=[64,64]", "train.workers=0",
        "train.ckpt_every=0", "eval.workers=0", "eval.protocol=native", "eval.geometries=[]", "eval.size=[32,64]", "eval.window=[32,32]",
        "eval.stride=[32,32]"]


def _cards(experiment: str, backbone: str, head: str) -> dict:
    cfg = load_config(experiment)
    (cell, *_) = plan(cfg, parse_specs(cfg["specs"]), [backbone], [head])
    return protocol_card(cell, {})


def _flat(card: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in card.items():
        if isinstance(value, dict) and key in ("train", "model", "eval", "resolution"):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def test_the_recipe_plans_five_cells_with_one_card(capsys):
    assert run.main(["--config", "rein_dg", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "5 cells" in out
    for method in ("frozen", "full", "lora", "vpt", "rein"):
        assert f"gta5__dinov2_vitl14_p16+{method}__mask2former__s42__" in out
    assert len({line.rsplit("card=", 1)[1] for line in out.splitlines() if "card=" in line}) == 1
    assert "targets=cityscapes,bdd100k,mapillary" in out  # trained on all of GTA5: no in-domain score


def test_its_card_differs_from_robustnets_where_the_recipes_differ_and_nowhere_else():
    rein = _flat(_cards("rein_dg", "dinov2_vitl14_p16", "mask2former"))
    robustnet = _flat(_cards("robustnet_dg", "resnet50", "robustnet-deeplabv3plus"))
    differ = {k for k in rein.keys() | robustnet.keys() if rein.get(k) != robustnet.get(k)}
    assert differ == {
        "split",  # all of GTA5 against RobustNet's train split
        "global_batch",  # 4 against 16
        "train.optimizer", "train.lr", "train.weight_decay", "train.no_decay", "train.no_decay_norms",
        "train.lr_mult",  # AdamW 1e-4 / 0.05 with Rein's no-decay rules, the backbone at 0.1x
        "train.pipeline", "train.crop", "train.class_uniform", "train.photometric",  # mmseg's pipeline, 512 crops
        "model.pretrained", "model.output_stride", "model.aux",  # DINOv2 weights, a ViT's pyramid, no aux head
        "eval.protocol", "eval.mode", "eval.window", "eval.stride",  # Rein's geometry, 512 windows at stride 341
    }, sorted(differ)
    assert rein["train.optimizer"] == "adamw" and "train.optimizer" not in robustnet  # SGD: the setting's old value


def test_the_citys2acdc_file_is_reins_1024_config_beside_its_512_one():
    """Against rein_dg.yaml's card, the Cityscapes -> ACDC file differs in what its 1024 config changes (crop,
    batch bs4x2, lr 6e-5, the 10k-iteration linear warmup, 1024 windows at stride 683 on the native frames) and in
    its source and targets; its backbone is the 64 x 64 grid conversion."""
    acdc = _flat(_cards("rein_citys2acdc", "dinov2_vitl14_p16_1024", "mask2former"))
    gta = _flat(_cards("rein_dg", "dinov2_vitl14_p16", "mask2former"))
    differ = {k for k in acdc.keys() | gta.keys() if acdc.get(k) != gta.get(k)}
    assert differ == {"sources", "resolution.cityscapes", "resolution.gta5", "split", "global_batch", "train.lr",
                      "train.lr_mult", "train.warmup_iters", "train.crop", "eval.protocol", "eval.window",
                      "eval.stride"}, sorted(differ)
    assert (acdc["train.crop"], acdc["global_batch"], acdc["train.lr"], acdc["train.warmup_iters"]) == \
        ([1024, 1024], 8, 6e-5, 10000)
    assert (acdc["eval.window"], acdc["eval.stride"], acdc["split"]) == ([1024, 1024], [683, 683], "train")
    assert "eval.protocol" not in acdc  # native: the setting's value before it existed


@pytest.mark.parametrize("experiment, cell", [
    ("rein_citys2acdc", "cityscapes__dinov2_vitl14_p16_1024+rein__mask2former__s42__"),
    ("rein_synthia", "gta5+synthia__dinov2_vitl14_p16+rein__mask2former__s42__")])
def test_the_other_rein_files_plan_one_cell(experiment, cell, capsys):
    assert run.main(["--config", experiment, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "1 cells" in out and cell in out
    if experiment == "rein_synthia":
        assert "targets=cityscapes,bdd100k,mapillary,cityscapes~native,bdd100k~native,mapillary~native" in out
    else:
        assert "targets=cityscapes,acdc-fog,acdc-night,acdc-rain,acdc-snow" in out


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("rein_data")
    minitrees.make_gta5(root / "gta5", count=4)
    minitrees.make_cityscapes(root / "cityscapes", n={"train": 1, "val": 2})
    minitrees.make_bdd100k(root / "bdd100k", n={"train": 1, "val": 2})
    minitrees.make_mapillary(root / "mapillary", n={"training": 1, "validation": 2})
    return root


@pytest.mark.slow
def test_the_recipe_shrunk_trains_and_scores(tmp_path, data_root, capsys):
    pytest.importorskip("transformers")
    # two of the five methods keep CI short: full fine-tuning (the head's learned queries) and Rein (its tokens as
    # the queries); frozen, LoRA and VPT run the same path as in tests/test_methods_foundation.py
    args = ["--config", "rein_dg", "--backbones", "vit_debug_p16", "--methods", "full,rein", "--seeds", "1",
            "--results", str(tmp_path), "--data-root", str(data_root), *[a for s in TINY for a in ("--set", s)]]
    assert run.main(args) == 0, capsys.readouterr().err
    from segbench.record import load_records

    records = load_records(tmp_path / "rein_dg")
    assert sorted(r["method"]["name"] for r in records) == ["full", "rein"]
    for r in records:
        assert set(r["results"]) == {"cityscapes", "bdd100k", "mapillary"}
        assert r["config"]["train"]["optimizer"] == "adamw" and r["config"]["train"]["pipeline"] == "rein"


@pytest.mark.slow
def test_the_rein_cell_trains_in_two_gloo_processes(tmp_path, data_root):
    pytest.importorskip("transformers")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port,
           "WORLD_SIZE": "2", "OMP_NUM_THREADS": "1"}
    args = [sys.executable, "-m", "segbench.run", "--config", "rein_dg", "--backbones", "vit_debug_p16",
            "--methods", "rein", "--seeds", "1", "--results", str(tmp_path), "--data-root", str(data_root),
            "--device", "cpu", *[a for s in TINY for a in ("--set", s)]]
    procs = [subprocess.Popen(args, env={**env, "RANK": str(r), "LOCAL_RANK": str(r)}, cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in range(2)]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    from segbench.record import load_records

    (record,) = load_records(tmp_path / "rein_dg")
    assert record["training"]["world_size"] == 2 and record["training"]["batch_per_process"] == 1
