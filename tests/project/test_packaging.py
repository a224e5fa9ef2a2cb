"""What an install puts in site-packages: devpool, devpool.kernels, devpool.host — and no
generic top-level ``kernels`` or ``host`` module."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_wheel_maps_top_level_folders_into_the_package(tmp_path):
    # built from a clean copy: a build/ folder left in the tree by an earlier build would
    # put what that build held into this wheel, hiding a package missing from the list
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns("build", ".venv", ".git", "*.egg-info", ".hypothesis",
                                                             "__pycache__", "results", ".whl"))
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q",
                          "-w", str(tmp_path), str(src)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    wheel = next(tmp_path.glob("devpool-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"devpool"}
    for module in ("devpool/kernels/_device.py", "devpool/kernels/lz4.py", "devpool/host/_arena.py",
                   "devpool/py.typed"):
        assert module in names
    # every module of the source tree is in the wheel (a subpackage left out of
    # pyproject's list imports in an editable install and is missing from a real one)
    for folder, dotted in (("devpool", "devpool"), ("kernels", "devpool/kernels"), ("host", "devpool/host")):
        for path in (ROOT / folder).rglob("*.py"):
            rel = path.relative_to(ROOT / folder).as_posix()
            assert f"{dotted}/{rel}" in names, f"{folder}/{rel} is not in the wheel"
    meta = next(n for n in names if n.endswith("entry_points.txt"))
    assert "devpool = devpool.cli:main" in zipfile.ZipFile(wheel).read(meta).decode()
