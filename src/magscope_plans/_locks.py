"""Plan stubs of the bead locks, the suspension of the focus lock by plans that own the
focus, and a suspender that pauses a plan while the focus lock is lost.

- :func:`lock_focus` / :func:`unlock_focus`, :func:`lock_xy` / :func:`unlock_xy`: no run;
  every argument is checked before the first message.
- :func:`focus_lock_suspended`: runs a plan with the focus lock off and turns it back on
  however the plan ends (``zlut_sweep`` and ``focus_scan`` use it).
- :class:`FocusLockSuspender`: a bluesky suspender on ``focus_lock.locked``; install it
  with ``RE.install_suspender`` or around one plan with
  ``bluesky.preprocessors.suspend_wrapper``. While the lock is lost the RunEngine
  suspends; a full-rate record (:class:`TrackRecorder`) in flight is dropped and recorded
  again after the lock is back.
"""

from __future__ import annotations

import math
from collections.abc import Generator
from typing import Any

import bluesky.plan_stubs as bps
from bluesky.preprocessors import finalize_wrapper
from bluesky.suspenders import SuspendBoolLow
from bluesky.utils import Msg

from magscope_devices._microscope import Microscope
from magscope_tracking.bead_lock import (
    FOCUS_RATE_HZ_RANGE,
    GAIN_RANGES,
    THRESHOLD_PX_RANGE,
    XY_RATE_HZ_RANGE,
    LockParameterError,
)

from ._arguments import PlanArgs, PreflightError
from ._preflight import check_microscope

__all__ = [
    "FocusLockSuspender",
    "focus_lock_suspended",
    "lock_focus",
    "lock_xy",
    "unlock_focus",
    "unlock_xy",
]


def _lock_of(microscope: Microscope, plan: str, which: str) -> Any:
    check_microscope(microscope, plan, tracker=True)
    lock = getattr(microscope, which, None)
    if lock is None:
        raise PreflightError(f"{plan}: {microscope.name} has no {which}")
    return lock


def _in_range(args: PlanArgs, name: str, value: Any, low: float, high: float,
              units: str = "", *, low_open: bool = False) -> float | None:
    """``value`` checked against [low, high] (None passes: keep the current setting)."""
    if value is None:
        return None
    return args.real(name, value, units=units, low=low, high=high, low_open=low_open)


def _gain(args: PlanArgs, name: str, value: Any) -> float | None:
    """A focus-lock gain checked against its range (:data:`GAIN_RANGES`, as the lock does)."""
    low, high, units, low_open = GAIN_RANGES[name]
    return _in_range(args, name, value, low, high, units, low_open=low_open)


def lock_focus(
    microscope: Microscope,
    target_nm: float | None = None,
    *,
    rate_hz: float | None = None,
    kp: float | None = None,
    ki: float | None = None,
    max_step_nm: float | None = None,
) -> Generator[Msg, Any, None]:
    """Turn the focus lock on: hold the reference beads' height at ``target_nm``.

    :param target_nm: reference height to hold (nm, tracked z); None: the height the
        beads have at the lock's first update (hold where they are).
    :param rate_hz: updates per second (1-10 Hz); None keeps the current setting (as for
        the gains).
    :param kp: fraction of the error corrected per update, (0, 1].
    :param ki: fraction of the error added to the learned drift rate per update, [0, 0.5].
    :param max_step_nm: largest focus move of one update (nm), (0, 2000].

    Needs reference beads (``find_reference_beads``) and a Z-LUT. No run.
    """
    plan = "lock_focus"
    args = PlanArgs(plan)
    target = None if target_nm is None else args.real("target_nm", target_nm, units="nm")
    rate = _in_range(args, "rate_hz", rate_hz, *FOCUS_RATE_HZ_RANGE, "Hz")
    kp_v, ki_v = _gain(args, "kp", kp), _gain(args, "ki", ki)
    step = _gain(args, "max_step_nm", max_step_nm)
    lock = _lock_of(microscope, plan, "focus_lock")
    tracker = microscope.tracker
    refs = yield from bps.rd(tracker.reference_beads)
    if len(refs) == 0:
        raise PreflightError(
            f"{plan}: no reference beads: run `yield from find_reference_beads("
            f"{microscope.name}.tracker)` or set {microscope.name}.tracker.reference_beads"
        )
    if not (yield from bps.rd(tracker.zlut_path)):
        raise PreflightError(f"{plan}: no Z-LUT loaded: the lock needs z (run zlut_sweep)")
    settings: list[Any] = []
    for signal, value in ((lock.rate_hz, rate), (lock.kp, kp_v), (lock.ki, ki_v),
                          (lock.max_step_nm, step)):
        if value is not None:
            settings += [signal, value]
    settings += [lock.target_nm, math.nan if target is None else target]
    yield from bps.mv(*settings)
    yield from bps.mv(lock.enabled, True)


