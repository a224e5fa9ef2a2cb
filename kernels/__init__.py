"""Device side of devpool: GPU storage and CUDA kernels (imported as ``devpool.kernels``)."""

from __future__ import annotations

__all__ = ["probe"]


def probe() -> tuple[bool, str]:
    """(usable, reason) for the cuda backend."""
    return False, "the device storage is not part of this build yet"
