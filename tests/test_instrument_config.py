"""The instrument config: read, checked before anything connects, errors that name the
key, the value and what is allowed; the simulated microscope is its default."""

from __future__ import annotations

import asyncio
import sys
import textwrap

import pytest
from bluesky.run_engine import call_in_bluesky_event_loop
from ophyd_async.core import init_devices

from magscope_devices import (
    FocusStage,
    InstrumentConfig,
    InstrumentConfigError,
    LimitError,
    MagnetZ,
    SimParams,
    load_instrument_config,
    make_microscope,
    parse_instrument_config,
)
from magscope_devices._factories import make_drive
from magscope_devices._instrument_config import CONFIG_ENV
from magscope_devices.backends import MissingBackendError

LAB = textwrap.dedent(
    """
    version: 1
    instrument: lab-3-tweezers
    nm_per_px: 108.0
    camera:
      backend: python-microscope
      uri: PYRO:Camera@192.168.1.20:8000
      sensor_px: [1280, 1024]
      frame_rate_hz: 100
      exposure_s: 0.005
    magnet_z:
      backend: epics
      pv: "XF:31-MT{Mag:Z}Mtr"
      limits: [0.3, 10.0]
      safe: 8.0
    magnet_rotation:
      backend: python-microscope
      uri: PYRO:Stage@192.168.1.20:8001
      axis: R
      scale: 0.002777777777777778
    focus:
      backend: python-microscope
      uri: PYRO:Piezo@192.168.1.20:8002
      axis: Z
      scale: 1000.0
      limits: [0, 100000]
    tracking:
      roi_size_px: 64
      workers: 2
    """
)


def test_no_config_is_the_simulated_microscope(monkeypatch):
    monkeypatch.delenv(CONFIG_ENV, raising=False)
    config = load_instrument_config()
    assert config == InstrumentConfig.simulated()
    assert config.simulated_camera and config.camera.sensor_px == (1024, 768)
    assert {config.axis(k).backend for k in ("magnet_z", "magnet_rotation", "focus")} == {"sim"}


def test_a_lab_config_reads_with_units_and_addresses(tmp_path, monkeypatch):
    path = tmp_path / "lab.yaml"
    path.write_text(LAB)
    monkeypatch.setenv(CONFIG_ENV, str(path))
    config = load_instrument_config()
    assert config.source == str(path) and config.instrument == "lab-3-tweezers"
    assert config.pixel_size_nm == 108.0
    assert config.camera.uri == "PYRO:Camera@192.168.1.20:8000"
    assert config.camera.sensor_px == (1280, 1024)
    assert config.magnet_z.address == "EPICS motor XF:31-MT{Mag:Z}Mtr"
    assert config.magnet_z.safe == 8.0 and config.magnet_z.units == "mm"
    assert config.focus.scale == 1000.0 and config.focus.limits == (0.0, 100000.0)
    assert config.tracking.workers == 2
    text = config.describe()
    assert "python-microscope stage PYRO:Piezo@192.168.1.20:8002 axis 'Z'" in text
    assert "limits [0.3, 10] mm" in text


