"""The EPICS backend over the real protocol: ophyd-async's own ``Motor`` (Channel Access
through aioca and libca) against motor records served by a caproto IOC in another
process (``motor_ioc.py``: put completion on arrival, ``.STOP``, ``.LLM``/``.HLM``).

Channel Access finds the IOCs by the client environment, read once per process when libca
starts: every IOC of this module gets its own port, listed in ``EPICS_CA_ADDR_LIST``
before the first connection, and nothing leaves loopback."""

from __future__ import annotations

import asyncio
import os
import sys
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
from magscope_devices.backends import DeviceUnreachableError
from process_helpers import free_port, kill_service, start_service

pytestmark = [pytest.mark.system, pytest.mark.xdist_group("epics")]

pytest.importorskip("aioca")  # installed by the test extra: a missing one fails below
caproto_client = pytest.importorskip("caproto.sync.client")

IOC_SCRIPT = Path(__file__).with_name("motor_ioc.py")
#: the IOC's motors: NAME, EGU, LLM, HLM, VELO (EGU/s), start
MOTORS = ["MAG:Z,mm,0,10,20,8", "MAG:ROT,deg,-72000,72000,7200,0", "FOC:Z,um,-20,80,200,10"]
#: one port per IOC, all in the client's address list (libca reads it once)
PORTS = {"main": free_port(), "killed": free_port()}


class MotorIOC:
    """``motor_ioc.py`` serving ``MOTORS`` under ``prefix`` on loopback, port ``port``."""

    def __init__(self, prefix: str, port: int, folder: Path) -> None:
        self.prefix = prefix
        folder.mkdir(parents=True, exist_ok=True)
        beacon = free_port()
        env = dict(
            os.environ, EPICS_CAS_INTF_ADDR_LIST="127.0.0.1", EPICS_CA_SERVER_PORT=str(port),
            EPICS_CAS_BEACON_ADDR_LIST="127.0.0.1", EPICS_CAS_AUTO_BEACON_ADDR_LIST="NO",
            EPICS_CAS_BEACON_PORT=str(beacon),
        )
        args = [sys.executable, str(IOC_SCRIPT), "--prefix", prefix]
        for motor in MOTORS:
            args += ["--motor", motor]
        self.child = start_service("ioc", args, folder, env=env)

    def read(self, field: str) -> float:
        """A field of this IOC, read with caproto's own client (not the backend's)."""
        return float(caproto_client.read(self.prefix + field, timeout=5).data[0])

    def write(self, field: str, value: float) -> None:
        caproto_client.write(self.prefix + field, value, notify=True, timeout=5)

    def kill(self) -> None:
        kill_service(self.child)

    def close(self) -> None:
        self.child.stop()


@pytest.fixture(scope="module", autouse=True)
def ca_client_environment():
    """Where Channel Access looks (loopback, this module's IOC ports only)."""
    names = ("EPICS_CA_ADDR_LIST", "EPICS_CA_AUTO_ADDR_LIST", "EPICS_CA_SERVER_PORT")
    before = {k: os.environ.get(k) for k in names}
    os.environ["EPICS_CA_ADDR_LIST"] = " ".join(f"127.0.0.1:{p}" for p in PORTS.values())
    os.environ["EPICS_CA_AUTO_ADDR_LIST"] = "NO"
    os.environ["EPICS_CA_SERVER_PORT"] = str(PORTS["main"])
    yield
    for k, v in before.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="module")
def ioc(tmp_path_factory, ca_client_environment):
    server = MotorIOC("MS1:", PORTS["main"], tmp_path_factory.mktemp("ioc"))
    yield server
    server.close()


def motor_axes(ioc: MotorIOC, **extra) -> dict:
    return {
        "magnet_z": {"backend": "epics", "pv": ioc.prefix + "MAG:Z", "limits": [0.5, 9.0],
                     **extra},
        "magnet_rotation": {"backend": "epics", "pv": ioc.prefix + "MAG:ROT",
                            "scale": 1 / 360, **extra},
        "focus": {"backend": "epics", "pv": ioc.prefix + "FOC:Z", "scale": 1000.0,
                  "limits": [-10_000, 50_000], **extra},
    }


