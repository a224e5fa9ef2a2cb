"""Every error devpool raises, rooted at :class:`DevpoolError`.

Each class also derives from the builtin a caller would already catch, so code written
against plain Python keeps working::

    DevpoolError                      catch-all for devpool
    ├── InvalidHandleError (KeyError)     freed, stale, foreign or malformed handle
    ├── InvalidSizeError (ValueError)     zero, negative or oversized allocation
    ├── BadInputError (ValueError)        wrong length/dtype/shape/contiguity, read-only out=
    ├── PoolFullError (MemoryError)       capacity reached, or device out of memory
    ├── UnknownCodecError (ValueError)    get_codec() of an unregistered name
    ├── CorruptDataError (ValueError)     a compressed block does not decode to one page
    ├── BackendUnavailableError (RuntimeError)  no usable GPU / CUDA runtime / simulator
    ├── DeviceError (RuntimeError)        a CUDA call or kernel failed (chained original)
    ├── ClosedError (ValueError)          any operation on a closed Pool or Zswap, as
    │   └── PoolClosedError                   I/O on a closed file raises ValueError
    ├── EntryNotFoundError (KeyError)     Zswap.load of an offset it does not hold
    ├── WritebackError (OSError)          the backing swap file could not be written/read
    └── CaptureError (OSError)            another process's memory could not be read

Errors of numpy, numba, CuPy or the OS are translated where they cross into devpool
(storage boundary, backing file) and chained with ``raise ... from``.
"""

from __future__ import annotations

__all__ = [
    "BackendUnavailableError",
    "BadInputError",
    "CaptureError",
    "ClosedError",
    "CorruptDataError",
    "DevpoolError",
    "DeviceError",
    "EntryNotFoundError",
    "InvalidHandleError",
    "InvalidSizeError",
    "PoolClosedError",
    "PoolFullError",
    "RegionError",
    "UnknownCodecError",
    "WritebackError",
]


class DevpoolError(Exception):
    """Base of every devpool error: catch this to catch them all."""


class InvalidHandleError(DevpoolError, KeyError):
    """A handle that this pool did not hand out, or one already freed (stale)."""

    def __str__(self) -> str:  # KeyError quotes its message; we want plain text
        return str(self.args[0]) if self.args else ""


class InvalidSizeError(DevpoolError, ValueError):
    """An allocation size that is zero, negative, or larger than the pool's maximum."""


class BadInputError(DevpoolError, ValueError):
    """Data of the wrong length, dtype, shape or layout, or an unwritable ``out=``."""


class PoolFullError(DevpoolError, MemoryError):
    """The pool cannot hold the request: capacity reached or device memory exhausted."""


class UnknownCodecError(DevpoolError, ValueError):
    """``get_codec`` was asked for a name nobody registered."""


class CorruptDataError(DevpoolError, ValueError):
    """A compressed block failed to decode to exactly one page."""


class BackendUnavailableError(DevpoolError, RuntimeError):
    """The requested backend cannot run here; the message names what is missing."""


class DeviceError(DevpoolError, RuntimeError):
    """A CUDA call or kernel failed; the original error is chained as ``__cause__``."""


class ClosedError(DevpoolError, ValueError):
    """An operation on a closed object (a ``ValueError``, as I/O on a closed file is)."""


class PoolClosedError(ClosedError):
    """An operation on a closed :class:`~devpool.Pool`."""


class EntryNotFoundError(DevpoolError, KeyError):
    """``Zswap.load`` of a swap offset that is neither in the pool nor the backing file."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class WritebackError(DevpoolError, OSError):
    """The backing swap file could not be written or read.

    What a caller needs to act without probing is attached where it is known (None
    where not): ``offsets``, the swap offsets whose slots failed a read's check (their
    pages are lost); from ``Zswap.store_batch`` / ``store``, ``stored`` (the mask the
    call would have returned: True where zswap cached the page) and ``not_kept`` (the
    offsets whose pages are held nowhere: refused by zswap, and their write to the file
    failed; the caller still owns them).
    """

    offsets = None
    stored = None
    not_kept = None


class RegionError(DevpoolError, OSError):
    """The system refused what a swap region needs (a file descriptor, a process, memory);
    ``errno`` and the message name what and why."""


class CaptureError(DevpoolError, OSError):
    """A process's memory could not be read (gone, not permitted, or changed mid-read)."""
