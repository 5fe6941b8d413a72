"""A wait for frames that stop coming fails with a clear error instead of hanging."""

from __future__ import annotations

import asyncio
import types

import pytest

from magscope_devices._bead_tracker import TrackerAcquireLogic, TrackerTriggerLogic


class _StalledCapture:
    """A capture whose request never completes; rows come in only while ``flowing``."""

    def __init__(self, flowing_s: float) -> None:
        self.tracker = types.SimpleNamespace(name="tracker")
        self.rows = 0
        self.flowing_s = flowing_s
        self.loop_time0: float | None = None

    @property
    def busy(self) -> bool:
        return True

    @property
    def rows_written(self) -> int:
        now = asyncio.get_running_loop().time()
        if self.loop_time0 is None:
            self.loop_time0 = now
        if now - self.loop_time0 < self.flowing_s:
            self.rows += 1
        return self.rows


def _logic(capture, stall_s: float) -> TrackerAcquireLogic:
    trigger = TrackerTriggerLogic()
    trigger.frames = 500
    logic = TrackerAcquireLogic(capture, trigger, check=lambda: None)
    logic.stall_s = stall_s
    return logic


async def test_a_stalled_recording_fails_naming_what_it_waited_for():
    capture = _StalledCapture(flowing_s=0.0)
    with pytest.raises(TimeoutError, match=r"tracker: no frame recorded for 0.1 s .*500 frames"):
        await asyncio.wait_for(_logic(capture, 0.1).wait_for_idle(), timeout=5)


async def test_a_slow_but_moving_recording_is_not_a_stall():
    capture = _StalledCapture(flowing_s=0.5)  # rows keep coming for 0.5 s, then stop
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    with pytest.raises(TimeoutError, match="no frame recorded"):
        await asyncio.wait_for(_logic(capture, 0.2).wait_for_idle(), timeout=5)
    assert loop.time() - t0 >= 0.6  # the stall clock started when the rows stopped
