"""PI backend (worked example): an axis of a Physik Instrumente controller (a piezo for
the focus, a motor stage for the magnets) through PI's ``pipython`` (the ``pi`` extra),
speaking PI's GCS over TCP (``tcp://host:port``, pipython's pure-Python ``PISocket``) or
a serial line (``serial:///dev/ttyUSB0?baud=115200``, ``PISerial``).

:class:`PiStageDrive` (an :class:`~magscope_devices._motors.AxisDrive`): ``position =
scale * controller position + offset`` in the axis's units (mm, turns, nm); the
controller's travel range (``TMN?``/``TMX?``) joins the config's limits; the servo is
switched on (``SVO``) at connect; a move is ``MOV`` followed by ``ONT?`` (on target) and
``POS?`` until the axis is on target; a stop is ``HLT``.

Tested over the GCS protocol against a small GCS controller written for the tests
(``tests/pi_gcs_controller.py``), **not against PI hardware**.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

from . import BlockingCalls, DeviceUnreachableError, ScaledAxis, require


class PiStageDrive(ScaledAxis):
    """One axis (``axis``, the controller's axis id, e.g. ``"1"`` or ``"Z"``) of the PI
    controller at ``uri`` behind a microscope axis in ``units``."""

    def __init__(
        self, uri: str, axis: str, *, units: str, scale: float = 1.0, offset: float = 0.0,
        tolerance: float = 1e-3, timeout_s: float = 5.0, move_timeout_s: float = 60.0,
        poll_s: float = 0.02,
    ) -> None:
        self.uri = uri
        self.axis = str(axis)
        self.units = units
        self.scale = float(scale)
        self.offset = float(offset)
        #: how close (axis units) the axis must end to its target, on target or not
        self.tolerance = float(tolerance)
        self.timeout_s = float(timeout_s)
        self.move_timeout_s = float(move_timeout_s)
        self.poll_s = float(poll_s)
        self.address = f"PI controller {uri} axis {self.axis!r}"
        self._gateway: Any = None
        self._device: Any = None
        self._blocking = BlockingCalls("pi-gcs")


    async def _call(self, func: Callable[[], Any]) -> Any:
        """pipython is blocking: one call at a time, on a thread of its own."""
        from pipython.pidevice.gcserror import GCSError

        try:
            return await self._blocking(func)
        except DeviceUnreachableError:
            raise
        except (OSError, EOFError) as exc:
            raise DeviceUnreachableError(f"{self.address}: {type(exc).__name__}: {exc}") from exc
        except GCSError as exc:  # negative codes: the line to the controller; others: its own
            if exc.val < 0:
                raise DeviceUnreachableError(f"{self.address}: {exc}") from exc
            raise RuntimeError(f"{self.address}: controller error {exc}") from exc

    def _open(self, timeout: float) -> tuple[float, float]:
        require("pipython", "pi")
        from pipython.pidevice import GCS2Commands, GCS30Commands, GCS30Error
        from pipython.pidevice.gcs30.gcs30commands_helpers import isgcs30
        from pipython.pidevice.gcserror import GCSError
        from pipython.pidevice.gcsmessages import GCSMessages

        parts = urlsplit(self.uri)
        try:
            if parts.scheme == "tcp":
                from pipython.pidevice.interfaces.pisocket import PISocket

                host, port = parts.hostname or "", parts.port or 50000
                # reach it first: a PISocket that fails to connect leaves its socket to
                # the garbage collector, whose late close hit a later connection's socket
                socket.create_connection((host, port), timeout=timeout).close()
                self._gateway = PISocket(host=host, port=port)
            else:
                from pipython.pidevice.interfaces.piserial import PISerial

                baud = int(parse_qs(parts.query).get("baud", ["115200"])[0])
                self._gateway = PISerial(port=parts.path, baudrate=baud)
        except Exception as exc:  # noqa: BLE001 - pipython raises plain OSError/GCSError
            raise DeviceUnreachableError(
                f"{self.address}: could not connect: {type(exc).__name__}: {exc}"
            ) from exc
        messages = GCSMessages(self._gateway)
        messages.timeout = int(timeout * 1000)  # ms
        try:
            # not pipython's GCSCommands: it registers a callback in a list shared by
            # every gateway of the process, so one controller's (re)connection made every
            # other GCSCommands talk to its own, possibly closed, socket from that thread
            if isgcs30(messages):
                messages.gcs_error_class = GCS30Error
                device = GCS30Commands(messages)
            else:
                device = GCS2Commands(messages)
            axes = list(device.qSAI())
            if self.axis not in axes:
                raise ValueError(
                    f"{self.address}: the controller has no axis {self.axis!r}; its axes: "
                    f"{', '.join(axes)}"
                )
            device.SVO(self.axis, True)  # closed loop: MOV needs the servo on
            low = float(device.qTMN(self.axis)[self.axis])
            high = float(device.qTMX(self.axis)[self.axis])
        except GCSError as exc:
            raise DeviceUnreachableError(f"{self.address}: {exc}") from exc
        self._device = device
        return low, high

    async def connect(self, timeout: float) -> tuple[float, float]:
        timeout = min(timeout, self.timeout_s)
        require("pipython", "pi")
        low, high = await asyncio.wait_for(self._call(lambda: self._open(timeout)), timeout + 1)
        return self.axis_limits(low, high)

    async def position(self) -> float:
        return self.to_axis(await self._call(lambda: self._device.qPOS(self.axis)[self.axis]))

    async def move(self, target: float, report: Callable[[float], None]) -> None:
        device_target = self.to_device(target)
        await self._call(lambda: self._device.MOV(self.axis, device_target))
        deadline = time.monotonic() + self.move_timeout_s
        while True:
            on_target = await self._call(lambda: bool(self._device.qONT(self.axis)[self.axis]))
            position = await self.position()
            report(position)
            if on_target:
                if abs(position - target) > self.tolerance:
                    raise RuntimeError(
                        f"{self.address}: on target at {position:g} {self.units}, not at "
                        f"{target:g} {self.units}"
                    )
                return
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{self.address}: not on target {target:g} {self.units} within "
                    f"{self.move_timeout_s:g} s (at {position:g} {self.units})"
                )
            await asyncio.sleep(self.poll_s)

    async def stop(self) -> None:
        await self._call(lambda: self._device.HLT(self.axis, noraise=True))

    def close(self) -> None:
        if self._gateway is not None:
            try:
                self._gateway.close()
            except OSError:
                pass
            self._gateway = None
        self._blocking.close()
