"""Every command's and subcommand's --help prints and exits 0: argparse formats help strings with %, so a help text
built from data (a '95% t interval') can crash the very page a newcomer opens first."""
from __future__ import annotations

import pytest

from segbench.cli import COMMANDS, main, usage

SUBCOMMANDS = [["data", "list"], ["data", "check"], ["data", "prepare"], ["analyze", "shift"],
               ["analyze", "divergence"]]


@pytest.mark.parametrize("words", [[name] for name in COMMANDS] + SUBCOMMANDS, ids=" ".join)
def test_help_prints_and_exits_zero(words, capsys):
    with pytest.raises(SystemExit) as stop:
        main([*words, "--help"])
    out = capsys.readouterr().out
    usage = out.splitlines()[0]
    assert stop.value.code == 0 and usage.startswith("usage:") and words[-1] in usage and len(out.splitlines()) > 3


def test_top_level_help_lists_every_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(f"  {name} " in out for name in COMMANDS)


def test_version_prints_the_package_version(capsys):
    from segbench import __version__

    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"segbench {__version__}\n"
    assert "--version" in usage()
