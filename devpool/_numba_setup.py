"""Make numba's on-disk cache work wherever devpool is installed, and never trust one
that another user could have written.

devpool's CPU kernels are compiled with ``cache=True``. numba caches next to the
sources (``__pycache__``) or in the user's cache directory; when neither is writable
(a read-only install run by a user without a home, as ``nobody``) the decorator raises
at import time. Then the cache goes to a private directory under the system's temp
directory instead, ``devpool-numba-cache-<uid>``. An explicit ``NUMBA_CACHE_DIR``
always wins.

numba keys a cached function to its own source file only, while a compiled function
carries inside it the compiled code of every function it calls, from any module: after
a change to ``pool/allocator.py`` the cached ``pool/door.py`` functions still ran the old
allocator's table layout (a segfault, seen here after an upgrade in place). So every
devpool function's cache is also keyed to the whole package's sources
(:class:`PackageStampLocator`): any change to any of its files recompiles them all once.

numba's cache index is a pickle: whoever can write that directory can run code in the
next import. So the directory is created 0700, and one that already exists is used
only if it is a real directory (not a link) owned by us that neither group nor others
may write. Otherwise devpool warns and caches in a fresh private directory of its own
(``mkdtemp``), removed at exit: compiled for this process only, as with no cache.
"""

from __future__ import annotations

import atexit
import functools
import hashlib
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


@functools.lru_cache(maxsize=None)
def package_stamp(root: str) -> str:
    """A digest of every ``.py`` file under ``root``: names and contents (read once a
    process, at the first compiled function's cache lookup)."""
    digest = hashlib.sha256()
    for folder, dirs, files in sorted(os.walk(root)):
        dirs.sort()
        for name in sorted(files):
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                digest.update(os.path.relpath(path, root).encode() + b"\0")
                with open(path, "rb") as f:
                    digest.update(hashlib.sha256(f.read()).digest())
    return digest.hexdigest()


def _locator_class():
    from numba.core import caching

    class PackageStampLocator(caching._CacheLocator):
        """numba's own cache locator for a function (whichever numba would pick), with
        the source stamp of the whole package beside its file's, for the files under
        :attr:`roots` (devpool's own; a test adds one)."""

        roots = [os.path.dirname(os.path.abspath(__file__))]
        others = list(caching.CacheImpl._locator_classes)

        def __init__(self, inner, root):
            self._inner, self._root = inner, root

        @classmethod
        def from_function(cls, py_func, py_file):
            path = os.path.abspath(py_file)
            root = next((r for r in cls.roots if path.startswith(r + os.sep)), None)
            if root is None:
                return None
            for other in cls.others:
                inner = other.from_function(py_func, py_file)
                if inner is not None:
                    return cls(inner, root)
            return None

        def ensure_cache_path(self):
            self._inner.ensure_cache_path()

        def get_cache_path(self):
            return self._inner.get_cache_path()

        def get_disambiguator(self):
            return self._inner.get_disambiguator()

        def get_source_stamp(self):
            return self._inner.get_source_stamp(), package_stamp(self._root)

    return PackageStampLocator


def stamp_caches_with_package() -> type:
    """Put :class:`PackageStampLocator` first among numba's cache locators (once); it
    answers only for files under its roots. Returns the class."""
    from numba.core import caching
    classes = caching.CacheImpl._locator_classes
    for cls in classes:
        if cls.__name__ == "PackageStampLocator":
            return cls
    cls = _locator_class()
    classes.insert(0, cls)
    return cls
