"""The study commands the documentation prints (README.md, docs/*.md): one that changes a study's cells from those
of the study it would be named after (its spec's, or its experiment file's) names its own results with --name, so
trying an example never adds rows to another example's tables (a plug-in method example once wrote into
results/embedded beside the default's rows)."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: options that change which cells a study holds, or how they train
CELL_OPTIONS = ("--set", "--methods", "--backbones", "--heads", "--seeds")
#: options under which nothing is trained
NO_RUN = ("--dry-run", "--print-config", "--only")


def documented_commands() -> list[tuple[str, str]]:
    """(file, command) for every `segbench.run` command in a fenced or indented code block or an inline code span."""
    found = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]:
        text, blocks = path.read_text(), []
        # fences first (they hold indented lines), then indented blocks; what remains is prose with inline code
        for pattern, flags in ((r"^```[^\n]*\n(.*?)^```[ \t]*$", re.M | re.S), (r"^(?: {4}.*(?:\n|$))+", re.M)):
            blocks += re.findall(pattern, text, flags)
            text = re.sub(pattern, "", text, flags=flags)
        blocks += [" ".join(span.split()) for span in re.findall(r"`([^`]*segbench\.run[^`]*)`", text)]
        lines = [ln for block in blocks for ln in re.sub(r"\\\n\s*", " ", block).splitlines()]
        found += [(path.name, " ".join(ln.split())) for ln in lines if re.search(r"-m segbench\.run\b", ln)]
    return list(dict.fromkeys(found))


def study_words(command: str) -> list[str]:
    return shlex.split(command.split("segbench.run", 1)[1], comments=True)


def test_the_documentation_prints_study_commands():
    assert len(documented_commands()) >= 5  # the parser below still finds them


def test_every_documented_variant_of_a_study_has_its_own_name():
    unnamed = []
    for where, command in documented_commands():
        words = study_words(command)
        if any(w in NO_RUN for w in words):
            continue
        if any(w.split("=")[0] in CELL_OPTIONS for w in words) and "--name" not in words:
            unnamed.append(f"{where}: {command}")
    assert not unnamed, "add --name NAME to:\n" + "\n".join(unnamed)


def test_no_two_documented_variants_share_a_name():
    variants: dict[str, set[tuple[str, ...]]] = {}
    for _, command in documented_commands():
        words = study_words(command)
        if "--name" in words and not any(w in NO_RUN for w in words):
            name = words[words.index("--name") + 1]
            variants.setdefault(name, set()).add(tuple(w for w in words if not w.startswith("--launcher")))
    assert {n: v for n, v in variants.items() if len(v) > 1} == {}
