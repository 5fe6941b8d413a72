"""The PI backend over the GCS protocol: PI's own ``pipython`` (``GCSCommands`` over its
pure-Python ``PISocket``) against a GCS controller written for the tests
(``pi_gcs_controller.py``, its own process), as a lab's piezo or stage controller would be
reached over TCP. Not PI hardware: the protocol and pipython are what is tested."""

from __future__ import annotations

import asyncio
import socket
import sys
import time
from pathlib import Path

import bluesky.plan_stubs as bps
import pytest
from bluesky import RunEngine
from bluesky.utils import FailedStatus
from ophyd_async.core import init_devices

from hardware_chain import KILLED_SCAN_MM, scan_until_killed
from magscope_devices import make_microscope, parse_instrument_config
from magscope_devices.backends import DeviceUnreachableError
from process_helpers import free_port, kill_service, start_service

pytestmark = [pytest.mark.system, pytest.mark.xdist_group("pi")]

pytest.importorskip("pipython")  # installed by the test extra: a missing one fails below

CONTROLLER = Path(__file__).with_name("pi_gcs_controller.py")
#: AXIS, LOW, HIGH (controller units), VELOCITY (units/s), START: a piezo in um, a stage in mm
AXES = ["1,0,100,200,10", "2,0,10,20,8"]


class GcsController:
    """``pi_gcs_controller.py`` on 127.0.0.1:``port``."""

    def __init__(self, folder: Path) -> None:
        self.port = free_port()
        self.uri = f"tcp://127.0.0.1:{self.port}"
        self.child = start_service(
            "gcs-controller", [sys.executable, str(CONTROLLER), str(self.port), *AXES], folder
        )

    def query(self, command: str) -> str:
        """One GCS query over a socket of its own (not pipython): its answer."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
            s.sendall(command.encode() + b"\n")
            return s.makefile().readline().strip()

    def position(self, axis: str) -> float:
        return float(self.query(f"POS? {axis}").split("=")[1])

    def kill(self) -> None:
        kill_service(self.child)

    def close(self) -> None:
        self.child.stop()


@pytest.fixture(scope="module")
def controller(tmp_path_factory):
    ctl = GcsController(tmp_path_factory.mktemp("gcs"))
    yield ctl
    ctl.close()


def pi_axes(ctl: GcsController, **extra) -> dict:
    return {
        "focus": {"backend": "pi", "uri": ctl.uri, "axis": "1", "scale": 1000.0,
                  "limits": [-10_000, 50_000], **extra},
        "magnet_z": {"backend": "pi", "uri": ctl.uri, "axis": "2", "limits": [0.5, 9.0],
                     **extra},
    }


def test_pi_axes_move_read_back_stop_and_keep_the_limits(controller, tmp_path):
    config = parse_instrument_config({**pi_axes(controller), "tracking": {"enabled": False}})
    RE = RunEngine(call_returns_result=True)
    with init_devices():
        mic = make_microscope(config, data_dir=tmp_path, name="mic")
    try:
        def rd(signal):
            return RE(bps.rd(signal)).plan_result

        # the config's limits within the controller's travel range (TMN?/TMX?), in nm and mm
        assert (rd(mic.focus.low_limit), rd(mic.focus.high_limit)) == (0.0, 50_000.0)
        assert (rd(mic.magnet_z.low_limit), rd(mic.magnet_z.high_limit)) == (0.5, 9.0)
        assert rd(mic.focus) == pytest.approx(10_000.0)  # where the piezo is
        t0 = time.monotonic()
        RE(bps.mv(mic.focus, 1234.0, mic.magnet_z, 3.25))
        took = time.monotonic() - t0
        assert controller.position("1") == pytest.approx(1.234)
        assert controller.position("2") == pytest.approx(3.25)
        assert controller.query("ONT? 2") == "2=1"
        assert rd(mic.focus) == pytest.approx(1234.0) and rd(mic.magnet_z) == pytest.approx(3.25)
        assert took >= (8.0 - 3.25) / 20 * 0.9  # it waited until on target (0.24 s)
        # beyond the config's limits (inside the controller's): refused, nothing moves
        with pytest.raises(FailedStatus, match="below the lower limit 0.0 nm"):
            RE(bps.mv(mic.focus, -500.0))
        with pytest.raises(FailedStatus, match="above the upper limit 9.0 mm"):
            RE(bps.mv(mic.magnet_z, 9.5))
        assert controller.position("1") == pytest.approx(1.234)

        # stop: HLT halts the stage where it is
        async def stopped_move():
            status = mic.magnet_z.set(8.9)  # 5.65 mm at 20 mm/s: 0.28 s
            await asyncio.sleep(0.1)
            await mic.magnet_z.stop(success=False)
            with pytest.raises(Exception, match=r"stopped|on target at"):
                await status

        asyncio.run_coroutine_threadsafe(stopped_move(), RE.loop).result(30)
        where = controller.position("2")
        assert 3.25 < where < 8.9
        time.sleep(0.3)
        assert controller.position("2") == where
    finally:
        mic.close()


def test_an_unreachable_controller_fails_within_seconds_naming_it(tmp_path):
    uri = f"tcp://127.0.0.1:{free_port()}"  # nothing listens there
    config = parse_instrument_config({
        "focus": {"backend": "pi", "uri": uri, "axis": "1", "timeout_s": 2.0},
        "tracking": {"enabled": False},
    })
    RunEngine()
    t0 = time.monotonic()
    with pytest.raises(Exception, match=rf"PI controller {uri} axis '1': could not connect"):
        with init_devices():
            mic = make_microscope(config, data_dir=tmp_path, name="mic")
    assert time.monotonic() - t0 < 10
    mic.close()


def test_the_controller_killed_mid_run_ends_it_clearly(tmp_path):
    ctl = GcsController(tmp_path / "gcs")
    try:
        run = scan_until_killed(pi_axes(ctl, timeout_s=2.0), tmp_path / "data", ctl.kill)
    finally:
        ctl.close()
    print(f"PI controller killed mid-run: {type(run.error).__name__}: {run.error} after "
          f"{run.elapsed_s:.1f} s")
    assert isinstance(run.error, DeviceUnreachableError)
    assert ctl.uri in str(run.error)
    assert run.stop["exit_status"] == "fail"
    assert run.elapsed_s < 20, run.elapsed_s
    assert min(KILLED_SCAN_MM) <= run.magnet_z_mm <= max(KILLED_SCAN_MM)
