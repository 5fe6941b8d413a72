"""Movable axes of the microscope: magnet height, magnet rotation, focus stage.

Each axis is an ophyd-async ``StandardMovable`` with soft limits and a velocity:
``set()`` returns a status that finishes on arrival, fails before anything moves
when the target is outside the limits (the message names the value and the
limit), and can be stopped. The simulated axes move at their velocity and
publish the readback at 50 Hz. A hardware axis is the same class given a *drive*
(:class:`AxisDrive`: a python-microscope stage axis, an EPICS motor, ...): on connect the
drive is reached (or the connect fails naming its address), the limits become the
intersection of the configured ones and the device's, and moves go through the drive,
which publishes the readback as the device reports it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import numbers
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Protocol

from ophyd_async.core import (
    DeviceConnector,
    MovableLogic,
    SignalR,
    SignalRW,
    StandardMovable,
    StandardReadable,
    TimeoutCalculator,
    soft_signal_r_and_setter,
    soft_signal_rw,
)
from ophyd_async.core import StandardReadableFormat as Format

#: How often a simulated axis publishes its position while moving (Hz).
UPDATE_RATE_HZ = 50.0


class LimitError(ValueError):
    """A requested position is outside an axis's limits."""


def check_target(name: str, value: object, units: str) -> None:
    """Refuse (:class:`LimitError`) a target that is not a finite real number of
    ``units``: a bool (``True`` would move to 1), a str, None, NaN or infinity."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise LimitError(
            f"{name}: target {value!r} is a {type(value).__name__}, not a finite number of "
            f"{units}"
        )
    if not math.isfinite(value):
        raise LimitError(f"{name}: target {value!r} is not a finite number of {units}")


@dataclass
class SimAxisLogic(MovableLogic[float]):
    """Moves at ``velocity`` in a straight line, checks limits, can be stopped."""

    readback_set: Callable[[float], None]
    velocity: SignalRW[float]
    low_limit: SignalR[float]
    high_limit: SignalR[float]
    axis_name: Callable[[], str]
    units: str

    async def check_move(self, new_position: float) -> None:
        low, high = await asyncio.gather(self.low_limit.get_value(), self.high_limit.get_value())
        name = self.axis_name()
        check_target(name, new_position, self.units)
        if new_position < low:
            raise LimitError(
                f"{name}: target {new_position} {self.units} is below the lower limit "
                f"{low} {self.units}"
            )
        if new_position > high:
            raise LimitError(
                f"{name}: target {new_position} {self.units} is above the upper limit "
                f"{high} {self.units}"
            )

    async def calculate_timeout(self, old_position: float, new_position: float) -> float | None:
        velocity = await self.velocity.get_value()
        if velocity <= 0:
            return 10.0
        return abs(new_position - old_position) / velocity * 2.0 + 10.0

    async def stop(self) -> None:
        await self.setpoint.set(await self.readback.get_value())

    async def move(self, new_position: float, timeout: TimeoutCalculator) -> None:
        velocity, start = await asyncio.gather(self.velocity.get_value(), self.readback.get_value())
        await self.setpoint.set(new_position)
        distance = new_position - start
        if velocity <= 0 or distance == 0:
            self.readback_set(new_position)
            return
        duration = abs(distance) / velocity
        t0 = time.monotonic()
        period = 1.0 / UPDATE_RATE_HZ
        while True:
            elapsed = time.monotonic() - t0
            if elapsed >= duration:
                break
            self.readback_set(start + distance * elapsed / duration)
            await asyncio.sleep(min(period, duration - elapsed))
        self.readback_set(new_position)


class AxisDrive(Protocol):
    """What moves a hardware axis, in the axis's units (the drive converts to the
    device's). ``address`` names the device (URI and axis, PV) in errors."""

    address: str

    async def connect(self, timeout: float) -> tuple[float, float]:
        """Reach the device (fail within ``timeout`` s, naming ``address``); return its
        limits in the axis's units (``-inf``/``inf`` where it has none)."""

    async def position(self) -> float:
        """Where the device is now."""

    async def move(self, target: float, report: Callable[[float], None]) -> None:
        """Move to ``target``; call ``report(position)`` as the device moves; return on
        arrival (raise if the device stops elsewhere or fails)."""

    async def stop(self) -> None:
        """Stop a move in progress."""

    def close(self) -> None:
        """Let go of the device (connections, threads)."""


