"""Records -> tables (CSV, markdown) and plots. Reads nothing but `cells/*/record.json` (and the prediction PNGs they
list): no training, no model, no torch, so `segbench report` works on any machine and while a study is still running.

`build_report` is the API (the runner calls it after a study); `segbench report RESULTS_DIR` (`cli.main`) for people.
"""
from .build import build_report

__all__ = ["build_report"]
