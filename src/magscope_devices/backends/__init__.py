"""Hardware backends of the microscope's parts, chosen by the instrument config.

- :mod:`.pymicroscope`: python-microscope cameras (the camera process's frame source)
  and stage axes, local or over python-microscope's device server (Pyro);
- :mod:`.epics`: axes as EPICS motor records, through ophyd-async's ``Motor``;
- :mod:`.pi`: axes of Physik Instrumente controllers through ``pipython`` (GCS);
- :mod:`.zaber`: axes of Zaber stages through ``zaber-motion`` (worked example, not tested
  against hardware).

Each module imports its optional package only when a part is built, and names the extra
to install when it is missing (:func:`require`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import importlib
from collections.abc import Callable
from types import ModuleType
from typing import Any

#: optional package -> the extra of magscope-bluesky that installs it
EXTRAS = {"microscope": "microscope", "Pyro4": "microscope", "aioca": "epics",
          "caproto": "epics", "pipython": "pi", "zaber_motion": "zaber"}


class MissingBackendError(ImportError):
    """A backend's optional package is not installed."""


class DeviceUnreachableError(ConnectionError):
    """A hardware device did not answer (down, wrong address, network); the message names
    its address (a ``PYRO:`` URI, an EPICS PV)."""


def require(module: str, backend: str) -> ModuleType:
    """Import ``module`` or say which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".")[0]
        extra = EXTRAS.get(top, top)
        raise MissingBackendError(
            f"the {backend} backend needs the Python package {top!r}, which is not "
            f"installed: pip install 'magscope-bluesky[{extra}]'"
        ) from exc


class ScaledAxis:
    """The unit conversion every axis drive shares: ``position = scale * device position
    + offset`` in the axis's units (mm, turns, nm). Set ``scale`` and ``offset``."""

    scale: float = 1.0
    offset: float = 0.0

    def to_axis(self, device_value: float) -> float:
        return self.scale * float(device_value) + self.offset

    def to_device(self, value: float) -> float:
        return (float(value) - self.offset) / self.scale

    def axis_limits(self, low: float, high: float) -> tuple[float, float]:
        """The device's limits ``low``, ``high`` (its units) in the axis's, in order (a
        negative scale swaps them)."""
        a, b = self.to_axis(low), self.to_axis(high)
        return (min(a, b), max(a, b))


class BlockingCalls:
    """Calls into a blocking library (Pyro, pipython), one at a time, on a thread of
    their own, off the event loop. ``close()`` lets the thread go."""

    def __init__(self, thread_name: str) -> None:
        self.thread_name = thread_name
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None

    async def __call__(self, func: Callable[[], Any]) -> Any:
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=1, thread_name_prefix=self.thread_name
            )
        return await asyncio.get_running_loop().run_in_executor(self._executor, func)

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
