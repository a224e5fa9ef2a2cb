"""LZ4 block compression and a hardened decompressor, written once for two targets.

:func:`build` takes a ``jit`` decorator (``numba.njit`` for the CPU, ``cuda.jit(
device=True)`` for the GPU) and four tiny per-target helpers, and returns the compiled
``compress_block`` / ``decompress_block``. Everything LZ4 is here; only *how bytes are
loaded and compared* differs per target:

``read32(buf, i)`` / ``read64(buf, i)``
    little-endian loads at any byte offset (CPU: one unaligned load; GPU: byte loads,
    since a misaligned word load faults there and the simulator runs plain Python);
``count_match(buf, p, m, limit)``
    how many bytes from ``p`` equal those from ``m`` before ``limit`` (CPU: 8-byte xor
    and count-trailing-zeros);
``copy_forward(dst, d, src, s, n)``
    copy ``n`` bytes front to back in 8-byte steps: correct for an overlapping LZ match
    when ``d - s >= 8`` (the decoder widens shorter offsets first);
``copy_disjoint(dst, d, src, s, n)``
    copy ``n`` bytes between ranges that do not overlap (literals, far matches): on the
    CPU a loop LLVM vectorises, as memcpy does;
``get(buf, i)`` / ``put(buf, i, v)``
    element access without numba's negative-index wraparound on the CPU (the core never
    uses negative indices); plain indexing on the GPU and in the bounds-checked twin.

The compressor follows the reference ``LZ4_compress_generic`` step for step (hash of
5 bytes into 4096 entries for ``byU32`` tables, or 4 bytes into 8192 for ``byU16``;
acceleration 1, skip trigger 6, MFLIMIT 12, LASTLITERALS 5, the catch-up and
immediate-next-match paths), so for the same table type it emits the same bytes as
liblz4. The decompressor returns the bytes written or -1 and never reads or writes
outside ``[s0, s0+slen)`` / ``[d0, d0+dcap)``: it enforces the block format's rules
(offset inside the output, the end-of-block literal rules) like ``LZ4_decompress_safe``.
"""

from __future__ import annotations

import numpy as np

MINMATCH = 4
MFLIMIT = 12
LASTLITERALS = 5
SKIP_TRIGGER = 6
MAX_DISTANCE = 65535
ML_MASK = 15
RUN_MASK = 15
#: LZ4_compressBound(4096)
PAGE_BOUND = 4096 + 4096 // 255 + 16

HASH_U32_LOG = 12           # byU32 tables: LZ4_HASHLOG (LZ4_MEMORY_USAGE 14)
HASH_U16_LOG = 13           # byU16 tables (inputs < 64 KiB in one-shot mode)


# --- the plain helpers: byte loads and plain indexing. The GPU compiles these (a
# misaligned word load faults there) and so does the CPU's bounds-checked twin.
def plain_read32(buf, i):
    return (np.uint32(buf[i]) | (np.uint32(buf[i + 1]) << np.uint32(8))
            | (np.uint32(buf[i + 2]) << np.uint32(16)) | (np.uint32(buf[i + 3]) << np.uint32(24)))


def plain_count_match(buf, p, m, limit):
    start = p
    while p < limit and buf[p] == buf[m]:
        p += 1
        m += 1
    return p - start


def plain_copy_forward(dst, d, src, s, n):
    for k in range(n):
        dst[d + k] = src[s + k]


def plain_copy_disjoint(dst, d, src, s, n):
    for k in range(n):
        dst[d + k] = src[s + k]


def plain_get(buf, i):
    return buf[i]


def plain_put(buf, i, v):
    buf[i] = v


def plain_helpers(jit):
    """The plain helpers compiled with ``jit``, in :func:`build`'s order."""
    read32 = jit(plain_read32)

    def plain_read64(buf, i):
        return np.uint64(read32(buf, i)) | (np.uint64(read32(buf, i + 4)) << np.uint64(32))

    return (read32, jit(plain_read64), jit(plain_count_match), jit(plain_copy_forward),
            jit(plain_copy_disjoint), jit(plain_get), jit(plain_put))


