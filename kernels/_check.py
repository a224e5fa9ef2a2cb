"""``devpool check-kernels``: every CUDA kernel compiled to machine code, no GPU needed.

Each kernel declared with ``@kernel(...)`` (:mod:`._cuda`) is compiled by numba-cuda to
PTX for each architecture, for each declared launch signature, and the PTX is
assembled into machine code by nvJitLink (the CUDA assembler, ptxas, inside a library;
the ``ptxas`` program is used where nvJitLink is missing). The assembler's resource
report gives registers, spill bytes and stack (local memory) per thread; the occupancy
is what that register count allows at the kernel's block size (shared memory: none).

A CUDA kernel found in ``devpool.kernels`` without declared signatures is an error, so
a kernel added later is checked too.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass

__all__ = ["Row", "check_kernels", "occupancy", "parse_archs"]

#: per architecture: (max resident warps per SM, max resident blocks per SM); 64 K
#: 32-bit registers per SM on all of them
ARCH_LIMITS = {75: (32, 16), 80: (64, 32), 86: (48, 16), 87: (48, 16), 89: (48, 24), 90: (64, 32),
               100: (64, 32), 103: (64, 32), 120: (48, 24)}
REGISTERS_PER_SM = 65536


@dataclass
class Row:
    kernel: str
    arch: str
    signature: str
    threads: int
    registers: int | None = None
    spill_stores: int | None = None
    spill_loads: int | None = None
    stack: int | None = None
    local: int | None = None
    occupancy: float | None = None
    error: str | None = None
    #: why a module was not checked (an optional package it wraps is absent): not a failure
    skipped: str | None = None


def parse_archs(text: str) -> list[int]:
    """``"sm_80,sm_90"`` -> ``[80, 90]``; a ValueError names a bad entry."""
    out = []
    for part in text.split(","):
        m = re.fullmatch(r"\s*(?:sm_|compute_)?(\d{2,3})\s*", part)
        if not m or int(m.group(1)) not in ARCH_LIMITS:
            raise ValueError(f"unknown architecture {part.strip()!r}; known: "
                             f"{', '.join(f'sm_{a}' for a in ARCH_LIMITS)}")
        out.append(int(m.group(1)))
    return out


def occupancy(registers: int, threads: int, arch: int) -> float:
    """Resident warps per SM over the maximum, as ``registers`` per thread allows
    (registers are allocated per warp in units of 256)."""
    max_warps, max_blocks = ARCH_LIMITS[arch]
    warps_per_block = -(-threads // 32)
    per_warp = -(-max(registers, 1) * 32 // 256) * 256
    blocks = min(max_blocks, max_warps // warps_per_block, (REGISTERS_PER_SM // per_warp) // warps_per_block)
    return blocks * warps_per_block / max_warps


def _declared():
    """Import every module of devpool.kernels; returns (declared kernels, undeclared names,
    modules skipped because an optional package they wrap is not installed)."""
    import devpool.kernels as pkg
    from ._cuda import KERNELS, cuda
    undeclared, skipped = [], []
    for info in pkgutil.iter_modules(pkg.__path__):
        try:
            mod = importlib.import_module(f"{pkg.__name__}.{info.name}")
        except ImportError as exc:      # an optional package (nvCOMP) is absent: no kernels of ours
            if (exc.name or "devpool").startswith("devpool"):
                raise                   # our own import broke: that is a failure, not an absence
            skipped.append((info.name, f"{exc}: an optional package, no kernels of ours"))
            continue
        for name, obj in vars(mod).items():
            is_kernel = (type(obj).__name__ == "CUDADispatcher" and not obj.targetoptions.get("device", False))
            if is_kernel and not hasattr(obj, "_devpool_kernel") and obj.py_func.__module__ == mod.__name__:
                undeclared.append(f"{mod.__name__}.{name}")
    del cuda
    return dict(KERNELS), undeclared, skipped


def _assemble(ptx: str, arch: int) -> str:
    """The assembler's verbose report for ``ptx`` built for ``sm_<arch>``."""
    try:
        from cuda.bindings import nvjitlink
    except ImportError:
        nvjitlink = None
    if nvjitlink is not None:
        h = nvjitlink.create(2, [f"-arch=sm_{arch}", "-verbose"])
        try:
            data = ptx.encode()
            try:
                nvjitlink.add_data(h, nvjitlink.InputType.PTX, data, len(data), "kernel")
                nvjitlink.complete(h)
            except Exception as exc:
                size = nvjitlink.get_error_log_size(h)
                log = bytearray(size)
                if size:
                    nvjitlink.get_error_log(h, log)
                raise RuntimeError(f"nvJitLink: {exc}: {log.decode(errors='replace').strip()}") from exc
            size = nvjitlink.get_info_log_size(h)
            log = bytearray(size)
            nvjitlink.get_info_log(h, log)
            return log.decode(errors="replace")
        finally:
            nvjitlink.destroy(h)
    ptxas = shutil.which("ptxas")
    if ptxas is None:
        raise RuntimeError("neither nvJitLink (cuda-bindings) nor ptxas is available: pip install 'devpool[test]'")
    with tempfile.TemporaryDirectory() as d:
        src = os.path.join(d, "k.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        out = subprocess.run([ptxas, f"-arch=sm_{arch}", "-v", src, "-o", os.path.join(d, "k.cubin")],
                             capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"ptxas: {out.stderr.strip()}")
    return out.stdout + out.stderr


