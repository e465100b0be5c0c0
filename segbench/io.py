"""Writing results: every file (text, JSON, checkpoint, figure) goes to a temp file in the same directory, then is
renamed, so a reader never sees half a file; plus the text formats those files carry (CSV, markdown tables).

A write that fails for want of space or permission says so, naming the file and the device or directory, instead of
torch's or the OS's raw error; a temp file a killed process left behind is recognised by its name and removed when
its cell next starts (`remove_stale_temp_files`). Reading back what segbench wrote is as guarded: a damaged file is
set aside as NAME.damaged (`set_aside`), never deleted, and a torch file is only ever loaded with weights_only=True
(`load_torch`).
"""
from __future__ import annotations

import csv
import errno
import io
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
NOT_WRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)
# a write that fails with less than this free is blamed on space: torch reports a short write as
# "RuntimeError: [enforce fail at inline_container.cc:...] unexpected pos", without the OS error behind it
LOW_SPACE_BYTES = 64 * 2**20
# the names _atomic's temp files get: "." + target name + "." + mkstemp's 8 random characters + ".tmp"
TEMP_NAME = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")


class DiskFullError(OSError):
    """No space left on the device while writing a result; the file being replaced, if any, is intact."""


class NotWritableError(PermissionError):
    """A results directory that cannot be written to (permissions or a read-only mount)."""


def _os_error(kind: type[OSError], code: int, message: str) -> OSError:
    """`kind(message)` with its errno set: str() is then the message alone, without an "[Errno N]" prefix."""
    error = kind(message)
    error.errno = code
    return error


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def is_writable(directory: Path) -> bool:
    """Whether this process may create files in `directory` (False on a read-only mount, also for root)."""
    return os.access(directory, os.W_OK | os.X_OK)


def check_writable(directory: Path) -> None:
    """Raise NotWritableError unless `directory`, or the nearest ancestor that exists when it does not yet, can take
    new files: a study checks its results directory this way before it trains anything."""
    directory = Path(directory).absolute()
    existing = next(p for p in (directory, *directory.parents) if p.exists())
    if not existing.is_dir():
        raise _os_error(NotWritableError, errno.ENOTDIR, f"cannot write results under {directory}: {existing} is a "
                                                          "file, not a directory; choose another results directory")
    if not is_writable(existing):
        raise _os_error(NotWritableError, errno.EACCES,
                        f"cannot write results under {directory}: {existing} is not writable (read-only mount or "
                        "permissions); choose another results directory (--results) or make it writable")


def _mount_of(path: Path) -> str:
    """'DEVICE (mounted at MOUNT)' for the filesystem holding `path`, or the mount point alone."""
    mount = Path(path).absolute()
    while not os.path.ismount(mount) and mount != mount.parent:
        mount = mount.parent
    try:
        with open("/proc/mounts") as f:
            devices = [line.split()[0] for line in f if line.split()[1:2] == [str(mount)]]
    except OSError:
        devices = []
    return f"{devices[-1]} (mounted at {mount})" if devices else str(mount)


def _free_bytes(directory: Path) -> int | None:
    try:
        return shutil.disk_usage(directory).free
    except OSError:
        return None


def _os_errno(error: BaseException) -> int | None:
    """The errno of the OSError that caused `error`, looking through torch's wrapping exceptions."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno is not None:
            return error.errno
        error = error.__cause__ or error.__context__
    return None


def _out_of_space(error: BaseException, free: int | None) -> bool:
    if _os_errno(error) in NO_SPACE:
        return True
    return isinstance(error, (OSError, RuntimeError)) and free is not None and free < LOW_SPACE_BYTES


def _atomic(path: Path, write: Callable[[Any], None], mode: str, durable: bool = True) -> None:
    """mkstemp creates 0600 files: give the result the permissions a plain open() would. `durable=False` skips the
    fsync, for a file that is only a shortcut (a cache): a crash may then leave it empty, never half-replaced."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        if e.errno in NOT_WRITABLE:
            where = next((p for p in path.parents if p.exists()), path.parent)
            raise _os_error(NotWritableError, e.errno, f"cannot write {path}: {where} is not writable (read-only mount "
                                                       "or permissions); make it writable or write elsewhere") from e
        if e.errno in NO_SPACE:
            raise _disk_full(path, _free_bytes(path.parent)) from e
        if e.errno in (errno.EEXIST, errno.ENOTDIR):  # a file where a directory of the path should be
            where = next((p for p in path.parents if p.exists() and not p.is_dir()), path.parent)
            raise _os_error(NotADirectoryError, errno.ENOTDIR, f"cannot write {path}: {where} is a file, not a "
                                                               "directory; write elsewhere, or move that file") from e
        raise
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException as e:
        free = _free_bytes(path.parent)  # before the partial file is removed, or a full disk looks roomy
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, Exception) and _out_of_space(e, free):
            raise _disk_full(path, free) from e
        raise


