"""A non-editable install must carry everything segbench reads at run time: experiment files, the published numbers
beside them (experiments/published/) and split lists."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_wheel_ships_experiments_and_split_lists(tmp_path):
    src = tmp_path / "src"
    # a copy, so the build leaves no build/ or egg-info in the checkout
    subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z"], check=True, capture_output=True)
    files = subprocess.run(["git", "-C", str(ROOT), "ls-files"], check=True, capture_output=True, text=True).stdout
    for rel in files.splitlines():
        dst = src / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if (ROOT / rel).is_symlink():
            dst.symlink_to(os.readlink(ROOT / rel))
        elif (ROOT / rel).is_file():
            dst.write_bytes((ROOT / rel).read_bytes())
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels),
                    str(src)], check=True, capture_output=True)
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