def _parse(log: str, row: Row) -> None:
    def num(pattern):
        m = re.search(pattern, log)
        return int(m.group(1)) if m else None
    row.registers = num(r"[Uu]sed (\d+) registers")
    row.stack = num(r"(\d+) bytes stack frame")
    row.spill_stores = num(r"(\d+) bytes spill stores")
    row.spill_loads = num(r"(\d+) bytes spill loads")
    row.local = num(r"(\d+) bytes lmem")
    if row.local is None:
        row.local = row.stack
    if row.registers is None:
        raise RuntimeError(f"no register count in the assembler's report: {log.strip()[:300]}")


def _one_line(exc: BaseException) -> str:
    """A compiler error in one line: its informative lines (numba adds frames and hints)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    keep = [ln for ln in lines if not ln.startswith(("During:", "File ", "^", "Failed in"))] or lines
    return f"{type(exc).__name__}: {' | '.join(keep)[:300]}"


def check_kernels(archs: list[int]) -> list[Row]:
    """One row per kernel, signature and architecture; ``error`` set where it failed."""
    from ._cuda import cuda, simulated
    if simulated():
        raise RuntimeError("the CUDA simulator is on (NUMBA_ENABLE_CUDASIM=1): nothing can be compiled; unset it")
    kernels, undeclared, skipped = _declared()
    rows = [Row(name, "-", "-", 0, error="a CUDA kernel without declared launch signatures (@kernel(...))")
            for name in undeclared]
    rows += [Row(name, "-", "-", 0, skipped=why) for name, why in skipped]
    for name, k in sorted(kernels.items()):
        for sig in k.signatures:
            text = ", ".join(map(str, sig))
            for arch in archs:
                row = Row(name.replace("devpool.kernels.", ""), f"sm_{arch}", text, k.threads)
                try:
                    ptx, _ = cuda.compile_ptx(k.py_func, sig, cc=(arch // 10, arch % 10))
                    _parse(_assemble(ptx, arch), row)
                    row.occupancy = occupancy(row.registers, k.threads, arch)
                except Exception as exc:
                    row.error = _one_line(exc)
                rows.append(row)
    return rows


def format_rows(rows: list[Row]) -> str:
    lines = [f"{'kernel':<34}{'arch':<8}{'threads':>8}{'registers':>10}{'spill st/ld':>13}{'stack':>7}"
             f"{'local':>7}{'occupancy':>11}"]
    for r in rows:
        if r.error:
            lines.append(f"{r.kernel:<34}{r.arch:<8}  FAILED: {r.error}")
        elif r.skipped:
            lines.append(f"{r.kernel:<34}{r.arch:<8}  not checked: {r.skipped}")
        else:
            lines.append(f"{r.kernel:<34}{r.arch:<8}{r.threads:>8}{r.registers:>10}"
                         f"{f'{r.spill_stores}/{r.spill_loads}':>13}{r.stack:>7}{r.local:>7}{r.occupancy:>10.0%} ")
    return "\n".join(lines)
