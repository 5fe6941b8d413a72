"""The bead locks as ophyd-async devices: :class:`FocusLock` and :class:`XYLock`.

Each wraps a loop of :mod:`magscope_tracking.lock_loops` that runs in its own thread beside
the tracking service (never in the RunEngine's event loop) and reads the track ring. The
focus lock moves the focus *through the* ``FocusStage`` *device* (its one writer: the move
is scheduled on the device's event loop, so it shows in the focus's readback, limits
hold, and a plan sees it); the XY lock moves ROIs through the tracking service's ROI table
(:meth:`TrackingService.move_rois`).

Settings are signals (``enabled``, ``target_nm``, ``rate_hz``, ``kp``, ``ki``,
``max_step_nm``; ``threshold_px`` for XY), checked when set: a value out of range fails
the set with the value and the limit, and nothing changes. Readbacks (``error_nm``,
``correction_nm``, ``locked``, ``n_reference_valid`` or ``n_beads_valid``, ``moves``,
``reason``) are updated by every loop update and read with every event of a plan that
reads the microscope.

The loops start when the microscope connects (not in mock mode) and stop when it closes.
A lock starts disabled.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import math
from typing import Any

import numpy as np
from ophyd_async.core import (
    Reference,
    SignalRW,
    StandardReadable,
    soft_signal_r_and_setter,
    soft_signal_rw,
)
from ophyd_async.core import StandardReadableFormat as Format

from magscope_tracking.bead_lock import FocusLockGains
from magscope_tracking.lock_loops import FocusLockLoop, LockStatus, XYLockLoop

from ._bead_tracker import BeadTracker
from ._motors import FocusStage

__all__ = ["FocusLock", "XYLock"]

#: Longest a focus-lock move may take before the loop gives up on it (s).
FOCUS_MOVE_TIMEOUT_S = 5.0


class _FocusThroughDevice:
    """The focus stage seen from the lock's thread: reads and moves run as coroutines on
    the device's event loop (the one writer), the thread waits for them."""

    def __init__(self, focus: FocusStage) -> None:
        self._focus = Reference(focus)
        self.loop: asyncio.AbstractEventLoop | None = None

    def _call(self, coro, timeout: float) -> Any:
        if self.loop is None or self.loop.is_closed():
            coro.close()
            raise RuntimeError("the focus lock has no event loop (microscope not connected)")
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TimeoutError(f"the focus did not answer within {timeout:g} s") from None

    def position(self) -> tuple[float, float, float]:
        focus = self._focus()

        async def read() -> tuple[float, float, float]:
            values = await asyncio.gather(
                focus.readback.get_value(), focus.low_limit.get_value(),
                focus.high_limit.get_value(),
            )
            return float(values[0]), float(values[1]), float(values[2])

        return self._call(read(), 2.0)

    def focal_shift(self) -> float:
        focus = self._focus()

        async def read() -> float:
            return float(await focus.focal_shift.get_value())

        return self._call(read(), 2.0)

    def move_to(self, focus_nm: float) -> None:
        focus = self._focus()

        async def move() -> None:
            await focus.set(focus_nm)

        self._call(move(), FOCUS_MOVE_TIMEOUT_S)


class _TrackerRois:
    """The tracking service's ROI table, found through the tracker when used."""

    def __init__(self, tracker: BeadTracker) -> None:
        self._tracker = Reference(tracker)

    def _service(self):
        service = self._tracker().service
        if service is None or not service.running:
            raise RuntimeError("the tracking service is not running")
        return service

    @property
    def rois(self) -> np.ndarray:
        return self._service().rois

    @property
    def roi_size(self) -> int | None:
        return self._service().roi_size

    def sensor_shape(self) -> tuple[int, int]:
        return self._service().sensor_shape()

    def move_rois(self, old: Any, new: Any) -> tuple[int, ...]:
        return self._service().move_rois(old, new)


