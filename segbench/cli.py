"""`segbench COMMAND ...`: a thin dispatcher; each command lives next to the code it drives."""
from __future__ import annotations

import importlib
import sys

# command -> module whose `main(argv) -> int` handles it
COMMANDS = {
    "run": ("segbench.run", "train and evaluate a study (same as python -m segbench.run)"),
    "report": ("segbench.report.cli", "rebuild tables and plots from the records in a results directory"),
    "evaluate": ("segbench.evaluate", "score a checkpoint or a directory of prediction PNGs (JSON, per-class IoU)"),
    "analyze": ("segbench.analysis.cli", "appearance-shift robustness and layer-wise feature divergence"),
    "data": ("segbench.data.cli", "inspect or prepare datasets: data check NAME, data prepare NAME"),
    "models": ("segbench.models.cli", "list backbones and heads with parameter counts"),
}


def usage() -> str:
    lines = ["usage: segbench COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<9} {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"segbench: unknown command {command!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[command][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