def test_the_sim_section_sets_the_simulated_world():
    config = parse_instrument_config(
        {"sim": {"seed": 3, "n_tethered": 5, "contour_nm_range": [3000, 4000]},
         "camera": {"sensor_px": [512, 384]}, "nm_per_px": 90.0}
    )
    assert config.sim.seed == 3 and config.sim.n_tethered == 5
    assert config.sim.contour_nm_range == (3000.0, 4000.0)
    assert (config.sim.width_px, config.sim.height_px) == (512, 384)
    assert config.sim.nm_per_px == 90.0 == config.pixel_size_nm


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"camera": {"backend": "andor"}},
         "camera.backend = 'andor': must be one of sim, python-microscope"),
        ({"focus": {"backend": "tango"}},
         "focus.backend = 'tango': must be one of sim, python-microscope, epics, pi, zaber"),
        ({"magnet_z": {"limit": [0, 1]}},
         "magnet_z.limit: unknown key; allowed here: backend, limits, safe"),
        ({"magnets": {}}, "magnets: unknown key; allowed here: version, instrument"),
        ({"magnet_z": {"limits": [5, 1]}},
         "magnet_z.limits = [5, 1]: the low limit must be below the high one (mm)"),
        ({"magnet_z": {"limits": [0.3, "ten"]}},
         "magnet_z.limits[1] = 'ten': must be a finite number mm"),
        ({"magnet_z": {"safe": 12.0}}, "magnet_z.safe = 12.0 mm: above the maximum 10 mm"),
        ({"focus": {"safe": 0.0}}, "focus.safe = 0.0: only magnet_z has a safe position"),
        ({"focus": {"backend": "pi", "uri": "192.168.1.5:50000", "axis": "1"}},
         "focus.uri = '192.168.1.5:50000': must be tcp://HOST:PORT or serial:///dev/PORT"),
        ({"focus": {"backend": "pi", "uri": "serial:///dev/ttyUSB0?baud=fast", "axis": "1"}},
         "focus.uri = 'serial:///dev/ttyUSB0?baud=fast': must be tcp://HOST:PORT"),
        ({"magnet_z": {"backend": "zaber", "uri": "tcp://10.0.0.2:55550", "axis": "X"}},
         "magnet_z.axis = 'X': must be 'DEVICE/AXIS', the device address and axis number"),
        ({"magnet_z": {"backend": "zaber", "uri": "tcp://10.0.0.2:55550", "axis": "1/1",
                       "device_units": "inch"}},
         "magnet_z.device_units = 'inch': must be one of mm, um, deg"),
        ({"focus": {"backend": "pi", "uri": "tcp://10.0.0.2:50000", "axis": "1",
                    "device_units": "um"}},
         "focus.device_units: not used by backend pi (only by zaber)"),
        ({"focus": {"backend": "python-microscope", "axis": "Z"}},
         "focus.uri = None: must be a python-microscope device URI, PYRO:<id>@<host>:<port>"),
        ({"focus": {"backend": "python-microscope", "uri": "localhost:8000", "axis": "Z"}},
         "focus.uri = 'localhost:8000': must be a python-microscope device URI"),
        ({"focus": {"backend": "python-microscope", "uri": "PYRO:S@h:1"}},
         "focus.axis = None: must name the stage's axis"),
        ({"focus": {"backend": "epics"}}, "focus.pv = None: must be the motor record's PV"),
        ({"focus": {"backend": "epics", "pv": "m1", "axis": "Z"}},
         "focus.axis: not used by backend epics (only by python-microscope, pi, zaber)"),
        ({"focus": {"backend": "epics", "pv": "m1", "scale": 0}}, "focus.scale = 0: must not be 0"),
        ({"magnet_z": {"velocity": -1}}, "magnet_z.velocity = -1 mm/s: must be above 0"),
        ({"camera": {"backend": "python-microscope", "uri": "PYRO:C@h:1",
                     "sensor_px": [640, 480]}},
         "nm_per_px is missing: a real camera needs the object-plane pixel size (nm)"),
        ({"nm_per_px": 100, "camera": {"backend": "python-microscope", "uri": "PYRO:C@h:1"}},
         "camera.sensor_px is missing"),
        ({"camera": {"sensor_px": [640]}}, "camera.sensor_px = [640]: must be [width, height]"),
        ({"camera": {"frame_rate_hz": 0}}, "camera.frame_rate_hz = 0 Hz: below the minimum 0.1 Hz"),
        ({"camera": {"uri": "PYRO:C@h:1"}}, "camera.uri = 'PYRO:C@h:1': only for backend"),
        ({"tracking": {"workers": 0}}, "tracking.workers = 0: must be in [1, 64]"),
        ({"tracking": {"enabled": "yes"}}, "tracking.enabled = 'yes': must be true or false"),
        ({"version": 2}, "version = 2: this MagScope reads version 1 only"),
        ({"sim": {"n_tethered": 2.5}}, "sim.n_tethered = 2.5: must be a whole number"),
        ({"sim": {"bit_depth": 12}}, "sim: bit_depth must be 8 or 16, not 12"),
        ({"nm_per_px": float("nan")}, "nm_per_px = nan: must be a finite number nm"),
        ({"focal_shift": 2.0}, "focal_shift = 2.0: above the maximum 1.5"),
        ({"sim": {"focal_shift": 0.1}}, "sim: focal_shift=0.1: must be within 0.3 to 1.5"),
        ([1, 2], "(top level) = [1, 2]: must be a mapping of version, instrument"),
    ],
)
def test_a_bad_config_is_refused_naming_key_value_and_what_is_allowed(data, message):
    with pytest.raises(InstrumentConfigError) as info:
        parse_instrument_config(data, source="lab.yaml")
    assert str(info.value).startswith("instrument config lab.yaml: ")
    assert message in str(info.value)


def test_unreadable_or_invalid_yaml_is_refused_and_left_alone(tmp_path):
    with pytest.raises(InstrumentConfigError, match="missing.yaml: cannot be read"):
        load_instrument_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("camera: [unclosed\n")
    with pytest.raises(InstrumentConfigError, match="bad.yaml: not valid YAML"):
        load_instrument_config(bad)
    assert bad.read_text() == "camera: [unclosed\n"