class _LockDevice(StandardReadable):
    """What both locks share: the loop's thread, the readbacks it updates."""

    _loop_obj: FocusLockLoop | XYLockLoop
    enabled: SignalRW[bool]
    rate_hz: SignalRW[float]

    def _common_settings(self) -> None:
        """``enabled`` and ``rate_hz``, read from and checked by the loop (call inside the
        configuration-signal block)."""
        lp = self._loop_obj
        self.enabled = soft_signal_rw(
            bool, False, getter=lambda: lp.enabled, setter=self._set_enabled, poll_period=0.5
        )
        self.rate_hz = soft_signal_rw(
            float, lp.rate_hz, getter=lambda: lp.rate_hz, setter=lp.set_rate_hz, units="Hz"
        )

    def _readbacks(self, count_name: str) -> None:
        with self.add_children_as_readables():
            self.locked, self._set_locked = soft_signal_r_and_setter(bool, False)
            self.error_nm, self._set_error = soft_signal_r_and_setter(
                float, math.nan, units="nm", precision=2
            )
            self.correction_nm, self._set_correction = soft_signal_r_and_setter(
                float, 0.0, units="nm", precision=2
            )
            valid, self._set_valid = soft_signal_r_and_setter(int, 0, units="beads")
            setattr(self, count_name, valid)
            self.moves, self._set_moves = soft_signal_r_and_setter(int, 0, units="moves")
            self.reason, self._set_reason = soft_signal_r_and_setter(str, "off")
        self._event_loop: asyncio.AbstractEventLoop | None = None

    def _on_update(self, status: LockStatus) -> None:
        """From the loop's thread: hand the status to the event loop."""
        loop = self._event_loop
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(self._apply, status)
            except RuntimeError:  # the loop closed meanwhile
                pass

    def _apply(self, status: LockStatus) -> None:
        self._set_locked(bool(status.locked))
        self._set_error(float(status.error_nm))
        self._set_correction(float(status.correction_nm))
        self._set_valid(int(status.n_valid))
        self._set_moves(int(status.moves))
        self._set_reason(status.reason)

    @property
    def status(self) -> LockStatus:
        """The loop's last update (any thread)."""
        return self._loop_obj.status

    def start_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start the lock's thread; its readbacks are updated on ``loop``."""
        self._event_loop = loop
        self._loop_obj.start()

    def stop_loop(self) -> None:
        self._loop_obj.set_enabled(False)
        self._loop_obj.stop()

    async def _set_enabled(self, value: Any) -> None:
        self._loop_obj.set_enabled(value)
        if not value:  # an update in flight ends before the set does: then nothing moves
            while self._loop_obj.busy:
                await asyncio.sleep(0.005)
            self._apply(self._loop_obj.status)


class FocusLock(_LockDevice):
    """Holds the reference beads' height (nm) by moving the focus (see the module docstring).

    Signals: ``enabled`` (bool), ``target_nm`` (nm; NaN: the height at the next update),
    ``rate_hz`` (1-10 Hz), ``kp`` (0-1], ``ki`` [0-0.5], ``max_step_nm`` (0-2000 nm].
    Readbacks: ``error_nm`` (reference height minus target, nm), ``correction_nm`` (the
    last focus move, nm), ``locked``, ``n_reference_valid``, ``moves``, ``reason``.
    Sign: raising the focus lowers every tracked z (:mod:`magscope_tracking.bead_lock`).
    """

    def __init__(self, tracker: BeadTracker, focus: FocusStage, name: str = "") -> None:
        self._actuator = _FocusThroughDevice(focus)
        tracker_ref = Reference(tracker)
        self._loop_obj = FocusLockLoop(
            lambda: tracker_ref()._ring, lambda: tracker_ref().reference_ids(),
            self._actuator, on_update=self._on_update,
        )
        lp = self._loop_obj
        with self.add_children_as_readables(Format.CONFIG_SIGNAL):
            self._common_settings()
            self.target_nm = soft_signal_rw(
                float, math.nan, getter=lambda: lp.target_nm, setter=lp.set_target_nm,
                units="nm",
            )
            defaults = FocusLockGains()
            self.kp = soft_signal_rw(
                float, defaults.kp, getter=lambda: lp.gains.kp,
                setter=lambda v: lp.set_gains(kp=v), units="1 (fraction of the error per update)",
            )
            self.ki = soft_signal_rw(
                float, defaults.ki, getter=lambda: lp.gains.ki,
                setter=lambda v: lp.set_gains(ki=v), units="1 (fraction of the error per update)",
            )
            self.max_step_nm = soft_signal_rw(
                float, defaults.max_step_nm, getter=lambda: lp.gains.max_step_nm,
                setter=lambda v: lp.set_gains(max_step_nm=v), units="nm",
            )
        self._readbacks("n_reference_valid")
        super().__init__(name=name)

    def start_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        self._actuator.loop = loop
        super().start_loop(loop)


class XYLock(_LockDevice):
    """Keeps every bead's ROI centred on it by whole-pixel ROI moves.

    Signals: ``enabled`` (bool), ``rate_hz`` (0.1-10 Hz), ``threshold_px`` (dead-band,
    0.5-16 px). Readbacks: ``error_nm`` (largest bead offset from its ROI centre, nm),
    ``correction_nm`` (largest ROI move of the last update, nm), ``locked`` (no move
    skipped), ``n_beads_valid``, ``moves`` (ROI moves so far), ``reason`` (skipped moves
    and why).
    """

    def __init__(self, tracker: BeadTracker, name: str = "") -> None:
        tracker_ref = Reference(tracker)
        self._loop_obj = XYLockLoop(
            lambda: tracker_ref()._ring, _TrackerRois(tracker), tracker._nm_per_px,
            on_update=self._on_update,
        )
        lp = self._loop_obj
        with self.add_children_as_readables(Format.CONFIG_SIGNAL):
            self._common_settings()
            self.threshold_px = soft_signal_rw(
                float, lp.threshold_px, getter=lambda: lp.threshold_px,
                setter=lp.set_threshold_px, units="px",
            )
        self._readbacks("n_beads_valid")
        super().__init__(name=name)
