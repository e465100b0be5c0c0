"""The lock of a cell directory: one process runs a cell at a time, on one machine or across machines on NFS."""
from __future__ import annotations

import datetime
import errno
import os
import platform
import warnings
from contextlib import contextmanager
from pathlib import Path

try:
    import fcntl
except ImportError:  # not POSIX: cells run unlocked
    fcntl = None

from .cells import LOCK


class CellBusy(RuntimeError):
    """Another process holds the cell's lock: it is running the cell now."""


# a filesystem without flock support (Lustre mounted without -o flock, some FUSE): run unlocked, with a warning
_NO_LOCKS = {errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL}


@contextmanager
def cell_lock(cell_dir: Path):
    """Hold CELLDIR/.lock while the block runs, or raise CellBusy naming the process that holds it.

    An advisory flock: the kernel drops it when its process exits, however it ends (kill -9 included), so a crashed
    run never leaves a stale lock. It covers processes on one machine, and across machines on NFS (Linux maps flock
    to NFS byte-range locks). The file itself stays; its text names the holder for the other runner's message.
    """
    path = Path(cell_dir) / LOCK
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        try:
            if fcntl is not None:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "a process that has not said who it is yet"
            raise CellBusy(f"{cell_dir}: another process is running this cell ({holder}); skipped here. "
                           "Run the study again after it ends to pick up its result") from None
        except OSError as e:
            if e.errno not in _NO_LOCKS:
                raise
            warnings.warn(f"{path}: this filesystem does not support file locks ({e.strerror}); the cell runs "
                          "unlocked, so do not start two runners on this results directory", stacklevel=3)
        f.seek(0)
        f.truncate()
        stamp = datetime.datetime.now().isoformat(timespec="seconds")
        f.write(f"pid {os.getpid()} on {platform.node()} since {stamp}\n")
        f.flush()
        yield


def lock_holder(cell_dir: Path) -> str | None:
    """Who holds the cell's lock right now (its text), or None when nobody does."""
    path = Path(cell_dir) / LOCK
    if fcntl is None:
        return None
    try:
        f = open(path)
    except FileNotFoundError:
        return None
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return f.read().strip() or "another process"
        except OSError:
            return None
        fcntl.flock(f, fcntl.LOCK_UN)
        return None