def unlock_focus(microscope: Microscope) -> Generator[Msg, Any, None]:
    """Turn the focus lock off (an update in flight finishes first; then nothing moves the
    focus but you). No run."""
    lock = _lock_of(microscope, "unlock_focus", "focus_lock")
    yield from bps.mv(lock.enabled, False)


def lock_xy(
    microscope: Microscope,
    *,
    threshold_px: float | None = None,
    rate_hz: float | None = None,
) -> Generator[Msg, Any, None]:
    """Turn the XY lock on: keep every ROI centred on its bead by whole-pixel moves.

    :param threshold_px: dead-band (px, 0.5-16): a bead further than this off its ROI's
        centre gets its ROI moved. None keeps the current setting (1 px by default).
    :param rate_hz: updates per second (0.1-10 Hz). None keeps the current setting.
    No run.
    """
    plan = "lock_xy"
    args = PlanArgs(plan)
    threshold = _in_range(args, "threshold_px", threshold_px, *THRESHOLD_PX_RANGE, "px")
    rate = _in_range(args, "rate_hz", rate_hz, *XY_RATE_HZ_RANGE, "Hz")
    lock = _lock_of(microscope, plan, "xy_lock")
    settings: list[Any] = []
    if threshold is not None:
        settings += [lock.threshold_px, threshold]
    if rate is not None:
        settings += [lock.rate_hz, rate]
    if settings:
        yield from bps.mv(*settings)
    yield from bps.mv(lock.enabled, True)


def unlock_xy(microscope: Microscope) -> Generator[Msg, Any, None]:
    """Turn the XY lock off. No run."""
    lock = _lock_of(microscope, "unlock_xy", "xy_lock")
    yield from bps.mv(lock.enabled, False)


def focus_lock_suspended(
    plan: Generator[Msg, Any, Any], microscope: Microscope, *, retarget: bool = False
) -> Generator[Msg, Any, Any]:
    """Run ``plan`` with the focus lock off, and turn it back on however ``plan`` ends
    (success, error, abort), if it was on. ``retarget``: the lock then takes the
    reference height it finds as its new target (after a new Z-LUT, whose z has another
    zero). Returns what ``plan`` returns."""
    lock = getattr(microscope, "focus_lock", None)
    if lock is None:
        return (yield from plan)
    was_on = yield from bps.rd(lock.enabled)
    if not was_on:
        return (yield from plan)
    yield from bps.mv(lock.enabled, False)

    def restore() -> Generator[Msg, Any, None]:
        if retarget:
            yield from bps.mv(lock.target_nm, math.nan)
        yield from bps.mv(lock.enabled, True)

    return (yield from finalize_wrapper(plan, restore()))


class _SubscribableLocked:
    """``focus_lock.locked`` with the ``subscribe(cb, event_type, run)`` / ``clear_sub``
    that bluesky's suspenders call (an ophyd-async signal has ``subscribe_reading``)."""

    def __init__(self, signal: Any) -> None:
        self.signal = signal
        self.name = signal.name
        self._callbacks: dict[Any, Any] = {}

    def subscribe(self, callback: Any, event_type: Any = None, run: bool = True) -> int:
        def on_reading(reading: dict[str, Any]) -> None:
            (entry,) = reading.values()
            callback(value=bool(entry["value"]))

        self._callbacks[callback] = on_reading
        self.signal.subscribe_reading(on_reading)
        return id(callback)

    def clear_sub(self, callback: Any, event_type: Any = None) -> None:
        on_reading = self._callbacks.pop(callback, None)
        if on_reading is not None:
            self.signal.clear_sub(on_reading)


class FocusLockSuspender(SuspendBoolLow):
    """Suspends the RunEngine while ``microscope.focus_lock.locked`` is False and resumes
    ``sleep_s`` seconds after it is True again. Only acts while the lock is enabled
    in spirit: install it for plans that run with the lock on."""

    def __init__(self, microscope: Microscope, *, sleep_s: float = 0.5, **kwargs: Any) -> None:
        lock = getattr(microscope, "focus_lock", None)
        if lock is None:
            raise PreflightError(f"{microscope.name} has no focus_lock to suspend on")
        if not (math.isfinite(sleep_s) and sleep_s >= 0):
            raise LockParameterError(f"sleep_s = {sleep_s!r} s must be a number >= 0 s")
        super().__init__(_SubscribableLocked(lock.locked), sleep=sleep_s, **kwargs)

    def _get_justification(self) -> str:
        if not self.tripped:
            return ""
        return "the focus lock is not locked (see focus_lock.reason)"
