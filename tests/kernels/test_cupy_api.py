"""The device storage's CuPy calls, checked against the installed CuPy (no GPU needed).

CuPy imports without a GPU, so every name the storage's CuPy provider uses is looked up
in the real CuPy and every call is bound to its real signature (``inspect`` or, for
Cython functions, the signature line of the docstring): an API change fails here, not
on the first GPU. The table below must list every ``self.cp.*`` / ``self.rt.*`` chain
in the provider's source (checked with ``ast``), so it cannot fall behind the code.
"""

from __future__ import annotations

import ast
import inspect
import re
import textwrap

import pytest

cupy = pytest.importorskip("cupy")

from devpool.kernels import _device  # noqa: E402

P = object()      # a placeholder argument value

#: every CuPy name the provider reaches, with the arguments it passes (None: not called)
USED = {
    "cp.cuda.runtime": None,
    "cp.cuda.memory.OutOfMemoryError": None,
    "cp.empty": ((P, P), {}),
    "cp.uint8": None,
    "cp.cuda.alloc_pinned_memory": ((P,), {}),
    "cp.cuda.Stream": ((), {"non_blocking": True}),
    "cp.cuda.Event": ((), {"block": False, "disable_timing": True}),
    "cp.cuda.Device": ((), {}),
    "cp.cuda.Memory": ((P,), {}),
    "cp.cuda.MemoryPointer": ((P, 0), {}),
    "cp.ndarray": ((P, P, P), {}),
    "rt.memcpyAsync": ((P, P, P, P, P), {}),
    "rt.memcpyHostToDevice": None,
    "rt.memcpyDeviceToHost": None,
    "rt.memcpyDeviceToDevice": None,
    "rt.getDeviceProperties": ((P,), {}),
}
#: methods and attributes used on what those calls return: (owner, name, call)
RESULTS = [
    (cupy.cuda.Stream.null, "ptr", None),
    (cupy.cuda.Stream.null, "synchronize", ((), {})),
    (cupy.cuda.Event, "record", ((P,), {})),
    (cupy.cuda.Event, "synchronize", ((), {})),
    (cupy.ndarray, "data", None),
    (cupy.cuda.MemoryPointer, "ptr", None),
    (cupy.cuda.Device, "id", None),
]


