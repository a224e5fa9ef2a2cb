"""Client: the machine's own swap into a devpool pool (``devpool swapon``).

Knows: FUSE (``fuse``: the protocol by hand on ctypes, one file served), the server
process that serves the file from a ``Zswap`` (``server``), and the system side
(``device``: loop, mkswap, swapon, swapoff, the state folders, status); ``Zswap``'s and
``open_pool``'s public verbs.

Never knows: the pool's insides or its storage, codecs' insides.
"""

from .device import SwapDevice, SwapDeviceError, devices, status, swap_device, swapoff, swapoff_all, swapon

__all__ = ["SwapDevice", "SwapDeviceError", "devices", "status", "swap_device", "swapoff",
           "swapoff_all", "swapon"]
