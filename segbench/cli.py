"""`segbench COMMAND ...`: a thin dispatcher; each command lives next to the code it drives, and every one ends
through errors.run_command (a user's mistake: one message, exit code 2; --debug: the traceback too)."""
from __future__ import annotations

import importlib
import sys

from . import __version__
from .errors import DEBUG_ENV, DEBUG_FLAG, run_command

# command -> module whose `main(argv) -> int` handles it
COMMANDS = {
    "run": ("segbench.run", "train and evaluate a study (same as python -m segbench.run)"),
    "report": ("segbench.report.cli", "rebuild tables and plots from the records in a results directory"),
    "published": ("segbench.report.published_cli", "list the published numbers on file: paper, table, rows, verified"),
    "evaluate": ("segbench.evaluate", "score a checkpoint or a directory of prediction PNGs (JSON, per-class IoU)"),
    "predict": ("segbench.predict", "segment an image or a folder with a trained cell (trainId PNGs, --overlay)"),
    "analyze": ("segbench.analysis.cli", "appearance-shift robustness and layer-wise feature divergence"),
    "data": ("segbench.data.cli", "inspect or prepare datasets: data list, data check NAME, data prepare NAME"),
    "models": ("segbench.models.cli", "list backbones (parameters, ImageNet weights on disk or not) and heads"),
    "methods": ("segbench.methods.cli", "list domain-generalization methods with their paper and defaults"),
}


def usage() -> str:
    lines = ["usage: segbench COMMAND [ARGS...]   (segbench --version: the installed version)", "", "commands:"]
    lines += [f"  {name:<9} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", f"exit codes: 0 done; 1 finished with failures; 2 a bad input, named in one message "
                  f"({DEBUG_FLAG} anywhere, or {DEBUG_ENV}=1, adds the traceback)"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    words = [a for a in argv if a != DEBUG_FLAG]  # `segbench --debug run ...` as well as `segbench run ... --debug`
    if not words or words[0] in ("-h", "--help"):
        print(usage())
        return 0
    if words[0] in ("-V", "--version"):
        print(f"segbench {__version__}")
        return 0
    command = words[0]
    if command not in COMMANDS:
        print(f"segbench: unknown command {command!r}\n\n{usage()}", file=sys.stderr)
        return 2
    rest = argv[:]
    rest.remove(command)
    module = importlib.import_module(COMMANDS[command][0])
    return run_command(module.main, rest, prog=f"segbench {command}")


if __name__ == "__main__":
    sys.exit(main())
