"""liblz4 called from compiled code: the ``lz4`` codec's compiled speed.

``lz4.block`` is a Python binding over liblz4; one call per page costs more around the
library than in it: argument parsing, a new ``bytes`` per block, the GIL given up and
taken back. Measured here on held-out compressible pages: ``lz4.block.compress`` 5.8 us
a page where the same library function called from compiled code takes 3.7 us, and
``decompress`` (into a new bytes, then copied into a page) 2.7 us against 1.3 us
straight into the page.

So the codec calls liblz4 itself, from numba: the very library the binding wraps (its
extension module exports liblz4's functions; no second copy of lz4 is loaded, and no
version can differ), through the function addresses, passed in as integers so that the
compiled code holds no process-specific address and numba can cache it. A block is made
exactly as ``lz4.block.compress(page, store_size=False)`` makes it (a fresh stream,
``LZ4_resetStream`` then ``LZ4_compress_fast_continue``: python-lz4's own sequence;
``LZ4_compress_default`` makes other, equally valid, blocks) and a test pins the two
byte for byte; it is decoded with ``LZ4_decompress_safe``, bounded by the page, and
counts only when it made exactly one page.

``FUNCTIONS`` is None, and the codec keeps the binding's calls, where the extension
does not export them (another build of python-lz4) or numba's JIT is off.
"""

from __future__ import annotations

import ctypes

import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from .._compiled import JIT, Rules

__all__ = ["FUNCTIONS", "WHY_NOT", "BOUND", "compress_page", "decompress_page", "compress_rows",
           "decompress_rows"]

PAGE = 4096
#: LZ4_compressBound(PAGE): a block never needs more room than this
BOUND = PAGE + PAGE // 255 + 16
#: bytes set aside on the stack for the stream state (LZ4_stream_t; 16 416 in lz4 1.9 and
#: 1.10, checked against LZ4_sizeofState() below)
_STATE_BYTES = 1 << 15
#: the longest block liblz4 can be handed (its lengths are C ints: a longer one would be
#: truncated to its low 32 bits, and a valid block followed by 4 GiB would make a page)
_MAX_BLOCK = (1 << 31) - 1
_NAMES = ("LZ4_resetStream", "LZ4_compress_fast_continue", "LZ4_decompress_safe")
#: index of each function's address in FUNCTIONS
_RESET, _CONTINUE, _DECOMPRESS = range(3)


def _find() -> tuple[np.ndarray | None, str]:
    """(addresses as an int64 array, "") or (None, why not)."""
    if not JIT:
        return None, "numba's JIT is off"
    try:
        import lz4.block._block as ext
        lib = ctypes.CDLL(ext.__file__)
        addresses = [ctypes.cast(getattr(lib, name), ctypes.c_void_p).value for name in _NAMES]
        sizeof = lib.LZ4_sizeofState
        sizeof.restype = ctypes.c_int
        state = sizeof()
    except (ImportError, OSError, AttributeError) as exc:
        return None, f"python-lz4's extension does not export liblz4 ({exc})"
    if not 0 < state <= _STATE_BYTES:
        return None, f"LZ4_stream_t is {state} bytes, more than the {_STATE_BYTES} set aside"
    # read-only for good (an array's own flag could be set writable again): compiled
    # code calls whatever these name
    return np.frombuffer(np.array(addresses, np.int64).tobytes(), np.int64), ""


FUNCTIONS, WHY_NOT = _find()

_i8p = ir.IntType(8).as_pointer()
_i32 = ir.IntType(32)


def _function(builder, fns, index, restype, argtypes):
    """The function whose address is ``fns[index]`` (``fns`` an int64 address)."""
    table = builder.inttoptr(fns, ir.IntType(64).as_pointer())
    address = builder.load(builder.gep(table, [ir.Constant(_i32, index)]))
    return builder.inttoptr(address, ir.FunctionType(restype, argtypes).as_pointer())


def _ptr(builder, address):
    return builder.inttoptr(address, _i8p)


