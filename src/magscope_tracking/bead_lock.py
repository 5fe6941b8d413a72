"""Bead lock rules as pure functions: the focus lock's PI step and the XY lock's ROI moves.

No threads, no devices: :mod:`magscope_tracking.lock_loops` runs these rules on the track
ring, and :mod:`magscope_devices` wraps the loops as ``FocusLock`` and ``XYLock``.

Sign convention (focus). A tracked z (nm, from the Z-LUT) is the bead's height *above the
focal plane*, plus a constant per Z-LUT: the Z-LUT is built with z = minus the focus
offset (:func:`magscope_plans.zlut_sweep`). So raising the focus by ``d`` nm lowers every
tracked z by ``d``; a stage drifting up by ``d`` raises every tracked z by ``d``. The focus
lock's error is ``measured - target`` (nm) and its correction is a focus move of the
*same* sign: beads reading too high (error > 0) are brought back by moving the focus up.

The focus lock is a PI loop in velocity form: at each update the focus moves by
``kp * error + rate * dt``, where ``rate`` (nm/s) is the integral term, the drift rate
the loop has learned (``rate += ki * error / dt``). It follows a steady drift with no
lag. Anti-windup: the integral only learns from errors within ``integral_band_nm`` (a
step, such as a bump of the focus, is corrected by the proportional term alone and does
not teach a false drift rate), not on an update whose move was clamped (``max_step_nm``
per update, or the focus range), and the learned rate is itself bounded by
``max_step_nm`` per update.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from ._roi_table import ROI_DTYPE

__all__ = [
    "FOCUS_RATE_HZ_RANGE",
    "XY_RATE_HZ_RANGE",
    "GAIN_RANGES",
    "THRESHOLD_PX_RANGE",
    "FocusLockGains",
    "FocusLockState",
    "FocusStep",
    "LockParameterError",
    "XYMoves",
    "check_rate_hz",
    "check_threshold_px",
    "focus_step",
    "reference_height",
    "roi_offsets_px",
    "xy_lock_moves",
]

#: Update rates (Hz) the focus lock accepts, inclusive.
FOCUS_RATE_HZ_RANGE = (1.0, 10.0)
#: Update rates (Hz) the XY lock accepts, inclusive (MagScope acted every 10 s).
XY_RATE_HZ_RANGE = (0.1, 10.0)
#: The XY lock's dead-bands (px) it accepts, inclusive.
THRESHOLD_PX_RANGE = (0.5, 16.0)
#: Focus-lock gains: name -> (low, high, units, low end open); the plans check these too.
GAIN_RANGES: dict[str, tuple[float, float, str, bool]] = {
    "kp": (0.0, 1.0, "", True),
    "ki": (0.0, 0.5, "", False),
    "max_step_nm": (0.0, 2000.0, "nm", True),
    "integral_band_nm": (0.0, 1e4, "nm", True),
    "tolerance_nm": (0.0, 1e4, "nm", True),
}


class LockParameterError(ValueError):
    """A lock parameter outside its range (the message names the value and the limit)."""


def _check(name: str, value: object, low: float, high: float, units: str = "",
           *, low_open: bool = False) -> float:
    """``value`` as a float if it is a finite real in [low, high] (or (low, high])."""
    suffix = f" {units}" if units else ""
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise LockParameterError(
            f"{name} = {value!r} is a {type(value).__name__}, not a number"
            + (f" of {units}" if units else "")
        )
    v = float(value)
    bracket = "(" if low_open else "["
    if not math.isfinite(v) or v < low or v > high or (low_open and v == low):
        raise LockParameterError(
            f"{name} = {value!r}{suffix} is outside {bracket}{low:g}, {high:g}]{suffix}"
        )
    return v


def check_rate_hz(rate_hz: object, allowed: tuple[float, float] = FOCUS_RATE_HZ_RANGE,
                  name: str = "rate_hz") -> float:
    """``rate_hz`` as a float, or :class:`LockParameterError` naming it and the range."""
    return _check(name, rate_hz, allowed[0], allowed[1], "Hz")


def check_threshold_px(threshold_px: object) -> float:
    """The XY lock's dead-band as a float, or :class:`LockParameterError` with the range."""
    return _check("threshold_px", threshold_px, *THRESHOLD_PX_RANGE, "px")


