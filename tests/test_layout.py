"""Which packages may import which: rules the package layout promises, checked in a fresh interpreter."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def modules_loaded_by(code: str, *args: str) -> set[str]:
    """The modules a fresh interpreter has loaded after running `code` (which sees `args` as sys.argv[1:])."""
    script = code + "\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))\n"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    out = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, env=env, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def test_report_loads_no_training_code_and_no_torch(tmp_path):
    """`segbench report` must run where the results are copied to but no GPU stack is: records in, tables out."""
    record = {"cell_id": "c", "backbone": "resnet18", "head": "fcn", "source": "a", "seed": 0,
              "config": {"model": {}, "train": {}},
              "results": {"a": {"miou": 50.0, "pixel_acc": 60.0, "per_class_iou": {"road": 50.0}}}}
    cell = tmp_path / "cells" / "a__resnet18__fcn__s0"
    cell.mkdir(parents=True)
    (cell / "record.json").write_text(json.dumps(record))
    loaded = modules_loaded_by("import sys\nfrom segbench.report.cli import main\nassert main(sys.argv[1:]) == 0",
                               str(tmp_path))
    assert (tmp_path / "report.md").is_file()
    assert "segbench.engine.train" not in loaded
    forbidden = [m for m in loaded if m == "torch" or m.split(".")[:2] in (["segbench", "engine"],
                                                                           ["segbench", "models"])]
    assert not forbidden, f"segbench report imported {forbidden}"


def test_published_lists_the_numbers_on_file_without_torch():
    """`segbench published` reads YAML files: it must run wherever `segbench report` does."""
    loaded = modules_loaded_by("from segbench.cli import main\nassert main(['published']) == 0")
    assert "segbench.report.published_cli" in loaded and "torch" not in loaded
