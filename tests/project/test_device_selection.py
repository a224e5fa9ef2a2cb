"""``pytest --gpu -m device`` (the GPU session's suite) selects the tests that touch the
device and no CPU-only one: a ``-k "cuda or device or ..."`` filter had matched module
names and pulled in compile-only checks (~45 s of a 15-minute GPU lease)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
#: compile-only or CPU-only: they need no GPU, so CI runs them and a GPU run must not
CPU_ONLY = ("tests/kernels/test_check_kernels.py", "tests/kernels/test_cupy_api.py",
            "tests/kernels/test_cuda_kernel_cache.py", "tests/project/test_numba_setup.py")


def test_device_mark_selects_the_device_tests_only():
    out = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "device",
                          "-p", "no:cacheprovider"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    ids = [line for line in out.stdout.splitlines() if "::" in line]
    assert not [i for i in ids if i.startswith(CPU_ONLY)]
    # a host or chaos parametrisation is selected only with a device codec beside it
    assert not [i for i in ids if ("[host" in i or "[chaos-" in i or "[chaos]" in i) and "cuda" not in i
                and "device" not in i.split("::")[-1]]
    assert any(i.startswith("tests/pool/test_contract.py::") and "[cuda" in i for i in ids)
    assert any("[chaos-cuda" in i for i in ids)
    assert any(i.startswith("tests/codecs/test_single_page.py::") and "lz4-device" in i for i in ids)
    assert any(i.startswith("tests/kernels/test_device_storage.py::test_kernel_fault") for i in ids)
    assert any(i.startswith("tests/codecs/test_nvcomp.py::") for i in ids)