@dataclass(frozen=True)
class FocusLockGains:
    """Gains and limits of the focus lock.

    :param kp: fraction of the error corrected at each update, in (0, 1].
    :param ki: fraction of the error added to the learned drift rate at each update
        (``rate += ki * error / dt``), in [0, 0.5]; 0 makes a pure proportional step.
    :param max_step_nm: largest focus move of one update (nm), in (0, 2000].
    :param integral_band_nm: the integral learns only from errors this small (nm), > 0.
    :param tolerance_nm: ``locked`` needs |error| within this (nm), > 0.
    """

    kp: float = 0.7
    ki: float = 0.1
    max_step_nm: float = 200.0
    integral_band_nm: float = 20.0
    tolerance_nm: float = 20.0

    def __post_init__(self) -> None:
        for name, (low, high, units, low_open) in GAIN_RANGES.items():
            _check(name, getattr(self, name), low, high, units, low_open=low_open)

    def with_(self, **changes: float) -> FocusLockGains:
        """A copy with ``changes`` (validated)."""
        return replace(self, **changes)


@dataclass(frozen=True)
class FocusLockState:
    """What the focus lock carries from one update to the next: the learned drift rate
    (nm/s, in the focus's direction)."""

    rate_nm_s: float = 0.0


@dataclass(frozen=True)
class FocusStep:
    """One focus-lock update: move the focus by ``correction_nm`` to ``focus_nm``.

    ``clamped``: the move was cut to ``max_step_nm``; ``at_limit``: ``"low"`` or
    ``"high"`` when the move was cut at the focus range (the loop must stop), else None.
    """

    correction_nm: float
    focus_nm: float
    state: FocusLockState
    clamped: bool
    at_limit: str | None


def focus_step(
    error_nm: float,
    dt_s: float,
    state: FocusLockState,
    gains: FocusLockGains,
    *,
    focus_nm: float,
    low_nm: float,
    high_nm: float,
) -> FocusStep:
    """The focus lock's PI step (see the module docstring for the sign convention).

    :param error_nm: measured minus target reference height (nm), finite.
    :param dt_s: time since the previous update (s), > 0.
    :param focus_nm: the focus now (nm); ``low_nm``/``high_nm`` its range (nm).
    """
    if not math.isfinite(error_nm):
        raise ValueError(f"error_nm = {error_nm!r} is not finite: hold the focus instead")
    if not (math.isfinite(dt_s) and dt_s > 0):
        raise ValueError(f"dt_s = {dt_s!r} must be a positive number of s")
    max_rate = gains.max_step_nm / dt_s
    rate = state.rate_nm_s
    learn = abs(error_nm) <= gains.integral_band_nm
    new_rate = rate + gains.ki * error_nm / dt_s if learn else rate
    new_rate = min(max(new_rate, -max_rate), max_rate)
    step = gains.kp * error_nm + new_rate * dt_s
    clamped = abs(step) > gains.max_step_nm
    if clamped:
        step = math.copysign(gains.max_step_nm, step)
    target = focus_nm + step
    at_limit: str | None = None
    if target < low_nm:
        target, at_limit = low_nm, "low"
    elif target > high_nm:
        target, at_limit = high_nm, "high"
    if clamped or at_limit:
        new_rate = rate  # anti-windup: nothing learned from a move that was cut
    return FocusStep(
        correction_nm=target - focus_nm, focus_nm=target, state=FocusLockState(new_rate),
        clamped=clamped, at_limit=at_limit,
    )


