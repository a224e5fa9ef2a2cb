"""Backend selection: which storage a pool gets, and why.

``open_pool(backend=...)`` accepts ``"host"`` (RAM, always available), ``"cuda"`` (GPU
device memory: a real GPU through CuPy, or numba's CUDA simulator when
``NUMBA_ENABLE_CUDASIM=1``), ``"chaos"`` and ``"chaos-cuda"`` (the hostile test policy
over host or device storage) and ``"auto"`` (cuda when it works, host otherwise). Each probe says *why* a backend is unusable, so the
error and ``devpool info`` can name what is missing.
"""

from __future__ import annotations

import inspect

from .._checks import check_int
from .._errors import BackendUnavailableError, BadInputError
from .pool import DEFAULT_SEGMENT_BYTES, PAGE_SIZE, Pool

__all__ = ["BACKENDS", "available_backends", "open_pool", "probe_backend"]

BACKENDS = ("host", "cuda", "chaos", "chaos-cuda")
#: the hostile policy's backends and the storage each wraps
CHAOS_UPSTREAM = {"chaos": "host", "chaos-cuda": "cuda"}
DEFAULT_CAPACITY = 1 << 30


def probe_backend(name: str) -> tuple[bool, str]:
    """(usable, reason) for one backend; never raises for a known name."""
    if name in CHAOS_UPSTREAM:
        return probe_backend(CHAOS_UPSTREAM[name])
    if name == "host":
        return True, "host RAM is always available"
    if name == "cuda":
        try:
            from devpool import kernels
        except Exception as exc:  # an import error anywhere in the CUDA stack
            return False, f"devpool.kernels could not be imported: {exc}"
        return kernels.probe()
    raise BadInputError(f"unknown backend {name!r}; choose one of auto, {', '.join(BACKENDS)}")


def available_backends() -> dict[str, tuple[bool, str]]:
    """Every backend with (usable, reason)."""
    return {name: probe_backend(name) for name in BACKENDS}


def _storage_class(name: str):
    if name == "host":
        from devpool.host import HostStorage
        return HostStorage
    if name in CHAOS_UPSTREAM:
        from .chaos import ChaosStorage
        return ChaosStorage
    from devpool.kernels import CudaStorage
    return CudaStorage


def _check_options(name: str, cls, storage_options: dict) -> None:
    """Refuse a keyword the backend's storage does not take, naming those it does."""
    params = inspect.signature(cls.__init__).parameters
    accepted = [p for p, v in params.items() if p not in ("self", "capacity_bytes", "upstream")
                and v.kind in (v.POSITIONAL_OR_KEYWORD, v.KEYWORD_ONLY)]
    unknown = sorted(set(storage_options) - set(accepted))
    if unknown:
        takes = f"it takes {', '.join(accepted)}" if accepted else "it takes no storage options"
        raise BadInputError(f"open_pool() got an unknown option {', '.join(map(repr, unknown))} "
                            f"for backend {name!r}: {takes}")


def _check_auto_options(storage_options: dict) -> None:
    """``"auto"`` may pick either storage, by the machine: it takes only the options
    both do, so a call that works on one machine works on every other (``hugepages``,
    host's alone, once opened a host pool here and raised where a GPU answered)."""
    refused, taking = [], []
    for name in ("host", "cuda"):
        try:
            cls = _storage_class(name)
        except Exception:                      # noqa: BLE001 - a CUDA stack that cannot import
            continue                           # (auto never picks it: probe_backend says so)
        try:
            _check_options(name, cls, storage_options)
        except BadInputError as exc:
            refused.append(exc)
        else:
            taking.append(name)
    if refused:
        hint = f". Name the backend to pass it ({taking[0]} takes it)" if taking else ""
        raise BadInputError(f"open_pool('auto') may open host or cuda storage, by the machine, and "
                            f"takes only options both take: {refused[0]}{hint}") from None


def open_pool(backend: str = "auto", capacity_bytes: int = DEFAULT_CAPACITY, *,
              segment_bytes: int = DEFAULT_SEGMENT_BYTES, max_object_bytes: int = PAGE_SIZE,
              **storage_options) -> Pool:
    """Open a pool on ``backend`` with room for at most ``capacity_bytes``.

    ``"auto"`` takes cuda when a GPU (or the simulator) works and host otherwise;
    ``pool.stats()['backend']`` and ``['backend_reason']`` say which and why. Asking
    for ``"cuda"`` where it cannot run raises :class:`~devpool.BackendUnavailableError`.
    """
    if not isinstance(backend, str):
        raise BadInputError(f"backend must be a string, got {type(backend).__name__}")
    capacity_bytes = check_int(capacity_bytes, "capacity_bytes", lo=1)
    segment_bytes = check_int(segment_bytes, "segment_bytes", lo=1)
    max_object_bytes = check_int(max_object_bytes, "max_object_bytes", lo=1)
    asked_segment = segment_bytes
    segment_bytes = min(segment_bytes, max(4096, capacity_bytes // 4096 * 4096))
    if backend == "auto":
        _check_auto_options(storage_options)
        ok, why = probe_backend("cuda")
        name, reason = ("cuda", f"auto: {why}") if ok else ("host", f"auto: cuda unusable ({why})")
    else:
        ok, why = probe_backend(backend)
        if not ok:
            raise BackendUnavailableError(f"backend {backend!r} is unavailable: {why}")
        name, reason = backend, why
    if asked_segment < max_object_bytes:       # the caller's segment, not the capacity, is too small
        raise BadInputError(f"segment_bytes ({asked_segment}) cannot hold one object of max_object_bytes "
                            f"({max_object_bytes})")
    if segment_bytes < max_object_bytes:
        raise BadInputError(f"capacity_bytes ({capacity_bytes}) cannot hold one object of {max_object_bytes}")
    cls = _storage_class(name)
    _check_options(name, cls, storage_options)
    if name in CHAOS_UPSTREAM:                # the policy over its upstream storage
        storage = cls(_storage_class(CHAOS_UPSTREAM[name])(capacity_bytes), **storage_options)
    else:
        storage = cls(capacity_bytes, **storage_options)
    try:
        return Pool(storage, segment_bytes=segment_bytes, max_object_bytes=max_object_bytes,
                    backend_reason=reason)
    except BaseException:
        storage.close()
        raise
