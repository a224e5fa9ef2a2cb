"""``lz4-njit``: the LZ4 block codec compiled for the CPU, every core, no GIL.

The algorithm lives in :mod:`._lz4_core`; this module supplies the CPU's helpers —
unaligned 32/64-bit loads and stores and count-trailing-zeros through three tiny LLVM
intrinsics — and the batch drivers: one ``prange`` worker per thread, each with its own
hash table, claiming runs of pages from a shared counter; output buffers allocated by
numpy once per batch (a fresh array per page inside numba costs about 1.5 us).

The twin with ``boundscheck=True`` (``build_checked()``) is what the fuzz tests run,
so an out-of-bounds access there is an IndexError rather than silent corruption.

The drivers' machine code is cached on disk where numba caches (``_VariantCache``), so
a new process loads it instead of compiling the codec again (seconds).
"""

from __future__ import annotations

import hashlib
import os
import threading

import numba
import numpy as np
from llvmlite import ir
from numba.core import cgutils, types
from numba.core.caching import FunctionCache
from numba.extending import intrinsic

from devpool.codecs.base import Codec
from devpool.codecs.registry import register_codec
from devpool._packed import PARALLEL_LOCK

from . import _lz4_core as core
from devpool._checks import PAGE_SIZE

__all__ = ["Lz4Njit", "compress_pages", "decompress_pages"]

PAGE = PAGE_SIZE          # the one page size (devpool._checks)


# --- the CPU's per-target helpers -------------------------------------------------------
# The fast twin's buffers are raw pointers (``_data``), not arrays: numba counts
# references to every array a helper receives, and those calls inside the codec's loops
# made LLVM spill the loop's live values to the stack (perf: the output position made a
# round trip through memory on every sequence). Pointers carry no reference count. The
# helpers below take either, so the bounds-checked twin still runs on arrays.
def _element(context, builder, buf_t, buf, idx):
    """Address of element ``idx`` of a pointer or an array."""
    if isinstance(buf_t, types.CPointer):
        return builder.gep(buf, [idx])
    return builder.gep(context.make_array(buf_t)(context, builder, buf).data, [idx])


def _pointer(context, builder, buf_t, buf, idx, width):
    return builder.bitcast(_element(context, builder, buf_t, buf, idx), ir.IntType(width).as_pointer())


@intrinsic
def _data(typingctx, arr):
    """An array's data pointer (valid while the array is alive: inside a driver)."""
    def codegen(context, builder, sig, args):
        return context.make_array(sig.args[0])(context, builder, args[0]).data
    return types.CPointer(arr.dtype)(arr), codegen


def _make_load(width, nbtype):
    @intrinsic
    def load(typingctx, arr, idx):
        def codegen(context, builder, sig, args):
            p = _pointer(context, builder, sig.args[0], args[0], args[1], width)
            return builder.load(p, align=1)
        return nbtype(arr, idx), codegen
    return load


_load32 = _make_load(32, types.uint32)
_load64 = _make_load(64, types.uint64)


def _make_store(width, nbtype):
    @intrinsic
    def store(typingctx, arr, idx, val):
        def codegen(context, builder, sig, args):
            p = _pointer(context, builder, sig.args[0], args[0], args[1], width)
            builder.store(args[2], p, align=1)
            return context.get_dummy_value()
        return types.void(arr, idx, nbtype), codegen
    return store


_store32 = _make_store(32, types.uint32)
_store64 = _make_store(64, types.uint64)


@intrinsic
def _copy16(typingctx, dst, d, src, s):
    """16 bytes ``src[s:s+16]`` -> ``dst[d:d+16]`` as one unaligned vector load and store
    (a later load inside those 16 bytes is forwarded from the store; one spanning two
    8-byte stores stalls)."""
    def codegen(context, builder, sig, args):
        vec = ir.VectorType(ir.IntType(8), 16)
        src_p = _pointer(context, builder, sig.args[2], args[2], args[3], 8)
        dst_p = _pointer(context, builder, sig.args[0], args[0], args[1], 8)
        v = builder.load(builder.bitcast(src_p, vec.as_pointer()), align=1)
        builder.store(v, builder.bitcast(dst_p, vec.as_pointer()), align=1)
        return context.get_dummy_value()
    return types.void(dst, d, src, s), codegen


