"""The control socket between a swap region (``client.py``) and its handler (``handler.py``).

One ``SOCK_SEQPACKET`` socket pair, one pickled message per packet. The conversation::

    client                                   handler
    ------                                   -------
    the configuration (a dict)      ->
                                    <-       ("ready", info) | ("err", name, message)
    (REQUEST, *args, tag)           ->
                                    <-       ("ok", value, tag) | ("err", name, message, tag)

Every request ends with a tag (the client's serial number for it) and its reply ends
with the same tag, so a client whose wait for a reply was interrupted (an exception
from a signal handler) can tell that late reply from the next request's
(:func:`reply_to` skips it). ``name`` in an error is the name of a devpool exception
class the client raises again, or of any other exception (then wrapped).

Page bytes never travel here: they go client memory -> memfd -> handler by ``pread``
and handler -> client memory by ``UFFDIO_COPY``. Standard library only.
"""

from __future__ import annotations

import pickle
import socket

__all__ = ["CLOSE", "EVICT", "GUARD", "PING", "REQUESTS", "STATS", "UNGUARD",
           "ask", "error", "ok", "recv", "reply_to", "send"]

# --- the requests ------------------------------------------------------------------------
EVICT = "evict"        # (EVICT, n | None, tag): push n pages out (None: down to the budget)
STATS = "stats"        # (STATS, tag): the handler's counters, the Zswap's under "zswap"
PING = "ping"          # (PING, tag): the handler's pid
GUARD = "guard"        # (GUARD, pid, tag): the client's guard is up; watch it
UNGUARD = "unguard"    # (UNGUARD, tag): the client is closing; its guard's exit is no death
CLOSE = "close"        # (CLOSE, tag): free the pool and exit after the reply
REQUESTS = (EVICT, STATS, PING, GUARD, UNGUARD, CLOSE)

#: one message at most this long (the configuration is the largest)
MAX_MESSAGE = 1 << 20


def send(sock: socket.socket, obj) -> None:
    """One message (pickled) as one packet."""
    sock.send(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))


def recv(sock: socket.socket, bufsize: int = MAX_MESSAGE):
    """One message; ``EOFError`` when the peer closed its end."""
    data = sock.recv(bufsize)
    if not data:
        raise EOFError("peer closed")
    return pickle.loads(data)


def ok(value, tag) -> tuple:
    """The reply to a request that succeeded."""
    return ("ok", value, tag)


def error(exc: BaseException | str, message: str | None = None, tag=None) -> tuple:
    """The reply to a request that failed: the exception's class name and message (or a
    class name and ``message``); ``tag`` None for the greeting's error, which has none."""
    name, text = (exc, message) if isinstance(exc, str) else (type(exc).__name__, str(exc))
    return ("err", name, text) if tag is None else ("err", name, text, tag)


def reply_to(sock: socket.socket, tag, wait=None) -> tuple:
    """The reply that ends with ``tag``. Replies to earlier requests whose callers were
    interrupted while waiting (KeyboardInterrupt, an alarm) are still in the socket:
    they are skipped, not taken for this one's (every later reply would be one behind).
    ``wait(sock)``, if given, runs before each read."""
    while True:
        if wait is not None:
            wait(sock)
        reply = recv(sock)
        if reply and reply[-1] == tag:
            return reply


def ask(sock: socket.socket, req: tuple, timeout: float, wait=None) -> bool:
    """Send ``req`` and wait (at most ``timeout`` seconds per read) for its reply; False
    when the peer did not answer (or its socket failed, or ``wait(sock)``, run before
    each read, raised OSError). An EOF is an exiting handler: an answer of sorts (True)."""
    try:
        sock.settimeout(timeout)
        send(sock, req)
        reply_to(sock, req[-1], wait)
        return True
    except EOFError:
        return True
    except OSError:
        return False
