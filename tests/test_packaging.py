"""A non-editable install must carry everything segbench reads at run time: experiment files, the published numbers
beside them (experiments/published/) and split lists; and building it (wheel or editable) must print no warning of
setuptools, which a newcomer takes for a broken install."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# how Python prints a warning: "path/file.py:215: SomeWarning: message"
WARNING_LINE = re.compile(r"^\S+\.py:\d+: (\w+): (.*)$", re.M)


@pytest.fixture(scope="module")
def source_copy(tmp_path_factory) -> Path:
    """The tracked files, symlinks kept, so a build leaves no build/ or egg-info in the checkout."""
    src = tmp_path_factory.mktemp("pkg") / "src"
    files = subprocess.run(["git", "-C", str(ROOT), "ls-files"], check=True, capture_output=True, text=True).stdout
    for rel in files.splitlines():
        dst = src / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if (ROOT / rel).is_symlink():
            dst.symlink_to(os.readlink(ROOT / rel))
        elif (ROOT / rel).is_file():
            dst.write_bytes((ROOT / rel).read_bytes())
    return src


@pytest.mark.slow
def test_wheel_ships_experiments_and_split_lists(source_copy, tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels),
                    str(source_copy)], check=True, capture_output=True)
    (wheel,) = wheels.glob("segbench-*.whl")
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
                   check=True, capture_output=True)
    probe = ("import segbench, segbench.config as c\n"
             "from segbench.data.adapters.splitlists import SPLIT_DIR\n"
             "assert str(site) in segbench.__file__, segbench.__file__\n"
             "names = sorted(p.name for p in c.experiments_dir().glob('*.yaml'))\n"
             "assert 'embedded.yaml' in names and 'robustnet_dg.yaml' in names, names\n"
             "from segbench.report.published import load_all, shipped_files\n"
             "published = [p.name for p in shipped_files()]\n"
             "assert 'robustnet.yaml' in published and 'rein.yaml' in published, published\n"
             "assert str(site) in str(shipped_files()[0]) and any(t.numbers()[0] for t in load_all())\n"
             "assert c.load_config('embedded')['specs'] == ['sim->photo']\n"
             "assert len((SPLIT_DIR / 'gta5_robustnet_train.txt').read_text().split()) == 12388\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(site)
    out = subprocess.run([sys.executable, "-c", f"site = {str(site)!r}\n" + probe], cwd=tmp_path, env=env,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


@pytest.mark.slow
@pytest.mark.parametrize("hook", ["build_wheel", "build_editable"])
def test_build_prints_no_setuptools_warning(source_copy, tmp_path, hook):
    """The build hooks `pip install -e .` and `pip wheel` call, run directly: recent pip shows their warnings even
    with -q (a package left out of `packages`, an editable install through an import hook), 130 lines of them."""
    build = subprocess.run([sys.executable, "-c", f"import sys, setuptools.build_meta as b; b.{hook}(sys.argv[1])",
                            str(tmp_path)], cwd=source_copy, capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    assert WARNING_LINE.findall(build.stderr) == []
