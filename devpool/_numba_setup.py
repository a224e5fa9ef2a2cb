"""Make numba's on-disk cache work wherever devpool is installed, and never trust one
that another user could have written.

devpool's CPU kernels are compiled with ``cache=True``. numba caches next to the
sources (``__pycache__``) or in the user's cache directory; when neither is writable
(a read-only install run by a user without a home, as ``nobody``) the decorator raises
at import time. Then the cache goes to a private directory under the system's temp
directory instead, ``devpool-numba-cache-<uid>``. An explicit ``NUMBA_CACHE_DIR``
always wins.

numba's cache index is a pickle: whoever can write that directory can run code in the
next import. So the directory is created 0700, and one that already exists is used
only if it is a real directory (not a link) owned by us that neither group nor others
may write. Otherwise devpool warns and caches in a fresh private directory of its own
(``mkdtemp``), removed at exit: compiled for this process only, as with no cache.
"""

from __future__ import annotations

import atexit
import os
import shutil
import stat
import sys
import tempfile
import warnings


def _writable(path: str) -> bool:
    return os.path.isdir(path) and os.access(path, os.W_OK | os.X_OK)


def _untrusted(path: str) -> str | None:
    """Why ``path`` may not hold our cache, or None when it is ours alone.

    Creates it (0700) when it does not exist.
    """
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        return f"it cannot be created ({exc.strerror})"
    try:
        st = os.lstat(path)
    except OSError as exc:
        return f"it cannot be examined ({exc.strerror})"
    if stat.S_ISLNK(st.st_mode):
        return "it is a symbolic link"
    if not stat.S_ISDIR(st.st_mode):
        return "it is not a directory"
    if st.st_uid != os.geteuid():
        return f"it belongs to uid {st.st_uid}, not to us (uid {os.geteuid()})"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"group or others may write it (mode {stat.filemode(st.st_mode)})"
    if not os.access(path, os.W_OK | os.X_OK):
        return "we may not write it"
    return None


def _private_fallback() -> str:
    """A fresh 0700 directory of this process, removed when it exits."""
    path = tempfile.mkdtemp(prefix=f"devpool-numba-cache-{os.geteuid()}-")
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


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
    path = os.path.join(tempfile.gettempdir(), f"devpool-numba-cache-{os.geteuid()}")
    why = _untrusted(path)
    if why is not None:
        warnings.warn(f"devpool: not using {path} for numba's cache: {why}; kernels are "
                      f"compiled for this process only (remove it, or set NUMBA_CACHE_DIR)",
                      RuntimeWarning, stacklevel=2)
        path = _private_fallback()
    os.environ["NUMBA_CACHE_DIR"] = path
    if "numba" in sys.modules:                        # numba already read its config
        from numba.core import config
        config.CACHE_DIR = path