@intrinsic
def _get(typingctx, arr, idx):
    """arr[idx] without numba's negative-index wraparound (the core never uses it)."""
    def codegen(context, builder, sig, args):
        return builder.load(_element(context, builder, sig.args[0], args[0], args[1]))
    return arr.dtype(arr, idx), codegen


@intrinsic
def _put(typingctx, arr, idx, val):
    """arr[idx] = val, cast to the element type, without wraparound."""
    def codegen(context, builder, sig, args):
        v = context.cast(builder, args[2], sig.args[2], sig.args[0].dtype)
        builder.store(v, _element(context, builder, sig.args[0], args[0], args[1]))
        return context.get_dummy_value()
    return types.void(arr, idx, val), codegen


@intrinsic
def _borrow(typingctx, arr):
    """The same array without its memory manager (meminfo = NULL): numba's reference
    counting on it becomes a null check instead of an atomic on a cache line that all
    worker threads share. Only for use while the original is alive (inside a driver)."""
    def codegen(context, builder, sig, args):
        src = context.make_array(sig.args[0])(context, builder, args[0])
        dst = context.make_array(sig.return_type)(context, builder)
        for field in ("nitems", "itemsize", "data", "shape", "strides"):
            setattr(dst, field, getattr(src, field))
        dst.meminfo = cgutils.get_null_value(dst.meminfo.type)
        dst.parent = cgutils.get_null_value(dst.parent.type)
        return dst._getvalue()
    return arr(arr), codegen


@intrinsic
def _cttz64(typingctx, val):
    def codegen(context, builder, sig, args):
        return builder.cttz(args[0], ir.Constant(ir.IntType(1), 0))
    return types.uint64(types.uint64), codegen


def _cpu_helpers(checked: bool):
    """Fast helpers (unaligned loads) or, for the checked twin, plain indexed ones."""
    jit = numba.njit(inline="always", boundscheck=checked)
    if checked:
        return core.plain_helpers(jit)

    @jit
    def read32(buf, i):
        return _load32(buf, i)

    @jit
    def read64(buf, i):
        return _load64(buf, i)

    @jit
    def count_match(buf, p, m, limit):
        start = p
        while p + 8 <= limit:
            diff = _load64(buf, p) ^ _load64(buf, m)
            if diff != 0:
                return p + np.int64(_cttz64(diff) >> np.uint64(3)) - start
            p += 8
            m += 8
        while p < limit and _get(buf, p) == _get(buf, m):
            p += 1
            m += 1
        return p - start

    def word_pair(load, store, width):
        @jit
        def pair(dst, d, src, s, n):
            # width <= n <= 2 * width bytes of ranges that do not overlap: two words
            # that may overlap each other (both loaded before either is stored), no
            # byte loop, no branch per byte
            a = load(src, s)
            b = load(src, s + n - width)
            store(dst, d, a)
            store(dst, d + n - width, b)
        return pair

    pair32 = word_pair(_load32, _store32, 4)
    pair64 = word_pair(_load64, _store64, 8)

    @jit
    def copy_short(dst, d, src, s, n):
        # n < 8 bytes of ranges that do not overlap
        if n >= 4:
            pair32(dst, d, src, s, n)
        else:
            k = 0
            while k < n:
                _put(dst, d + k, _get(src, s + k))
                k += 1

    @jit
    def copy_forward(dst, d, src, s, n):
        # 8-byte words front to back: safe for LZ matches with offset >= 8. The last
        # word ends at n exactly, overlapping the one before it (its bytes are final
        # already, so it rewrites them with the same values): no byte loop, whose
        # branch per byte mispredicts on the short matches LZ4 is made of
        if n < 8:
            copy_short(dst, d, src, s, n)       # offset >= 8 > n: the ranges are apart
            return
        k = 0
        while k + 8 <= n:
            _store64(dst, d + k, _load64(src, s + k))
            k += 8
        if k < n:
            _store64(dst, d + n - 8, _load64(src, s + n - 8))

    @jit
    def copy_disjoint(dst, d, src, s, n):
        # 16-byte vectors through raw pointers: a slice here would create two array
        # views, and each view's reference count is an atomic on a cache line that
        # every worker thread shares. The tail is one more vector ending at n (the
        # ranges are apart, so re-copying a few bytes is harmless), or for n < 16 a
        # word pair: no byte loop
        if n >= 16:
            k = 0
            while k + 16 <= n:
                _copy16(dst, d + k, src, s + k)
                k += 16
            if k < n:
                _copy16(dst, d + n - 16, src, s + n - 16)
        elif n >= 8:
            pair64(dst, d, src, s, n)
        else:
            copy_short(dst, d, src, s, n)
    return read32, read64, count_match, copy_forward, copy_disjoint, _get, _put


