"""EPICS backend: an axis as an EPICS motor record, through ophyd-async's own ``Motor``
(Channel Access, the ``epics`` extra: aioca with epicscorelibs' libca).

:class:`EpicsMotorDrive` (an :class:`~magscope_devices._motors.AxisDrive`): ``position =
scale * motor position (its EGU) + offset`` in the axis's units (mm, turns, nm).

- Limits: the record's soft limits ``.LLM``/``.HLM`` (none when the dial limits
  ``.DLLM``/``.DHLM`` are both 0, the record's rule), intersected with the config's by
  the axis, so a move beyond either is refused before anything is sent.
- Moves: ``Motor.set`` (a put to ``.VAL`` with completion, which the record gives when
  the move is done); stops: ``.STOP``.
- Arrival is confirmed, not assumed: Channel Access completes a pending put when the IOC
  goes away, so after each move the drive reads ``.DMOV`` and ``.RBV`` and fails the move
  unless the motor is done within ``max(.RDBD, |.MRES|)`` of the target (``.LVIO`` says
  whether the record refused the target).
- An IOC that goes away fails a move as soon as Channel Access reports the disconnect (a
  monitor of ``.DMOV``), and every read is bounded by ``timeout_s``: either names the PV
  (:class:`~magscope_devices.backends.DeviceUnreachableError`).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from . import DeviceUnreachableError, ScaledAxis, require

T = TypeVar("T")


class EpicsMotorDrive(ScaledAxis):
    """One EPICS motor record (``pv``, the record's name without a field) behind a
    microscope axis in ``units``."""

    def __init__(
        self, pv: str, *, units: str, scale: float = 1.0, offset: float = 0.0,
        timeout_s: float = 5.0,
    ) -> None:
        self.pv = pv
        #: the longest the connect, and any read, may wait for the IOC (s)
        self.timeout_s = float(timeout_s)
        self.units = units
        self.scale = float(scale)
        self.offset = float(offset)
        self.address = f"EPICS motor {pv}"
        self.motor: Any = None
        self._limit_violation: Any = None
        self._monitor: Any = None  # Channel Access monitor of .DMOV: tells a disconnect
        self._lost: asyncio.Event | None = None  # set while the record is disconnected
        self._egu = ""
        #: how close (motor EGU) the record must stop to its target: max(.RDBD, |.MRES|)
        self.tolerance = 0.0


    async def _read(self, what: str, awaitable: Awaitable[T]) -> T:
        from aioca import CANothing
        from epicscorelibs.ca.cadef import Disconnected

        try:
            return await asyncio.wait_for(awaitable, self.timeout_s)
        except (TimeoutError, ConnectionError) as exc:
            raise DeviceUnreachableError(
                f"{self.address}: no answer within {self.timeout_s:g} s reading {what}; "
                f"is the IOC up?"
            ) from exc
        except (Disconnected, CANothing) as exc:  # the channel went away during the read
            raise DeviceUnreachableError(
                f"{self.address}: Channel Access disconnected reading {what} "
                f"({type(exc).__name__}); is the IOC up?"
            ) from exc

    async def connect(self, timeout: float) -> tuple[float, float]:
        timeout = min(timeout, self.timeout_s)
        require("aioca", "epics")
        from ophyd_async.core import NotConnectedError
        from ophyd_async.epics.core import epics_signal_r
        from ophyd_async.epics.motor import Motor

        if self.motor is None:
            name = self.pv.replace(":", "_")
            self.motor = Motor(self.pv, name=name)
            self._limit_violation = epics_signal_r(int, self.pv + ".LVIO", name=name + "_lvio")
        try:
            await self.motor.connect(timeout=timeout)
            await self._limit_violation.connect(timeout=timeout)
        except (NotConnectedError, TimeoutError) as exc:
            raise DeviceUnreachableError(
                f"{self.address}: no answer within {timeout:g} s; is the IOC up and "
                f"EPICS_CA_ADDR_LIST right? ({exc})"
            ) from exc
        if self._monitor is None:
            aioca = require("aioca", "epics")
            self._lost = asyncio.Event()
            self._monitor = aioca.camonitor(
                self.pv + ".DMOV", self._on_done_move, notify_disconnect=True
            )
        m = self.motor
        low, high, dial_low, dial_high, deadband, resolution, egu = await asyncio.gather(
            m.low_limit_travel.get_value(), m.high_limit_travel.get_value(),
            m.dial_low_limit_travel.get_value(), m.dial_high_limit_travel.get_value(),
            m.deadband.get_value(), m.motor_resolution.get_value(), m.motor_egu.get_value(),
        )
        self.tolerance = max(abs(deadband), abs(resolution), 1e-12)
        self._egu = egu
        if dial_low == 0 and dial_high == 0:  # the motor record's "no soft limits"
            return (-math.inf, math.inf)
        return self.axis_limits(low, high)

    def _on_done_move(self, value: Any) -> None:
        assert self._lost is not None
        if getattr(value, "ok", True):
            self._lost.clear()
        else:  # CANothing: the channel disconnected (the IOC went away)
            self._lost.set()

    async def position(self) -> float:
        return self.to_axis(await self._read(".RBV", self.motor.user_readback.get_value()))

    async def move(self, target: float, report: Callable[[float], None]) -> None:
        device_target = self.to_device(target)

        def on_reading(reading: dict) -> None:
            (entry,) = reading.values()
            report(self.to_axis(entry["value"]))

        # a record known to be gone, or one that stopped answering, fails here (timeout_s)
        if self._lost is not None and self._lost.is_set():
            raise DeviceUnreachableError(
                f"{self.address}: Channel Access is disconnected; is the IOC up?"
            )
        await self._read(".DMOV", self.motor.motor_done_move.get_value())
        from aioca import CANothing
        from epicscorelibs.ca.cadef import Disconnected
        from ophyd_async.epics.motor import MotorLimitsError

        # what a channel that went away raises: on a put (Disconnected), from a monitor of
        # the readback the motor's status follows (CANothing: "Virtual circuit disconnect")
        DISCONNECTED = (Disconnected, CANothing)  # noqa: N806 - a tuple of classes

        from .._motors import LimitError

        assert self._lost is not None
        self.motor.user_readback.subscribe_reading(on_reading)
        lost = asyncio.ensure_future(self._lost.wait())
        status = self.motor.set(device_target)
        try:
            await asyncio.wait({status.task, lost}, return_when=asyncio.FIRST_COMPLETED)
            if not status.done:  # the IOC went away mid-move: do not wait for CA's timeouts
                status.task.cancel()
                raise DeviceUnreachableError(
                    f"{self.address}: Channel Access disconnected during the move to "
                    f"{target:g} {self.units}; is the IOC up?"
                )
            await status
        except DISCONNECTED as exc:  # a put or read on a channel that went away
            raise DeviceUnreachableError(
                f"{self.address}: Channel Access disconnected during the move to "
                f"{target:g} {self.units} ({type(exc).__name__}); is the IOC up?"
            ) from exc
        except MotorLimitsError as exc:  # the record's limits, read anew at each move
            low, high = await asyncio.gather(
                self._read(".LLM", self.motor.low_limit_travel.get_value()),
                self._read(".HLM", self.motor.high_limit_travel.get_value()),
            )
            a, b = self.axis_limits(low, high)
            raise LimitError(
                f"{self.address}: target {target:g} {self.units} is outside the record's "
                f"limits [{a:g}, {b:g}] {self.units} (.LLM {low:g}, .HLM {high:g} {self._egu})"
            ) from exc
        finally:
            lost.cancel()
            self.motor.user_readback.clear_sub(on_reading)
        # confirm: a put also "completes" when the IOC goes away
        done = await self._read(".DMOV", self.motor.motor_done_move.get_value())
        where = await self._read(".RBV", self.motor.user_readback.get_value())
        if done and abs(where - device_target) <= self.tolerance:
            return
        refused = await self._read(".LVIO", self._limit_violation.get_value())
        why = "the record refused the target (.LVIO: beyond its limits)" if refused else (
            "still moving" if not done else "stopped short")
        raise RuntimeError(
            f"{self.address}: the move to {device_target:g} {self._egu} ({target:g} "
            f"{self.units}) ended at {where:g} {self._egu}: {why}"
        )

    async def stop(self) -> None:
        """Stop the motor; return once the record says it is done (``.DMOV`` 1), so a
        position read next is where it stopped (at most ``timeout_s``)."""
        await self._read(".STOP", self.motor.stop())
        deadline = asyncio.get_running_loop().time() + self.timeout_s
        while not await self._read(".DMOV", self.motor.motor_done_move.get_value()):
            if asyncio.get_running_loop().time() > deadline:
                raise DeviceUnreachableError(
                    f"{self.address}: still moving {self.timeout_s:g} s after .STOP"
                )
            await asyncio.sleep(0.02)

    def close(self) -> None:
        """Close the disconnect monitor (Channel Access itself closes with the process)."""
        if self._monitor is not None:
            self._monitor.close()
            self._monitor = None
