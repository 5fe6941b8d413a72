"""The bead lock loops: threads beside the tracking service that read the track ring and
act through one writer each (no Bluesky, no devices; :mod:`magscope_devices` wraps them).

- :class:`FocusLockLoop` holds the reference beads' height at a target by moving the focus
  through a :class:`FocusActuator` (in the microscope, the ``FocusStage`` device), with the
  PI step of :func:`~magscope_tracking.bead_lock.focus_step` at ``rate_hz``.
- :class:`XYLockLoop` keeps each bead's ROI centred on it by moving ROIs whole pixels
  through the tracking service's ROI table (:meth:`TrackingService.move_rois`), with
  :func:`~magscope_tracking.bead_lock.xy_lock_moves`.

Each update uses the frames tracked since the previous one (and, for the focus, only
frames exposed after its last move). Faults make a loop hold still and say so, never run
away: no reference bead valid, most frames of the interval dropped, no new frame. The
focus at the end of its range stops the focus lock (``enabled`` goes False) with the
reason. Every update produces a :class:`LockStatus`, passed to ``on_update``.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import warnings
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import numpy as np

from magscope_ipc.track_ring import TrackRing, TrackRows

from .bead_lock import (
    FOCUS_RATE_HZ_RANGE,
    XY_RATE_HZ_RANGE,
    FocusLockGains,
    FocusLockState,
    LockParameterError,
    check_rate_hz,
    check_threshold_px,
    focus_step,
    reference_height,
    roi_offsets_px,
    xy_lock_moves,
)

logger = logging.getLogger(__name__)

__all__ = ["FocusActuator", "FocusLockLoop", "LockStatus", "RoiWriter", "XYLockLoop"]

#: Updates kept in :attr:`history` (about 17 min at 10 Hz).
HISTORY = 10_000
#: An update with fewer tracked frames than this fraction of its frames holds still.
MIN_TRACKED_FRACTION = 0.5


@dataclass(frozen=True)
class LockStatus:
    """One update of a lock loop.

    ``error_nm``: focus lock: reference height minus target (nm); XY lock: the largest
    bead offset from its ROI centre (nm) before the moves. NaN when unknown.
    ``correction_nm``: focus lock: the focus move of this update (nm); XY lock: the
    largest ROI move (nm). ``locked``: enabled, the update was valid and the error within
    tolerance. ``n_valid``: reference beads (focus) or beads (XY) with a position.
    ``moves``: focus moves (focus) or ROI moves (XY) since the loop started.
    ``reason``: why not locked ("" when locked). ``skipped``: XY moves skipped
    ({bead id: why}).
    """

    enabled: bool = False
    locked: bool = False
    error_nm: float = math.nan
    correction_nm: float = 0.0
    n_valid: int = 0
    moves: int = 0
    updates: int = 0
    target_nm: float = math.nan
    reason: str = "off"
    time: float = field(default_factory=time.time)
    skipped: dict[int, str] = field(default_factory=dict)


class FocusActuator(Protocol):
    """The focus as the focus lock sees it (nm). Calls come from the loop's thread."""

    def position(self) -> tuple[float, float, float]:
        """(focus now, low limit, high limit), nm."""
        ...

    def move_to(self, focus_nm: float) -> None:
        """Move the focus and return when it is there (raise on failure)."""
        ...

    def focal_shift(self) -> float:
        """Focal-plane travel in the sample per nm of focus travel (0.88 for oil
        immersion into water): a height error of e nm needs e / focal_shift of focus."""
        ...


class RoiWriter(Protocol):
    """The ROI table's one writer as the XY lock sees it (the tracking service)."""

    @property
    def rois(self) -> np.ndarray: ...

    @property
    def roi_size(self) -> int | None: ...

    def sensor_shape(self) -> tuple[int, int]: ...

    def move_rois(self, old: Any, new: Any) -> tuple[int, ...]: ...


