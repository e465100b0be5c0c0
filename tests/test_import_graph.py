"""Which modules import which: the module graph has no cycle, configuration reading stays a leaf, and what the report
and the dry run read never loads torch or the training code, each checked in a fresh interpreter."""
import ast
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=240)


def _modules() -> dict[str, Path]:
    out = {}
    for path in (ROOT / "segbench").rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return dict(sorted(out.items()))


def _module_level_imports(name: str, path: Path, known) -> set[str]:
    """segbench modules imported at module level (function-local imports are deliberate laziness, not structure)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names}
    return {m for m in found if m in known and m != name}


def test_no_import_cycle_among_segbench_modules():
    modules = _modules()
    graph = {n: _module_level_imports(n, p, modules) for n, p in modules.items()}
    # edges from a package's __init__ to its own submodules are how packages work and are not followed
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph[n]):
            if m.startswith(n + "."):
                continue  # a package importing its own submodules
            if state.get(m) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(m):] + [m]))
            if m not in state:
                visit(m)
        stack.pop()
        state[n] = 2

    for n in graph:
        if n not in state:
            visit(n)


def test_the_methods_and_the_models_import_nothing_from_the_training_loop():
    """The layers below the loop (models, methods, data) do not import engine/ (the distributed helpers they share
    sit beside io.py)."""
    modules = _modules()
    for name, path in modules.items():
        if name.split(".")[1:2] in (["models"], ["methods"], ["data"]):
            upward = [m for m in _module_level_imports(name, path, modules) if m.startswith("segbench.engine")]
            assert not upward, (name, upward)


def test_every_module_imports_in_one_fresh_interpreter_alphabetically():
    names = list(_modules())
    out = _run("import importlib\n"
               f"for n in {names!r}:\n"
               "    importlib.import_module(n)\n")
    assert out.returncode == 0, out.stderr[-3000:]


def test_config_is_a_leaf():
    out = _run("import sys, segbench.config\n"
               "mods = sorted(m for m in sys.modules if m.startswith('segbench.') and m != 'segbench.config')\n"
               "print(mods); assert not mods and 'torch' not in sys.modules")
    assert out.returncode == 0, out.stdout + out.stderr


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


def test_the_cell_its_record_card_lock_and_validation_load_no_torch():
    """The plan, the records and the study's validation are read by `--dry-run` and the report: none of them may
    load torch at import (validation.py imports the registries only when it runs)."""
    loaded = modules_loaded_by("import segbench.cells, segbench.record, segbench.protocol_card, segbench.lock, "
                               "segbench.source_weights, segbench.spec, segbench.validation")
    assert "torch" not in loaded, sorted(m for m in loaded if m.startswith("segbench"))


def test_published_lists_the_numbers_on_file_without_torch():
    """`segbench published` reads YAML files: it must run wherever `segbench report` does."""
    loaded = modules_loaded_by("from segbench.cli import main\nassert main(['published']) == 0")
    assert "segbench.report.published_cli" in loaded and "torch" not in loaded
