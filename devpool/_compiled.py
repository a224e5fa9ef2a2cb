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
import numba.extending

__all__ = ["Rules", "at", "entry", "JIT"]

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


@numba.extending.intrinsic
def at(typingctx, address, dtype):
    """A typed pointer from an integer address (``dtype`` a numba number class)."""
    ptr = numba.types.CPointer(dtype.instance_type)

    def codegen(context, builder, sig, args):
        return builder.inttoptr(args[0], context.get_value_type(ptr))
    return ptr(address, dtype), codegen


def entry(jitted):
    """The C entry point of a function compiled (now, or loaded from numba's cache) for
    the one signature given to ``Rules.compiled``: the call skips the dispatcher's type
    resolution. Only for callers that pass exactly the declared types (Python ints for
    int64)."""
    if not JIT:
        return jitted
    return jitted.compile(jitted.single_signature)      # (numba returns the overload's entry point)
