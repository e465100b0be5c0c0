"""The module graph has no cycle, and configuration reading stays a leaf (see test_layout.py for the report)."""
import ast
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