def test_the_factories_build_each_axis_from_its_config_without_connecting(tmp_path):
    config = parse_instrument_config({
        "magnet_z": {"limits": [1.0, 9.0], "initial": 7.0, "velocity": 2.0},
        "focus": {"backend": "python-microscope", "uri": "PYRO:Stage@127.0.0.1:1",
                  "axis": "F", "scale": 1000.0},
    })
    scope = make_microscope(config, data_dir=tmp_path)
    assert isinstance(scope.magnet_z, MagnetZ) and scope.magnet_z.drive is None
    assert isinstance(scope.focus, FocusStage)
    assert scope.focus.drive is not None
    assert scope.focus.drive.address == "python-microscope stage PYRO:Stage@127.0.0.1:1 axis 'F'"
    assert scope.config is config and scope.simulation is not None
    scope.close()


def test_the_focal_shift_is_the_configs_else_the_simulated_worlds_else_088(RE, tmp_path):
    simulated = parse_instrument_config({"sim": {"focal_shift": 0.8}})
    assert simulated.focal_shift is None and simulated.focal_shift_factor == 0.8
    told = parse_instrument_config({"focal_shift": 0.85, "sim": {"focal_shift": 0.8}})
    assert told.focal_shift_factor == 0.85  # what the instrument believes, not the truth
    real = parse_instrument_config(
        {"nm_per_px": 100, "camera": {"backend": "python-microscope", "uri": "PYRO:C@h:1",
                                      "sensor_px": [640, 480]}}
    )
    assert real.focal_shift_factor == 0.88
    with init_devices(mock=True):
        scope = make_microscope(told, data_dir=tmp_path, name="mic")
    try:
        conf = call_in_bluesky_event_loop(scope.focus.read_configuration())
        assert conf["mic-focus-focal_shift"]["value"] == 0.85
    finally:
        scope.close()
    with init_devices():
        focus = FocusStage(focal_shift=0.85)

    async def set_badly():
        await focus.focal_shift.set(0.1)

    with pytest.raises(ValueError, match=r"focal_shift = 0.1 is outside \[0.3, 1.5\]"):
        call_in_bluesky_event_loop(set_badly())
    assert call_in_bluesky_event_loop(focus.focal_shift.get_value()) == 0.85
    with pytest.raises(ValueError, match=r"focal_shift = 2.0 is outside"):
        FocusStage(focal_shift=2.0)


def test_the_configured_safe_height_is_a_signal_recorded_with_every_run(RE, tmp_path):
    config = parse_instrument_config({"magnet_z": {"limits": [1.0, 9.0], "safe": 6.5}})
    with init_devices(mock=True):
        scope = make_microscope(config, data_dir=tmp_path, name="mic")
    try:
        conf = call_in_bluesky_event_loop(scope.magnet_z.read_configuration())
        assert conf["mic-magnet_z-safe_height"]["value"] == 6.5
        described = call_in_bluesky_event_loop(scope.magnet_z.describe_configuration())
        assert described["mic-magnet_z-safe_height"]["units"] == "mm"
    finally:
        scope.close()
    with pytest.raises(LimitError, match=r"safe magnet height 9.5 mm is outside the limits \[1.0, 9.0\] mm"):
        MagnetZ(low_limit=1.0, high_limit=9.0, safe=9.5)


def test_a_missing_backend_package_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "Pyro4", None)  # import Pyro4 -> ImportError
    config = parse_instrument_config({
        "nm_per_px": 100.0,
        "camera": {"backend": "python-microscope", "uri": "PYRO:Camera@127.0.0.1:1",
                   "sensor_px": [640, 480]},
    })
    with pytest.raises(MissingBackendError) as info:
        make_microscope(config, data_dir=tmp_path)
    assert "pip install 'magscope-bluesky[microscope]'" in str(info.value)
    assert "'Pyro4'" in str(info.value)


@pytest.mark.parametrize("backend, module, extra, axis", [
    ("zaber", "zaber_motion", "zaber", "1/1"),
    ("pi", "pipython", "pi", "1"),
])
def test_a_missing_axis_backend_package_names_the_extra(monkeypatch, backend, module, extra, axis):
    monkeypatch.setitem(sys.modules, module, None)  # import -> ImportError
    config = parse_instrument_config(
        {"focus": {"backend": backend, "uri": "tcp://127.0.0.1:1", "axis": axis}}
    )
    drive = make_drive(config.focus)
    assert drive is not None and drive.address == config.focus.address
    with pytest.raises(MissingBackendError, match=rf"pip install 'magscope-bluesky\[{extra}\]'"):
        asyncio.run(drive.connect(1.0))
    drive.close()


def test_simulated_params_reach_the_world():
    config = InstrumentConfig.simulated(SimParams(seed=9, width_px=256, height_px=200))
    assert config.camera.sensor_px == (256, 200) and config.sim.seed == 9