def reference_height(z_nm: np.ndarray, *, min_valid_fraction: float = 0.5) -> tuple[float, int]:
    """The reference beads' height (nm) over a stretch of frames, and how many counted.

    :param z_nm: (frames, reference beads) tracked z (nm); NaN where a bead was lost or a
        frame was not tracked.
    :returns: (median over the valid beads of each bead's mean z, number of valid beads);
        a bead is valid when it has a finite z in at least ``min_valid_fraction`` of the
        frames; (NaN, 0) when none is.
    """
    z = np.asarray(z_nm, dtype=np.float64)
    if z.ndim != 2 or z.shape[0] == 0 or z.shape[1] == 0:
        return math.nan, 0
    finite = np.isfinite(z)
    valid = finite.sum(axis=0) >= max(1, math.ceil(min_valid_fraction * z.shape[0]))
    if not valid.any():
        return math.nan, 0
    means = np.nanmean(np.where(finite[:, valid], z[:, valid], np.nan), axis=0)
    return float(np.median(means)), int(valid.sum())


def roi_offsets_px(rois: np.ndarray, x_px: np.ndarray, y_px: np.ndarray,
                   roi_size: int) -> np.ndarray:
    """(n, 2) offsets (px) of the beads (sensor px, pixel centres at whole numbers) from
    the centres of their ROIs (``rois`` rows, :data:`ROI_DTYPE`, in the same order)."""
    half = (int(roi_size) - 1) / 2.0
    return np.column_stack([
        np.asarray(x_px, float) - (rois["x0"] + half),
        np.asarray(y_px, float) - (rois["y0"] + half),
    ])


@dataclass(frozen=True)
class XYMoves:
    """The XY lock's decision: ``table`` is the ROI table after the moves (same rows and
    order as the input); ``moved`` the bead ids moved; ``skipped`` ``{bead id: why}`` for
    beads that needed a move that would leave the sensor or overlap another ROI."""

    table: np.ndarray
    moved: tuple[int, ...]
    skipped: dict[int, str]


def xy_lock_moves(
    rois: np.ndarray,
    x_px: np.ndarray,
    y_px: np.ndarray,
    *,
    roi_size: int,
    sensor_shape: tuple[int, int],
    threshold_px: float,
) -> XYMoves:
    """Re-centre ROIs on their beads by whole pixels.

    A bead more than ``threshold_px`` off its ROI's centre along x (or y) gets its ROI
    moved by the offset rounded to whole pixels along that axis. A move that would leave
    the sensor (``sensor_shape`` = (height, width) px) or overlap another ROI (as moved so
    far) is skipped and said why. Beads with a NaN position are left where they are.

    :param rois: the ROI table (:data:`ROI_DTYPE`).
    :param x_px, y_px: each bead's position (sensor px), in the table's order.
    """
    table = np.array(rois, dtype=ROI_DTYPE, copy=True)
    offsets = roi_offsets_px(table, x_px, y_px, roi_size)
    height, width = sensor_shape
    size = int(roi_size)
    moved: list[int] = []
    skipped: dict[int, str] = {}
    for i in range(table.size):
        off = offsets[i]
        if not np.all(np.isfinite(off)):
            continue
        shift = np.where(np.abs(off) > threshold_px, np.round(off), 0.0).astype(np.int64)
        if not shift.any():
            continue
        bead = int(table["bead_id"][i])
        x0 = int(table["x0"][i] + shift[0])
        y0 = int(table["y0"][i] + shift[1])
        if x0 < 0 or y0 < 0 or x0 + size > width or y0 + size > height:
            skipped[bead] = (
                f"bead {bead}: moving its ROI by ({shift[0]:+d}, {shift[1]:+d}) px to "
                f"({x0}, {y0}) would leave the {width} x {height} px sensor"
            )
            continue
        others = np.arange(table.size) != i
        clash = others & (np.abs(table["x0"] - x0) < size) & (np.abs(table["y0"] - y0) < size)
        if clash.any():
            other = int(table["bead_id"][np.flatnonzero(clash)[0]])
            skipped[bead] = (
                f"bead {bead}: moving its ROI by ({shift[0]:+d}, {shift[1]:+d}) px would "
                f"overlap bead {other}'s ROI"
            )
            continue
        table["x0"][i], table["y0"][i] = x0, y0
        moved.append(bead)
    return XYMoves(table=table, moved=tuple(moved), skipped=skipped)
