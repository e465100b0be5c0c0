"""benchmarks/*.py loaded as modules by the tests that check them."""
from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@contextlib.contextmanager
def benchmark_script(name: str):
    """benchmarks/NAME.py as a module. The scripts put the repository and benchmarks/ on sys.path and set
    environment defaults when loaded: undone on exit."""
    saved_path, saved_env = list(sys.path), set(os.environ)
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(name, None)
        sys.path[:] = saved_path
        for key in set(os.environ) - saved_env:
            del os.environ[key]