class _Loop:
    """A daemon thread calling :meth:`_update` every ``1 / rate_hz`` s while enabled."""

    name = "lock"
    rate_range: tuple[float, float] = FOCUS_RATE_HZ_RANGE

    def __init__(self, ring: Callable[[], TrackRing], rate_hz: float,
                 on_update: Callable[[LockStatus], None] | None) -> None:
        self._ring = ring
        self._rate_hz = check_rate_hz(rate_hz, self.rate_range)
        self._on_update = on_update
        self._lock = threading.RLock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._busy = threading.Event()
        self._enabled = False
        self._next_index: int | None = None
        self._last_update = 0.0
        self._moves = 0
        self._updates = 0
        self.status = LockStatus()
        #: the last updates (newest last), for plots and benchmarks
        self.history: deque[LockStatus] = deque(maxlen=HISTORY)

    # -- parameters (any thread) ----------------------------------------------------------
    @property
    def rate_hz(self) -> float:
        return self._rate_hz

    def set_rate_hz(self, rate_hz: object) -> None:
        self._rate_hz = check_rate_hz(rate_hz, self.rate_range)
        self._wake.set()

    @property
    def enabled(self) -> bool:
        return self._enabled

    def set_enabled(self, enabled: object) -> None:
        if not isinstance(enabled, bool | np.bool_):
            raise LockParameterError(f"enabled = {enabled!r} is not True or False")
        with self._lock:
            if bool(enabled) and not self._enabled:
                self._next_index = None  # start from the frames after now
                self._reset()
            self._enabled = bool(enabled)
            if not enabled:
                self._publish(LockStatus(enabled=False, reason="off", moves=self._moves,
                                         updates=self._updates, target_nm=self._target()))
        self._wake.set()

    def _reset(self) -> None:
        """Forget what the loop learned (a new engagement)."""

    def _target(self) -> float:
        return math.nan

    # -- life cycle ------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"magscope-{self.name}",
                                        daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    @property
    def busy(self) -> bool:
        """An update is running now (after ``set_enabled(False)``, wait until it is not
        before moving what the loop moves)."""
        return self._busy.is_set()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(1.0 / self._rate_hz)
            self._wake.clear()
            if self._stop.is_set():
                break
            if not self._enabled:
                continue
            # not under self._lock: an update waits for the actuator, whose owner (an event
            # loop) may be the caller of a setter here; ``busy`` says an update is running
            self._busy.set()
            try:
                status = self._update()
            except Exception as exc:  # a loop never dies silently: it stops and says why
                logger.exception("%s lock update failed", self.name)
                self._enabled = False
                status = replace(self._hold(f"stopped: {type(exc).__name__}: {exc}"),
                                 enabled=False)
            finally:
                self._busy.clear()
            self._publish(status)

    def _publish(self, status: LockStatus) -> None:
        self.status = status
        self.history.append(status)
        if self._on_update is not None:
            try:
                self._on_update(status)
            except Exception:
                logger.exception("%s lock: on_update failed", self.name)

    # -- one update ------------------------------------------------------------------------
    def _frames(self) -> tuple[TrackRows | None, str]:
        """The frames since the previous update, or (None, why) when too few were tracked."""
        ring = self._ring()
        if self._next_index is None:
            latest = ring.latest()
            self._next_index = latest.next_index
            self._last_update = time.monotonic()
            return None, "starting: waiting for the first frames"
        rows = ring.rows_since(self._next_index)
        self._next_index = rows.next_index
        n, tracked = len(rows), int(rows.tracked.sum())
        if n == 0:
            return None, "no new frame since the last update (camera or tracker stopped?)"
        if tracked < MIN_TRACKED_FRACTION * (n + rows.lost):
            return None, f"frames dropped: {tracked} of {n + rows.lost} tracked"
        return rows, ""

    def _hold(self, reason: str, **values: Any) -> LockStatus:
        self._updates += 1
        return LockStatus(enabled=self._enabled, locked=False, reason=reason,
                          moves=self._moves, updates=self._updates, target_nm=self._target(),
                          **values)

    def _update(self) -> LockStatus:
        raise NotImplementedError


