"""`segbench methods [PATTERN]`: the domain-generalization methods a study can name, with their paper and defaults."""
from __future__ import annotations

import argparse
import json

from ..errors import command
from ..models.cli import format_table
from . import METHODS, load_plugins


def method_rows(pattern: str) -> list[tuple[str, str, str]]:
    load_plugins()
    rows = []
    for name in METHODS.expand([pattern]):
        cls = METHODS.get(name)
        defaults = " ".join(f"{k}={json.dumps(v)}" for k, v in cls.defaults.items()) or "-"
        rows.append((name, cls.paper, defaults))
    return rows


@command("segbench methods")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="segbench methods", description=__doc__,
                                     epilog="use: python -m segbench.run --methods erm isw mixstyle "
                                            "--set method.isw.weight=0.6")
    parser.add_argument("pattern", nargs="?", default="*", help="glob on method names (default: all)")
    args = parser.parse_args(argv)
    print(format_table(("method", "paper", "defaults (--set method.NAME.OPTION=VALUE)"), method_rows(args.pattern)))
    return 0
