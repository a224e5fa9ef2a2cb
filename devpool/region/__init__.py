"""Client: a process's own memory, its cold pages in a Zswap (``swap_region``).

Knows: userfaultfd (``uffd``: the ioctls and messages, by hand on ctypes, and ``place``,
the one fill-or-wake step), the region's client side (``client``: maps the memfd,
registers it, starts the helpers), the control socket between client and handler
(``protocol``), the handler process that serves faults and evicts (``handler``), its
page sources (``sources``: a Zswap, or the benchmarks' zero page and plain file), the
residency of each page and the victim policy (``residency``: numpy only), the guard
process (``guard``: standard library only) and the GIL-free watch thread (``watch``);
``Zswap``'s public verbs.

Never knows: the pool or its storage (the handler opens them by name through
``devpool.open_pool``), codecs' insides.
"""

from .client import SwapRegion, swap_region

__all__ = ["SwapRegion", "swap_region"]
