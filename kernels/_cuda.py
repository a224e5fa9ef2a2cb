"""numba-cuda for every kernel module: imported once, made to work with the numpy it
meets, and every CUDA kernel declared with the argument types it is launched with.

numpy 2.5 removed ``np.row_stack``; numba-cuda 0.30 registers an overload for it when
its array module loads (the first compilation), so with numpy 2.5 no kernel compiles
(``AttributeError: module 'numpy' has no attribute 'row_stack'``). :func:`_numpy_shim`
lends numba-cuda the alias (``np.vstack``, what it always was) for that one import and
takes it away again, so the user's numpy is left as it was.

``@kernel(signature, ...)`` is ``cuda.jit`` plus the launch types, declared once beside
the kernel: ``devpool check-kernels`` compiles each kernel for exactly these types, and
under the simulator every :func:`launch` checks its arguments against them (a launch
with types nobody compiled for fails the test suite, so the list cannot drift). Device
helpers are compiled ``inline="always"``: a non-inlined helper makes numba-cuda ask the
driver for the current device's compute capability, so a kernel that calls one cannot
be compiled where no GPU is (the kernel check, CI).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

__all__ = ["KERNELS", "Kernel", "check_launch", "cuda", "device_function", "kernel", "launch", "simulated"]


def simulated() -> bool:
    """True when numba's CUDA simulator is on (kernels run as Python on the CPU)."""
    return os.environ.get("NUMBA_ENABLE_CUDASIM", "0") == "1"


def _numpy_shim() -> None:
    """Let numba-cuda's array module load under numpy >= 2.5 (see the module doc)."""
    if simulated() or hasattr(np, "row_stack"):
        return
    np.row_stack = np.vstack
    try:
        import numba.cuda.np.arrayobj  # noqa: F401  (registers its overloads, once)
    except ImportError:
        pass
    finally:
        del np.row_stack


from numba import cuda  # noqa: E402

_numpy_shim()


def device_function(fn):
    """A device helper, always inlined into its caller (compilable without a driver)."""
    return cuda.jit(device=True, inline="always")(fn)


@dataclass
class Kernel:
    """A CUDA kernel and the argument types it is launched with."""

    name: str
    dispatcher: object
    py_func: object
    signatures: list = field(default_factory=list)
    #: threads per block it is launched with on a GPU (for the occupancy report)
    threads: int = 256


#: every kernel in devpool, by qualified name
KERNELS: dict[str, Kernel] = {}


# --- numba-cuda's on-disk cache ---------------------------------------------------------
# Every process that launches a kernel would compile it again (copy 0.4 s, compress 4.5 s,
# decompress 1.9 s to PTX here), and a GPU session starts many: each region handler,
# each benchmark. numba-cuda's ``cache=True`` keeps the compiled kernel on disk, keyed by
# the signature, the device's compute capability and CUDA's version, and invalidated when
# the kernel's own file changes. Our kernels inline helpers from other files (the LZ4
# core, the copy loop), which that stamp does not see: the key here also carries a digest
# of every source file of this package, so any edit compiles afresh.
# (The same rule as devpool's CPU functions' caches: devpool._numba_setup.package_stamp.)
def _sources_digest() -> str:
    from devpool._numba_setup import package_stamp
    return package_stamp(os.path.dirname(os.path.abspath(__file__)))


def _cached(disp):
    """Give a kernel's dispatcher numba-cuda's disk cache, keyed on our sources too."""
    if simulated():                                 # the simulator compiles nothing
        return disp
    from numba.cuda.dispatcher import CUDACache

    class _SourcesCache(CUDACache):
        def _index_key(self, sig, codegen):
            return super()._index_key(sig, codegen) + (("devpool.kernels sources", _sources_digest()),)
    try:
        disp._cache = _SourcesCache(disp.py_func)
    except RuntimeError:                            # no writable cache location: compile per process
        pass
    return disp


def kernel(*signatures, threads: int = 256):
    """``cuda.jit`` for a kernel launched with one of ``signatures`` (tuples of numba
    types), ``threads`` per block on a GPU. Compiles lazily, on the first launch, or
    loads the machine code an earlier process compiled (the disk cache above)."""
    def wrap(fn):
        disp = _cached(cuda.jit(fn))
        name = f"{fn.__module__}.{fn.__qualname__}"
        KERNELS[name] = Kernel(name, disp, fn, list(signatures), threads)
        disp._devpool_kernel = name
        return disp
    return wrap


def _address(arg) -> int | None:
    ary = getattr(arg, "_ary", arg)              # the simulator's device array wraps numpy
    if isinstance(ary, np.ndarray):
        return ary.ctypes.data
    iface = getattr(arg, "__cuda_array_interface__", None)
    return iface["data"][0] if iface else None


def check_launch(disp, args) -> None:
    """Refuse a launch whose argument types match no declared signature, or whose
    typed array argument is not aligned to its element size (a GPU faults on that)."""
    name = getattr(disp, "_devpool_kernel", None)
    k = KERNELS.get(name) if name else None
    if k is None:
        raise TypeError(f"kernel {getattr(disp, '__name__', disp)!r} was not declared with @kernel(...)")
    from numba import typeof
    got = tuple(typeof(a) for a in args)
    if got not in [tuple(s) for s in k.signatures]:
        raise TypeError(f"{k.name} launched with ({', '.join(map(str, got))}), which is none of its declared "
                        f"signatures: {[', '.join(map(str, s)) for s in k.signatures]}")
    for a in args:
        dtype = getattr(a, "dtype", None)
        addr = _address(a)
        if dtype is not None and addr is not None and addr % np.dtype(dtype).itemsize:
            raise TypeError(f"{k.name}: a {np.dtype(dtype)} array argument starts at a misaligned "
                            f"address ({addr:#x}); a GPU refuses it (CUDA_ERROR_MISALIGNED_ADDRESS)")


def launch(disp, grid: int, block: int, stream, *args) -> None:
    """``disp[grid, block, stream](*args)``; under the simulator the arguments are
    checked against the kernel's declared signatures first."""
    if simulated():
        check_launch(disp, args)
    if stream is None:
        disp[grid, block](*args)
    else:
        disp[grid, block, stream](*args)
