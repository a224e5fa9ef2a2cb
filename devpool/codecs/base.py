"""Page codecs behind a small registry (after numcodecs' ``Codec`` / ``get_codec``).

Two doors, one codec
--------------------
Every verb comes twice. The **public verbs** (``compress_batch``, ``compress_blocks``,
``decompress_into``, ``decompress_batch``, ``compress_page``, ``decompress_page``,
``compress_to_device``) take anything a caller hands in, check it with this module's
checks and raise :class:`~devpool.BadInputError` before anything is written. The
**trusted verbs** (the same names ending in ``_trusted``) take arguments a caller has
already checked with those same checks, and check nothing again: the frontend checks
pages once at its own edge and calls these, so a batch is checked once, not once by the
frontend and again by the codec, and a single page pays no second look. Handing a
trusted verb anything else is a bug in the caller (a compiled codec may read out of
bounds); untrusted callers use the public verbs. A codec implements the trusted verbs;
the base class builds the public ones on top (check, then call).

The trusted verbs a codec implements
------------------------------------
``compress_blocks_trusted(pages, rows)``
    ``pages`` is a checked (N, page_size) C-contiguous uint8 array (:func:`check_pages`),
    ``rows`` None (every page) or int64 indices into it (:func:`check_rows`). Returns
    ``(data, starts, lengths)``: block ``i`` is at ``data[starts[i]:starts[i]+lengths[i]]``,
    so a codec may hand out its own output rows without packing them (the frontend
    copies them into the pool at once); ``data`` may be the codec's scratch, valid until
    the codec's next call from the same thread. A block that failed to compress has
    length ``-1`` (the frontend counts it as ``reject_compress_fail``); a block may be
    longer than a page (incompressible data), the frontend decides what to do with it.
    A codec whose ``data`` is always fresh and packed back to back sets
    ``packed_blocks = True``, and ``compress_batch`` hands it out uncopied.
``decompress_into_trusted(data, lengths, out, rows, starts)``
    the arguments as :func:`check_decode_args` returns them (``rows`` and ``starts``
    int64 arrays, never None): decode block ``i`` (at ``data[starts[i]:]``) into
    ``out[rows[i]]`` and return a boolean array, True where block ``i`` decoded to
    *exactly* one page. Never raises for corrupt data.
``compress_page_trusted(page)``
    one checked page (:func:`check_page_args`: a C-contiguous (page_size,) uint8 array);
    returns ``(buffer, length)``, the block being ``buffer[:length]`` (length -1:
    compression failed). ``buffer`` may be the codec's scratch, valid until its next
    call from the same thread, or the page itself (``raw``). A swap-in fault is one
    page, and a batch of one would pay a batch's set-up: fast codecs override the
    default, which goes through the batch verb.
``decompress_page_trusted(block, out=None)``
    decode one block (a 1-D C-contiguous uint8 array) into ``out`` (a checked writable
    (page_size,) uint8 array) and return it, or, when ``out`` is None, return a new
    page (a codec whose library returns a fresh buffer hands it over uncopied); None
    when the block did not make exactly one page. Never raises for corrupt data.

The public verbs built on them
------------------------------
``compress_batch(pages, rows=None)`` -> ``(data, lengths)``, blocks packed back to back;
``compress_blocks(pages, rows=None)`` -> ``(data, starts, lengths)``;
``decompress_into(data, lengths, out, rows=None, starts=None)`` -> ok mask (``starts``
None: the blocks are packed); ``decompress_batch(data, lengths)`` -> a fresh (N,
page_size) array, or :class:`~devpool.CorruptDataError` naming the blocks that failed;
``compress_page(page)`` -> ``(buffer, length)``; ``decompress_page(block, out)`` -> True
when it made one page (``block`` any bytes-like object or uint8 array).

A codec that computes on a device may also keep its blocks there (``device_resident``):
``compress_to_device_trusted(pages, rows)`` (public: ``compress_to_device``) returns
``(data, starts, lengths)`` with ``data`` a uint8 buffer in device memory (``starts`` /
``lengths`` on the host); a pool in device memory copies the blocks in device to
device. ``decompress_into`` then also accepts ``data`` in device memory (packed, as
``Pool.read_batch(device=True)`` returns it).

Configuration is the public attributes (JSON-friendly) plus ``codec_id``;
``get_config()`` / ``get_codec(config)`` round-trip. Codecs sharing an id family are
byte-compatible: every ``lz4*`` codec reads and writes raw LZ4 blocks
(``lz4.block`` with ``store_size=False``), so any of them decodes the others' output.
"""

