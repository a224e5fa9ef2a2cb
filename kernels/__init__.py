"""Device side of devpool (installed as ``devpool.kernels``): GPU storage, CUDA kernels,
and the LZ4 codec compiled for the CPU and the GPU.

Importing this package does not touch CUDA; :func:`probe` says whether the cuda
backend can run here and why not, and ``CudaStorage`` is imported on first use.
"""

from __future__ import annotations

__all__ = ["CudaStorage", "probe"]


def probe() -> tuple[bool, str]:
    """(usable, reason) for the cuda backend; never raises."""
    from ._device import probe as _probe
    return _probe()


def __getattr__(name):
    if name == "CudaStorage":
        from ._device import CudaStorage
        return CudaStorage
    raise AttributeError(name)