class FocusLockLoop(_Loop):
    """Holds the reference beads' height (nm) at ``target_nm`` by moving the focus.

    :param ring: returns the track ring to read (the tracking service's).
    :param reference_ids: returns the reference bead ids now (any thread).
    :param focus: the one writer of the focus.
    :param gains: :class:`~magscope_tracking.bead_lock.FocusLockGains`.
    :param rate_hz: updates per second, 1-10 Hz.
    :param on_update: called with every :class:`LockStatus` (in the loop's thread).
    """

    name = "focus-lock"
    rate_range = FOCUS_RATE_HZ_RANGE

    def __init__(
        self,
        ring: Callable[[], TrackRing],
        reference_ids: Callable[[], np.ndarray],
        focus: FocusActuator,
        *,
        gains: FocusLockGains | None = None,
        rate_hz: float = 10.0,
        on_update: Callable[[LockStatus], None] | None = None,
    ) -> None:
        super().__init__(ring, rate_hz, on_update)
        self._reference_ids = reference_ids
        self._focus = focus
        self.gains = gains or FocusLockGains()
        self._state = FocusLockState()
        self._target_nm = math.nan
        self._moved_at = 0.0  # UNIX s when the last focus move ended

    @property
    def target_nm(self) -> float:
        """The reference height held (nm); NaN: take the height of the next update."""
        return self._target_nm

    def set_target_nm(self, target_nm: object) -> None:
        if isinstance(target_nm, bool) or not isinstance(
            target_nm, int | float | np.integer | np.floating
        ):
            raise LockParameterError(f"target_nm = {target_nm!r} is not a number of nm")
        value = float(target_nm)
        if math.isinf(value):
            raise LockParameterError(f"target_nm = {target_nm!r} is not finite (NaN: take now)")
        with self._lock:
            self._target_nm = value

    def set_gains(self, **changes: float) -> None:
        """Change gains (validated; :class:`LockParameterError` names value and range)."""
        with self._lock:
            self.gains = self.gains.with_(**changes)

    def _target(self) -> float:
        return self._target_nm

    def _reset(self) -> None:
        self._state = FocusLockState()

    def _update(self) -> LockStatus:
        rows, why = self._frames()
        now = time.monotonic()
        dt = max(now - self._last_update, 1e-3)
        self._last_update = now
        if rows is None:
            return self._hold(why)
        refs = np.unique(np.asarray(self._reference_ids(), dtype=np.int64))
        if refs.size == 0:
            return self._hold("no reference beads: find_reference_beads first")
        fresh = rows.tracked & (rows.timestamp >= self._moved_at)
        if not fresh.any():
            return self._hold("no frame exposed since the last focus move")
        z = rows.columns(refs)["z_nm"][fresh]
        height, n_valid = reference_height(z)
        if n_valid == 0:
            return self._hold(f"reference beads lost (no z for beads {refs.tolist()})",
                              n_valid=0)
        if math.isnan(self._target_nm):
            self._target_nm = height
        error = height - self._target_nm
        focus, low, high = self._focus.position()
        # the error is in heights of the sample, the focus moves in its own travel
        step = focus_step(error / self._focus.focal_shift(), dt, self._state, self.gains,
                          focus_nm=focus, low_nm=low, high_nm=high)
        if not self._enabled:
            return self._hold("off")
        if step.correction_nm != 0.0:
            self._focus.move_to(step.focus_nm)
            self._moved_at = time.time()
            self._moves += 1
        self._state = step.state
        self._updates += 1
        if step.at_limit is not None:
            self._enabled = False
            limit = low if step.at_limit == "low" else high
            return LockStatus(
                enabled=False, locked=False, error_nm=error, correction_nm=step.correction_nm,
                n_valid=n_valid, moves=self._moves, updates=self._updates,
                target_nm=self._target_nm,
                reason=f"stopped: the focus reached its {step.at_limit} limit {limit:g} nm",
            )
        locked = abs(error) <= self.gains.tolerance_nm
        return LockStatus(
            enabled=True, locked=locked, error_nm=error, correction_nm=step.correction_nm,
            n_valid=n_valid, moves=self._moves, updates=self._updates,
            target_nm=self._target_nm,
            reason="" if locked else (
                f"error {error:+.1f} nm beyond the tolerance {self.gains.tolerance_nm:g} nm"
            ),
        )


