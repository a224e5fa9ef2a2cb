"""The codec registry (after numcodecs' ``register_codec`` / ``get_codec``).

Only ``raw`` is registered eagerly; every other codec's module registers it on first use,
so importing devpool compiles no numba code, touches no CUDA and needs no codec library
(a missing ``lz4`` or ``zstandard`` makes that codec unknown, saying why).
"""

from __future__ import annotations

import copy

from .._errors import BadInputError, UnknownCodecError
from .base import Codec
from .raw import Raw

__all__ = ["get_codec", "register_codec", "registered_codecs"]

# --- registry ---------------------------------------------------------------------------
_REGISTRY: dict[str, type[Codec]] = {}
#: codecs whose module registers them on import; loaded on first use so that importing
#: devpool never compiles numba code or touches CUDA
_LAZY = {"lz4": "devpool.codecs.lz4_block", "lz4hc": "devpool.codecs.lz4_block",
         "lz4-njit": "devpool.kernels.lz4", "lz4-device": "devpool.kernels.lz4_device",
         "zstd": "devpool.codecs.zstd", "nvcomp-lz4": "devpool.kernels.nvcomp"}


def register_codec(cls: type[Codec], codec_id: str | None = None) -> type[Codec]:
    """Make ``cls`` available to ``get_codec`` under its id; re-registering replaces."""
    _REGISTRY[codec_id or cls.codec_id] = cls
    return cls


def registered_codecs() -> dict[str, type[Codec]]:
    """Every registered codec class by id (loading the lazily registered ones)."""
    for codec_id in _LAZY:
        _load_lazy(codec_id)
    return dict(_REGISTRY)


def _load_lazy(codec_id: str) -> None:
    if codec_id in _LAZY and codec_id not in _REGISTRY:
        import importlib
        try:
            importlib.import_module(_LAZY[codec_id])
        except Exception as exc:   # e.g. no CUDA stack: the codec is simply not there
            _LAZY_ERRORS[codec_id] = f"{type(exc).__name__}: {exc}"


_LAZY_ERRORS: dict[str, str] = {}


def get_codec(config: str | dict | Codec) -> Codec:
    """A codec from a name (``"lz4"``), a config dict (``{"id": "lz4hc", "level": 4}``) or a codec."""
    if isinstance(config, Codec):
        return config
    if isinstance(config, str):
        config = {"id": config}
    if not isinstance(config, dict) or "id" not in config:
        raise UnknownCodecError(f"codec config must be a name or a dict with an 'id', got {config!r}")
    config = copy.deepcopy(config)        # never mutate the caller's dict
    codec_id = config.pop("id")
    if not isinstance(codec_id, str):
        raise UnknownCodecError(f"a codec id is a name, got {codec_id!r}")
    _load_lazy(codec_id)
    cls = _REGISTRY.get(codec_id)
    if cls is None:
        why = f" ({_LAZY_ERRORS[codec_id]})" if codec_id in _LAZY_ERRORS else ""
        known = sorted(set(_REGISTRY) | set(_LAZY))
        raise UnknownCodecError(f"unknown codec {codec_id!r}{why}; known: {', '.join(known)}")
    try:
        return cls(**config)
    except TypeError as exc:
        raise BadInputError(f"bad options for codec {codec_id!r}: {exc}") from exc


register_codec(Raw)
