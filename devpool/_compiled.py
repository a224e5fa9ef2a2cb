"""One rule, two speeds: plain Python functions numba compiles for the batch verbs, and the
cheapest call into compiled code for the single-object verbs.

A table's rule (an entry's change, an object's allocation or free) is written once, as a
plain function over arrays and a ``meta`` array of int64 scalars, in the integer
arithmetic Python and numba share. Batch verbs loop over it compiled. A single-object
verb calls one compiled function with integers only: the table's arrays are found from
their addresses, kept in ``meta`` (numba types an array argument in ~0.1 - 0.3 us, an
integer in a few ns), through the function's C entry point (~80 ns a call here, against
~190 ns through numba's dispatcher, which checks the argument types first). With
numba's JIT off (``NUMBA_DISABLE_JIT``: a debugging switch, and the region's guard path)
addresses cannot be followed, and the same rule runs interpreted over memoryviews.
"""

from __future__ import annotations

import types

import numba
import numba.core.cgutils
import numba.extending

__all__ = ["Rules", "at", "copy_bytes", "prefetch", "prefetch_range", "entry", "bind", "JIT"]

#: False under NUMBA_DISABLE_JIT: compiled functions are plain Python, and ``at`` cannot run
JIT = not numba.config.DISABLE_JIT


class Rules:
    """A registry of compiled rules: ``@rules.compiled`` compiles a function with the rules
    it calls bound to their compiled forms (the same code object: one source for both
    speeds); ``rules.compiled`` on a plain rule makes it callable compiled by the others."""

    def __init__(self):
        self._compiled: dict = {}

    def compiled(self, fn=None, *, signature=None):
        """Compile ``fn`` when first called (a single verb: for exactly ``signature``,
        when :func:`entry` first asks, and holding the GIL: a call this short would spend
        a third of its time releasing and taking it back). Nothing compiles at import:
        ``import devpool`` stays free of numba's CPU target (``devpool check-kernels``
        needs only numba-cuda's)."""
        def compile_(fn):
            env = dict(fn.__globals__)
            env.update(self._compiled)
            clone = types.FunctionType(fn.__code__, env, fn.__name__, fn.__defaults__, fn.__closure__)
            clone.__qualname__ = fn.__qualname__
            jitted = (numba.njit(cache=True) if signature else numba.njit(cache=True, nogil=True))(clone)
            jitted.single_signature = signature
            self._compiled[fn.__name__] = jitted
            return jitted
        return compile_(fn) if fn is not None else compile_

    def include(self, other: "Rules") -> None:
        """Make ``other``'s compiled rules callable by the rules compiled here from now on
        (a rule of one module's tables composed with another's)."""
        self._compiled.update(other._compiled)


@numba.extending.intrinsic
def at(typingctx, address, dtype):
    """A typed pointer from an integer address (``dtype`` a numba number class)."""
    ptr = numba.types.CPointer(dtype.instance_type)

    def codegen(context, builder, sig, args):
        return builder.inttoptr(args[0], context.get_value_type(ptr))
    return ptr(address, dtype), codegen


@numba.extending.intrinsic
def copy_bytes(typingctx, dst, src, n):
    """``memmove(dst, src, n)`` between integer addresses: the ranges may overlap (a page
    stored as-is may be a view of the arena, a stale loan, over its new place)."""
    def codegen(context, builder, sig, args):
        i8p = context.get_value_type(numba.types.CPointer(numba.types.uint8))
        d, s, k = args
        numba.core.cgutils.raw_memmove(builder, builder.inttoptr(d, i8p), builder.inttoptr(s, i8p), k, 1)
        return context.get_dummy_value()
    return numba.types.void(numba.types.int64, numba.types.int64, numba.types.int64), codegen


@numba.extending.intrinsic
def prefetch(typingctx, address):
    """Ask the CPU to start loading the cache line at integer ``address`` (``llvm.prefetch``:
    a hint, never a fault, whatever the address)."""
    def codegen(context, builder, sig, args):
        from llvmlite import ir
        i8p = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        fn = numba.core.cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]), "llvm.prefetch.p0i8")
        builder.call(fn, [builder.inttoptr(args[0], i8p), i32(0), i32(3), i32(1)])
        return context.get_dummy_value()
    return numba.types.void(numba.types.int64), codegen


@numba.njit(cache=True)
def prefetch_range(address, nbytes):
    """:func:`prefetch` every cache line of ``nbytes`` at ``address``. A block read at a
    random place in a large arena otherwise costs a dependent miss every few lines: the
    hardware's stream prefetcher learns a stream only from its first misses (measured on
    a Xeon VM: a 1.5 KB block's decode at 10^6 stored pages grew ~350 ns less with all
    its lines asked for at once; on an EPYC VM, no change)."""
    # counted in lines, not walked by address: a range ending at the top of int64 (a
    # garbage address) wrapped the walk to -2**63, below its end, and it went on ~forever
    address, nbytes = numba.int64(address), numba.int64(nbytes)
    if nbytes <= 0:
        return
    first = address & ~63
    # the lines [address, address + nbytes) touches, without forming address + nbytes
    lines = (nbytes >> 6) + (((address & 63) + (nbytes & 63) + 63) >> 6)
    for k in range(lines):
        prefetch(first + k * 64)


def entry(jitted):
    """The C entry point of a function compiled (now, or loaded from numba's cache) for
    the one signature given to ``Rules.compiled``: the call skips the dispatcher's type
    resolution. Only for callers that pass exactly the declared types (Python ints for
    int64)."""
    if not JIT:
        return jitted
    return jitted.compile(jitted.single_signature)      # (numba returns the overload's entry point)


class _Address(int):
    """An address that keeps alive what it leads to (an int to the entry point)."""


def bind(jitted, meta, alive: list):
    """:func:`entry` of ``jitted`` bound to the address of ``meta`` as its first argument
    (a method: the cheapest call; the entry point copies an int subclass to an int,
    ~10 ns here). The bound verb holds ``alive``, a list
    its owner keeps naming every array ``meta``'s addresses lead to: a verb kept after
    its owner was dropped (a bound method saved somewhere) then follows live arrays,
    where the bare address named freed memory (read, and written by a free)."""
    address = _Address(meta.ctypes.data)
    address.alive = alive
    return types.MethodType(entry(jitted), address)
