"""Scalar logging: a plain CSV always, TensorBoard too when it is installed (`pip install -e '.[tensorboard]'`)."""
from __future__ import annotations

import csv
from pathlib import Path


def tensorboard_writer(log_dir: Path):
    """A SummaryWriter, or None when tensorboard is not installed (it is an optional extra)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(log_dir))


class ScalarLog:
    """One row per logged step in `csv_path`; the same scalars to TensorBoard under `tb_dir` when available."""

    FIELDS = ("iteration", "loss", "lr", "images_per_s")

    def __init__(self, csv_path: Path | None, tb_dir: Path | None = None, append: bool = False):
        self._file = open(csv_path, "a" if append else "w", newline="") if csv_path else None
        self._csv = csv.writer(self._file) if self._file else None
        if self._csv and not append:
            self._csv.writerow(self.FIELDS)
        self._tb = tensorboard_writer(tb_dir) if tb_dir else None

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
