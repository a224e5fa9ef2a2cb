"""devpool: a zswap-style compressed memory pool whose bytes may live in GPU memory.

Everything above storage reaches pool memory only by batched copy-in / copy-out on
opaque handles (one exception, as zsmalloc makes it for zswap: ``Pool.read_with`` lets a
decoder read one object where it lies in host RAM, under the pool's lock; device memory
lends a copy). Public surface::

    pool = devpool.open_pool(backend="auto" | "host" | "cuda" | "chaos", capacity_bytes=...)
    zs = devpool.Zswap(pool, compressor=..., backing=...)
    region = devpool.swap_region(nbytes, resident_bytes=...)   # real memory, faults served from a Zswap
"""

import importlib.metadata as _metadata

from ._numba_setup import ensure_cache_dir as _ensure_cache_dir, stamp_caches_with_package as _stamp_caches

_ensure_cache_dir()   # before any module compiles with cache=True
_stamp_caches()       # ... and keyed to the whole package's sources, not one file's

from .pool.backends import available_backends, open_pool
from ._errors import (
    BackendUnavailableError,
    BadInputError,
    ClosedError,
    CorruptDataError,
    DeviceError,
    DevpoolError,
    EntryNotFoundError,
    InvalidHandleError,
    InvalidSizeError,
    PoolClosedError,
    PoolFullError,
    RegionError,
    UnknownCodecError,
    WritebackError,
)
from .zswap.backing import BackingFile
from .cli.capture import CaptureError, capture_pid, capture_workloads
from .codecs import Codec, get_codec, register_codec
from .pool.pool import PAGE_SIZE, Pool
from .region.client import SwapRegion, swap_region
from .zswap.frontend import Zswap

try:
    __version__ = _metadata.version("devpool")
except _metadata.PackageNotFoundError:  # running from a source tree without install
    __version__ = "0+unknown"

__all__ = sorted([
    "BackendUnavailableError",
    "BackingFile",
    "BadInputError",
    "CaptureError",
    "ClosedError",
    "Codec",
    "CorruptDataError",
    "DeviceError",
    "DevpoolError",
    "EntryNotFoundError",
    "InvalidHandleError",
    "InvalidSizeError",
    "PAGE_SIZE",
    "Pool",
    "PoolClosedError",
    "PoolFullError",
    "RegionError",
    "SwapRegion",
    "UnknownCodecError",
    "WritebackError",
    "Zswap",
    "available_backends",
    "capture_pid",
    "capture_workloads",
    "get_codec",
    "open_pool",
    "register_codec",
    "swap_region",
])

# Tracebacks and reprs show the public path, not the private module.
for _name in __all__:
    _obj = globals()[_name]
    if hasattr(_obj, "__module__") and not isinstance(_obj, int):
        try:
            _obj.__module__ = "devpool"
        except (AttributeError, TypeError):
            pass
del _name, _obj
