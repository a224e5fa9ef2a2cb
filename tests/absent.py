"""Code that runs as if some packages were not installed (the GPU image has no lz4,
zstandard or nvCOMP; the test extra installs all three, so CI would never see it).

``without(*names)`` is a prelude for ``python -c``: a meta-path finder that refuses each
named module and its submodules with ``ModuleNotFoundError``, exactly what the import
system raises for a package that is absent. With a namespace package around it
(``nvidia``, present with every CUDA wheel), ``from nvidia import nvcomp`` then fails as
it does there: with a plain ``ImportError``, not ``ModuleNotFoundError``.
"""

from __future__ import annotations

__all__ = ["without"]


def without(*names: str) -> str:
    return f"""
import importlib.abc as _abc, sys as _sys
class _Absent(_abc.MetaPathFinder):
    names = {tuple(names)!r}
    def find_spec(self, name, path, target=None):
        if any(name == n or name.startswith(n + ".") for n in self.names):
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
for _n in list(_sys.modules):
    if any(_n == n or _n.startswith(n + ".") for n in _Absent.names):
        del _sys.modules[_n]
_sys.meta_path.insert(0, _Absent())
"""
