"""Zaber backend (worked example): an axis of a Zaber stage (magnet height on a linear
stage, magnet rotation on a rotary stage) through Zaber's ``zaber-motion`` library (the
``zaber`` extra), ASCII protocol over a serial port (``serial:///dev/ttyUSB0``) or TCP
(``tcp://host:port``, for a Zaber X-MCC or a serial-to-Ethernet adapter).

:class:`ZaberStageDrive` (an :class:`~magscope_devices._motors.AxisDrive`): the library
converts the device's native steps to ``device_units`` (``mm``, ``um`` or ``deg``) with
Zaber's device database; ``position = scale * that + offset`` in the axis's units (mm,
turns, nm). The device's ``limit.min``/``limit.max`` join the config's limits; a move is
``move_absolute`` (which returns when the axis is idle), a stop ``stop``.

zaber-motion downloads its device database when a device is identified; a computer
without internet access needs a local copy (``zaber_motion.Library.set_device_db_source``,
see Zaber's documentation). **Not tested against Zaber hardware or a Zaber simulator**:
nothing here could run one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

from . import DeviceUnreachableError, ScaledAxis, require

#: device_units -> zaber_motion.Units name
_UNITS = {"mm": "LENGTH_MILLIMETRES", "um": "LENGTH_MICROMETRES", "deg": "ANGLE_DEGREES"}


class ZaberStageDrive(ScaledAxis):
    """Axis ``axis`` ("DEVICE/AXIS", e.g. ``"1/1"``: device address, axis number) of the
    Zaber chain at ``uri``, behind a microscope axis in ``units``."""

    def __init__(
        self, uri: str, axis: str, *, units: str, device_units: str = "mm",
        scale: float = 1.0, offset: float = 0.0, timeout_s: float = 5.0, poll_s: float = 0.05,
    ) -> None:
        if device_units not in _UNITS:
            raise ValueError(f"device_units {device_units!r}: one of {', '.join(_UNITS)}")
        device, _, number = axis.partition("/")
        self.uri = uri
        self.device_address, self.axis_number = int(device), int(number or 1)
        self.units = units
        self.device_units = device_units
        self.scale = float(scale)
        self.offset = float(offset)
        self.timeout_s = float(timeout_s)
        self.poll_s = float(poll_s)
        self.address = f"Zaber {uri} device {self.device_address} axis {self.axis_number}"
        self._connection: Any = None
        self._axis: Any = None
        self._unit: Any = None


    async def connect(self, timeout: float) -> tuple[float, float]:
        timeout = min(timeout, self.timeout_s)
        zm = require("zaber_motion", "zaber")
        from zaber_motion.ascii import Connection

        self._unit = getattr(zm.Units, _UNITS[self.device_units])
        parts = urlsplit(self.uri)
        try:
            if parts.scheme == "tcp":
                opener = Connection.open_tcp_async(parts.hostname or "", parts.port or 55550)
            else:
                baud = int(parse_qs(parts.query).get("baud", ["115200"])[0])
                opener = Connection.open_serial_port_async(parts.path, baud_rate=baud)
            self._connection = await asyncio.wait_for(opener, timeout)
            device = self._connection.get_device(self.device_address)
            await asyncio.wait_for(device.identify_async(), timeout)
            self._axis = device.get_axis(self.axis_number)
            low = await self._axis.settings.get_async("limit.min", self._unit)
            high = await self._axis.settings.get_async("limit.max", self._unit)
        except (TimeoutError, zm.MotionLibException) as exc:
            raise DeviceUnreachableError(
                f"{self.address}: {type(exc).__name__}: {exc or 'no answer'} "
                f"(within {timeout:g} s)"
            ) from exc
        return self.axis_limits(low, high)

    async def position(self) -> float:
        return self.to_axis(await self._axis.get_position_async(self._unit))

    async def move(self, target: float, report: Callable[[float], None]) -> None:
        task = asyncio.ensure_future(
            self._axis.move_absolute_async(self.to_device(target), self._unit)
        )
        while not task.done():  # the readback follows the stage while it moves
            report(await self.position())
            await asyncio.wait({task}, timeout=self.poll_s)
        task.result()

    async def stop(self) -> None:
        await self._axis.stop_async()

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None
