"""Run a worker on several threads at once and surface what went wrong in any of them."""

from __future__ import annotations

import threading


def run_in_threads(worker, n: int, timeout: float) -> None:
    """Call ``worker(i)`` for i in 0..n-1 on n threads; assert none hung past ``timeout``
    seconds (a deadlock) and none raised (their exceptions are the assertion's message)."""
    errors = []

    def guarded(i):
        try:
            worker(i)
        except Exception as exc:  # surfaced below, on the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=timeout)
    assert not any(t.is_alive() for t in threads), "deadlock"
    assert not errors, errors
