"""Layer: the pool — opaque handles over compressed objects, in any memory.

Knows: the storage contract (``storage.Storage``: bulk copy-in / copy-out / move on
offsets of one arena), the log-structured allocator (``allocator``: segments, bump
placement, cleaning, the generation-checked handle table), the pool that joins them
(``pool.Pool``: alloc / write / read / free in single and batch forms, compaction,
stats), the choice of a backend by name (``backends.open_pool``), the hostile
test policy over any storage (``chaos``), and the door through which compiled code
calls the single verbs (``door``: ``Pool.door`` and the ``door_*`` functions).

Never knows: codecs, swap offsets, zswap's limits, or which memory kind the arena is in
(``devpool.host`` and ``devpool.kernels`` implement ``Storage``; the pool only calls it).
"""

from .backends import available_backends, open_pool
from .door import (DOOR_ARENA, DOOR_OPEN, door_alloc, door_alloc_copy, door_arena, door_free, door_lend, door_open,
                   door_settle, door_warm_free)
from .pool import Pool
from .storage import Storage

__all__ = ["Pool", "Storage", "available_backends", "open_pool",
           "DOOR_ARENA", "DOOR_OPEN", "door_alloc", "door_alloc_copy", "door_arena", "door_free", "door_lend",
           "door_open", "door_settle", "door_warm_free"]
