"""The frontend sees only the pool contract: proven by its source and at run time.

``zswap/test_frontend.py`` checks the frontend's import statements. An import is not the only way
in: ``importlib``/``__import__`` load a storage module without an import statement, and
``pool.storage`` (or ``pool.alloc_``) reaches the memory kind through an attribute. So:
the source must not use those, and at run time, on the hostile chaos storage, every
attribute the frontend touches on its pool is public pool API, and the frontend never
touches the storage object at all.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import numpy as np
import pytest

import devpool
from tests.pages import filled_page, make_pages, random_page

ZSWAP_SRC = Path(devpool.__file__).parent / "zswap" / "frontend.py"
#: what the frontend may never name: dynamic imports, and the pool's private parts
FORBIDDEN_NAMES = {"importlib", "__import__", "import_module", "modules", "storage", "alloc_",
                   "_arena", "HostStorage", "ChaosStorage", "CudaStorage", "Allocator"}


def test_frontend_source_names_no_dynamic_import_and_no_storage():
    tree = ast.parse(ZSWAP_SRC.read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id in FORBIDDEN_NAMES:
            found.append((node.lineno, node.id))
        elif isinstance(node, ast.Attribute) and node.attr in FORBIDDEN_NAMES:
            found.append((node.lineno, "." + node.attr))
        elif isinstance(node, ast.alias) and node.name.split(".")[0] in FORBIDDEN_NAMES | {"sys", "gc"}:
            found.append((getattr(node, "lineno", 0), "import " + node.name))
        elif isinstance(node, ast.Constant) and node.value in FORBIDDEN_NAMES:
            found.append((node.lineno, repr(node.value)))      # getattr(pool, "storage")
    assert not found, f"zswap/frontend.py reaches past the pool contract: {found}"


def test_frontend_module_holds_no_storage():
    """Whatever the source says, the loaded module has no storage class or module."""
    import devpool.zswap.frontend as zmod
    bad = [name for name, obj in vars(zmod).items()
           if getattr(obj, "__module__", "") in ("devpool.host", "devpool.host._arena", "devpool.pool.chaos",
                                                  "devpool.pool.storage", "devpool.pool.allocator")
           or getattr(obj, "__name__", "").startswith(("devpool.host", "devpool.kernels", "devpool.pool.chaos",
                                                        "devpool.pool.storage", "devpool.pool.allocator"))]
    assert not bad, bad


def _frontend_frame(depth: int = 2) -> bool:
    return sys._getframe(depth).f_code.co_filename == str(ZSWAP_SRC)


def watch(pool):
    """Record every attribute the frontend touches on ``pool`` and on its storage."""
    touched_pool: list[str] = []
    touched_storage: list[str] = []
    pool_cls, storage_cls = type(pool), type(pool.storage)

    class WatchedPool(pool_cls):
        def __getattribute__(self, name):
            if _frontend_frame():
                touched_pool.append(name)
            return pool_cls.__getattribute__(self, name)

    class WatchedStorage(storage_cls):
        def __getattribute__(self, name):
            if _frontend_frame():
                touched_storage.append(name)
            return storage_cls.__getattribute__(self, name)

    pool.__class__ = WatchedPool
    pool.storage.__class__ = WatchedStorage
    return touched_pool, touched_storage


@pytest.mark.parametrize("backend_name", ["chaos", "host"])
def test_at_run_time_the_frontend_uses_public_pool_api_only(tmp_path, backend_name):
    pool = devpool.open_pool(backend_name, 4 << 20, segment_bytes=16384)
    touched_pool, touched_storage = watch(pool)
    zs = devpool.Zswap(pool, max_pool_bytes=128 * 1024, accept_threshold_percent=60,
                       backing=tmp_path / "swap")
    rng = np.random.default_rng(1)
    pages = make_pages(80, rng, ("text", "struct", "random"))
    zs.store_batch(np.arange(60), pages[:60])                  # hits the limit: shrinker runs
    for i in range(60, 80):
        zs.store(i, pages[i])
    zs.store(100, filled_page(0))
    zs.store(101, random_page(rng))
    zs.writeback(5)
    zs.stats()
    zs.entry_kind(3), zs.contains(3)
    np.testing.assert_array_equal(zs.load(70), pages[70])
    np.testing.assert_array_equal(zs.load_batch(np.arange(0, 60, 3)), pages[0:60:3])
    zs.invalidate(1)
    zs.invalidate_batch([2, 4])
    zs.invalidate_area()
    zs.close()
    assert touched_pool, "the watch saw nothing: it is broken, not the frontend clean"
    private = sorted({n for n in touched_pool if n.startswith("_") and n != "__class__"})
    assert not private, f"the frontend touches private pool attributes: {private}"
    assert "storage" not in touched_pool and "alloc_" not in touched_pool
    assert not touched_storage, f"the frontend touches the storage: {sorted(set(touched_storage))}"
    pool.close()