def build(jit, read32, read64, count_match, copy_forward, copy_disjoint, get, put, hash5: bool):
    """Compile the LZ4 block codec for one target; returns (compress, decompress)."""
    u32 = np.uint64(0xFFFFFFFF)
    prime4 = np.uint64(2654435761)
    prime5 = np.uint64(889523592379)
    shift4 = np.uint64(32 - HASH_U16_LOG)
    shift5 = np.uint64(64 - HASH_U32_LOG)
    s24 = np.uint64(24)

    @jit
    def hash_at(src, p):
        if hash5:
            return np.int64(((read64(src, p) << s24) * prime5) >> shift5)
        return np.int64(((np.uint64(read32(src, p)) * prime4) & u32) >> shift4)

    @jit
    def put_length(dst, op, n):
        """The 255-run continuation bytes of a length field; returns the new op."""
        while n >= 255:
            put(dst, op, 255)
            op += 1
            n -= 255
        put(dst, op, n)
        return op + 1

    @jit
    def read_length(src, ip, limit, n):
        """``n`` plus the 255-run continuation bytes of a length field at ``src[ip:]``
        (put_length's reverse); returns (length, position after) or (n, -1) if the
        field runs to ``limit``."""
        while True:
            if ip >= limit:
                return n, -1
            b = np.int64(get(src, ip))
            ip += 1
            n += b
            if b != 255:
                return n, ip

    @jit
    def compress_block(src, s0, n, dst, d0, table):
        """Compress ``src[s0:s0+n]`` into ``dst[d0:]`` (room for LZ4_compressBound(n)).

        ``table`` (int32, 4096 or 8192 entries) must be all zero, liblz4's freshly reset
        state (an empty slot means position 0); it holds positions afterwards. Clearing
        16 KiB per block costs less than an offset check on every probe (measured).
        Returns the bytes written.
        """
        op = d0
        anchor = 0
        iend = n
        mflimit_plus_one = iend - MFLIMIT + 1
        match_limit = iend - LASTLITERALS
        if n >= MFLIMIT + 1:
            put(table, hash_at(src, s0), 0)
            ip = 1
            forward_h = hash_at(src, s0 + ip)
            while True:
                # --- find a match (step grows every 64 misses) ----------------------------
                forward_ip = ip
                step = 1
                search = 1 << SKIP_TRIGGER
                match = 0
                found = False
                while True:
                    h = forward_h
                    current = forward_ip
                    match = np.int64(get(table, h))
                    ip = forward_ip
                    forward_ip += step
                    step = search >> SKIP_TRIGGER
                    search += 1
                    if forward_ip > mflimit_plus_one:
                        break
                    forward_h = hash_at(src, s0 + forward_ip)
                    put(table, h, current)
                    if match + MAX_DISTANCE < current:
                        continue
                    if read32(src, s0 + match) == read32(src, s0 + ip):
                        found = True
                        break
                if not found:
                    break
                # --- catch up -----------------------------------------------------------
                while ip > anchor and match > 0 and get(src, s0 + ip - 1) == get(src, s0 + match - 1):
                    ip -= 1
                    match -= 1
                # --- literals -----------------------------------------------------------
                lit = ip - anchor
                token = op
                op += 1
                if lit >= RUN_MASK:
                    put(dst, token, RUN_MASK << 4)
                    op = put_length(dst, op, lit - RUN_MASK)
                else:
                    put(dst, token, lit << 4)
                copy_disjoint(dst, op, src, s0 + anchor, lit)
                op += lit
                # --- matches (and immediate next matches) ---------------------------------
                while True:
                    off = ip - match
                    put(dst, op, off & 0xFF)
                    put(dst, op + 1, off >> 8)
                    op += 2
                    ml = count_match(src, s0 + ip + MINMATCH, s0 + match + MINMATCH, s0 + match_limit)
                    ip += ml + MINMATCH
                    if ml >= ML_MASK:
                        put(dst, token, get(dst, token) + ML_MASK)
                        op = put_length(dst, op, ml - ML_MASK)
                    else:
                        put(dst, token, get(dst, token) + ml)
                    anchor = ip
                    if ip >= mflimit_plus_one:
                        break
                    put(table, hash_at(src, s0 + ip - 2), ip - 2)
                    h = hash_at(src, s0 + ip)
                    match = np.int64(get(table, h))
                    put(table, h, ip)
                    if match + MAX_DISTANCE >= ip and read32(src, s0 + match) == read32(src, s0 + ip):
                        token = op
                        put(dst, op, 0)
                        op += 1
                        continue
                    break
                if ip >= mflimit_plus_one:
                    break
                ip += 1
                forward_h = hash_at(src, s0 + ip)
        # --- last literals ----------------------------------------------------------------
        last = iend - anchor
        if last >= RUN_MASK:
            put(dst, op, RUN_MASK << 4)
            op = put_length(dst, op + 1, last - RUN_MASK)
        else:
            put(dst, op, last << 4)
            op += 1
        copy_disjoint(dst, op, src, s0 + anchor, last)
        return op + last - d0

    @jit
    def decompress_block(src, s0, slen, dst, d0, dcap):
        """Decode ``src[s0:s0+slen]`` into ``dst[d0:d0+dcap]``; bytes written or -1."""
        ip = s0
        iend = s0 + slen
        op = d0
        oend = d0 + dcap
        if slen <= 0:
            return -1
        while True:
            token = np.int64(get(src, ip))
            ip += 1
            lit = token >> 4
            if lit < RUN_MASK and ip + 32 <= iend and op + 40 <= oend:
                # fast path (LZ4's shortcut): far from both ends, copy 16 literal bytes
                # and 18 match bytes (ml <= 18); the extra bytes are overwritten by the
                # sequences that follow (op + 40 <= oend here)
                copy_disjoint(dst, op, src, ip, 16)
                ip += lit
                off = np.int64(read32(src, ip) & np.uint32(0xFFFF))   # ip + 4 <= iend here
                op += lit
                ml = token & 15
                if ml < ML_MASK and off >= 8 and off <= op - d0:
                    ip += 2
                    # two whole words, then two single bytes (a third word would
                    # straddle the two just stored when off < 24 and stall
                    # store-to-load forwarding; single bytes are forwarded)
                    m = op - off
                    copy_forward(dst, op, dst, m, 16)
                    put(dst, op + 16, get(dst, m + 16))
                    put(dst, op + 17, get(dst, m + 17))
                    op += ml + MINMATCH
                    continue
                # a long or short-period match: the literals are done (and were far
                # from both ends), the match takes the general path below
            else:
                if lit == RUN_MASK:
                    lit, ip = read_length(src, ip, iend, lit)
                    if ip < 0:
                        return -1
                if ip + lit > iend or op + lit > oend:
                    return -1
                if op + lit > oend - MFLIMIT or ip + lit > iend - (2 + 1 + LASTLITERALS):
                    # only the block's last sequence may come this close to either end
                    if ip + lit != iend:
                        return -1
                    copy_disjoint(dst, op, src, ip, lit)
                    return op + lit - d0
                copy_disjoint(dst, op, src, ip, lit)
                ip += lit
                op += lit
                off = np.int64(get(src, ip)) | (np.int64(get(src, ip + 1)) << 8)
            ip += 2
            if off == 0 or off > op - d0:
                return -1
            ml = token & 15
            if ml == ML_MASK:
                ml, ip = read_length(src, ip, iend - LASTLITERALS + 1, ml)
                if ip < 0:
                    return -1
            ml += MINMATCH
            if op + ml > oend - LASTLITERALS:
                return -1
            if off >= ml:
                copy_disjoint(dst, op, dst, op - off, ml)
            elif off >= 8:
                copy_forward(dst, op, dst, op - off, ml)
            else:
                # widen a short period: copy one multiple of it (>= 8 bytes) byte-wise,
                # then the rest in 8-byte steps from that far back
                wide = off * ((8 + off - 1) // off)
                k = 0
                while k < wide and k < ml:
                    put(dst, op + k, get(dst, op - off + k))
                    k += 1
                if k < ml:
                    copy_forward(dst, op + k, dst, op + k - wide, ml - k)
            op += ml
            if ip >= iend:
                return -1

    return compress_block, decompress_block