@numba.njit(inline="always")
def _flat(arr):
    """The checked twin's buffers: the array itself, flat and borrowed."""
    return _borrow(arr.reshape(-1))


@numba.njit(inline="always")
def _raw(arr):
    """The fast twin's buffers: the data pointer."""
    return _data(arr)


@intrinsic
def _claim(typingctx, counter, n):
    """Atomically ``counter[0] += n``; returns the value before (a relaxed fetch-add:
    it only hands out disjoint ranges, it orders nothing else)."""
    def codegen(context, builder, sig, args):
        p = _element(context, builder, sig.args[0], args[0], ir.Constant(ir.IntType(64), 0))
        return builder.atomic_rmw("add", p, args[1], "monotonic")
    return types.int64(counter, types.int64), codegen


#: pages a worker claims at a time: small enough that the last claims even out the
#: workers, large enough that the shared counter's cache line moves rarely
CLAIM = 16


@numba.njit(inline="always")
def _claimed(counter, n):
    """This worker's next run of pages ``[lo, hi)``; empty (``lo >= n``) when none is left."""
    lo = _claim(counter, CLAIM)
    return lo, min(lo + CLAIM, n)


def _drivers(compress_block, decompress_block, jit_parallel, data_of):
    # Workers claim runs of CLAIM pages from a shared counter until none are left. A
    # static split (numba's prange schedule, or pages dealt round-robin) makes every
    # batch wait for its slowest worker: a batch is often ordered (one process's heap,
    # then another's), and on a shared machine one vCPU is now and then held up. The
    # claims even both out: measured 1.07-1.13x a round-robin split, same process, paired
    # windows (2 vCPUs). Blocks are addressed by offsets into flat buffers, never by
    # per-page views, and no buffer is reference-counted per page: numba counts
    # references to an array on every view and helper call, an atomic on a cache line
    # that every worker shares, and that contention cost much of the second core.
    @jit_parallel
    def compress_pages(pages, rows, out, lengths, tables):
        """Page ``rows[i]`` compresses into ``out[i]``, ``lengths[i]`` bytes."""
        n = rows.shape[0]
        workers = tables.shape[0]
        size = pages.shape[1]
        bound = out.shape[1]
        counter = np.zeros(1, np.int64)
        for w in numba.prange(workers):
            src = data_of(pages)
            dst = data_of(out)
            table_w = _borrow(tables[w])
            table = data_of(table_w)
            lo, hi = _claimed(counter, n)
            while lo < n:
                for i in range(lo, hi):
                    table_w[:] = 0
                    lengths[i] = compress_block(src, rows[i] * size, size, dst, i * bound, table)
                lo, hi = _claimed(counter, n)

    @jit_parallel
    def decompress_pages(data, starts, lengths, out, rows, ok, workers):
        """Block ``i`` decodes into ``out[rows[i]]``; ``ok[i]`` when it made one page."""
        n = lengths.shape[0]
        size = out.shape[1]
        counter = np.zeros(1, np.int64)
        for w in numba.prange(workers):
            src = data_of(data)
            dst = data_of(out)
            lo, hi = _claimed(counter, n)
            while lo < n:
                for i in range(lo, hi):
                    got = decompress_block(src, starts[i], lengths[i], dst, rows[i] * size, size)
                    ok[i] = got == size
                lo, hi = _claimed(counter, n)

    return compress_pages, decompress_pages


