"""benchmarks/project_hours.py: which cells share a timed step, and the seconds per iteration read from the loop's
cumulative log, worked out by hand (the timing itself runs in gpu_check's smoke test)."""
from __future__ import annotations

import pytest
from benchmark_scripts import benchmark_script


@pytest.fixture(scope="module")
def project_hours():
    with benchmark_script("project_hours") as module:
        yield module


def test_the_window_between_two_log_rows_is_the_steady_step(project_hours):
    # batch 4: iteration 10 reached after 5 s (cumulative 8 img/s, warm-up included), iteration 20 after 7 s
    import bench_train  # on the path once project_hours is loaded

    assert bench_train.window_seconds({10: 40 / 5, 20: 80 / 7}, batch=4, every=10) == pytest.approx(0.2)


def test_seeds_share_a_step_and_backbones_methods_and_compile_do_not(project_hours):
    files = {p.stem: p for p in project_hours.experiment_files(None)}
    cells = project_hours.experiment_cells(files["embedded_methods"])
    steps = {project_hours.step_of(c) for c in cells}
    assert len(cells) == 21 and len(steps) == 7  # 7 methods x 3 seeds
    assert len({project_hours.step_of(c, compile_=True) for c in cells} | steps) == 14
    rein = project_hours.experiment_cells(files["rein_dg"]) + project_hours.experiment_cells(files["rein_synthia"])
    assert len({project_hours.step_of(c) for c in rein}) == 5  # rein_synthia's step is rein_dg's rein step
    with pytest.raises(SystemExit, match="--experiments nope: not in"):
        project_hours.experiment_files(["nope"])


def test_a_file_whose_steps_were_not_all_measured_has_no_hours(project_hours):
    files = project_hours.experiment_files(["embedded"])
    report = project_hours.project(files, device=None, can_measure=lambda measured: False, progress=lambda line: None)
    assert report["embedded"]["hours"] is None and report["embedded"]["iterations"] == 720
    assert "| embedded | 9 | 720 | not measured | – |" in project_hours.table(report, "CPU")


def test_a_robustnet_isw_step_is_timed_with_its_sampler_and_selection_set_aside(project_hours, one_thread):
    """RobustNet's recipes sample class-uniformly and ISW selects from real images: neither needs the synthetic
    batches' labels or images, so the step is timed (shrunk here to a 32 x 32 crop and batch 2)."""
    import torch

    files = {p.stem: p for p in project_hours.experiment_files(None)}
    cell = next(c for c in project_hours.experiment_cells(files["robustnet_methods"]) if c.method == "isw")
    assert cell.train["class_uniform"] > 0
    cell.train.update(crop=[32, 32], batch_size=2)
    figures = project_hours.measure(project_hours.step_of(cell), cell, torch.device("cpu"))
    assert figures["fits"] is True and figures["seconds_per_iteration"] > 0, figures
