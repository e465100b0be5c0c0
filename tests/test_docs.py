"""The documentation: the site (mkdocs.yml, docs/) builds in strict mode, so every link and anchor resolves; every
command block a page marks as runnable (the line `<!-- runnable -->` right above a ```bash fence) runs, on the
embedded data in a scratch directory of its own; the README stays short and every page it links to exists."""
from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
README = ROOT / "README.md"
RUNNABLE = "<!-- runnable -->"
README_MAX_LINES = 150
#: seconds a runnable block may take (each is a few seconds: nothing in them trains)
BLOCK_TIMEOUT = 120


def runnable_blocks() -> list[tuple[str, str]]:
    """(PAGE:LINE, commands) for every fenced bash block right below the runnable marker."""
    blocks = []
    for page in sorted(DOCS.glob("*.md")):
        text = page.read_text()
        for m in re.finditer(re.escape(RUNNABLE) + r"\n```bash\n(.*?)^```[ \t]*$", text, re.M | re.S):
            blocks.append((f"{page.name}:{text.count(chr(10), 0, m.start()) + 1}", m.group(1)))
    return blocks


def slug(heading: str) -> str:
    """The anchor Python-Markdown's toc extension gives a heading (its default slugify)."""
    text = re.sub(r"`|\*\*|\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def anchors(page: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.M | re.S)  # a '# comment' in a fence is no heading
    return {slug(h) for h in re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", text, re.M)}


def test_every_runnable_marker_sits_on_a_bash_block():
    marked = sum(page.read_text().count(RUNNABLE) for page in DOCS.glob("*.md"))
    assert marked == len(runnable_blocks()), f"put {RUNNABLE} on the line right above a ```bash fence"
    assert len(runnable_blocks()) >= 4  # the parser above still finds them


def test_the_site_builds_in_strict_mode(tmp_path):
    if importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("material") is None:
        pytest.fail("mkdocs and mkdocs-material are not installed: pip install -e '.[test]' (setup.cfg's test extras)")
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(ROOT / "mkdocs.yml"),
                           "--site-dir", str(tmp_path / "site")], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout}{proc.stderr}"
    built = {p.relative_to(tmp_path / "site").parts[0] for p in (tmp_path / "site").glob("*/index.html")}
    assert built >= {p.stem for p in DOCS.glob("*.md") if p.stem != "index"}


@pytest.fixture(scope="module")
def shell_env(tmp_path_factory) -> dict[str, str]:
    """PATH with `python` and `segbench` meaning this interpreter and this checkout, whatever is installed; no
    SEGBENCH_* variable of the caller's (a data root, plug-ins) leaks in."""
    bin_dir = tmp_path_factory.mktemp("bin")
    for name, command in (("python", f'exec "{sys.executable}" "$@"'),
                          ("segbench", f'exec "{sys.executable}" -m segbench.cli "$@"')):
        (bin_dir / name).write_text(f"#!/bin/sh\n{command}\n")
        (bin_dir / name).chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEGBENCH_")}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


@pytest.mark.parametrize("where,commands", runnable_blocks(), ids=[w for w, _ in runnable_blocks()])
def test_a_runnable_block_runs(where, commands, tmp_path, shell_env):
    """In a scratch directory standing in for a checkout: ./datasets (the default data root) and ./results are its
    own, so a block never reads or writes another study's files; experiments/ is the checkout's."""
    (tmp_path / "experiments").symlink_to(ROOT / "experiments")
    proc = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", commands], cwd=tmp_path, env=shell_env,
                          capture_output=True, text=True, timeout=BLOCK_TIMEOUT)
    assert proc.returncode == 0, f"{where} exited {proc.returncode}:\n{commands}\n{proc.stdout}{proc.stderr}"
    assert "Traceback" not in proc.stderr, f"{where}:\n{proc.stderr}"


def test_the_readme_is_short():
    lines = len(README.read_text().splitlines())
    assert lines < README_MAX_LINES, f"README.md has {lines} lines; move reference text to a page under docs/"


def test_the_readme_prints_the_command_ci_runs():
    """.ci/run runs the README's test command verbatim; the README still shows that very line."""
    (command,) = [ln for ln in (ROOT / ".ci" / "run").read_text().splitlines() if ln.startswith("bash .ci/setup")]
    assert command in README.read_text()
    assert "bash .ci/setup && .venv/bin/python -m segbench.run" in README.read_text()


def test_every_link_of_the_readme_resolves():
    """Relative links and images of README.md point at files that exist; an anchor into a page at one of its
    headings."""
    links = re.findall(r"\]\(([^)\s]+)\)", README.read_text())
    assert any(link.startswith("docs/") and link.split("#")[0].endswith(".md") for link in links)
    broken = []
    for link in links:
        if re.match(r"[a-z]+://|mailto:", link):
            continue
        path, _, anchor = link.partition("#")
        target = ROOT / path
        if not target.is_file():
            broken.append(f"{link}: no file {path}")
        elif anchor and anchor not in anchors(target):
            broken.append(f"{link}: {path} has no heading with the anchor #{anchor}")
    assert not broken, "\n".join(broken)


def test_every_page_is_linked_from_the_readme_or_the_home_page():
    linked = set(re.findall(r"\]\(docs/([\w.-]+\.md)", README.read_text()))
    linked |= set(re.findall(r"\]\(([\w.-]+\.md)", (DOCS / "index.md").read_text()))
    assert {p.name for p in DOCS.glob("*.md")} - {"index.md"} <= linked