from __future__ import annotations

import numpy as np

from .._checks import PAGE_SIZE, as_int_array, check_int, first_range_outside, plain_view
from .._errors import BadInputError, CorruptDataError
from .._packed import gather, packed_starts

__all__ = ["Codec", "check_pages", "check_rows", "check_decode_args", "check_page_args", "on_device", "pack_blocks"]

PAGE = PAGE_SIZE
_ROW0 = np.zeros(1, np.int64)     # row 0 / start 0 of a one-block call
_ROW0.flags.writeable = False


def check_pages(pages, page_size: int = PAGE) -> np.ndarray:
    """(N, page_size) C-contiguous uint8, or BadInputError naming what is wrong."""
    if not isinstance(pages, np.ndarray):
        raise BadInputError(f"pages must be a numpy uint8 array, got {type(pages).__name__}")
    pages = plain_view(pages)                # np.matrix and friends: plain array semantics
    if pages.dtype != np.uint8:
        raise BadInputError(f"pages must have dtype uint8, got {pages.dtype}")
    if pages.ndim == 1 and pages.shape[0] == page_size:
        pages = pages.reshape(1, page_size)
    if pages.ndim != 2 or pages.shape[1] != page_size:
        raise BadInputError(f"pages must have shape (N, {page_size}), got {pages.shape}")
    if not pages.flags.c_contiguous:
        raise BadInputError("pages must be C-contiguous")
    return pages


def check_rows(rows, n_pages: int) -> np.ndarray:
    """Row indices into a batch of ``n_pages`` (all of them when None), or BadInputError."""
    if rows is None:
        return np.arange(n_pages, dtype=np.int64)
    rows = as_int_array(rows, "rows")
    if rows.size and (rows.min() < 0 or rows.max() >= n_pages):
        raise BadInputError(f"rows must lie in 0..{n_pages - 1}")
    return rows


def as_block_data(data) -> np.ndarray:
    """Compressed data as a flat C-contiguous uint8 array: a uint8 array or a bytes-like
    object; anything else (a list, a str, float or int16 arrays, which a cast would
    silently turn into other bytes) is BadInputError."""
    if isinstance(data, np.ndarray):
        if data.dtype != np.uint8:
            raise BadInputError(f"data must have dtype uint8, got {data.dtype}")
        return np.ascontiguousarray(data).reshape(-1)
    if isinstance(data, (bytes, bytearray, memoryview)):
        try:
            return np.frombuffer(data, np.uint8)
        except (BufferError, ValueError) as exc:     # a strided memoryview (or a ragged one)
            raise BadInputError(f"data must be a contiguous bytes-like object: {exc}") from exc
    raise BadInputError(f"data must be a uint8 array or bytes-like, got {type(data).__name__}")


def as_lengths(lengths) -> np.ndarray:
    """Block lengths as a 1-D int64 array; floats (even whole ones), NaN, bools are refused."""
    return as_int_array(lengths, "lengths")


