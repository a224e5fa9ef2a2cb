"""``devpool check-kernels``: every CUDA kernel compiled to machine code with the real
CUDA compiler (NVVM, then the assembler through nvJitLink), no GPU needed.

The numba CUDA simulator never meets the compiler, so this is what catches a kernel
that would not compile on the first GPU. CI installs what it needs (the ``test`` extra:
``numba-cuda[cu13]``); elsewhere the tests skip when NVVM is missing, never in CI.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from devpool.kernels._check import occupancy, parse_archs
from tests.absent import without


def _nvvm_missing() -> str | None:
    try:
        import cuda.pathfinder
        cuda.pathfinder.load_nvidia_dynamic_lib("nvvm")
    except Exception as exc:
        return f"NVVM not installed ({type(exc).__name__}); pip install 'devpool[test]'"
    return None


needs_nvvm = pytest.mark.skipif(bool(_nvvm_missing()) and not os.environ.get("CI"),
                                reason=_nvvm_missing() or "")


def _run(code: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}   # compile for real
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)


def _rows(stdout: str) -> dict[tuple[str, str], list[str]]:
    return {(f[0], f[1]): f[2:] for f in (line.split() for line in stdout.splitlines()[1:]) if len(f) >= 3}


@needs_nvvm
def test_every_kernel_compiles_for_each_architecture_without_nvcomp():
    """As on the GPU image, where nvCOMP is absent but the ``nvidia`` namespace is there
    (``from nvidia import nvcomp`` raised a plain ImportError, and the command failed):
    the nvCOMP module is named as not checked, every kernel compiles, the exit is 0."""
    out = _run(without("nvidia.nvcomp")
               + "import sys; from devpool.cli import main; sys.exit(main(['check-kernels', '--arch', 'sm_80,sm_90']))")
    assert out.returncode == 0, out.stdout + out.stderr
    rows = _rows(out.stdout)
    assert rows[("nvcomp", "-")][:2] == ["not", "checked:"], out.stdout
    for kernel in ("_copy_kernels.copy_kernel", "lz4_device.compress_kernel", "lz4_device.decompress_kernel"):
        for arch in ("sm_80", "sm_90"):
            threads, registers, spills, stack, local, occ = rows[(kernel, arch)]
            assert 0 < int(registers) <= 255 and occ.endswith("%")
            assert spills == "0/0" and local == "0", (kernel, arch, spills, local)      # nothing spilled


@needs_nvvm
def test_numpy_without_row_stack_a_broken_kernel_and_an_undeclared_one():
    """numpy 2.5 removed ``np.row_stack`` (numba-cuda 0.30 needs it to compile): with it
    removed here, the real kernels still compile; a kernel that does not compile and a
    kernel without declared signatures make the command fail, each named."""
    code = """
import sys
import numpy as np
if hasattr(np, 'row_stack'):
    del np.row_stack                      # what numpy 2.5 does
from numba import types
from devpool.kernels._cuda import cuda, kernel
import devpool.kernels.lz4_device as mod

@kernel((types.uint8[::1],), threads=64)
def broken(a):
    a[0] = no_such_name                   # noqa: F821
def stray(a):
    a[0] = 1
stray.__module__ = mod.__name__
mod.stray = cuda.jit(stray)
from devpool.cli import main
rc = main(['check-kernels', '--arch', 'sm_90'])
assert not hasattr(np, 'row_stack'), 'the shim must leave numpy as it was'
sys.exit(rc)
"""
    out = _run(without("nvidia.nvcomp") + code)       # as on the GPU image: a module not checked is no build
    assert out.returncode == 1, out.stdout + out.stderr
    rows = {line.split()[0]: line for line in out.stdout.splitlines()[1:]}
    assert "FAILED" in rows["__main__.broken"] and "no_such_name" in rows["__main__.broken"]
    assert "FAILED" in rows["devpool.kernels.lz4_device.stray"] and "declared" in rows["devpool.kernels.lz4_device.stray"]
    for kernel in ("_copy_kernels.copy_kernel", "lz4_device.compress_kernel", "lz4_device.decompress_kernel"):
        assert "FAILED" not in rows[kernel], rows[kernel]
    assert "3 of 5 kernel builds failed" not in out.stderr and "2 of 5 kernel builds failed" in out.stderr


def test_occupancy_and_architectures():
    assert parse_archs("sm_80, sm_90,100") == [80, 90, 100]
    with pytest.raises(ValueError, match="sm_33"):
        parse_archs("sm_33")
    assert occupancy(32, 256, 90) == 1.0             # 8 blocks x 8 warps, 64 K registers
    assert occupancy(64, 256, 90) == 0.5             # registers allow 4 blocks
    assert occupancy(64, 32, 90) == 0.5              # 32 one-warp blocks at most
    assert occupancy(255, 256, 80) == 0.125
