"""Scalar logging: a plain CSV always, TensorBoard too when it is installed (`pip install -e '.[tensorboard]'`).

A resumed run continues the same log: rows (and TensorBoard events) after the checkpoint it resumes from were written
by the interrupted process and are trained again, so they are dropped first, and every iteration appears once.
"""
from __future__ import annotations

import csv
from pathlib import Path

from ..io import csv_text, write_text


def tensorboard_writer(log_dir: Path, purge_step: int | None = None):
    """A SummaryWriter, or None when tensorboard is not installed (it is an optional extra). `purge_step`: hide the
    events of this step and later (a crashed run's, before its resume)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(log_dir), purge_step=purge_step)


def rows_up_to(csv_path: Path, iteration: int) -> list[list[str]]:
    """The complete data rows of a log with iteration <= `iteration` (a row cut short by a kill is dropped)."""
    try:
        with open(csv_path, newline="") as f:
            rows = list(csv.reader(f))
    except FileNotFoundError:
        return []
    width = len(ScalarLog.FIELDS)
    return [r for r in rows[1:] if len(r) == width and r[0].isdigit() and int(r[0]) <= iteration]


class ScalarLog:
    """One row per logged step in `csv_path`; the same scalars to TensorBoard under `tb_dir` when available.

    `resume_from`: the iteration training resumes at; 0 starts a new log."""

    FIELDS = ("iteration", "loss", "lr", "images_per_s")

    def __init__(self, csv_path: Path | None, tb_dir: Path | None = None, resume_from: int = 0):
        self._file = self._csv = None
        if csv_path:
            kept = rows_up_to(csv_path, resume_from) if resume_from > 0 else []
            write_text(csv_path, csv_text(self.FIELDS, kept))
            self._file = open(csv_path, "a", newline="")
            self._csv = csv.writer(self._file, lineterminator="\n")
        purge = resume_from + 1 if resume_from > 0 else None  # the row of `resume_from` itself stays valid
        self._tb = tensorboard_writer(tb_dir, purge_step=purge) if tb_dir else None

    def log(self, iteration: int, loss: float, lr: float, images_per_s: float) -> None:
        if self._csv:
            self._csv.writerow([iteration, f"{loss:.5f}", f"{lr:.6g}", f"{images_per_s:.2f}"])
            self._file.flush()
        if self._tb:
            self._tb.add_scalar("train/loss", loss, iteration)
            self._tb.add_scalar("train/lr", lr, iteration)
            self._tb.add_scalar("train/images_per_s", images_per_s, iteration)

    def scalar(self, tag: str, value: float, step: int) -> None:
        if self._tb:
            self._tb.add_scalar(tag, value, step)

    def close(self) -> None:
        if self._file:
            self._file.close()
        if self._tb:
            self._tb.close()