def _chains(cls) -> set[str]:
    """Attribute chains rooted at ``self.cp`` / ``self.rt`` / ``cupy`` in a class's source."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            parts = []
            cur = node
            while isinstance(cur, ast.Attribute):
                parts.append(cur.attr)
                cur = cur.value
            if isinstance(cur, ast.Name) and cur.id == "self" and parts and parts[-1] in ("cp", "rt"):
                found.add(".".join(reversed(parts)))
            elif isinstance(cur, ast.Name) and cur.id == "cupy" and parts:     # the module itself
                found.add(".".join(["cp", *reversed(parts)]))
    # keep the longest chains only (cp.cuda.runtime.x implies cp.cuda and cp.cuda.runtime)
    return {c for c in found if c not in ("cp", "rt") and not any(o != c and o.startswith(c + ".") for o in found)}


def _resolve(chain: str):
    root, *rest = chain.split(".")
    obj = cupy if root == "cp" else cupy.cuda.runtime
    for name in rest:
        obj = getattr(obj, name)
    return obj


def _signature(fn) -> inspect.Signature:
    """The real signature, or the one a Cython docstring states on its first line."""
    try:
        return inspect.signature(fn)
    except (TypeError, ValueError):
        pass
    m = re.match(r"\s*[\w.]+\((.*?)\)", fn.__doc__ or "")
    assert m, f"no signature for {fn!r}"
    params = []
    for p in filter(None, (s.strip() for s in m.group(1).split(","))):
        name, _, default = p.partition("=")
        name = name.split()[-1]
        if name == "self":
            continue
        params.append(inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                        default=inspect.Parameter.empty if not default else None))
    return inspect.Signature(params)


def test_the_table_lists_every_cupy_name_the_provider_uses():
    assert _chains(_device._CupyMemory) == set(USED)


@pytest.mark.parametrize("chain", sorted(USED))
def test_each_cupy_call_exists_with_the_arguments_used(chain):
    obj = _resolve(chain)
    call = USED[chain]
    if call is not None:
        args, kwargs = call
        target = obj.__init__ if inspect.isclass(obj) and obj.__init__ is not object.__init__ else obj
        sig = _signature(target)
        if inspect.isclass(obj) and "self" in sig.parameters:
            args = (P, *args)
        sig.bind(*args, **kwargs)


@pytest.mark.parametrize("owner, name, call", RESULTS, ids=lambda x: getattr(x, "__name__", str(x)))
def test_methods_on_what_cupy_returns(owner, name, call):
    attr = getattr(owner, name)
    if call is not None:
        args, kwargs = call
        sig = _signature(attr)
        if "self" in sig.parameters:
            args = (P, *args)
        sig.bind(*args, **kwargs)


def test_a_changed_signature_would_fail():
    """The check itself can fail: a call with an argument CuPy does not take."""
    with pytest.raises(TypeError):
        _signature(cupy.cuda.runtime.memcpyAsync).bind(P, P, P, P)
    with pytest.raises(TypeError):
        _signature(cupy.cuda.Stream.__init__).bind(P, non_blocking=True, no_such_option=1)


def test_a_pinned_buffers_address_record_answers_only_for_that_buffer():
    """The provider keeps the address of each pinned buffer it made (asking an array
    costs ~0.8 us of a one-page copy). A record must answer for that very array only:
    not for a view of it, and not for a later array that got the same id once the
    first was gone (which would aim a DMA copy at freed memory). Host bytearrays stand
    in for pinned memory, so no GPU is needed."""
    import gc
    from types import SimpleNamespace

    import numpy as np
    mem = _device._CupyMemory()
    mem.cp = SimpleNamespace(cuda=SimpleNamespace(alloc_pinned_memory=bytearray))
    a = mem.pinned(4096)
    assert mem._host(a) == a.ctypes.data
    assert mem._host(a[100:]) == a.ctypes.data + 100
    record = mem._addrs[id(a)]
    other = mem.pinned(4096)
    b = np.frombuffer(bytearray(4096), np.uint8)
    # a later array under a record made for another one: its own address, always
    mem._addrs[id(b)] = mem._addrs[id(other)]         # a live array's record
    assert mem._host(b) == b.ctypes.data != other.ctypes.data
    stale = id(a)
    del a
    gc.collect()
    assert record[0]() is None                        # the record outlived its array
    mem._addrs[id(b)] = record                        # as if b had taken the dead one's id
    assert mem._host(b) == b.ctypes.data
    mem.pinned(16)
    assert stale not in mem._addrs                    # dead records are dropped


def test_pinned_buffers_made_from_several_threads():
    """Records are added and dropped per array (a finalizer), never by a pass over the
    others: threads making and dropping pinned buffers at once raised 'dictionary
    changed size during iteration'."""
    import sys
    import threading
    from types import SimpleNamespace

    mem = _device._CupyMemory()
    mem.cp = SimpleNamespace(cuda=SimpleNamespace(alloc_pinned_memory=bytearray))
    errors, kept = [], []

    def churn():
        try:
            for i in range(300):
                a = mem.pinned(64)
                assert mem._host(a) == a.ctypes.data
                if i % 50 == 0:
                    kept.append(a)
        except Exception as exc:          # noqa: BLE001 - reported below
            errors.append(exc)

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=churn) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    finally:
        sys.setswitchinterval(old)
    assert not errors, errors
    assert all(mem._addrs[id(a)][0]() is a for a in kept)
    assert len(mem._addrs) == len(kept)              # the dropped ones took their records along
