"""The one place that turns an error a user can cause into one message on stderr and exit code 2.

Commands raise (ConfigError, DatasetError, RecordError, ...); `run_command` decides how it ends. `segbench COMMAND`
(cli.py) and `python -m segbench.run` go through it, and each command's `main` is wrapped by `@command(...)`, so a
direct call (tests, scripts) ends the same way.

Exit codes: 0 fine; 1 the command finished but something failed (a cell, a check); 2 the user must change something:
a path, a value, a file. `--debug` anywhere on the command line, or SEGBENCH_DEBUG=1, prints the traceback too.
Errors that are not the user's (a bug) keep their traceback.
"""
from __future__ import annotations

import errno
import functools
import os
import sys
import traceback
from pathlib import Path
from typing import Callable, Sequence

USER_ERROR = 2
DEBUG_FLAG = "--debug"
DEBUG_ENV = "SEGBENCH_DEBUG"

#: (module, class) of every error a user can cause. Looked up only among the modules already imported, so listing
#: them here loads nothing (`segbench report` stays free of torch): a class whose module was never imported cannot
#: have been raised.
USER_ERROR_TYPES = (
    ("segbench.config", "ConfigError"),
    ("segbench.spec", "SpecError"),
    ("segbench.record", "RecordError"),
    ("segbench.data.base", "DatasetError"),
    ("segbench.engine.checkpoint", "CheckpointError"),
    ("segbench.engine.checkpoint", "CheckpointMismatch"),
    ("segbench.engine.scoring", "PredictionError"),
    ("segbench.methods.base", "MethodError"),
    ("segbench.models.pretrained", "PretrainedWeightsError"),
    ("segbench.report.published", "PublishedError"),
)
#: what the operating system refuses for a reason the user can fix; the message names the path
USER_ERRNOS = {errno.ENOENT, errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EISDIR,
               errno.ENOTDIR, errno.ENAMETOOLONG}
#: a KeyError is the user's only when a registry raised it (an unknown name, with the valid ones); any other
#: KeyError is a bug and keeps its traceback
REGISTRY_FILE = Path(__file__).with_name("registry.py")


def user_errors() -> tuple[type[BaseException], ...]:
    """The error classes a user can cause, among the segbench modules loaded so far."""
    found = []
    for module, name in USER_ERROR_TYPES:
        if module in sys.modules:
            found.append(getattr(sys.modules[module], name))
    return tuple(found)


def _raised_by_registry(e: KeyError) -> bool:
    frames = traceback.extract_tb(e.__traceback__)
    return bool(frames) and Path(frames[-1].filename) == REGISTRY_FILE


def is_user_error(e: BaseException, also: Sequence[type[BaseException]] = ()) -> bool:
    if isinstance(e, (*user_errors(), *also)):
        return True
    if isinstance(e, KeyError):
        return _raised_by_registry(e)
    return isinstance(e, OSError) and e.errno in USER_ERRNOS


def describe(e: BaseException) -> str:
    """The message to print: the error's own (which names the file or value and the fix)."""
    if isinstance(e, KeyError) and e.args:
        return str(e.args[0])
    if isinstance(e, OSError) and e.errno in USER_ERRNOS and e.filename is not None:
        where = f"{e.filename}" + (f" -> {e.filename2}" if e.filename2 is not None else "")
        return f"{where}: {e.strerror}; check the path, its permissions and the free space there"
    return str(e) or type(e).__name__


def debug_requested() -> bool:
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


def run_command(main: Callable[[list[str]], int | None], argv: Sequence[str] | None = None, prog: str = "segbench",
                also: Sequence[type[BaseException]] = ()) -> int:
    """`main(argv)` with `--debug` taken out of argv; a user error (or one of `also`) -> one message, exit code 2.

    `--debug` is passed on through SEGBENCH_DEBUG for the duration, so nested commands and the processes a launcher
    starts show tracebacks too.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    flagged = DEBUG_FLAG in argv
    argv = [a for a in argv if a != DEBUG_FLAG]
    before = os.environ.get(DEBUG_ENV)
    if flagged:
        os.environ[DEBUG_ENV] = "1"
    try:
        return int(main(argv) or 0)
    except Exception as e:
        if not is_user_error(e, tuple(also)):
            raise
        if debug_requested():
            traceback.print_exc()
        print(f"{prog}: {describe(e)}", file=sys.stderr)
        return USER_ERROR
    finally:
        if flagged:
            if before is None:
                os.environ.pop(DEBUG_ENV, None)
            else:
                os.environ[DEBUG_ENV] = before


def command(prog: str, also: Sequence[type[BaseException]] = ()):
    """Decorator for a command's `main(argv) -> int`: it ends through `run_command` however it is called.

    `also`: further error types that this command raises only for bad arguments."""

    def wrap(main: Callable[[list[str]], int | None]) -> Callable[[Sequence[str] | None], int]:
        @functools.wraps(main)
        def wrapper(argv: Sequence[str] | None = None) -> int:
            return run_command(main, argv, prog, also)

        return wrapper

    return wrap