def test_motor_records_move_report_done_stop_and_keep_limits(ioc, tmp_path):
    config = parse_instrument_config({**motor_axes(ioc), "tracking": {"enabled": False}})
    RE = RunEngine(call_returns_result=True)
    with init_devices():
        mic = make_microscope(config, data_dir=tmp_path, name="mic")
    try:
        def rd(signal):
            return RE(bps.rd(signal)).plan_result

        limits = {key: (rd(getattr(mic, key).low_limit), rd(getattr(mic, key).high_limit))
                  for key in ("magnet_z", "magnet_rotation", "focus")}
        # the config's limits within the record's (.LLM/.HLM, converted to mm, turns, nm)
        assert limits["magnet_z"] == (0.5, 9.0)
        assert limits["magnet_rotation"] == pytest.approx((-200.0, 200.0))
        assert limits["focus"] == (-10_000.0, 50_000.0)
        # the readbacks start where the motors are
        assert rd(mic.magnet_z) == pytest.approx(ioc.read("MAG:Z.RBV"))
        assert rd(mic.focus) == pytest.approx(1000 * ioc.read("FOC:Z.RBV"))

        # moves: the status finishes when the record is done, at the target
        t0 = time.monotonic()
        RE(bps.mv(mic.magnet_z, 3.25, mic.magnet_rotation, 2.5, mic.focus, 1234.0))
        took = time.monotonic() - t0
        assert ioc.read("MAG:Z.DMOV") == 1 and ioc.read("MAG:Z.RBV") == pytest.approx(3.25)
        assert ioc.read("MAG:ROT.RBV") == pytest.approx(900.0)
        assert ioc.read("FOC:Z.RBV") == pytest.approx(1.234)
        assert rd(mic.magnet_z) == pytest.approx(3.25) and rd(mic.focus) == pytest.approx(1234.0)
        assert took >= (8.0 - 3.25) / 20 * 0.9  # it waited for the motion (0.24 s at 20 mm/s)
        # the readback follows the motion while it moves
        seen: list[float] = []

        def follow(reading: dict) -> None:
            seen.extend(entry["value"] for entry in reading.values())

        mic.magnet_z.readback.subscribe_reading(follow)
        RE(bps.mv(mic.magnet_z, 7.0))
        mic.magnet_z.readback.clear_sub(follow)
        inside = [v for v in seen if 3.3 < v < 6.95]
        assert len(inside) >= 3, seen

        # stop: a long rotation stopped half a second in stays where it stopped
        async def stopped_move():
            status = mic.magnet_rotation.set(100.0)  # 36,000 deg at 7,200 deg/s: 5 s
            await asyncio.sleep(0.5)
            assert ioc.read("MAG:ROT.DMOV") == 0 and ioc.read("MAG:ROT.MOVN") == 1
            await mic.magnet_rotation.stop(success=False)
            with pytest.raises(Exception, match="stopped"):
                await status

        asyncio.run_coroutine_threadsafe(stopped_move(), RE.loop).result(30)
        time.sleep(0.2)
        where = ioc.read("MAG:ROT.RBV")
        assert ioc.read("MAG:ROT.DMOV") == 1 and 900.0 < where < 36_000 * 0.5
        time.sleep(0.3)
        assert ioc.read("MAG:ROT.RBV") == where  # it stays stopped
        assert rd(mic.magnet_rotation) == pytest.approx(where / 360, abs=1e-3)

        # limits: beyond the config's (inside the record's), beyond the record's: refused
        # before anything is sent, with the value and the limit
        with pytest.raises(FailedStatus, match="above the upper limit 9.0 mm"):
            RE(bps.mv(mic.magnet_z, 9.5))
        with pytest.raises(FailedStatus, match="above the upper limit 200.0 turns"):
            RE(bps.mv(mic.magnet_rotation, 250.0))
        assert ioc.read("MAG:Z.RBV") == pytest.approx(7.0)
        # the record's own limits, changed on the IOC after connecting, still hold
        ioc.write("MAG:Z.HLM", 5.0)
        try:
            with pytest.raises(FailedStatus, match=r"MS1:MAG:Z: target 6 mm is outside the record's limits \[0, 5\] mm"):
                RE(bps.mv(mic.magnet_z, 6.0))
            assert ioc.read("MAG:Z.RBV") == pytest.approx(7.0)
            # a put straight to .VAL beyond them: the record refuses it (.LVIO), no move
            ioc.write("MAG:Z", 6.0)
            assert ioc.read("MAG:Z.LVIO") == 1 and ioc.read("MAG:Z.RBV") == pytest.approx(7.0)
        finally:
            ioc.write("MAG:Z.HLM", 10.0)
    finally:
        mic.close()


def test_an_unreachable_pv_fails_within_seconds_naming_it(ioc, tmp_path):
    config = parse_instrument_config({
        "focus": {"backend": "epics", "pv": "NOBODY:FOC:Z", "timeout_s": 2.0},
        "tracking": {"enabled": False},
    })
    RunEngine()  # the event loop the devices connect on
    t0 = time.monotonic()
    with pytest.raises(Exception, match=r"EPICS motor NOBODY:FOC:Z: no answer within 2 s"):
        with init_devices():
            mic = make_microscope(config, data_dir=tmp_path, name="mic")
    elapsed = time.monotonic() - t0
    print(f"unreachable PV: failed after {elapsed:.1f} s")
    assert elapsed < 10
    mic.close()


def test_the_experiment_chain_on_epics_motors(ioc, tmp_path):
    """Simulated camera; magnets and focus on the IOC's motor records."""
    figures = run_experiment_chain(motor_axes(ioc), tmp_path, lambda: ioc.read("MAG:Z.RBV"))
    print(figures.summary("EPICS motors"))
    assert figures.height_error_nm.max() < 20.0, figures.height_error_nm
    assert np.median(np.abs(figures.force_error)) < 0.07, figures.force_error
    assert figures.magnet_z_after_mm == pytest.approx(8.0)  # left at the safe height


def test_the_ioc_stopped_mid_run_ends_it_clearly(tmp_path, ca_client_environment):
    server = MotorIOC("MS2:", PORTS["killed"], tmp_path / "ioc")
    try:
        run = scan_until_killed(motor_axes(server, timeout_s=2.0), tmp_path / "data", server.kill)
    finally:
        server.close()
    print(f"IOC stopped mid-run: {type(run.error).__name__}: {run.error} after "
          f"{run.elapsed_s:.1f} s; stop reason: {run.stop.get('reason')!r}")
    assert "MS2:MAG:Z" in str(run.error)
    assert isinstance(run.error, DeviceUnreachableError)
    assert run.stop["exit_status"] == "fail"
    assert run.elapsed_s < 20, run.elapsed_s
    # the readback holds the last position the record published (mid-move, it may be
    # between two heights of the scan)
    assert min(KILLED_SCAN_MM) <= run.magnet_z_mm <= max(KILLED_SCAN_MM)