@dataclass
class DriveAxisLogic(SimAxisLogic):
    """Limits checked as for the simulated axes, the move made by a :class:`AxisDrive`."""

    drive: AxisDrive | None = None

    async def calculate_timeout(self, old_position: float, new_position: float) -> float | None:
        return None  # the drive fails a move that does not arrive (it knows its device)

    async def stop(self) -> None:
        if self.drive is not None:
            await self.drive.stop()

    async def move(self, new_position: float, timeout: TimeoutCalculator) -> None:
        assert self.drive is not None
        await self.setpoint.set(new_position)
        try:
            await self.drive.move(new_position, self.readback_set)
        except BaseException:  # a failed move, or one cancelled by stop()
            # the readback says where the device stopped (the last position it reported
            # during the move can be a tick behind; stop() returns once it has stopped)
            with contextlib.suppress(Exception):  # the move's own error is the one to raise
                self.readback_set(await self.drive.position())
            raise
        self.readback_set(await self.drive.position())


class _DriveConnector(DeviceConnector):
    """Connect the soft signals, then reach the drive: the limits become the config's
    within the device's, the readback and setpoint the device's position."""

    async def connect_real(self, device, timeout: float, force_reconnect: bool) -> None:
        await super().connect_real(device, timeout, force_reconnect)
        drive: AxisDrive = device.drive
        low, high = await drive.connect(timeout)
        config_low = await device.low_limit.get_value()
        config_high = await device.high_limit.get_value()
        low, high = max(low, config_low), min(high, config_high)
        if not low < high:
            raise LimitError(
                f"{device.name or type(device).__name__}: the configured limits "
                f"[{config_low:g}, {config_high:g}] {device.units} and those of "
                f"{drive.address} do not overlap"
            )
        await device.low_limit.set(low)
        await device.high_limit.set(high)
        position = await drive.position()
        device._readback_set(position)
        await device.setpoint.set(position)


class Axis(StandardReadable, StandardMovable[float]):
    """A single axis with limits (in ``units``) and velocity (``units``/s): simulated,
    or moved by ``drive`` (a hardware axis; ``initial`` is then where the readback
    starts until the device is read on connect)."""

    def __init__(
        self,
        *,
        units: str,
        initial: float,
        low_limit: float,
        high_limit: float,
        velocity: float,
        precision: int = 4,
        drive: AxisDrive | None = None,
        name: str = "",
    ) -> None:
        if drive is not None:
            initial = min(max(initial, low_limit), high_limit)
        if not low_limit <= initial <= high_limit:
            raise LimitError(
                f"initial position {initial} {units} is outside the limits "
                f"[{low_limit}, {high_limit}] {units}"
            )
        self.units = units
        with self.add_children_as_readables(Format.HINTED_SIGNAL):
            self.readback, self._readback_set = soft_signal_r_and_setter(
                float, initial, units=units, precision=precision
            )
        with self.add_children_as_readables(Format.CONFIG_SIGNAL):
            self.velocity = soft_signal_rw(float, velocity, units=f"{units}/s")
            self.low_limit = soft_signal_rw(float, low_limit, units=units)
            self.high_limit = soft_signal_rw(float, high_limit, units=units)
        self.setpoint = soft_signal_rw(float, initial, units=units, precision=precision)
        #: the hardware behind the axis (None: simulated)
        self.drive = drive
        super().__init__(name=name, connector=_DriveConnector() if drive is not None else None)

    def close(self) -> None:
        """Let go of the hardware (nothing for a simulated axis). Idempotent."""
        if self.drive is not None:
            self.drive.close()

    @cached_property
    def movable_logic(self) -> SimAxisLogic:
        make: Callable[..., SimAxisLogic] = (
            SimAxisLogic if self.drive is None
            else functools.partial(DriveAxisLogic, drive=self.drive)
        )
        return make(
            setpoint=self.setpoint,
            readback=self.readback,
            readback_set=self._readback_set,
            velocity=self.velocity,
            low_limit=self.low_limit,
            high_limit=self.high_limit,
            axis_name=lambda: self.name or type(self).__name__,
            units=self.units,
        )


