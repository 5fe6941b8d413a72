"""python-microscope backend: any python-microscope camera as the camera process's frame
source, any python-microscope stage axis as magnet height, rotation or focus.

The devices are reached through python-microscope's device server (``device-server
CONFIG``, Pyro, a ``PYRO:<id>@<host>:<port>`` URI per device), also when they run on
this computer: the device then lives in its own process, as python-microscope intends.

- :class:`PyMicroscopeStageDrive` (an :class:`~magscope_devices._motors.AxisDrive`):
  ``position = scale * device position + offset`` in the axis's units (mm, turns, nm);
  its limits are the device's (converted), intersected with the config's by the axis.
- :class:`PyMicroscopeFrameSource` (a ``FrameSource`` of the camera process): each frame
  is a software trigger and ``grab_next_data`` (the camera's exposure time is set from
  the camera device's ``exposure_s``), copied into the frame ring.

Pyro is imported when a part connects, not when this module is imported.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from . import BlockingCalls, DeviceUnreachableError, ScaledAxis, require


def _pyro4() -> Any:
    pyro = require("Pyro4", "python-microscope")
    # python-microscope's device server speaks pickle (numpy arrays, AxisLimits)
    pyro.config.SERIALIZER = "pickle"
    return pyro


def connect_proxy(uri: str, timeout: float, what: str) -> Any:
    """A bound Pyro proxy for ``uri``; :class:`DeviceUnreachableError` within ``timeout`` s."""
    pyro = _pyro4()
    proxy = pyro.Proxy(uri)
    proxy._pyroTimeout = timeout
    try:
        proxy._pyroBind()
    except pyro.errors.PyroError as exc:
        raise DeviceUnreachableError(
            f"{what} {uri} did not answer within {timeout:g} s ({type(exc).__name__}: {exc}); "
            "is python-microscope's device-server running there?"
        ) from exc
    return proxy


class PyMicroscopeStageDrive(ScaledAxis):
    """One axis of a python-microscope stage, in the microscope axis's units."""

    def __init__(
        self, uri: str, axis: str, *, units: str, scale: float = 1.0, offset: float = 0.0,
        tolerance: float = 1e-3, timeout_s: float = 5.0, move_timeout_s: float = 60.0,
        poll_s: float = 0.02,
    ) -> None:
        self.uri = uri
        self.axis_name = axis
        self.units = units
        self.scale = float(scale)
        self.offset = float(offset)
        self.tolerance = float(tolerance)
        #: the longest any one call may go unanswered (s): connect, position, move_to
        self.timeout_s = float(timeout_s)
        self.move_timeout_s = float(move_timeout_s)
        self.poll_s = float(poll_s)
        self.address = f"python-microscope stage {uri} axis {axis!r}"
        self._axis: Any = None
        self._stage: Any = None
        self._blocking = BlockingCalls("pymicroscope-stage")
        self._pyro: Any = None

    # -- calls, one at a time, off the event loop ------------------------------------------
    async def _call(self, func: Callable[[], Any]) -> Any:
        if self._pyro is None:
            self._pyro = _pyro4()
        try:
            return await self._blocking(func)
        except self._pyro.errors.PyroError as exc:
            raise DeviceUnreachableError(
                f"{self.address}: {type(exc).__name__}: {exc}"
            ) from exc

    async def connect(self, timeout: float) -> tuple[float, float]:
        timeout = min(timeout, self.timeout_s)

        def bind() -> tuple[float, float]:
            stage = connect_proxy(self.uri, timeout, "python-microscope stage")
            axes = stage.axes
            if self.axis_name not in axes:
                raise ValueError(
                    f"{self.address}: the stage has no axis {self.axis_name!r}; its axes: "
                    f"{', '.join(sorted(axes))}"
                )
            axis = axes[self.axis_name]
            axis._pyroTimeout = timeout
            self._stage, self._axis = stage, axis
            limits = axis.limits
            return float(limits.lower), float(limits.upper)

        lower, upper = await self._call(bind)
        return self.axis_limits(lower, upper)

    async def position(self) -> float:
        return self.to_axis(await self._call(lambda: self._axis.position))

    async def move(self, target: float, report: Callable[[float], None]) -> None:
        device_target = self.to_device(target)
        await self._call(lambda: self._axis.move_to(device_target))
        # some stages return at once and move on: follow the position until it settles
        deadline = time.monotonic() + self.move_timeout_s
        last = math.nan
        still = 0
        while True:
            position = await self.position()
            report(position)
            if abs(position - target) <= self.tolerance:
                return
            still = still + 1 if abs(position - last) <= self.tolerance * 1e-3 else 0
            if still >= 5:
                raise RuntimeError(
                    f"{self.address}: stopped at {position:g} {self.units}, not at the "
                    f"target {target:g} {self.units}"
                )
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{self.address}: did not reach {target:g} {self.units} within "
                    f"{self.move_timeout_s:g} s (at {position:g} {self.units})"
                )
            last = position
            await asyncio.sleep(self.poll_s)

    async def stop(self) -> None:
        """python-microscope stage axes have no stop: the move's wait is cancelled and the
        readback taken where the stage is."""

    def close(self) -> None:
        for proxy in (self._axis, self._stage):
            if proxy is not None:
                try:
                    proxy._pyroRelease()
                except Exception:  # noqa: BLE001 - closing: the server may be gone
                    pass
        self._axis = self._stage = None
        self._blocking.close()


