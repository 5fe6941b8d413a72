"""The python-microscope backend over the real protocol: python-microscope's own
``SimulatedCamera`` and ``SimulatedStage``, served by its ``device-server`` in another
process, driven through Pyro as a lab's remote devices would be."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import bluesky.plan_stubs as bps
import bluesky.plans as bp
import numpy as np
import pytest
from bluesky import RunEngine
from bluesky.utils import FailedStatus
from ophyd_async.core import init_devices

from magscope_devices import SimParams, make_microscope, parse_instrument_config
from magscope_devices.sim.world import SimWorld
from magscope_plans import count_at_heights, find_reference_beads, zlut_sweep
from magscope_plans._force_calibration import force_calibration
from process_helpers import free_port
from tracking_sim import sim_beads_of, truth_now

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
        self.process = subprocess.Popen(
            [str(exe), "--logging-dir", str(folder), str(config)], cwd=folder,
            stdout=subprocess.DEVNULL, stderr=(folder / "server.log").open("wb"),
            start_new_session=True,
        )
        self.camera_uri = f"PYRO:SimulatedCamera@127.0.0.1:{self.camera_port}"
        self.stage_uri = f"PYRO:SimulatedStage@127.0.0.1:{self.stage_port}"
        deadline = time.monotonic() + 30
        for port in (self.camera_port, self.stage_port):
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                    break
                except OSError:
                    if self.process.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError((folder / "server.log").read_text()[-2000:]) from None
                    time.sleep(0.1)

    def stage_position(self, axis: str) -> float:
        Pyro4.config.SERIALIZER = "pickle"
        with Pyro4.Proxy(self.stage_uri) as stage:
            return float(stage.position[axis])

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def close(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


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
    RunEngine()  # the event loop the devices connect on
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


PARAMS = SimParams(
    seed=3, n_tethered=6, n_reference=2, width_px=512, height_px=384,
    contour_nm_range=(2000.0, 3000.0),
)
WORLD = SimWorld(PARAMS)
TABLE = WORLD.bead_table()


def test_the_experiment_chain_on_python_microscope_stages(server, tmp_path):
    """Simulated camera, magnets and focus on the device server's stage: find beads,
    reference beads, a Z-LUT sweep, a force calibration at two heights, a count; scored
    against the simulator's truth as in the plan tests."""
    config = parse_instrument_config({
        **stage_axes(server),
        "sim": {"seed": 3, "n_tethered": 6, "n_reference": 2, "width_px": 512,
                "height_px": 384, "contour_nm_range": [2000.0, 3000.0]},
        "tracking": {"workers": 1},
    })
    assert config.sim == PARAMS
    RE = RunEngine(call_returns_result=True)
    events: list[dict] = []
    RE.subscribe(lambda name, doc: events.append(doc["data"]) if name == "event" else None)
    with init_devices():
        mic = make_microscope(config, data_dir=tmp_path, name="microscope")
    try:
        # the stage starts mid-range: bring the focus to the surface, the magnets up
        RE(bps.mv(mic.focus, 0.0, mic.magnet_z, 8.0))
        time.sleep(0.3)
        RE(bps.wait_for([mic.tracker.find_beads]))
        rois = RE(bps.rd(mic.tracker.rois)).plan_result
        truth = truth_now(mic)
        assert truth["focus_nm"][0] == 0.0 and truth["magnet_z_mm"][0] == 8.0
        mapping = sim_beads_of(rois, truth)
        assert sorted(mapping.values()) == list(range(PARAMS.n_beads))
        refs = RE(find_reference_beads(mic.tracker)).plan_result
        assert sorted(TABLE["kind"][[mapping[int(b)] for b in refs]]) == ["reference"] * 2
        RE(zlut_sweep(mic, -2000, 7000, 100, frames_per_step=2, magnet_z_mm=1.0))
        heights = RE(bps.rd(mic.tracker.height_offsets)).plan_result
        t = np.array([mapping[int(b)] for b in heights.bead_id])
        ref_radius = TABLE["radius_nm"][[mapping[int(b)] for b in refs]].mean()
        true_height = WORLD.true_extension(1.0)[t] + TABLE["radius_nm"][t] - ref_radius
        height_err = np.abs(heights.offset_nm - true_height)
        RE(force_calibration(mic, [2.0, 4.0], rel_error=0.05, max_duration_s=12.0))
        cal = [e for e in events if "calibration-force_psd_pn" in e]
        force_err = np.concatenate([
            np.asarray(e["calibration-force_psd_pn"])
            / WORLD.true_force(e["calibration-magnet_z_mm"])[
                [mapping[int(b)] for b in e["calibration-bead_id"]]] - 1
            for e in cal
        ])
        uids = RE(count_at_heights(mic, [3.0], num=10)).plan_result
        print(f"python-microscope stages: heights max error {height_err.max():.1f} nm, "
              f"force median error {100 * np.median(np.abs(force_err)):.1f} % "
              f"(max {100 * np.abs(force_err).max():.1f} %) at 2 and 4 mm")
        assert height_err.max() < 20.0, height_err
        assert len(cal) == 2 and np.median(np.abs(force_err)) < 0.07, force_err
        assert len(uids) == 1
        assert server.stage_position("Z") == pytest.approx(8.0)  # left at the safe height
    finally:
        mic.close()


def test_the_device_server_killed_mid_run_ends_it_clearly(tmp_path):
    srv = DeviceServer(tmp_path / "server")
    config = parse_instrument_config({
        **{k: {**v, "timeout_s": 2.0} for k, v in stage_axes(srv).items()},
        "tracking": {"enabled": False},
    })
    RE = RunEngine(call_returns_result=True)
    stops: list[dict] = []
    RE.subscribe(lambda name, doc: stops.append(doc) if name == "stop" else None)
    with init_devices():
        mic = make_microscope(config, data_dir=tmp_path / "data", name="mic")
    try:
        heights = [2.0, 3.0, 4.0, 5.0] * 50
        RE(bps.mv(mic.magnet_z, 2.0))
        threading.Timer(1.0, srv.kill).start()
        t0 = time.monotonic()
        with pytest.raises(FailedStatus) as info:
            RE(bp.list_scan([mic.camera], mic.magnet_z, heights, per_step=None))
        elapsed = time.monotonic() - t0
        error = info.value.__cause__ or info.value
        print(f"device server killed mid-run: {type(error).__name__}: {error} "
              f"after {elapsed:.1f} s; stop reason: {stops[-1].get('reason')!r}")
        assert srv.stage_uri in str(error)
        assert stops[-1]["exit_status"] == "fail"
        assert elapsed < 20, elapsed
        last = RE(bps.rd(mic.magnet_z)).plan_result
        assert last in heights[:4]
    finally:
        mic.close()
        srv.close()
