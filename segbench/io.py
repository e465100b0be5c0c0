"""Writing results: every file (text, JSON, checkpoint, figure) goes to a temp file in the same directory, then is
renamed, so a reader never sees half a file; plus the text formats those files carry (CSV, markdown tables)."""
from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _atomic(path: Path, write: Callable[[Any], None], mode: str) -> None:
    """mkstemp creates 0600 files: give the result the permissions a plain open() would."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_text(path: Path, text: str) -> None:
    _atomic(path, lambda f: f.write(text), "w")


def write_json(path: Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, allow_nan=True) + "\n")


def save_torch(path: Path, obj: Any) -> None:
    import torch

    _atomic(path, lambda f: torch.save(obj, f), "wb")


def pyplot():
    """matplotlib's pyplot on the Agg backend: figures are only ever written to files, never shown."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path, dpi: int = 120) -> Path:
    """Write `fig` atomically (a report rebuilt during a study never shows a torn PNG), then close it: pyplot keeps
    every open figure alive, and a study writes many."""
    path = Path(path)
    try:
        _atomic(path, lambda f: fig.savefig(f, dpi=dpi, format=path.suffix.lstrip(".") or "png"), "wb")
    finally:
        pyplot().close(fig)
    return path


def csv_text(header, rows) -> str:
    """A CSV document (header + rows, '\n' line ends) as text, ready for `write_text`."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


def _escape_cell(text) -> str:
    return str(text).replace("|", "\\|")


def markdown_table(header, rows, left: int = 1) -> str:
    """A GitHub table: the first `left` columns (labels) left-aligned, the rest (numbers) right-aligned, pipes in cells
    escaped."""
    lines = ["| " + " | ".join(_escape_cell(h) for h in header) + " |",
             "|" + "|".join([":---"] * left + ["---:"] * (len(header) - left)) + "|"]
    lines += ["| " + " | ".join(_escape_cell(c) for c in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"
