"""``--plot`` where matplotlib is not installed: the figure is skipped with a warning, the
run, its table and ``--json`` are not (it used to exit 1 before measuring anything, which
would lose a GPU session's step)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np

from tests.absent import without
from tests.pages import make_pages


def test_bench_and_replay_go_on_without_matplotlib(tmp_path):
    pages = tmp_path / "pages.npy"
    np.save(pages, make_pages(32, np.random.default_rng(4), ("text", "struct", "zero")))
    for cmd, extra in (("bench", ["--sweep", "1,4"]),
                       ("replay", ["--working-set", "64", "--ram-pages", "16", "--accesses", "300",
                                   "--pool-limit-pages", "8"])):
        out, png = tmp_path / f"{cmd}.json", tmp_path / f"{cmd}.png"
        argv = [cmd, "--backend", "host", "--compressor", "lz4", "--pages", str(pages), "--quiet", *extra,
                "--json", str(out), "--plot", str(png)]
        code = without("matplotlib") + f"import sys; from devpool.cli import main; sys.exit(main({argv!r}))"
        p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stderr
        assert f"no plot will be written to {png}: matplotlib is not installed" in p.stderr
        assert json.loads(out.read_text())["backend"] == "host" and not png.exists()
