"""The public door: ``devpool.__all__`` is exactly the public surface."""

import devpool


def test_all_is_the_public_surface():
    public = {n for n in dir(devpool) if not n.startswith("_")}
    # submodules that become attributes on import are not part of the surface
    public -= {"host", "kernels", "cli", "pool", "codecs", "zswap", "region", "swapdev"}
    assert set(devpool.__all__) == public
    assert devpool.__all__ == sorted(devpool.__all__)


def test_public_objects_live_in_devpool():
    for name in devpool.__all__:
        obj = getattr(devpool, name)
        if isinstance(obj, type) or callable(obj):
            assert obj.__module__ == "devpool", name


def test_every_error_is_a_devpool_error_and_a_builtin():
    import inspect
    errors = [o for o in vars(devpool).values() if inspect.isclass(o) and issubclass(o, Exception)]
    assert len(errors) >= 10
    for cls in errors:
        assert issubclass(cls, devpool.DevpoolError)
        if cls is not devpool.DevpoolError:
            assert any(b in cls.__mro__ for b in (KeyError, ValueError, MemoryError, OSError, RuntimeError)), cls
