"""Argument checks shared by every public entry point.

One rule for scalars across devpool: an integer argument accepts Python ``int`` and numpy
integers alike, and refuses ``bool`` (``True`` is not a size), floats (``1.7`` pages),
strings and anything else with :class:`~devpool.BadInputError` naming the argument, its
value and the range it must lie in. A real-valued argument (a percentage) accepts ints
and floats, refuses bools, NaN and infinities. Checks run before anything changes.
"""

from __future__ import annotations

import itertools
import math
import numbers
from collections.abc import Sequence

import numpy as np

from ._errors import BadInputError

__all__ = ["PAGE_SIZE", "as_int_array", "check_flag", "check_int", "check_real", "first_range_outside",
           "plain_view", "U8"]

#: the page size: a swap page, a zswap entry, a codec's unit (Linux x86-64's)
PAGE_SIZE = 4096

#: numpy's uint8 dtype object: the single verbs test ``dtype is U8`` (~35 ns; ``== np.uint8``
#: converts its argument on every call, ~100 ns); uint8 spelled otherwise takes the checked path
U8 = np.dtype(np.uint8)


def _range_text(lo, hi) -> str:
    if lo is not None and hi is not None:
        return f" in {lo}..{hi}"
    if lo is not None:
        return f" >= {lo}"
    if hi is not None:
        return f" <= {hi}"
    return ""


def check_int(value, name: str, *, lo: int | None = None, hi: int | None = None,
              error: type[Exception] = BadInputError) -> int:
    """``value`` as a Python int, or ``error`` (BadInputError) naming ``name``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise error(f"{name} must be an integer{_range_text(lo, hi)}, got {value!r} "
                    f"({type(value).__name__})")
    v = int(value)
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise error(f"{name} must be an integer{_range_text(lo, hi)}, got {v}")
    return v


def plain_view(array: np.ndarray) -> np.ndarray:
    """An ndarray as a plain ``np.ndarray`` over its own bytes: a subclass keeps its own
    semantics otherwise (``np.matrix`` stays 2-D through ``reshape(-1)``, a ``shape``
    property may lie), and the compiled single-object calls take arrays unchecked."""
    return array if type(array) is np.ndarray else array.view(np.ndarray)


def check_flag(value, name: str) -> bool:
    """``value`` as a bool: True, False or a numpy bool; anything else (1, "False", an
    array) is refused. Hot paths test ``is True`` / ``is False`` inline and call this
    for the rest."""
    if value is True or value is False or type(value) is np.bool_:
        return bool(value)
    raise BadInputError(f"{name} must be a bool, got {value!r}")


def check_real(value, name: str, *, lo: float | None = None, hi: float | None = None,
               lo_open: bool = False) -> float:
    """``value`` as a finite float within ``[lo, hi]`` (``(lo, hi]`` when ``lo_open``)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise BadInputError(f"{name} must be a number, got {value!r} ({type(value).__name__})")
    try:
        v = float(value)
    except OverflowError:            # an int beyond any float (10**400) is out of range too
        v = math.inf if value > 0 else -math.inf
    low_bad = lo is not None and (v <= lo if lo_open else v < lo)
    if not math.isfinite(v) or low_bad or (hi is not None and v > hi):
        left = "(" if lo_open else "["
        raise BadInputError(f"{name} must be in {left}{lo}, {hi}], got {value!r}")
    return v


def _head(values) -> str:
    """The first few items of a caller's sequence, for a message (not a megabyte of it)."""
    return repr(list(itertools.islice(values, 8))) + (" ..." if len(values) > 8 else "")   # a deque: no slices


def as_int_array(values, name: str, *, error: type[Exception] = BadInputError) -> np.ndarray:
    """A 1-D sequence of integers as int64 (numpy integers and Python ints alike).
    A container of more dimensions is BadInputError; a lone value, or values that are not integers (floats,
    bools, objects) or lie beyond int64 (a uint64 above 2**63 - 1 would wrap to a
    negative int64) are ``error``, naming ``name``."""
    try:
        arr = np.asarray(values)
    except (TypeError, ValueError, OverflowError) as exc:
        raise BadInputError(f"{name} must be a 1-D sequence of integers: {exc}") from exc
    if arr.ndim > 1:                  # the container is wrong (BadInputError), not a value
        raise BadInputError(f"{name} must be a 1-D sequence, got shape {arr.shape}")
    if arr.ndim == 0:                 # one value where a sequence belongs: that value is bad
        raise error(f"{name} must be a 1-D sequence of integers, got {values!r}")
    if arr.size == 0:
        return np.zeros(0, np.int64)
    if arr.dtype.kind not in "iu":
        raise error(f"{name} must be integers, got dtype {arr.dtype}")
    # numpy turns [16, True] into int64 [16, 1]: a bool among Python ints is a mistake
    # (a flag passed where a size or handle belongs), not the number 1. Sets of types are
    # built in C, so this costs a fraction of the asarray above, and only for sequences
    # (a deque too); a 0-d bool array among them is read as 1 as well
    if type(values) in (list, tuple) or (not isinstance(values, np.ndarray) and isinstance(values, Sequence)):
        types = set(map(type, values))
        if not types.isdisjoint((bool, np.bool_)) or (
                np.ndarray in types and any(type(v) is np.ndarray and v.dtype == np.bool_ for v in values)):
            raise error(f"{name} must be integers, got a bool in {_head(values)}")
    if arr.dtype == np.uint64 and arr.max() > np.iinfo(np.int64).max:
        raise error(f"{name} must fit in int64, got {int(arr.max())}")
    return arr.astype(np.int64, copy=False)


def first_range_outside(starts: np.ndarray, lengths: np.ndarray, size: int) -> int:
    """Index of the first range ``[starts[i], starts[i] + lengths[i])`` that does not lie
    inside ``[0, size)``, or -1. Overflow-proof: caller integers near 2**63 would wrap a
    sum ``starts + lengths`` in int64 and pass, so each start is compared with the room
    left after its length instead (both sides stay within int64)."""
    bad = (lengths < 0) | (lengths > size) | (starts < 0) | (starts > size - lengths)
    idx = np.flatnonzero(bad)
    return int(idx[0]) if idx.size else -1
