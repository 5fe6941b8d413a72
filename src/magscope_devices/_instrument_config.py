"""The instrument config: which backend drives each part of the microscope, and how.

A YAML file (``magscope demo|ipython|qserver --config FILE`` or ``$MAGSCOPE_CONFIG``)::

    version: 1
    instrument: lab-3-tweezers      # written into every run's start document
    nm_per_px: 108.0                # object-plane pixel size (nm)
    focal_shift: 0.88               # focal-plane travel per nm of focus travel
    camera:
      backend: python-microscope    # sim | python-microscope
      uri: PYRO:Camera@192.168.1.20:8000
      sensor_px: [1280, 1024]       # width, height (checked against the camera)
      frame_rate_hz: 100
      exposure_s: 0.005
    magnet_z:                       # mm
      backend: epics                # sim | python-microscope | epics | pi | zaber
      pv: "XF:31-MT{Mag:Z}Mtr"
      limits: [0.3, 10.0]
      safe: 8.0                     # where plans leave the magnets
    magnet_rotation:                # turns
      backend: python-microscope
      uri: PYRO:Stage@192.168.1.20:8001
      axis: R
      scale: 0.002777777777777778   # turns per device unit (the stage counts degrees)
    focus:                          # nm
      backend: python-microscope
      uri: PYRO:Piezo@192.168.1.20:8002
      axis: Z
      scale: 1000.0                 # nm per device unit (the piezo counts um)
    tracking:
      roi_size_px: 64
      workers: 2

Everything is checked by :func:`parse_instrument_config` before anything connects; an
error (:class:`InstrumentConfigError`) names the key, the value and what is allowed.
Nothing here imports a backend: the factories (``_factories``) do, when they build.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from .sim.world import SimParams

#: Config file versions this code reads.
CONFIG_VERSION = 1
#: Environment variable naming the instrument config file.
CONFIG_ENV = "MAGSCOPE_CONFIG"

#: The focal shift of a real instrument whose config gives none: n_water / n_oil.
DEFAULT_FOCAL_SHIFT = 0.88

CAMERA_BACKENDS = ("sim", "python-microscope")
AXIS_BACKENDS = ("sim", "python-microscope", "epics", "pi", "zaber")
#: the units a Zaber axis reports in (zaber-motion converts its native steps)
ZABER_DEVICE_UNITS = ("mm", "um", "deg")
#: The axes of the microscope: config key -> (units, default limits, default velocity
#: (units/s, simulated axes), default start (simulated axes), default safe position)
AXES: dict[str, tuple[str, tuple[float, float], float, float | None, float | None]] = {
    "magnet_z": ("mm", (0.3, 10.0), 5.0, 8.0, 8.0),
    "magnet_rotation": ("turns", (-200.0, 200.0), 5.0, 0.0, None),
    "focus": ("nm", (-20_000.0, 80_000.0), 500_000.0, 0.0, None),
}


class InstrumentConfigError(ValueError):
    """The instrument config is not valid: the message names the key, the value and what
    is allowed."""


@dataclass(frozen=True)
class CameraConfig:
    """The camera. ``sensor_px`` (width, height) is the simulator's sensor for ``sim``
    and the size the python-microscope camera must report otherwise."""

    backend: str = "sim"
    uri: str | None = None
    sensor_px: tuple[int, int] | None = None
    bit_depth: int = 8
    frame_rate_hz: float = 100.0
    exposure_s: float = 0.005
    ring_capacity: int | None = None  # frames; None: 2 s of frames (64 to 512 MiB)
    timeout_s: float = 5.0


@dataclass(frozen=True)
class AxisConfig:
    """One axis, in the microscope's units (mm, turns or nm): ``position = scale *
    device position + offset``; ``limits`` are intersected with the device's own."""

    key: str
    backend: str = "sim"
    limits: tuple[float, float] = (0.0, 0.0)
    safe: float | None = None
    initial: float | None = None
    velocity: float = 1.0
    uri: str | None = None
    axis: str | None = None
    pv: str | None = None
    device_units: str | None = None
    scale: float = 1.0
    offset: float = 0.0
    timeout_s: float = 5.0

    @property
    def units(self) -> str:
        return AXES[self.key][0]

    @property
    def address(self) -> str:
        """Where the axis is: its PV, its URI and axis name, or 'simulated'."""
        if self.backend == "epics":
            return f"EPICS motor {self.pv}"
        if self.backend == "python-microscope":
            return f"python-microscope stage {self.uri} axis {self.axis!r}"
        if self.backend == "pi":
            return f"PI controller {self.uri} axis {self.axis!r}"
        if self.backend == "zaber":
            device, _, number = (self.axis or "").partition("/")
            return f"Zaber {self.uri} device {device} axis {number}"
        return "simulated"


