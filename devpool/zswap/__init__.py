"""Layer: the frontend — Linux zswap's rules over any pool.

Knows: swap offsets and their entries (``entries``: a sparse table keyed like the
kernel's xarray), the second-chance LRU, the pool limit with its accept threshold,
same-filled pages, writeback to a backing swap file (``backing``), the kernel's stat
names (``frontend.Zswap``), and the pool contract and codecs by their public verbs.

Never knows: where the pool's bytes live (no storage, allocator or kernel is imported:
``tests/zswap/test_layering.py`` checks the source and watches it at run time).
"""

from .backing import BackingFile
from .frontend import Zswap

__all__ = ["BackingFile", "Zswap"]