def check_decode_args(data, lengths, out, rows, starts, page_size: int = PAGE, device_ok: bool = False):
    """``decompress_into``'s arguments, normalised (``data`` as flat contiguous uint8
    unless ``device_ok`` and it is a device buffer), or BadInputError before anything is
    written: a compiled decoder trusts them (a block outside ``data`` or a row outside
    ``out`` would be an out-of-bounds access, not corrupt data). Returns
    ``(data, lengths, rows, starts)``."""
    if not (device_ok and on_device(data)):
        data = as_block_data(data)
    lengths = as_lengths(lengths)
    n = lengths.shape[0]
    if (not isinstance(out, np.ndarray) or out.dtype != np.uint8 or out.ndim != 2
            or out.shape[1] != page_size or not out.flags.c_contiguous or not out.flags.writeable):
        raise BadInputError(f"out must be a writable C-contiguous (N, {page_size}) uint8 array")
    rows = check_rows(rows, out.shape[0])
    if rows.shape[0] != n:
        raise BadInputError(f"{n} blocks but {rows.shape[0]} rows")
    if starts is None:
        starts = packed_starts(np.maximum(lengths, 0))
    else:
        starts = as_int_array(starts, "starts")
        if starts.shape != (n,):
            raise BadInputError(f"starts must be {n} integers, got shape {starts.shape}")
    size = int(data.shape[0]) if len(data.shape) == 1 else -1
    if size < 0:
        raise BadInputError(f"data must be 1-D, got shape {data.shape}")
    bad = first_range_outside(starts, lengths, size) if n else -1
    if bad >= 0:
        raise BadInputError(f"block {bad} (start {int(starts[bad])}, {int(lengths[bad])} bytes) "
                            f"lies outside the {size}-byte data")
    return data, lengths, rows, starts


def check_page_args(page, out=None, page_size: int = PAGE) -> None:
    """``compress_page`` / ``decompress_page`` arguments, or BadInputError (cheap: the
    single-page paths call it on every page)."""
    for what, arr in (("page", page), ("out", out)):
        if arr is None:
            continue
        if (type(arr) is not np.ndarray or arr.dtype != np.uint8 or arr.shape != (page_size,)
                or not arr.flags.c_contiguous):
            raise BadInputError(f"{what} must be a C-contiguous ({page_size},) uint8 array")
    if out is not None and not out.flags.writeable:
        raise BadInputError("out is read-only")


def on_device(data) -> bool:
    """True for a buffer in device memory (anything array-like that numpy does not hold)."""
    return not isinstance(data, (np.ndarray, bytes, bytearray, memoryview)) and hasattr(data, "shape")


