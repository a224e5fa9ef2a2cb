"""Layer: codecs — pages in, blocks out, and back.

Knows: bytes in, bytes out (host buffers; a device codec also device buffers), the page
size. Never knows: handles, pools, swap offsets, where a block will be stored.

``base`` is the contract every codec implements (and the argument checks they share),
``registry`` finds a codec by name (numcodecs' ``get_codec``), and the CPU codecs live
one module each: ``lz4_block`` (``lz4``, ``lz4hc``), ``raw``, ``zstd``. ``lz4-njit``,
``lz4-device`` and ``nvcomp-lz4`` live in ``devpool.kernels`` beside the kernels they share.
"""

from .base import Codec
from .registry import get_codec, register_codec, registered_codecs

__all__ = ["Codec", "get_codec", "register_codec", "registered_codecs"]
