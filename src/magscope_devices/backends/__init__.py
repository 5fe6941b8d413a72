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

import importlib
from types import ModuleType

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