@dataclass(frozen=True)
class TrackingConfig:
    """The bead tracker: on or off, worker processes (None: one per core), ROI side (px)."""

    enabled: bool = True
    workers: int | None = None
    roi_size_px: int = 64
    bead_radius_nm: float | None = None


@dataclass(frozen=True)
class InstrumentConfig:
    """A whole instrument. :meth:`simulated` is the default (the simulator everywhere)."""

    instrument: str = "magscope-sim"
    nm_per_px: float | None = None
    #: focal-plane travel in the sample per nm of focus travel (None: the simulated
    #: world's own with a simulated camera, else 0.88, oil immersion into water)
    focal_shift: float | None = None
    camera: CameraConfig = field(default_factory=CameraConfig)
    magnet_z: AxisConfig = field(default_factory=lambda: default_axis("magnet_z"))
    magnet_rotation: AxisConfig = field(default_factory=lambda: default_axis("magnet_rotation"))
    focus: AxisConfig = field(default_factory=lambda: default_axis("focus"))
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    #: the simulated world (beads, sensor, optics) when the camera is simulated
    sim: SimParams = field(default_factory=SimParams)
    #: the file it was read from (None: built in code)
    source: str | None = None

    @classmethod
    def simulated(cls, params: SimParams | None = None) -> InstrumentConfig:
        """The simulated microscope: every part simulated, the world ``params``."""
        params = params or SimParams()
        return cls(
            camera=CameraConfig(sensor_px=(params.width_px, params.height_px),
                                bit_depth=params.bit_depth),
            sim=params,
        )

    @property
    def simulated_camera(self) -> bool:
        return self.camera.backend == "sim"

    @property
    def focal_shift_factor(self) -> float:
        """The focal shift the instrument applies: the config's; else, with a simulated
        camera, the simulated world's (its truth); else 0.88 (oil immersion into
        water, the simple n2/n1 estimate: measure it)."""
        if self.focal_shift is not None:
            return float(self.focal_shift)
        return float(self.sim.focal_shift) if self.simulated_camera else DEFAULT_FOCAL_SHIFT

    @property
    def pixel_size_nm(self) -> float:
        """nm per px: the config's, or the simulated world's."""
        return float(self.nm_per_px if self.nm_per_px is not None else self.sim.nm_per_px)

    def axis(self, key: str) -> AxisConfig:
        return {"magnet_z": self.magnet_z, "magnet_rotation": self.magnet_rotation,
                "focus": self.focus}[key]

    def describe(self) -> str:
        """One line per part: its backend and address."""
        cam = self.camera
        lines = [f"instrument {self.instrument!r}"
                 + (f" (from {self.source})" if self.source else "")]
        lines.append(
            "  camera: simulated" if cam.backend == "sim"
            else f"  camera: python-microscope {cam.uri}"
        )
        for key in AXES:
            ax = self.axis(key)
            lines.append(
                f"  {key}: {ax.address}, limits [{ax.limits[0]:g}, {ax.limits[1]:g}] {ax.units}"
            )
        return "\n".join(lines)