@intrinsic
def _lz4_compress(typingctx, fns, src, dst, n, cap, acceleration):
    """``LZ4_resetStream`` + ``LZ4_compress_fast_continue`` on a stream state in this
    function's frame (allocated once, at its entry: a loop reuses it). Every argument
    is an int64; ``fns`` is the address of FUNCTIONS' data."""
    sig = types.int32(types.int64, types.int64, types.int64, types.int64, types.int64, types.int64)

    def codegen(context, builder, sig, args):
        fns_, src_, dst_, n_, cap_, acc_ = args
        state = cgutils.alloca_once(builder, ir.ArrayType(ir.IntType(64), _STATE_BYTES // 8))
        state = builder.bitcast(state, _i8p)
        builder.call(_function(builder, fns_, _RESET, ir.VoidType(), [_i8p]), [state])
        compress = _function(builder, fns_, _CONTINUE, _i32, [_i8p, _i8p, _i8p, _i32, _i32, _i32])
        return builder.call(compress, [state, _ptr(builder, src_), _ptr(builder, dst_), builder.trunc(n_, _i32),
                                       builder.trunc(cap_, _i32), builder.trunc(acc_, _i32)])
    return sig, codegen


@intrinsic
def _lz4_decompress(typingctx, fns, src, dst, n, cap):
    """``LZ4_decompress_safe``: bytes written (at most ``cap``), negative on a bad block."""
    sig = types.int32(types.int64, types.int64, types.int64, types.int64, types.int64)

    def codegen(context, builder, sig, args):
        fns_, src_, dst_, n_, cap_ = args
        decompress = _function(builder, fns_, _DECOMPRESS, _i32, [_i8p, _i8p, _i32, _i32])
        return builder.call(decompress, [_ptr(builder, src_), _ptr(builder, dst_), builder.trunc(n_, _i32),
                                         builder.trunc(cap_, _i32)])
    return sig, codegen


_rules = Rules()
_page_t = types.Array(types.uint8, 1, "C", readonly=True)
_out_t = types.Array(types.uint8, 1, "C")
_fns_t = types.Array(types.int64, 1, "C", readonly=True)


@_rules.compiled
def _compress_at(fns, src, dst, cap, acceleration):
    """One page at ``src`` into at most ``cap`` bytes at ``dst``: its length, or -1."""
    n = _lz4_compress(fns, src, dst, PAGE, cap, acceleration)
    return n if n > 0 else -1


@_rules.compiled
def _decompress_at(fns, src, n, dst):
    """The block of ``n`` bytes at ``src`` into the page at ``dst``: True if it made one page."""
    return 0 < n <= _MAX_BLOCK and _lz4_decompress(fns, src, dst, n, PAGE) == PAGE


@_rules.compiled(signature=types.int64(_fns_t, _page_t, _out_t, types.int64))
def compress_page(fns, page, dst, acceleration):
    """One page (4096 bytes, C-contiguous) into ``dst`` (at least ``BOUND`` bytes): the
    block's length, or -1 (never, with that room)."""
    return _compress_at(fns.ctypes.data, page.ctypes.data, dst.ctypes.data, dst.shape[0], acceleration)


@_rules.compiled(signature=types.boolean(_fns_t, _page_t, _out_t))
def decompress_page(fns, block, out):
    """One block (all of ``block``) into ``out`` (4096 bytes): True if it made one page."""
    return _decompress_at(fns.ctypes.data, block.ctypes.data, block.shape[0], out.ctypes.data)


@_rules.compiled
def compress_rows(fns, pages, rows, acceleration, data, starts, lengths):
    """Pages ``pages[rows[i]]`` (C-contiguous rows) packed back to back into ``data``
    (``len(rows) * BOUND`` bytes); block ``i`` at ``starts[i]``, ``lengths[i]`` long
    (-1: refused, nothing written). Returns the bytes used."""
    at = 0
    for i in range(rows.shape[0]):
        n = _compress_at(fns.ctypes.data, pages[rows[i]].ctypes.data, data[at:].ctypes.data, BOUND,
                         acceleration)
        starts[i] = at
        lengths[i] = n
        if n > 0:
            at += n
    return at


@_rules.compiled
def decompress_rows(fns, data, lengths, starts, out, rows, ok):
    """Block ``i`` (``data[starts[i]:+lengths[i]]``) into ``out[rows[i]]``; ``ok[i]``
    True where it made exactly one page."""
    for i in range(lengths.shape[0]):
        s = starts[i]
        n = lengths[i]
        ok[i] = (n > 0 and s >= 0 and s + n <= data.shape[0]
                 and _decompress_at(fns.ctypes.data, data[s:].ctypes.data, n, out[rows[i]].ctypes.data))
