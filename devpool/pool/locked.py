"""How a pool's verbs enter: one re-entrant lock, and the checks behind ``Pool._slow``.

Every public verb of :class:`~devpool.pool.pool.Pool` holds its lock. The batch verbs,
queries and the rest take it through :func:`locked`; the single-object verbs take it
inline (a decorator's extra call is a tenth of their cost), the cheaper way
:mod:`devpool._locking` describes.
"""

from __future__ import annotations

import functools

__all__ = ["locked", "ONE", "BATCH", "QUERY"]

#: what a locked verb is, for :meth:`Pool._enter`: an operation on one object (or on
#: the pool's objects at large: compact), a batch (it counts its objects and provokes a
#: hostile step itself, :meth:`Pool._provoke`), or a question that touches no object
ONE, BATCH, QUERY = 1, None, -1


def locked(method=None, *, kind=ONE):
    """Serialise a public method and make ``_enter``'s checks before it. (The
    single-object verbs do the same inline: a decorator's extra call is a tenth of
    their cost.)"""

    def decorate(method):
        @functools.wraps(method)
        def wrapper(self, *args, **kwargs):
            with self._lock:
                if self._slow:
                    self._enter(kind)
                return method(self, *args, **kwargs)
        return wrapper

    return decorate(method) if method is not None else decorate
