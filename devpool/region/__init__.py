"""Client: a process's own memory, its cold pages in a Zswap (``swap_region``).

Knows: userfaultfd (``uffd``: the ioctls and messages, by hand on ctypes), the region's
client side (``client``: maps the memfd, registers it, starts the helpers), the handler
process that serves faults and evicts (``handler``), its guard, and the GIL-free watch
thread (``watch``); ``Zswap``'s public verbs.

Never knows: the pool or its storage (the handler opens them by name through
``devpool.open_pool``), codecs' insides.
"""

from .client import SwapRegion, swap_region

__all__ = ["SwapRegion", "swap_region"]