def _disk_full(path: Path, free: int | None) -> OSError:
    return _os_error(DiskFullError, errno.ENOSPC,
                     f"no space left on {_mount_of(path.parent)} while writing {path}"
                     + (f" ({free / 2**20:.0f} MiB free)" if free is not None else "")
                     + "; free some space and run again (a cell resumes from its last checkpoint, which is intact)")


def remove_stale_temp_files(directory: Path) -> list[Path]:
    """Delete the temp files of writes that never finished (a process killed mid-save) anywhere under `directory`;
    returns them. Only for directories segbench owns, and only while no other process writes there (a cell holds
    its lock)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    stale = [p for p in directory.rglob(".*.tmp") if TEMP_NAME.match(p.name) and p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def write_text(path: Path, text: str, durable: bool = True) -> None:
    _atomic(path, lambda f: f.write(text), "w", durable)


def write_bytes(path: Path, data: bytes) -> None:
    _atomic(path, lambda f: f.write(data), "wb")


def write_json(path: Path, obj: Any, durable: bool = True) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, allow_nan=True) + "\n", durable)


def save_npz(path: Path, **arrays: Any) -> None:
    """numpy arrays in one compressed .npz, atomically."""
    import numpy as np

    _atomic(path, lambda f: np.savez_compressed(f, **arrays), "wb")


def save_torch(path: Path, obj: Any) -> None:
    import torch

    _atomic(path, lambda f: torch.save(obj, f), "wb")


DAMAGED_SUFFIX = ".damaged"


def set_aside(path: Path) -> Path:
    """Rename a damaged file to NAME.damaged (NAME.damaged.2, ... when taken): out of the way, kept for a look."""
    path = Path(path)
    target, n = path.with_name(path.name + DAMAGED_SUFFIX), 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}{DAMAGED_SUFFIX}.{n}")
    path.rename(target)
    return target


class DamagedFileError(ValueError):
    """A file that is truncated, corrupt or of another format; str() says what is wrong, without the path (the
    caller names the file with the fix that applies where it is read)."""


class UnsafeFileError(ValueError):
    """A torch file that holds more than tensors and plain containers (objects, code): never loaded here."""


def _unpickler_reason(e: Exception) -> str:
    """The informative part of torch's long weights_only refusal ("Unsupported global: GLOBAL os.system ...",
    "Unsupported operand 149"), without its advice to load the file with weights_only=False."""
    text = str(e)
    if "WeightsUnpickler error:" in text:
        words = text.split("WeightsUnpickler error:", 1)[1].strip().splitlines()
        first = next((line.strip() for line in words if line.strip()), "")
        return first.split(". ")[0] or type(e).__name__
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else type(e).__name__


def _pickled_or_zipped(path: Path) -> bool:
    """Whether a file starts as torch files do: a zip archive (torch.save), or a pickle of protocol 2 or later (the
    PROTO opcode, 0x80, which no text file starts with)."""
    with open(path, "rb") as f:
        head = f.read(2)
    return head == b"PK" or head[:1] == b"\x80"


def load_torch(path: Path, map_location: Any = "cpu") -> Any:
    """The one torch.load of segbench: weights_only=True, so a file that needs more never runs its code. Raises
    UnsafeFileError for such a file, DamagedFileError for one that is truncated or not a torch file at all (a YAML or
    text file makes torch's unpickler fail with IndexError or KeyError)."""
    import pickle

    import torch

    not_torch = "not a torch file (no zip archive or pickle: a text or YAML file?)"
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        if not _pickled_or_zipped(path):  # a text file read as opcodes: "Unsupported operand 109"
            raise DamagedFileError(not_torch) from None
        raise UnsafeFileError(f"torch.load with weights_only=True refused it: {_unpickler_reason(e)}") from None
    except EOFError:
        raise DamagedFileError("empty or truncated (a write cut short, a copy that did not finish)") from None
    except (IndexError, KeyError, UnicodeDecodeError):  # torch's legacy unpickler reading a text file
        raise DamagedFileError(not_torch) from None
    except RuntimeError as e:  # torch's zip reader: "PytorchStreamReader failed reading zip archive: ..."
        if "PytorchStreamReader" in str(e) or "magic number" in str(e):
            raise DamagedFileError(f"damaged or truncated ({str(e).split('. ')[0]})") from None
        raise


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


def markdown_table(header, rows, left: int = 1, text: tuple[int, ...] = ()) -> str:
    """A GitHub table: the first `left` columns (labels) and the `text` ones left-aligned, the rest (numbers)
    right-aligned, pipes in cells escaped."""
    lines = ["| " + " | ".join(_escape_cell(h) for h in header) + " |",
             "|" + "|".join(":---" if j < left or j in text else "---:" for j in range(len(header))) + "|"]
    lines += ["| " + " | ".join(_escape_cell(c) for c in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"