def pack_blocks(data: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Blocks ``data[starts[i]:+lengths[i]]`` back to back in one new array."""
    out = np.empty(int(lengths.sum()), np.uint8)
    gather(data, starts, lengths, out, packed_starts(lengths))
    return out


class Codec:
    """Base class: implement ``compress_blocks_trusted`` and ``decompress_into_trusted``
    (and, for speed, the two ``*_page_trusted`` verbs); the public verbs check and call them."""

    codec_id: str = "abstract"
    page_size: int = PAGE
    #: True when ``compress_to_device`` exists and ``decompress_into`` reads device buffers
    device_resident: bool = False
    #: True when ``compress_blocks_trusted`` returns fresh blocks packed back to back
    packed_blocks: bool = False
    #: ``(functions, acceleration)`` when this codec's blocks are exactly what liblz4,
    #: called from compiled code, makes and reads (devpool.codecs._liblz4): a frontend
    #: may then compress and decode a page inside its own compiled call; else None
    liblz4 = None

    # --- the trusted verbs: what a codec implements (arguments checked by the caller) ---
    def compress_blocks_trusted(self, pages: np.ndarray, rows: np.ndarray | None):
        raise NotImplementedError(f"{type(self).__name__} must implement compress_blocks_trusted()")

    def decompress_into_trusted(self, data, lengths: np.ndarray, out: np.ndarray, rows: np.ndarray,
                                starts: np.ndarray) -> np.ndarray:
        raise NotImplementedError(f"{type(self).__name__} must implement decompress_into_trusted()")

    def compress_to_device_trusted(self, pages: np.ndarray, rows: np.ndarray | None):
        raise NotImplementedError(f"{type(self).__name__} does not keep blocks in device memory")

    def compress_page_trusted(self, page: np.ndarray) -> tuple[np.ndarray, int]:
        """One checked page -> ``(buffer, length)``, the block being ``buffer[:length]``."""
        data, starts, lengths = self.compress_blocks_trusted(page.reshape(1, -1), None)
        n, s = int(lengths[0]), int(starts[0])
        return data[s:s + max(n, 0)], n

    def decompress_page_trusted(self, block: np.ndarray, out: np.ndarray | None = None) -> np.ndarray | None:
        """One block (1-D contiguous uint8) -> the page (``out`` or a new one), or None."""
        out = np.empty(self.page_size, np.uint8) if out is None else out
        ok = self.decompress_into_trusted(block, np.array([block.size], np.int64), out.reshape(1, -1),
                                          _ROW0, _ROW0)[0]
        return out if ok else None

    # --- the public verbs: check, then the trusted verb ---------------------------------
    def _checked(self, pages, rows):
        pages = check_pages(pages, self.page_size)
        return pages, (None if rows is None else check_rows(rows, pages.shape[0]))

    def compress_blocks(self, pages: np.ndarray, rows: np.ndarray | None = None):
        """``(data, starts, lengths)`` of ``pages[rows]`` (every page when None)."""
        return self.compress_blocks_trusted(*self._checked(pages, rows))

    def compress_batch(self, pages: np.ndarray, rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(data, lengths)``: the blocks of ``pages[rows]`` packed back to back."""
        data, starts, lengths = self.compress_blocks(pages, rows)
        if not self.packed_blocks:
            data = pack_blocks(data, starts, np.maximum(lengths, 0))
        return data, lengths

    def compress_to_device(self, pages: np.ndarray, rows: np.ndarray | None = None):
        """``(device data, starts, lengths)``: the blocks left in device memory."""
        return self.compress_to_device_trusted(*self._checked(pages, rows))

    def decompress_into(self, data, lengths, out: np.ndarray, rows=None, starts=None) -> np.ndarray:
        """Decode block ``i`` into ``out[rows[i]]``; True where it made exactly one page."""
        data, lengths, rows, starts = check_decode_args(data, lengths, out, rows, starts, self.page_size,
                                                        device_ok=self.device_resident)
        return self.decompress_into_trusted(data, lengths, out, rows, starts)

    def compress_page(self, page: np.ndarray) -> tuple[np.ndarray, int]:
        """One page -> ``(buffer, length)``, the block being ``buffer[:length]``."""
        check_page_args(page, None, self.page_size)
        return self.compress_page_trusted(page)

    def decompress_page(self, block, out: np.ndarray) -> bool:
        """Decode one block into ``out`` (page_size,); True when it made one page."""
        check_page_args(None, out, self.page_size)
        if not (type(block) is np.ndarray and block.dtype == np.uint8 and block.ndim == 1
                and block.flags.c_contiguous):      # the bindings take contiguous buffers only
            try:
                block = (np.ascontiguousarray(block).reshape(-1)
                         if isinstance(block, np.ndarray) and block.dtype == np.uint8
                         else np.ascontiguousarray(np.frombuffer(block, np.uint8)))
            except (TypeError, ValueError) as exc:
                raise BadInputError(f"block must be a bytes-like object or 1-D uint8 array: {exc}") from exc
        return self.decompress_page_trusted(block, out) is not None

    def decompress_batch(self, data, lengths) -> np.ndarray:
        data = as_block_data(data)
        lengths = as_lengths(lengths)
        if (lengths < 0).any() or int(lengths.sum()) != data.size:
            raise BadInputError("lengths must be non-negative and add up to the data's size")
        out = np.empty((lengths.shape[0], self.page_size), np.uint8)
        ok = self.decompress_into(data, lengths, out)
        if not ok.all():
            bad = np.flatnonzero(~ok)
            raise CorruptDataError(f"{bad.size} block(s) did not decode to one page: indices {bad[:8].tolist()}")
        return out

    # --- configuration (public attributes are config) ---------------------------------
    def get_config(self) -> dict:
        cfg = {k: v for k, v in vars(self).items() if not k.startswith("_")}
        cfg["id"] = self.codec_id
        return cfg

    def __eq__(self, other) -> bool:
        return isinstance(other, Codec) and self.get_config() == other.get_config()

    def __hash__(self) -> int:
        return hash(tuple(sorted(self.get_config().items())))

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items() if k != "id")
        return f"{type(self).__name__}({args})"


def _pack_blocks(blocks: list[bytes | None]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Blocks from a binding (None: failed) as ``compress_blocks_trusted``'s packed triple."""
    lengths = np.array([-1 if b is None else len(b) for b in blocks], np.int64)
    data = np.frombuffer(b"".join(b for b in blocks if b is not None), np.uint8)
    return data, packed_starts(np.maximum(lengths, 0)), lengths
