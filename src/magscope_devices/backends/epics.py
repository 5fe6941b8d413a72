"""EPICS backend: an axis as an EPICS motor record, through ophyd-async's own ``Motor``
(Channel Access, the ``epics`` extra: aioca with epicscorelibs' libca).

:class:`EpicsMotorDrive` (an :class:`~magscope_devices._motors.AxisDrive`): ``position =
scale * motor position (its EGU) + offset`` in the axis's units (mm, turns, nm). The
record's soft limits (``.LLM``/``.HLM``, none when both are 0) are intersected with the
config's; moves go through ``Motor.set`` (put to ``.VAL`` with completion, which the
motor record gives when the move is done), stops through ``.STOP``.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from typing import Any

from . import require


class EpicsMotorDrive:
    """One EPICS motor record behind a microscope axis."""

    def __init__(
        self, pv: str, *, units: str, scale: float = 1.0, offset: float = 0.0,
        timeout_s: float = 5.0,
    ) -> None:
        self.pv = pv
        #: the longest the connect may wait for the record's PVs (s)
        self.timeout_s = float(timeout_s)
        self.units = units
        self.scale = float(scale)
        self.offset = float(offset)
        self.address = f"EPICS motor {pv}"
        self.motor: Any = None

    def to_axis(self, value: float) -> float:
        return self.scale * float(value) + self.offset

    def to_device(self, value: float) -> float:
        return (float(value) - self.offset) / self.scale

    async def connect(self, timeout: float) -> tuple[float, float]:
        timeout = min(timeout, self.timeout_s)
        require("aioca", "epics")
        from ophyd_async.core import NotConnectedError
        from ophyd_async.epics.motor import Motor

        if self.motor is None:
            self.motor = Motor(self.pv, name=self.pv.replace(":", "_"))
        try:
            await self.motor.connect(timeout=timeout)
        except (NotConnectedError, TimeoutError) as exc:
            raise ConnectionError(
                f"{self.address}: no answer within {timeout:g} s; is the IOC up and "
                f"EPICS_CA_ADDR_LIST right? ({exc})"
            ) from exc
        low, high = await asyncio.gather(
            self.motor.low_limit_travel.get_value(), self.motor.high_limit_travel.get_value()
        )
        if low == 0 and high == 0:  # the motor record's "no soft limits"
            return (-math.inf, math.inf)
        a, b = self.to_axis(low), self.to_axis(high)
        return (min(a, b), max(a, b))

    async def position(self) -> float:
        return self.to_axis(await self.motor.user_readback.get_value())

    async def move(self, target: float, report: Callable[[float], None]) -> None:
        def on_reading(reading: dict) -> None:
            (entry,) = reading.values()
            report(self.to_axis(entry["value"]))

        self.motor.user_readback.subscribe_reading(on_reading)
        try:
            await self.motor.set(self.to_device(target))
        finally:
            self.motor.user_readback.clear_sub(on_reading)

    async def stop(self) -> None:
        await self.motor.stop()

    def close(self) -> None:
        """Nothing to release: Channel Access closes with the process."""
