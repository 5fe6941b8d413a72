"""magscope_ipc.waiting: the one helper for polling with a time limit (fast tier)."""

from __future__ import annotations

import asyncio
import itertools
import time

import pytest

from magscope_ipc.waiting import apoll_until, poll_until


def test_returns_the_first_true_value_without_sleeping_when_already_true():
    calls = itertools.count()
    t0 = time.monotonic()
    assert poll_until(lambda: next(calls) or "ready", 5.0, 1.0, what="x") == "ready"
    assert time.monotonic() - t0 < 0.5  # called at once, no sleep first


def test_polls_until_true():
    values = iter([0, None, False, 7])
    assert poll_until(lambda: next(values), 5.0, 0.001, what="the fourth value") == 7


def test_timeout_names_what_and_the_limit():
    t0 = time.monotonic()
    with pytest.raises(TimeoutError, match=r"after 0\.05 s waiting for frame 3 in the ring"):
        poll_until(lambda: False, 0.05, 0.01, what="frame 3 in the ring")
    assert 0.05 <= time.monotonic() - t0 < 1.0


def test_an_error_of_the_predicate_ends_the_wait():
    def dead():
        raise RuntimeError("child exited")

    with pytest.raises(RuntimeError, match="child exited"):
        poll_until(dead, 5.0, 0.01, what="x")


def test_since_counts_one_limit_over_several_waits():
    began = time.monotonic() - 1.0  # the limit already passed
    with pytest.raises(TimeoutError, match="after 0.5 s"):
        poll_until(lambda: False, 0.5, 0.01, what="x", since=began)


def test_async_variant_lets_the_loop_run():
    async def main():
        flag = []
        asyncio.get_running_loop().call_later(0.02, flag.append, True)
        assert await apoll_until(lambda: bool(flag), 5.0, 0.005, what="the flag")
        with pytest.raises(TimeoutError, match="waiting for nothing"):
            await apoll_until(lambda: False, 0.02, 0.005, what="nothing")

    asyncio.run(main())