def default_axis(key: str, **overrides: Any) -> AxisConfig:
    _units, limits, velocity, initial, safe = AXES[key]
    kw: dict[str, Any] = {"limits": limits, "velocity": velocity, "initial": initial,
                          "safe": safe, **overrides}
    return AxisConfig(key=key, **kw)


# -- reading and checking -----------------------------------------------------------------
def load_instrument_config(path: str | os.PathLike[str] | None = None) -> InstrumentConfig:
    """Read and check the config at ``path`` (default ``$MAGSCOPE_CONFIG``; neither: the
    simulated microscope). Raises :class:`InstrumentConfigError` naming what is wrong."""
    import yaml

    if path is None:
        path = os.environ.get(CONFIG_ENV) or None
    if path is None:
        return InstrumentConfig.simulated()
    file = Path(path).expanduser()
    try:
        text = file.read_text()
    except OSError as exc:
        raise InstrumentConfigError(f"instrument config {file}: cannot be read ({exc})") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InstrumentConfigError(f"instrument config {file}: not valid YAML: {exc}") from exc
    return parse_instrument_config(data if data is not None else {}, source=str(file))


def parse_instrument_config(data: Any, *, source: str | None = None) -> InstrumentConfig:
    """Check a config mapping (as read from YAML) and build the :class:`InstrumentConfig`."""
    where = f"instrument config {source}: " if source else "instrument config: "
    try:
        return _parse(data, source)
    except InstrumentConfigError as exc:
        raise InstrumentConfigError(where + str(exc)) from None


_TOP_KEYS = ("version", "instrument", "nm_per_px", "focal_shift", "camera", "magnet_z",
             "magnet_rotation", "focus", "tracking", "sim")


def _parse(data: Any, source: str | None) -> InstrumentConfig:
    top = _mapping("(top level)", data, _TOP_KEYS)
    version = top.get("version", CONFIG_VERSION)
    if version != CONFIG_VERSION:
        raise InstrumentConfigError(
            f"version = {version!r}: this MagScope reads version {CONFIG_VERSION} only"
        )
    instrument = top.get("instrument", "magscope-sim")
    if not isinstance(instrument, str) or not instrument.strip():
        raise InstrumentConfigError(f"instrument = {instrument!r}: must be a non-empty name")
    nm_per_px = top.get("nm_per_px")
    if nm_per_px is not None:
        nm_per_px = _number("nm_per_px", nm_per_px, low=1.0, high=10_000.0, units="nm")
    focal_shift = top.get("focal_shift")
    if focal_shift is not None:
        focal_shift = _number("focal_shift", focal_shift, low=0.3, high=1.5)
    sim = _sim_params(top.get("sim", {}))
    if nm_per_px is not None:
        sim = replace(sim, nm_per_px=nm_per_px)
    camera = _camera(top.get("camera", {}))
    if camera.backend == "sim":
        if camera.sensor_px is not None:
            sim = replace(sim, width_px=camera.sensor_px[0], height_px=camera.sensor_px[1])
        camera = replace(camera, sensor_px=(sim.width_px, sim.height_px),
                         bit_depth=int(sim.bit_depth))
    elif nm_per_px is None:
        raise InstrumentConfigError(
            "nm_per_px is missing: a real camera needs the object-plane pixel size (nm)"
        )
    axes = {key: _axis(key, top.get(key, {})) for key in AXES}
    tracking = _tracking(top.get("tracking", {}))
    return InstrumentConfig(
        instrument=instrument, nm_per_px=nm_per_px, focal_shift=focal_shift, camera=camera,
        tracking=tracking, sim=sim, source=source, **axes,
    )


