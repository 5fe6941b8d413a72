"""The python-microscope backend over the real protocol: python-microscope's own
``SimulatedCamera`` and ``SimulatedStage``, served by its ``device-server`` in another
process, driven through Pyro as a lab's remote devices would be."""

from __future__ import annotations

import socket
import sys
import textwrap
import time
from pathlib import Path

import bluesky.plan_stubs as bps
import numpy as np
import pytest
from bluesky import RunEngine
from bluesky.utils import FailedStatus
from ophyd_async.core import init_devices

from hardware_chain import KILLED_SCAN_MM, run_experiment_chain, scan_until_killed
from magscope_devices import make_microscope, parse_instrument_config
from process_helpers import free_port, kill_service, start_service

pytestmark = [pytest.mark.system, pytest.mark.xdist_group("pymicroscope")]

Pyro4 = pytest.importorskip("Pyro4")  # installed by the test extra: a missing one fails below
assert Pyro4 is not None

SENSOR = (320, 240)  # width, height of the device server's camera (px)
#: the stage's axes in the device's own units: Z mm, R degrees, F micrometres
STAGE_LIMITS = {"Z": (0.3, 10.0), "R": (-72_000.0, 72_000.0), "F": (-20.0, 80.0)}


class DeviceServer:
    """python-microscope's ``device-server`` serving a camera and a stage on loopback."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.camera_port, self.stage_port = free_port(), free_port()
        folder.mkdir(parents=True, exist_ok=True)
        limits = ", ".join(f"{k!r}: AxisLimits({lo}, {hi})" for k, (lo, hi) in STAGE_LIMITS.items())
        config = folder / "devices.py"
        config.write_text(textwrap.dedent(f"""
            from microscope import AxisLimits
            from microscope.device_server import device
            from microscope.simulators import SimulatedCamera, SimulatedStage
            DEVICES = [
                device(SimulatedCamera, "127.0.0.1", {self.camera_port},
                       conf={{"sensor_shape": {SENSOR}}}),
                device(SimulatedStage, "127.0.0.1", {self.stage_port},
                       conf={{"limits": {{{limits}}}}}),
            ]
        """))
        exe = Path(sys.executable).with_name("device-server")
        self.camera_uri = f"PYRO:SimulatedCamera@127.0.0.1:{self.camera_port}"
        self.stage_uri = f"PYRO:SimulatedStage@127.0.0.1:{self.stage_port}"

        def listening() -> bool:
            for port in (self.camera_port, self.stage_port):
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                except OSError:
                    return False
            return True

        self.child = start_service(
            "device-server", [str(exe), "--logging-dir", str(folder), str(config)], folder,
            ready=listening, cwd=folder,
        )

    def stage_position(self, axis: str) -> float:
        Pyro4.config.SERIALIZER = "pickle"
        with Pyro4.Proxy(self.stage_uri) as stage:
            return float(stage.position[axis])

    def kill(self) -> None:
        kill_service(self.child)

    def close(self) -> None:
        self.child.stop()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = DeviceServer(tmp_path_factory.mktemp("device-server"))
    yield srv
    srv.close()


def stage_axes(srv: DeviceServer) -> dict:
    return {
        "magnet_z": {"backend": "python-microscope", "uri": srv.stage_uri, "axis": "Z",
                     "limits": [0.5, 9.0]},
        "magnet_rotation": {"backend": "python-microscope", "uri": srv.stage_uri, "axis": "R",
                            "scale": 1 / 360},
        "focus": {"backend": "python-microscope", "uri": srv.stage_uri, "axis": "F",
                  "scale": 1000.0, "limits": [-10_000, 50_000]},
    }


@pytest.mark.alone  # a frame late by one 20 ms period is lost: no other test beside it
def test_frames_of_a_python_microscope_camera_arrive_at_the_set_rate_none_lost(
    server, tmp_path
):
    rate = 50.0
    config = parse_instrument_config({
        "nm_per_px": 100.0,
        "camera": {"backend": "python-microscope", "uri": server.camera_uri,
                   "sensor_px": list(SENSOR), "frame_rate_hz": rate, "exposure_s": 0.002},
        "tracking": {"enabled": False},
    })
    RE = RunEngine()
    with init_devices():
        mic = make_microscope(config, data_dir=tmp_path, name="mic")
    try:
        cam = mic.camera
        frame, _, _ = cam.latest_frame(timeout=10)
        assert frame.shape == (SENSOR[1], SENSOR[0])
        ctl = cam.process.control
        n0, late0, t0 = ctl["frames_acquired"], ctl["frames_late"], time.monotonic()
        time.sleep(30.0)
        n1, late1, t1 = ctl["frames_acquired"], ctl["frames_late"], time.monotonic()
        frames, late = n1 - n0, late1 - late0
        print(f"python-microscope camera over Pyro: {frames / (t1 - t0):.2f} frames/s "
              f"(set {rate}), {late} late of {frames} over {t1 - t0:.1f} s")
        assert late == 0
        assert abs(frames / (t1 - t0) / rate - 1) < 0.01
        frame, _, index = cam.latest_frame()
        assert index >= n1 - 1 and frame.std() > 0  # the camera's test pattern, not zeros
        # gain: each camera names and scales its own; ours stays 1 and says where to set it
        with pytest.raises(FailedStatus, match="gain 2.0 cannot be set: python-microscope"):
            RE(bps.mv(cam.gain, 2.0))
        RE(bps.mv(cam.gain, 1.0))
    finally:
        mic.close()


def test_stage_axes_move_read_back_and_keep_the_config_limits(server, tmp_path):
    config = parse_instrument_config({**stage_axes(server), "tracking": {"enabled": False}})
    RE = RunEngine(call_returns_result=True)
    with init_devices():
        mic = make_microscope(config, data_dir=tmp_path, name="mic")
    try:
        limits = {
            key: (RE(bps.rd(getattr(mic, key).low_limit)).plan_result,
                  RE(bps.rd(getattr(mic, key).high_limit)).plan_result)
            for key in ("magnet_z", "magnet_rotation", "focus")
        }
        # the config's limits within the device's (converted to mm, turns, nm)
        assert limits["magnet_z"] == (0.5, 9.0)
        assert limits["magnet_rotation"] == pytest.approx((-200.0, 200.0))
        assert limits["focus"] == (-10_000.0, 50_000.0)
        RE(bps.mv(mic.magnet_z, 3.25, mic.magnet_rotation, 2.5, mic.focus, 1234.0))
        assert server.stage_position("Z") == pytest.approx(3.25)
        assert server.stage_position("R") == pytest.approx(900.0)
        assert server.stage_position("F") == pytest.approx(1.234)
        assert RE(bps.rd(mic.magnet_z)).plan_result == pytest.approx(3.25)
        assert RE(bps.rd(mic.focus)).plan_result == pytest.approx(1234.0)
        # inside the stage's range, outside the config's: refused, nothing moves
        with pytest.raises(FailedStatus, match="above the upper limit 9.0 mm"):
            RE(bps.mv(mic.magnet_z, 9.5))
        with pytest.raises(FailedStatus, match="below the lower limit -10000.0 nm"):
            RE(bps.mv(mic.focus, -15_000.0))
        assert server.stage_position("Z") == pytest.approx(3.25)
        assert server.stage_position("F") == pytest.approx(1.234)
    finally:
        mic.close()


def test_an_unreachable_device_fails_within_seconds_naming_its_uri(tmp_path):
    port = free_port()  # nothing listens there
    config = parse_instrument_config({
        "focus": {"backend": "python-microscope", "uri": f"PYRO:Stage@127.0.0.1:{port}",
                  "axis": "F", "timeout_s": 2.0},
        "tracking": {"enabled": False},
    })
    RunEngine()  # the event loop the devices connect on
    t0 = time.monotonic()
    with pytest.raises(
        Exception, match=rf"PYRO:Stage@127.0.0.1:{port} did not answer within 2 s"
    ):
        with init_devices():
            mic = make_microscope(config, data_dir=tmp_path, name="mic")
    assert time.monotonic() - t0 < 15
    mic.close()


def test_the_experiment_chain_on_python_microscope_stages(server, tmp_path):
    """Simulated camera, magnets and focus on the device server's stage: find beads,
    reference beads, a Z-LUT sweep, a force calibration at two heights, a count; scored
    against the simulator's truth as in the plan tests."""
    figures = run_experiment_chain(stage_axes(server), tmp_path, lambda: server.stage_position("Z"))
    print(figures.summary("python-microscope stages"))
    assert figures.height_error_nm.max() < 20.0, figures.height_error_nm
    assert np.median(np.abs(figures.force_error)) < 0.07, figures.force_error
    assert figures.magnet_z_after_mm == pytest.approx(8.0)  # left at the safe height


def test_the_device_server_killed_mid_run_ends_it_clearly(tmp_path):
    srv = DeviceServer(tmp_path / "server")
    try:
        axes = {k: {**v, "timeout_s": 2.0} for k, v in stage_axes(srv).items()}
        run = scan_until_killed(axes, tmp_path / "data", srv.kill)
    finally:
        srv.close()
    print(f"device server killed mid-run: {type(run.error).__name__}: {run.error} "
          f"after {run.elapsed_s:.1f} s; stop reason: {run.stop.get('reason')!r}")
    assert srv.stage_uri in str(run.error)
    assert run.stop["exit_status"] == "fail"
    assert run.elapsed_s < 20, run.elapsed_s
    assert run.magnet_z_mm in KILLED_SCAN_MM[:4]