class XYLockLoop(_Loop):
    """Keeps each bead's ROI centred on it (whole-pixel moves beyond ``threshold_px``).

    :param ring: returns the track ring to read.
    :param rois: the ROI table's one writer (the tracking service).
    :param nm_per_px: pixel size (nm/px) of the track ring's positions.
    :param threshold_px: dead-band (px), 0.5-16.
    :param rate_hz: updates per second, 0.1-10 Hz.
    """

    name = "xy-lock"
    rate_range = XY_RATE_HZ_RANGE

    def __init__(
        self,
        ring: Callable[[], TrackRing],
        rois: RoiWriter,
        nm_per_px: float,
        *,
        threshold_px: float = 1.0,
        rate_hz: float = 1.0,
        on_update: Callable[[LockStatus], None] | None = None,
    ) -> None:
        super().__init__(ring, rate_hz, on_update)
        self._rois = rois
        self.nm_per_px = float(nm_per_px)
        self._threshold_px = check_threshold_px(threshold_px)

    @property
    def threshold_px(self) -> float:
        return self._threshold_px

    def set_threshold_px(self, threshold_px: object) -> None:
        self._threshold_px = check_threshold_px(threshold_px)

    def _update(self) -> LockStatus:
        rows, why = self._frames()
        if rows is None:
            return self._hold(why)
        size = self._rois.roi_size
        table = self._rois.rois
        if size is None or table.size == 0:
            return self._hold("no ROI to keep centred")
        order = np.argsort(table["bead_id"], kind="stable")
        table = table[order]
        cols = rows.columns(table["bead_id"].astype(np.int64))
        tracked = rows.tracked
        with warnings.catch_warnings():  # "mean of empty slice": a bead lost throughout
            warnings.simplefilter("ignore", RuntimeWarning)
            x = np.nanmean(cols["x_nm"][tracked], axis=0) / self.nm_per_px
            y = np.nanmean(cols["y_nm"][tracked], axis=0) / self.nm_per_px
        valid = np.isfinite(x) & np.isfinite(y)
        if not valid.any():
            return self._hold("every bead lost")
        offsets = roi_offsets_px(table, x, y, size)
        worst = float(np.nanmax(np.abs(offsets[valid]))) * self.nm_per_px
        decision = xy_lock_moves(table, x, y, roi_size=size,
                                 sensor_shape=self._rois.sensor_shape(),
                                 threshold_px=self._threshold_px)
        largest = 0.0
        if decision.moved and self._enabled:
            pick = np.isin(table["bead_id"], decision.moved)
            done = self._rois.move_rois(table[pick], decision.table[pick])
            self._moves += len(done)
            if done:
                shift = np.hypot(decision.table["x0"][pick] - table["x0"][pick],
                                 decision.table["y0"][pick] - table["y0"][pick])
                largest = float(shift.max()) * self.nm_per_px
        self._updates += 1
        skipped = decision.skipped
        locked = not skipped
        return LockStatus(
            enabled=True, locked=locked, error_nm=worst, correction_nm=largest,
            n_valid=int(valid.sum()), moves=self._moves, updates=self._updates,
            reason="" if locked else "; ".join(skipped.values()), skipped=dict(skipped),
        )
