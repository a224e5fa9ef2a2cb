"""The CUDA kernels are cached on disk like lz4-njit's drivers (issue 28: every process
of a GPU session, each region handler and benchmark, compiled them again: 0.4 s for the
copy kernel, 4.5 s to compress, 1.9 s to decompress).

No GPU here, so each process compiles through numba-cuda's real dispatcher, NVVM and
cache, against a stand-in device of compute capability 9.0 (numba-cuda 0.30's lookups of
the current device and context are replaced, and the driver-side link, ``bind``, is
skipped): what is cached, found and invalidated is numba-cuda's own logic.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.kernels.test_check_kernels import needs_nvvm

CODE = """
import json, os, sys, types
from numba.cuda import codegen, dispatcher
from numba.cuda.cudadrv import devices
device = types.SimpleNamespace(compute_capability=(9, 0), id=0)
context = types.SimpleNamespace(device=device)
dispatcher.get_current_device = lambda: device
devices.get_context = codegen.devices.get_context = lambda devnum=None: context
dispatcher._Kernel.bind = lambda self: None           # the link needs a driver
from devpool.kernels import _cuda
if {edited!r}:
    _cuda._sources_digest = lambda: "an edited source"
from devpool.kernels import _copy_kernels, lz4_device
stats = {{}}
for disp in [_copy_kernels.copy_kernel, lz4_device.compress_kernel][:{count}]:
    name = disp._devpool_kernel
    for sig in _cuda.KERNELS[name].signatures:
        disp.compile(tuple(sig))
    s = disp.stats
    stats[name.rsplit(".", 1)[1]] = [sum(s.cache_hits.values()), sum(s.cache_misses.values())]
print(json.dumps(stats))
"""


def _run(cache_dir, count: int = 2, edited: bool = False) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    env["NUMBA_CACHE_DIR"] = str(cache_dir)
    out = subprocess.run([sys.executable, "-c", CODE.format(count=count, edited=edited)], capture_output=True,
                         text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@needs_nvvm
def test_a_second_process_loads_the_compiled_kernels_and_an_edit_compiles_afresh(tmp_path):
    first = _run(tmp_path)
    assert first == {"copy_kernel": [0, 1], "compress_kernel": [0, 1]}, first
    index = sorted(tmp_path.rglob("*.nbi"))
    assert len(index) == 2, index
    stamps = {p: p.stat().st_mtime_ns for p in index}
    second = _run(tmp_path)
    assert second == {"copy_kernel": [1, 0], "compress_kernel": [1, 0]}, second
    assert {p: p.stat().st_mtime_ns for p in sorted(tmp_path.rglob("*.nbi"))} == stamps   # nothing rewritten
    # a helper the kernel inlines from another file changed: not the stale machine code
    assert _run(tmp_path, count=1, edited=True) == {"copy_kernel": [0, 1]}

