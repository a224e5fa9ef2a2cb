"""Replaying a sequence of steps that hypothesis' stateful testing once found.

A fresh checkout has no example database, so a minimal failing example is kept as data,
``[(rule name, keyword arguments), ...]``, and replayed on every run.
"""

from __future__ import annotations

from hypothesis import given, settings, strategies as st


def replay_steps(start, steps, checks) -> None:
    """Call each rule of ``steps`` on the state machine ``start()`` returns, and every
    invariant named in ``checks`` after each; the machine's teardown runs whatever
    happens. Inside a one-example hypothesis test, since rules and invariants may call
    ``event()``."""

    @settings(max_examples=1, database=None, deadline=None)
    @given(st.none())
    def replay(_):
        machine = start()
        try:
            for rule, kwargs in steps:
                getattr(machine, rule)(**kwargs)
                for check in checks:
                    getattr(machine, check)()
        finally:
            machine.teardown()

    replay()