class PyMicroscopeFrameSource:
    """A python-microscope camera behind the camera process's acquisition loop.

    Built inside the camera process (pickled as a factory): connects, checks the sensor
    size against the config (``sensor_shape`` (height, width) px), enables the camera.
    """

    def __init__(
        self, uri: str, sensor_shape: tuple[int, int], dtype: Any, bit_depth: int,
        timeout_s: float = 5.0,
    ) -> None:
        self.uri = uri
        self.sensor_shape = (int(sensor_shape[0]), int(sensor_shape[1]))
        self.dtype = np.dtype(dtype)
        self.bit_depth = int(bit_depth)
        self.timeout_s = float(timeout_s)
        self._camera = connect_proxy(uri, timeout_s, "python-microscope camera")
        width, height = (int(v) for v in self._camera.get_sensor_shape())
        if (height, width) != self.sensor_shape:
            raise ValueError(
                f"python-microscope camera {uri}: its sensor is {width} x {height} px, the "
                f"config says camera.sensor_px = [{self.sensor_shape[1]}, "
                f"{self.sensor_shape[0]}]"
            )
        if not self._camera.get_is_enabled():
            self._camera.enable()
        self._exposure_s = float("nan")
        self._max = float(np.iinfo(self.dtype).max)

    def grab(self, t_s: float, exposure_s: float, gain: float, out: np.ndarray) -> None:
        if exposure_s != self._exposure_s:
            self._camera.set_exposure_time(float(exposure_s))
            self._exposure_s = exposure_s
            # the next frame must take the new exposure: allow for it in the timeout
            self._camera._pyroTimeout = self.timeout_s + 2 * exposure_s
        data, _timestamp = self._camera.grab_next_data()
        frame = np.asarray(data)
        if frame.shape != out.shape:
            raise ValueError(
                f"python-microscope camera {self.uri} sent a {frame.shape[1]} x "
                f"{frame.shape[0]} px frame; the sensor is {out.shape[1]} x {out.shape[0]} px "
                "(binning or an ROI set on the camera itself?)"
            )
        if frame.dtype == self.dtype:
            out[...] = frame
        else:
            np.clip(frame, 0, self._max, out=out, casting="unsafe")

    def close(self) -> None:
        try:
            self._camera.disable()
            self._camera._pyroRelease()
        except Exception:  # noqa: BLE001 - closing: the server may be gone
            pass
