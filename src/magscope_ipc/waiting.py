"""Waiting for a condition with a time limit: :func:`poll_until` and :func:`apoll_until`.

The one helper for "poll this until it is true, or give up after so many seconds"::

    poll_until(lambda: ring.count > index, timeout=10.0, interval=0.002,
               what=f"frame {index} in the track ring")

raises ``TimeoutError("Timed out after 10 s waiting for frame 7 in the track ring")``
when the time runs out. ``predicate`` may raise to stop the wait early (a child process
that died, say); the error goes to the caller unchanged. Callers that report a time-out
with another error type catch the TimeoutError and raise theirs from it.

Inside ophyd-async devices, a wait for a *signal's* value is ophyd-async's
``wait_for_value``; these helpers poll plain Python state (shared-memory counters,
process states) that no signal carries.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

__all__ = ["apoll_until", "poll_until"]


def _timed_out(what: str, timeout: float) -> TimeoutError:
    return TimeoutError(f"Timed out after {timeout:g} s waiting for {what}")


def poll_until(
    predicate: Callable[[], T],
    timeout: float,
    interval: float = 0.01,
    *,
    what: str,
    since: float | None = None,
) -> T:
    """Call ``predicate()`` every ``interval`` s until it returns a true value; return it.

    Parameters
    ----------
    predicate
        Called at once, then after each sleep; may raise to end the wait.
    timeout
        Time limit in s, measured from the call (``time.monotonic``). The predicate is
        called once more after the limit before giving up.
    interval
        Sleep between calls, in s.
    what
        What is awaited, for the error message ("the camera process to start").
    since
        Count ``timeout`` from this ``time.monotonic()`` reading instead of from the
        call: one time limit over several waits in a row.

    Raises
    ------
    TimeoutError
        ``timeout`` s passed; the message names ``what`` and ``timeout``.
    """
    deadline = (time.monotonic() if since is None else since) + timeout
    while True:
        if value := predicate():
            return value
        if time.monotonic() > deadline:
            raise _timed_out(what, timeout)
        time.sleep(interval)


async def apoll_until(
    predicate: Callable[[], T],
    timeout: float,
    interval: float = 0.01,
    *,
    what: str,
    since: float | None = None,
) -> T:
    """:func:`poll_until` for coroutines: ``asyncio.sleep`` between the calls, so the
    event loop runs on while it waits."""
    deadline = (time.monotonic() if since is None else since) + timeout
    while True:
        if value := predicate():
            return value
        if time.monotonic() > deadline:
            raise _timed_out(what, timeout)
        await asyncio.sleep(interval)