# --- numba's on-disk cache for the drivers ----------------------------------------------
# numba keys a cached function by its bytecode and, for a closure, the pickled contents of
# its cells. The drivers are closures over the per-target block codecs, dispatchers whose
# pickle carries a fresh id in every process: the key never matched and every process
# compiled the codec again (2-6 s before the first store). Each driver's key here is its
# bytecode and what it was built from instead: the variant (serial or parallel, hash) and
# the source of this module and of the LZ4 core, so an edit to either compiles afresh.
def _source_digest() -> str:
    h = hashlib.sha256()
    for path in (core.__file__, os.path.abspath(__file__)):
        with open(path, "rb") as f:
            h.update(f.read())
    return h.hexdigest()


class _VariantCache(FunctionCache):
    """numba's per-function disk cache, keyed by a stable variant name (see above)."""

    def __init__(self, py_func, variant: str):
        self._variant = variant
        super().__init__(py_func)

    def _index_key(self, sig, codegen):
        code = hashlib.sha256(self._py_func.__code__.co_code).hexdigest()
        return sig, codegen.magic_tuple(), (code, self._variant)


def _cached(dispatchers, variant: str):
    """Give each dispatcher numba's disk cache under ``variant`` (where a cache can be written)."""
    digest = _source_digest()
    for d in dispatchers:
        try:
            d._cache = _VariantCache(d.py_func, f"{variant}:{digest}")
        except RuntimeError:               # no cache locator for this install: compile as before
            pass
    return dispatchers


def _build(checked: bool, hash5: bool):
    helpers = _cpu_helpers(checked)
    comp, decomp = core.build(numba.njit(boundscheck=checked, nogil=True, error_model="numpy"), *helpers,
                              hash5=hash5)
    _blocks[checked] = (comp, decomp)
    drivers = _drivers(comp, decomp, numba.njit(parallel=True, nogil=True, boundscheck=checked),
                       _flat if checked else _raw)
    return drivers if checked else _cached(drivers, f"parallel-hash5={hash5}")


_blocks: dict[bool, tuple] = {}


#: lz4.block.compress (via LZ4_compress_fast_continue) uses a byU32 table: 5-byte hash,
#: 4096 entries. Measured: with it our blocks equal lz4.block.compress's byte for byte.
HASH5 = True
compress_pages, decompress_pages = _build(checked=False, hash5=HASH5)
_checked = None
_serial = None
#: below this many pages a batch runs on the calling thread: waking numba's worker
#: threads costs more than a few pages take. Measured on 2 threads
#: (benchmarks/bench_serial_threshold.py): a parallel region is 4 - 13 % slower than the
#: calling thread for 8 - 16 pages, 6 - 14 % faster at 20, 31 - 42 % at 32
SERIAL_BELOW = 17


def _locked(fn):
    def call(*args):
        with PARALLEL_LOCK:
            return fn(*args)
    return call


_parallel = (_locked(compress_pages), _locked(decompress_pages))


def _workers(n: int) -> int:
    """Workers for a batch of ``n`` pages: one per thread, or one for a small batch."""
    return min(n, numba.get_num_threads()) if n >= SERIAL_BELOW else 1


def _drivers_for(n: int):
    """The parallel drivers (one region at a time), or for a small batch the serial ones
    (built on first use)."""
    global _serial
    if n >= SERIAL_BELOW:
        return _parallel
    if _serial is None:
        comp, decomp = _blocks[False]
        _serial = _cached(_drivers(comp, decomp, numba.njit(nogil=True), _raw), f"serial-hash5={HASH5}")
    return _serial


_single = None


def _single_page():
    """``(compress_one, decompress_one)``: the fast twin's block functions on raw
    pointers for one page, no driver, no worker thread (built on first use). Called on
    arrays directly, the block functions pay numba's reference counting on every helper
    call (measured 5.1 us to decode a page that liblz4 decodes in 1.2 us)."""
    global _single
    if _single is None:
        comp, decomp = _blocks[False]

        @numba.njit(nogil=True)
        def compress_one(page, out, table):
            table[:] = 0
            return comp(_raw(page), 0, page.shape[0], _raw(out), 0, _raw(table))

        @numba.njit(nogil=True)
        def decompress_one(block, out):
            return decomp(_raw(block), 0, block.shape[0], _raw(out), 0, out.shape[0])

        _single = (compress_one, decompress_one)
    return _single


