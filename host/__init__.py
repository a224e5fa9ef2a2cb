"""Host storage: the CPU fallback arena in ordinary RAM, same contract as the device."""

from ._arena import HostStorage

__all__ = ["HostStorage"]