def _mapping(key: str, value: Any, allowed: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise InstrumentConfigError(f"{key} = {value!r}: must be a mapping of {', '.join(allowed)}")
    for k in value:
        if k not in allowed:
            name = k if key == "(top level)" else f"{key}.{k}"
            raise InstrumentConfigError(
                f"{name}: unknown key; allowed here: {', '.join(allowed)}"
            )
    return dict(value)


def _number(key: str, value: Any, *, low: float | None = None, high: float | None = None,
            units: str = "", positive: bool = False) -> float:
    u = f" {units}" if units else ""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InstrumentConfigError(f"{key} = {value!r}: must be a finite number{u}")
    if positive and value <= 0:
        raise InstrumentConfigError(f"{key} = {value!r}{u}: must be above 0")
    if low is not None and value < low:
        raise InstrumentConfigError(f"{key} = {value!r}{u}: below the minimum {low:g}{u}")
    if high is not None and value > high:
        raise InstrumentConfigError(f"{key} = {value!r}{u}: above the maximum {high:g}{u}")
    return float(value)


def _integer(key: str, value: Any, *, low: int, high: int, units: str = "") -> int:
    u = f" {units}" if units else ""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InstrumentConfigError(f"{key} = {value!r}: must be a whole number{u}")
    if not low <= value <= high:
        raise InstrumentConfigError(f"{key} = {value!r}{u}: must be in [{low}, {high}]{u}")
    return int(value)


def _choice(key: str, value: Any, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise InstrumentConfigError(f"{key} = {value!r}: must be one of {', '.join(allowed)}")
    return str(value)


def _text(key: str, value: Any, *, why: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InstrumentConfigError(f"{key} = {value!r}: {why}")
    return value.strip()


def _pyro_uri(key: str, value: Any) -> str:
    uri = _text(key, value, why="must be a python-microscope device URI, PYRO:<id>@<host>:<port>")
    head, _, address = uri.partition("@")
    host, _, port = address.rpartition(":")
    if not head.startswith("PYRO:") or len(head) <= 5 or not host or not port.isdigit():
        raise InstrumentConfigError(
            f"{key} = {value!r}: must be a python-microscope device URI, PYRO:<id>@<host>:<port>"
        )
    return uri


def _line_uri(key: str, value: Any) -> str:
    """tcp://HOST:PORT or serial:///dev/PORT[?baud=N]: where a controller's line is."""
    why = "must be tcp://HOST:PORT or serial:///dev/PORT (optionally ?baud=115200)"
    uri = _text(key, value, why=why)
    parts = urlsplit(uri)
    try:
        port = parts.port
    except ValueError:
        port = None
    tcp_ok = parts.scheme == "tcp" and bool(parts.hostname) and port is not None
    serial_ok = parts.scheme == "serial" and parts.path.startswith("/")
    if parts.query and serial_ok:
        baud = parse_qs(parts.query).get("baud", [""])[0]
        serial_ok = baud.isdigit() and set(parse_qs(parts.query)) == {"baud"}
    if not (tcp_ok or serial_ok):
        raise InstrumentConfigError(f"{key} = {value!r}: {why}")
    return uri


_CAMERA_KEYS = tuple(f.name for f in fields(CameraConfig))


def _camera(value: Any) -> CameraConfig:
    raw = _mapping("camera", value, _CAMERA_KEYS)
    backend = _choice("camera.backend", raw.get("backend", "sim"), CAMERA_BACKENDS)
    kw: dict[str, Any] = {"backend": backend}
    if "frame_rate_hz" in raw:
        kw["frame_rate_hz"] = _number("camera.frame_rate_hz", raw["frame_rate_hz"], low=0.1,
                                      high=10_000.0, units="Hz")
    if "exposure_s" in raw:
        kw["exposure_s"] = _number("camera.exposure_s", raw["exposure_s"], low=1e-6, high=10.0,
                                   units="s")
    if "ring_capacity" in raw:
        kw["ring_capacity"] = _integer("camera.ring_capacity", raw["ring_capacity"], low=8,
                                       high=100_000, units="frames")
    if "timeout_s" in raw:
        kw["timeout_s"] = _number("camera.timeout_s", raw["timeout_s"], low=0.1, high=600.0,
                                  units="s")
    if "bit_depth" in raw:
        kw["bit_depth"] = _choice("camera.bit_depth", raw["bit_depth"], (8, 10, 12, 14, 16))  # type: ignore[arg-type]
    if "sensor_px" in raw:
        size = raw["sensor_px"]
        if (not isinstance(size, (list, tuple)) or len(size) != 2
                or any(isinstance(v, bool) or not isinstance(v, int) or not 16 <= v <= 16384
                       for v in size)):
            raise InstrumentConfigError(
                f"camera.sensor_px = {size!r}: must be [width, height], whole px in [16, 16384]"
            )
        kw["sensor_px"] = (int(size[0]), int(size[1]))
    if backend == "python-microscope":
        kw["uri"] = _pyro_uri("camera.uri", raw.get("uri"))
        if "sensor_px" not in kw:
            raise InstrumentConfigError(
                "camera.sensor_px is missing: give the camera's [width, height] in px "
                "(checked against the camera when it connects)"
            )
    elif "uri" in raw:
        raise InstrumentConfigError(
            f"camera.uri = {raw['uri']!r}: only for backend python-microscope (backend is sim)"
        )
    return CameraConfig(**kw)


_AXIS_KEYS = tuple(f.name for f in fields(AxisConfig) if f.name != "key")
_BACKEND_KEYS = {
    "sim": ("initial", "velocity"),
    "python-microscope": ("uri", "axis", "scale", "offset", "timeout_s"),
    "epics": ("pv", "scale", "offset", "timeout_s"),
    "pi": ("uri", "axis", "scale", "offset", "timeout_s"),
    "zaber": ("uri", "axis", "device_units", "scale", "offset", "timeout_s"),
}


def _axis(key: str, value: Any) -> AxisConfig:
    units, default_limits, velocity, initial, safe = AXES[key]
    raw = _mapping(key, value, _AXIS_KEYS)
    backend = _choice(f"{key}.backend", raw.get("backend", "sim"), AXIS_BACKENDS)
    common = ("backend", "limits", "safe")
    if "safe" in raw and safe is None:
        raise InstrumentConfigError(
            f"{key}.safe = {raw['safe']!r}: only magnet_z has a safe position (the height "
            f"plans leave the magnets at); {key} stays where a plan leaves it"
        )
    for k in raw:
        if k not in common and k not in _BACKEND_KEYS[backend]:
            users = [b for b, ks in _BACKEND_KEYS.items() if k in ks]
            raise InstrumentConfigError(
                f"{key}.{k}: not used by backend {backend} (only by {', '.join(users)})"
            )
    limits = default_limits
    if "limits" in raw:
        lim = raw["limits"]
        if not isinstance(lim, (list, tuple)) or len(lim) != 2:
            raise InstrumentConfigError(
                f"{key}.limits = {lim!r}: must be [low, high] in {units}"
            )
        low = _number(f"{key}.limits[0]", lim[0], units=units)
        high = _number(f"{key}.limits[1]", lim[1], units=units)
        if not low < high:
            raise InstrumentConfigError(
                f"{key}.limits = {lim!r}: the low limit must be below the high one ({units})"
            )
        limits = (low, high)
    kw: dict[str, Any] = {"key": key, "backend": backend, "limits": limits, "velocity": velocity}
    if "safe" in raw:
        kw["safe"] = _number(f"{key}.safe", raw["safe"], low=limits[0], high=limits[1],
                             units=units)
    elif safe is not None:
        kw["safe"] = min(max(safe, limits[0]), limits[1])
    if backend == "sim":
        start = raw.get("initial", initial)
        if start is not None:
            kw["initial"] = _number(f"{key}.initial", start, low=limits[0], high=limits[1],
                                    units=units)
        if "velocity" in raw:
            kw["velocity"] = _number(f"{key}.velocity", raw["velocity"], positive=True,
                                     units=f"{units}/s")
    else:
        if "scale" in raw:
            kw["scale"] = _number(f"{key}.scale", raw["scale"], units=f"{units} per device unit")
            if kw["scale"] == 0:
                raise InstrumentConfigError(f"{key}.scale = 0: must not be 0")
        if "offset" in raw:
            kw["offset"] = _number(f"{key}.offset", raw["offset"], units=units)
        if "timeout_s" in raw:
            kw["timeout_s"] = _number(f"{key}.timeout_s", raw["timeout_s"], low=0.1, high=600.0,
                                      units="s")
    if backend == "python-microscope":
        kw["uri"] = _pyro_uri(f"{key}.uri", raw.get("uri"))
        kw["axis"] = _text(f"{key}.axis", raw.get("axis"),
                           why="must name the stage's axis (a key of the stage's `axes`)")
    if backend in ("pi", "zaber"):
        kw["uri"] = _line_uri(f"{key}.uri", raw.get("uri"))
    if backend == "pi":
        kw["axis"] = _text(f"{key}.axis", raw.get("axis"),
                           why="must name the controller's axis (an id SAI? lists, e.g. '1')")
    if backend == "zaber":
        axis = raw.get("axis")
        device, _, number = str(axis).partition("/")
        if not (isinstance(axis, str) and device.isdigit() and number.isdigit()):
            raise InstrumentConfigError(
                f"{key}.axis = {axis!r}: must be 'DEVICE/AXIS', the device address and axis "
                "number, e.g. '1/1'"
            )
        kw["axis"] = axis
        kw["device_units"] = _choice(f"{key}.device_units", raw.get("device_units", "mm"),
                                     ZABER_DEVICE_UNITS)
    if backend == "epics":
        kw["pv"] = _text(f"{key}.pv", raw.get("pv"),
                         why="must be the motor record's PV prefix, e.g. 'XF:31-MT{Mag:Z}Mtr'")
    return AxisConfig(**kw)


def _tracking(value: Any) -> TrackingConfig:
    raw = _mapping("tracking", value, tuple(f.name for f in fields(TrackingConfig)))
    kw: dict[str, Any] = {}
    if "enabled" in raw:
        if not isinstance(raw["enabled"], bool):
            raise InstrumentConfigError(f"tracking.enabled = {raw['enabled']!r}: must be true or false")
        kw["enabled"] = raw["enabled"]
    if raw.get("workers") is not None:
        kw["workers"] = _integer("tracking.workers", raw["workers"], low=1, high=64)
    if "roi_size_px" in raw:
        kw["roi_size_px"] = _integer("tracking.roi_size_px", raw["roi_size_px"], low=16,
                                     high=512, units="px")
    if raw.get("bead_radius_nm") is not None:
        kw["bead_radius_nm"] = _number("tracking.bead_radius_nm", raw["bead_radius_nm"],
                                       low=10.0, high=50_000.0, units="nm")
    return TrackingConfig(**kw)


def _sim_params(value: Any) -> SimParams:
    names = tuple(f.name for f in fields(SimParams))
    raw = _mapping("sim", value, names)
    defaults = SimParams()
    kw: dict[str, Any] = {}
    for k, v in raw.items():
        default = getattr(defaults, k)
        if isinstance(default, bool):
            if not isinstance(v, bool):
                raise InstrumentConfigError(f"sim.{k} = {v!r}: must be true or false")
        elif isinstance(default, int):
            if isinstance(v, bool) or not isinstance(v, int):
                raise InstrumentConfigError(f"sim.{k} = {v!r}: must be a whole number")
        elif isinstance(default, float):
            v = _number(f"sim.{k}", v)
        elif isinstance(default, tuple):
            if not isinstance(v, (list, tuple)) or len(v) != len(default):
                raise InstrumentConfigError(
                    f"sim.{k} = {v!r}: must be a list of {len(default)} numbers"
                )
            v = tuple(_number(f"sim.{k}[{i}]", x) for i, x in enumerate(v))
        kw[k] = v
    try:
        return replace(defaults, **kw)
    except (TypeError, ValueError) as exc:
        raise InstrumentConfigError(f"sim: {exc}") from exc