def build_checked():
    """The same codec with ``boundscheck=True`` (slow; for fuzz tests)."""
    global _checked
    if _checked is None:
        _checked = _build(checked=True, hash5=HASH5)
    return _checked


def table_entries(hash5: bool = HASH5) -> int:
    return 1 << (core.HASH_U32_LOG if hash5 else core.HASH_U16_LOG)


def compress_bytes(data: bytes, checked: bool = False) -> bytes:
    """One raw LZ4 block of any length (tests, tools); same bytes as lz4.block."""
    if checked:
        build_checked()
    comp, _ = _blocks[checked]
    src = np.frombuffer(data, np.uint8)
    n = src.size
    dst = np.empty(n + n // 255 + 16, np.uint8)
    written = comp(src, 0, n, dst, 0, np.zeros(table_entries(), np.int32))
    return dst[:written].tobytes()


def decompress_bytes(block: bytes, size: int, checked: bool = False) -> bytes | None:
    """Decode one block into exactly ``size`` bytes; None if it is corrupt or differs."""
    if checked:
        build_checked()
    _, decomp = _blocks[checked]
    src = np.frombuffer(block, np.uint8)
    dst = np.empty(size, np.uint8)
    got = decomp(src, 0, src.size, dst, 0, size)
    return dst.tobytes() if got == size else None


class Lz4Njit(Codec):
    """LZ4 raw blocks compressed and decoded by numba on every core (byte-compatible with lz4)."""

    codec_id = "lz4-njit"

    def __init__(self):
        # per-thread scratch rows and hash tables, reused: fresh multi-MiB buffers per
        # batch cost a page fault per 4 KiB on first touch (measured ~20 % of a batch)
        self._scratch = threading.local()

    def _buffers(self, n: int, workers: int):
        sc = self._scratch
        if getattr(sc, "rows", None) is None or sc.rows.shape[0] < n:
            sc.rows = np.empty((max(n, 64), core.PAGE_BOUND), np.uint8)
        if getattr(sc, "tables", None) is None or sc.tables.shape[0] < workers:
            sc.tables = np.empty((workers, table_entries()), np.int32)
        return sc.rows[:n], sc.tables[:workers]

    def get_config(self) -> dict:
        return {"id": self.codec_id}

    @property
    def liblz4(self):
        # its blocks are liblz4's (lz4.block's) byte for byte (tests/codecs pin it), so a
        # frontend's compiled single page may make and read them with liblz4 itself
        from devpool.codecs import _liblz4
        return None if _liblz4.FUNCTIONS is None or type(self) is not Lz4Njit else (_liblz4.FUNCTIONS, 1)

    def compress_blocks_trusted(self, pages, rows):
        """Blocks left in this thread's scratch rows (no packing): ``(data, starts, lengths)``."""
        if rows is None:
            rows = np.arange(pages.shape[0], dtype=np.int64)
        n = rows.shape[0]
        lengths = np.empty(n, np.int64)
        if not n:
            return np.zeros(0, np.uint8), np.zeros(0, np.int64), lengths
        scratch, tables = self._buffers(n, _workers(n))
        _drivers_for(n)[0](pages, rows, scratch, lengths, tables)
        return scratch.reshape(-1), np.arange(n, dtype=np.int64) * scratch.shape[1], lengths

    def decompress_into_trusted(self, data, lengths, out, rows, starts):
        n = lengths.shape[0]
        ok = np.zeros(n, np.bool_)
        if n:
            _drivers_for(n)[1](data, starts, lengths, out, rows, ok, _workers(n))
        return ok

    # --- one page: the block functions themselves, no driver, no worker threads ---------
    def compress_page_trusted(self, page):
        sc = self._scratch
        if getattr(sc, "page_out", None) is None:
            sc.page_out = np.empty(core.PAGE_BOUND, np.uint8)
            sc.page_table = np.empty(table_entries(), np.int32)
        n = _single_page()[0](page, sc.page_out, sc.page_table)
        return sc.page_out, int(n)

    def decompress_page_trusted(self, block, out=None):
        out = np.empty(self.page_size, np.uint8) if out is None else out
        return out if (_single or _single_page())[1](block, out) == self.page_size else None


register_codec(Lz4Njit)
