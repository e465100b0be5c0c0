"""benchmarks/gpu_check.py: its smoke run on CPU exercises every section's code (so a GPU session does not find a
broken script), and its guard keeps going past a failing section and stops at the time budget."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from benchmark_scripts import benchmark_script

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check():
    with benchmark_script("gpu_check") as module:
        yield module


@pytest.mark.slow
def test_smoke_run_on_cpu_fills_every_section(tmp_path):
    out = tmp_path / "gpu_check.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--smoke", "--out", str(out)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    s = report["sections"]
    assert list(s) == ["tests", "train", "models", "methods", "data", "embedded", "profile", "hours"]
    assert report["smoke"] is True and report["environment"]["device_type"] == "cpu"
    assert s["tests"]["status"] == "skipped" and "no CUDA" in s["tests"]["reason"]
    assert all(s[name]["status"] == "ok"
               for name in ("train", "models", "methods", "data", "embedded", "profile", "hours")), s
    assert set(s["methods"]["ratio_to_erm"]) == {"erm", "iw", "irw", "sw", "mixstyle", "dsu", "np"}
    assert s["methods"]["ratio_to_erm"]["erm"] == 1.0 and all(r > 0 for r in s["methods"]["images_per_s"].values())

    train = s["train"]
    assert train["segbench_images_per_s"] > 0 and train["bare_images_per_s"] > 0
    assert train["training_gflop_per_image"] > 0 and train["fraction_of_peak_bf16"] is None  # no peak for a CPU
    assert set(s["models"]["train_step"]["ratio_to_plain"]) == {"resnet18", "resnet18_ibn_a", "resnet18_ibn_b"}
    assert s["models"]["train_step"]["ratio_to_plain"]["resnet18"] == 1.0
    data = s["data"]
    assert data["step_images_per_s"] == train["segbench_images_per_s"]
    for source in ("full_frames", "prepared"):
        assert data[source]["images_per_s"] > 0 and isinstance(data[source]["keeps_up"], bool)
    profile = s["profile"]
    assert set(profile["variants"]) == {"preset", "batches_on_device", "batch_x2", "no_channels_last",
                                        "plain_resnet18", "loss_at_head_resolution"}
    assert profile["variants"]["preset"]["ratio_to_preset"] == 1.0
    breakdown = profile["breakdown"]
    assert breakdown["timed"] == "cpu" and breakdown["by_kind"]["convolution"]["ms_per_step"] > 0
    assert sum(k["ms_per_step"] for k in breakdown["by_kind"].values()) == pytest.approx(breakdown["ms_per_step"])
    traffic, bound = profile["traffic_gb_per_step"], profile["bandwidth_bound"]
    assert traffic["convolution"] > 0 and traffic["normalisation"] > 0
    assert bound["other_gb"] == pytest.approx(sum(gb for kind, gb in traffic.items() if kind != "convolution"))
    assert bound["peak_tb_per_s"] is None and "fraction_of_peak_bf16_bound" not in bound  # no roofline for a CPU
    embedded = s["embedded"]
    assert embedded["returncode"] == 0 and "| resnet18 |" in embedded["table"] and embedded["run_wall_s"] > 0
    hours = s["hours"]["eager"]["embedded"]  # the smoke run times one of the embedded default's three steps
    assert hours["cells"] == 9 and hours["iterations"] == 9 * 80 and hours["hours"] is None
    timed = [step for step in hours["steps"] if step["seconds_per_iteration"] is not None]
    assert len(timed) == 1 and timed[0]["seconds_per_iteration"] > 0 and timed[0]["cells"] == 3
    assert timed[0]["hours"] == pytest.approx(3 * 80 * timed[0]["seconds_per_iteration"] / 3600)
    assert "compiled" not in s["hours"] and "| embedded | 9 | 720 | not measured |" in proc.stdout
    assert report["summary"][0].startswith("gpu_check on") and "embedded" in proc.stdout
    assert all(section.get("wall_s", 0) >= 0 for section in s.values())


def fake_context(gpu_check, tmp_path, budget_s):
    return gpu_check.Context(device=torch.device("cpu"), profile=gpu_check.SMOKE, budget_s=budget_s, scratch=tmp_path)


def test_a_failing_section_is_recorded_and_the_next_one_runs(gpu_check, tmp_path):
    ctx = fake_context(gpu_check, tmp_path, budget_s=60)
    report, out = {"sections": {}}, tmp_path / "report.json"

    def broken(ctx):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    sections = {"first": broken, "second": lambda ctx: {"figure": 1.5}}
    gpu_check.run_sections(["first", "second"], ctx, report, out, sections)
    written = json.loads(out.read_text())["sections"]
    assert written["first"]["status"] == "failed" and "illegal memory access" in written["first"]["error"]
    assert "RuntimeError" in written["first"]["traceback"]
    assert written["second"] == {"status": "ok", "wall_s": written["second"]["wall_s"], "figure": 1.5}


def test_sections_past_the_budget_are_skipped(gpu_check, tmp_path):
    ctx = fake_context(gpu_check, tmp_path, budget_s=60)
    report, out = {"sections": {}}, tmp_path / "report.json"
    ran = []

    def slow(ctx):
        ran.append("slow")
        ctx.started -= 61  # as if it had taken a minute
        return {}

    gpu_check.run_sections(["slow", "never"], ctx, report, out, {"slow": slow, "never": lambda ctx: ran.append(1)})
    written = json.loads(out.read_text())["sections"]
    assert ran == ["slow"] and written["slow"]["status"] == "ok"
    assert written["never"]["status"] == "skipped" and "budget" in written["never"]["reason"]


def test_printed_table_and_junit_counts(gpu_check, tmp_path):
    stdout = ("[1/1] cell\n| backbone | a | b |\n|:---|---:|---:|\n| resnet18 | 3.4 | 2.4 |\n\n"
              "mIoU (%) over the classes scored in each test set; one seed (0).\n\ntables: x.md\n")
    assert gpu_check.printed_table(stdout).splitlines() == [
        "| backbone | a | b |", "|:---|---:|---:|", "| resnet18 | 3.4 | 2.4 |",
        "mIoU (%) over the classes scored in each test set; one seed (0)."]
    xml = tmp_path / "r.xml"
    xml.write_text('<testsuites><testsuite><testcase classname="t" name="ok"/>'
                   '<testcase classname="t" name="bad"><failure message="assert 1 == 2">trace</failure></testcase>'
                   '<testcase classname="t" name="skip"><skipped message="no bf16"/></testcase>'
                   '</testsuite></testsuites>')
    counts = gpu_check.junit_counts(xml)
    assert (counts["passed"], counts["failed"], counts["errors"], counts["skipped"]) == (1, 1, 0, 1)
    assert counts["failures"] == [{"test": "t::bad", "message": "assert 1 == 2", "details": "trace"}]


def test_full_profile_trains_bench_train_gpu_preset(gpu_check):
    import bench_train

    full, preset = gpu_check.FULL, bench_train.GPU_PRESET
    assert (full.backbone, full.head, full.crop, full.batch) == (preset["backbone"], preset["head"], preset["size"],
                                                                 preset["batch"])


@pytest.mark.parametrize("head", ["fcn", "deeplabv3plus"])
def test_model_flops_count_every_head_including_image_pooling(gpu_check, head):
    """DeepLabV3+'s ASPP pools to 1x1 and BatchNorm refuses one value per channel in training mode: the count
    once failed on the GPU preset at batch 1. Counted at batch 2 and halved, it is per image."""
    import bench_train

    per_image = bench_train.training_flops_per_image("resnet18", head, (64, 64))
    assert per_image > 0
    assert bench_train.training_flops_per_image("resnet18", head, (128, 128)) == pytest.approx(4 * per_image, rel=0.05)


@pytest.mark.parametrize("op, kind", [("aten::cudnn_convolution", "convolution"),
                                      ("aten::convolution_backward", "convolution"),
                                      ("aten::native_batch_norm_backward", "normalisation"),
                                      ("aten::upsample_bilinear2d_backward", "resampling"),
                                      ("aten::nll_loss2d_forward", "loss"), ("aten::_foreach_add_", "optimizer"),
                                      ("aten::copy_", "copies and layout"), ("aten::threshold_backward",
                                                                             "elementwise and pooling"),
                                      ("aten::empty_strided", "other")])
def test_profile_groups_ops_by_kind(gpu_check, op, kind):
    assert gpu_check.op_kind(op) == kind


def test_traffic_counts_each_tensor_once_and_views_not_at_all(gpu_check):
    """Bytes against sizes worked out by hand: a 1000-float ReLU reads 4000 and writes 4000 bytes; a copy reads its
    source and writes its destination; a fill only writes; a view moves nothing; an expanded operand is read once."""
    x, dst = torch.randn(10, 100), torch.empty(10, 100)
    row = torch.randn(1, 100)
    with gpu_check.TrafficCounter(torch.device("cpu")) as counter:
        torch.relu(x)
        dst.copy_(x)
        dst.fill_(1.0)
        x.view(100, 10).t()
        x + row.expand(10, 100)
    assert counter.bytes == {"relu": 8000, "copy_": 8000, "fill_": 4000, "add": 4000 + 400 + 4000}


def test_conv_traffic_counts_input_weight_and_output(gpu_check):
    conv = torch.nn.Conv2d(3, 8, 3, padding=1, bias=False)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad(), gpu_check.TrafficCounter(torch.device("cpu")) as counter:
        conv(x)
    assert counter.bytes == {"convolution": 4 * (2 * 3 * 16 * 16 + 8 * 3 * 3 * 3 + 2 * 8 * 16 * 16)}


def test_bandwidth_bound_is_the_roofline_of_the_step(gpu_check):
    """100 GFLOP a step, convolutions 0.5 ms, 2 GB of other traffic that takes 3 ms: at 4 TB/s the other work takes
    0.5 ms, so the step could run 1 ms = 100 TFLOP/s = 10% of a 1000 TFLOP/s card; 35% of peak leaves
    100 / 350 - 0.5 ms for the other work."""
    bound = gpu_check.bandwidth_bound({"convolution": 0.5, "normalisation": 2.0, "copies and layout": 1.0},
                                      {"convolution": 9.0, "normalisation": 1.5, "copies and layout": 0.5},
                                      gflop_per_step=100.0, peak_tflops=1000.0, peak_tb_per_s=4.0, target=0.35)
    assert bound["other_gb"] == 2.0 and bound["other_ms"] == 3.0
    assert bound["other_tb_per_s"] == pytest.approx(2.0 / 3.0)
    assert bound["tb_per_s_by_kind"] == pytest.approx({"convolution": 18.0, "normalisation": 0.75,
                                                       "copies and layout": 0.5})
    assert bound["other_ms_at_peak_bandwidth"] == pytest.approx(0.5)
    assert bound["fraction_of_peak_bf16_bound"] == pytest.approx(0.10)
    assert bound["other_ms_allowed_by_target"] == pytest.approx(100 / 350 - 0.5)
    assert bound["other_gb_allowed_by_target"] == 0.0  # negative time allowed: no traffic fits


def test_card_tables_pick_the_specific_name_first(gpu_check):
    import bench_train

    assert bench_train.peak_memory_tb_per_s("NVIDIA H100 PCIe") == 2.0
    assert bench_train.peak_memory_tb_per_s("NVIDIA H100 80GB HBM3") == 3.35
    assert bench_train.peak_memory_tb_per_s("NVIDIA A100-SXM4-40GB") == 1.555
    assert bench_train.peak_memory_tb_per_s("NVIDIA A10") == 0.6
    assert bench_train.peak_memory_tb_per_s("Intel Xeon") is None


def test_the_loop_with_dataloader_workers_is_timed_beside_the_bare_one(gpu_check, one_thread):
    """gpu_check's train section on a GPU adds segbench's loop with its real DataLoader (issue: within 5% of the bare
    loop); on a CPU the same code runs with one worker, timed at its steady state."""
    import bench_train

    m = bench_train.measure("resnet18", "fcn", (16, 16), batch=2, iters=20, repeats=1, device=torch.device("cpu"),
                            workers=1)
    assert m["workers"] == 1 and len(m["segbench_workers_runs"]) == 1 and m["segbench_workers_images_per_s"] > 0
    assert m["bare_steady_images_per_s"] > 0 and len(m["bare_steady_runs"]) == 1
    assert m["segbench_workers_over_bare"] == pytest.approx(m["segbench_workers_images_per_s"]
                                                            / m["bare_steady_images_per_s"])
    with pytest.raises(ValueError, match="give at least 20"):
        bench_train.measure("resnet18", "fcn", (16, 16), 2, 10, 1, torch.device("cpu"), workers=1)
