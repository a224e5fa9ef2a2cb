"""Make numba's on-disk cache work wherever devpool is installed.

devpool's CPU kernels are compiled with ``cache=True``. numba caches next to the
sources (``__pycache__``) or in the user's cache directory; when neither is writable
(a read-only install run by a user without a home, as ``nobody``) the decorator raises
at import time. Then the cache goes to a private directory under the system's temp
directory instead. An explicit ``NUMBA_CACHE_DIR`` always wins.
"""

from __future__ import annotations

import os
import sys
import tempfile


def _writable(path: str) -> bool:
    return os.path.isdir(path) and os.access(path, os.W_OK | os.X_OK)


def ensure_cache_dir() -> None:
    if os.environ.get("NUMBA_CACHE_DIR"):
        return
    here = os.path.dirname(os.path.abspath(__file__))
    pycache = os.path.join(here, "__pycache__")
    if _writable(pycache) or (not os.path.exists(pycache) and _writable(here)):
        return
    home = os.path.expanduser("~")
    if home != "~" and _writable(home):
        return                                        # numba's user-wide cache works
    path = os.path.join(tempfile.gettempdir(), f"devpool-numba-cache-{os.getuid()}")
    os.makedirs(path, mode=0o700, exist_ok=True)
    os.environ["NUMBA_CACHE_DIR"] = path
    if "numba" in sys.modules:                        # numba already read its config
        from numba.core import config
        config.CACHE_DIR = path