class MagnetZ(Axis):
    """Magnet height above the sample (mm); smaller is closer, so a higher force.

    ``safe_height`` (mm, a configuration signal recorded with every run) is where plans
    leave the magnets when they end, fail or are aborted: the instrument config's
    ``magnet_z.safe``."""

    def __init__(
        self,
        initial: float = 8.0,
        low_limit: float = 0.3,
        high_limit: float = 10.0,
        velocity: float = 5.0,
        drive: AxisDrive | None = None,
        name: str = "",
        safe: float = 8.0,
    ) -> None:
        if not (math.isfinite(safe) and low_limit <= safe <= high_limit):
            raise LimitError(
                f"safe magnet height {safe} mm is outside the limits [{low_limit}, "
                f"{high_limit}] mm"
            )
        with self.add_children_as_readables(Format.CONFIG_SIGNAL):
            self.safe_height = soft_signal_rw(float, safe, units="mm", precision=4)
        super().__init__(
            units="mm", initial=initial, low_limit=low_limit, high_limit=high_limit,
            velocity=velocity, precision=4, drive=drive, name=name,
        )


class MagnetRotation(Axis):
    """Magnet rotation (turns); twists torsionally constrained tethers."""

    def __init__(
        self,
        initial: float = 0.0,
        low_limit: float = -200.0,
        high_limit: float = 200.0,
        velocity: float = 5.0,
        drive: AxisDrive | None = None,
        name: str = "",
    ) -> None:
        super().__init__(
            units="turns", initial=initial, low_limit=low_limit, high_limit=high_limit,
            velocity=velocity, precision=3, drive=drive, name=name,
        )


#: Focal shifts a focus stage accepts (focal-plane travel per nm of focus travel).
FOCAL_SHIFT_RANGE = (0.3, 1.5)


class FocusStage(Axis):
    """Objective / sample piezo (nm of its travel).

    ``focal_shift`` (configuration): how far the focal plane moves in the sample per nm
    the stage moves: about n_water / n_oil = 0.88 for an oil-immersion objective focusing
    into water (measure it: docs/focal-shift.md), 1 for an index-matched one. Z-LUT sweeps
    scale their heights by it and the focus lock divides its corrections by it.
    """

    def __init__(
        self,
        initial: float = 0.0,
        low_limit: float = -20_000.0,
        high_limit: float = 80_000.0,
        velocity: float = 500_000.0,
        drive: AxisDrive | None = None,
        name: str = "",
        focal_shift: float = 0.88,
    ) -> None:
        _check_focal_shift(focal_shift)
        with self.add_children_as_readables(Format.CONFIG_SIGNAL):
            # nm the focal plane moves in the sample per nm the stage moves
            self.focal_shift = soft_signal_rw(float, float(focal_shift),
                                              setter=_check_focal_shift, units="nm/nm")
        super().__init__(
            units="nm", initial=initial, low_limit=low_limit, high_limit=high_limit,
            velocity=velocity, precision=1, drive=drive, name=name,
        )


def _check_focal_shift(value: object) -> None:
    lo, hi = FOCAL_SHIFT_RANGE
    if (isinstance(value, bool) or not isinstance(value, numbers.Real)
            or not lo <= float(value) <= hi):
        raise ValueError(
            f"focal_shift = {value!r} is outside [{lo:g}, {hi:g}]: the focal plane's travel "
            "per nm of focus travel (0.88 for oil immersion into water, 1 index-matched)"
        )
