"""The Camera device and its acquisition process: real processes, real shared memory, HDF5."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import bluesky.plan_stubs as bps
import bluesky.plans as bp
import h5py
import numpy as np
import pytest
from bluesky import RunEngine
from bluesky.utils import FailedStatus
from ophyd_async.core import StaticPathProvider, UUIDFilenameProvider, init_devices
from ophyd_async.plan_stubs import ensure_connected

from frame_sources import CountingSource, FailingSource, StallingSource
from magscope_devices import Camera
from magscope_devices._acquisition import (
    AcquisitionConfig,
    AcquisitionProcess,
)
from magscope_ipc.shm import list_segments

pytestmark = pytest.mark.system


def _process(instance: str, factory=CountingSource, **config) -> AcquisitionProcess:
    return AcquisitionProcess(
        source_factory=factory,
        sensor_shape=(48, 64),
        dtype=np.uint8,
        bit_depth=8,
        config=AcquisitionConfig(instance=instance, **config),
    )


@pytest.fixture
def RE():
    engine = RunEngine(call_returns_result=True)
    yield engine


@pytest.fixture
def camera(RE, tmp_path, request):
    instance = f"cam{os.getpid()}{abs(hash(request.node.name)) % 10**5}"
    process = _process(instance, ring_capacity=16)
    with init_devices():
        cam = Camera(process, StaticPathProvider(UUIDFilenameProvider(), tmp_path))
    yield cam
    process.stop()
    assert list_segments(instance) == []


def _wait_frames(process: AcquisitionProcess, n: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while process.ring.count < n:
        assert time.monotonic() < deadline, f"only {process.ring.count} frames in {timeout} s"
        time.sleep(0.01)


def test_process_free_runs_into_the_ring_and_cleans_up(tmp_path):
    instance = f"free{os.getpid()}"
    process = _process(instance, frame_rate_hz=200.0)
    process.start()
    try:
        names = process.segment_names()
        assert len(names) == 2 and all(Path("/dev/shm", n).exists() for n in names)
        t0 = time.monotonic()
        start = process.ring.count
        time.sleep(1.0)
        rate = (process.ring.count - start) / (time.monotonic() - t0)
        # frames flow; whether they keep the asked rate is benchmarks/bench_camera.py's
        assert rate > 0, f"no frames in {time.monotonic() - t0:.1f} s"
        index = process.ring.count - 1
        frame, stamp = process.ring.read_frame(index)
        assert frame.shape == (48, 64)
        assert abs(stamp - time.time()) < 1.0
        pid = process.process.pid
    finally:
        process.stop()
    assert not process.running
    assert list_segments(instance) == []
    assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()


def test_count_writes_frames_to_hdf5_with_stream_documents(RE, camera):
    docs = []
    RE.subscribe(lambda name, doc: docs.append((name, doc)))
    RE(bp.count([camera], num=3))
    names = [n for n, _ in docs]
    assert names.count("event") == 3
    resources = [d for n, d in docs if n == "stream_resource"]
    datums = [d for n, d in docs if n == "stream_datum"]
    assert {r["data_key"] for r in resources} == {camera.name, f"{camera.name}-timestamp"}
    frames_resource = next(r for r in resources if r["data_key"] == camera.name)
    path = frames_resource["uri"].removeprefix("file://localhost")
    with h5py.File(path, "r") as f:
        frames = f["/entry/data/data"][()]
        stamps = f["/entry/timestamps"][()]
        index = f["/entry/frame_index"][()]
    assert frames.shape == (3, 48, 64) and frames.dtype == np.uint8
    assert np.all(np.diff(stamps) > 0)
    assert np.all(np.diff(index) >= 1)
    # each frame is the one the acquisition loop made: its first row holds its sequence number
    assert np.all(frames[:, 0, 0] == index % 256)
    assert np.all(frames[:, 1:, :] == np.arange(1, 48, dtype=np.uint8)[None, :, None])
    stops = [d["indices"]["stop"] for d in datums if d["stream_resource"] == frames_resource["uid"]]
    assert stops == [1, 2, 3]
    descriptor = next(d for n, d in docs if n == "descriptor")
    assert descriptor["data_keys"][camera.name]["shape"] == [1, 48, 64]
    config = descriptor["configuration"][camera.name]["data"]
    assert config[f"{camera.name}-exposure_s"] == pytest.approx(0.005)


def test_livetime_and_settings_round_trip(RE, camera):
    RE(bps.mv(camera.frame_rate_hz, 50.0, camera.exposure_s, 0.01, camera.gain, 2.0))
    values = RE(_read(camera.frame_rate_hz, camera.exposure_s, camera.gain)).plan_result
    assert values == pytest.approx([50.0, 0.01, 2.0])
    assert camera.process.control["frame_period_s"] == pytest.approx(0.02)


def _read(*signals):
    values = []
    for sig in signals:
        values.append((yield from bps.rd(sig)))
    return values


@pytest.mark.parametrize(
    "signal_name, value, message",
    [
        ("exposure_s", 0.02, r"exposure 0.02 s is longer than the frame period 0.01 s"),
        ("exposure_s", 1e-7, r"exposure 1e-07 s is outside \[1e-05, 1.0\] s"),
        ("frame_rate_hz", 5000.0, r"frame rate 5000.0 frames/s is outside \[0.1, 2000.0\]"),
        ("frame_rate_hz", 400.0, r"shorter than the exposure 0.005 s"),
        ("gain", 100.0, r"gain 100.0 is outside \[0.1, 16.0\]"),
        ("roi_width", 80, r"x \+ width = 0 \+ 80 = 80 px is beyond the sensor width 64 px"),
        ("roi_x", -1, r"roi_x = -1 px is negative"),
        ("roi_height", 4, r"below the minimum ROI of 16 px"),
    ],
)
def test_out_of_range_settings_are_refused_and_change_nothing(RE, camera, signal_name, value, message):
    sig = getattr(camera, signal_name)
    before = RE(_read(sig)).plan_result
    with pytest.raises(FailedStatus) as info:
        RE(bps.mv(sig, value))
    assert info.match(message) or _cause_matches(info.value, message)
    assert RE(_read(sig)).plan_result == before


def _cause_matches(exc: BaseException, pattern: str) -> bool:
    import re

    while exc is not None:
        if re.search(pattern, str(exc)):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def test_sensor_roi_crops_frames(RE, camera):
    # shrink first, then move: each setting is checked against the sensor on its own
    RE(bps.mv(camera.roi_width, 32, camera.roi_height, 20))
    RE(bps.mv(camera.roi_x, 8, camera.roi_y, 4))
    start = camera.process.ring.count
    _wait_frames(camera.process, start + 3)
    frame, _, _ = camera.latest_frame()
    assert frame.shape == (20, 32)
    # rows 4..23 of the sensor, each row holding its row number
    assert np.all(frame[1:, 0] == np.arange(5, 24))
    docs = []
    RE(bp.count([camera], num=1), lambda n, d: docs.append((n, d)))
    descriptor = next(d for n, d in docs if n == "descriptor")
    assert descriptor["data_keys"][camera.name]["shape"] == [1, 20, 32]


def test_killed_camera_process_is_restarted_in_place_and_says_so(RE, camera, caplog):
    _wait_frames(camera.process, 5)
    camera.process.control["exposure_s"] = 0.004  # a setting the restart must keep
    old_pid = camera.process.process.pid
    os.kill(old_pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while camera.process.restarts == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert camera.process.restarts == 1
    assert camera.process.process.pid != old_pid
    assert "killed by SIGKILL" in camera.process.last_failure
    assert f"camera process (pid {old_pid}) killed by SIGKILL; restarted in place" in caplog.text
    assert camera.process.control["exposure_s"] == 0.004
    RE(bp.count([camera], num=5, delay=0.1))  # the next plan runs
    names = camera.process.segment_names()
    camera.process.stop()
    assert not any(Path("/dev/shm", n).exists() for n in names)


def test_camera_killed_during_a_long_capture_fails_fast(RE, camera):
    """Kill the process while a kickoff/complete of many frames is in flight."""
    import threading

    def kill_soon():
        time.sleep(0.3)
        os.kill(camera.process.process.pid, signal.SIGKILL)

    threading.Thread(target=kill_soon, daemon=True).start()
    with pytest.raises(Exception) as info:
        RE(bp.count([camera], num=200))
    assert _cause_matches(info.value, "killed by SIGKILL")


def test_camera_that_cannot_open_gives_a_clear_error(RE, tmp_path):
    process = _process(f"fail{os.getpid()}", factory=FailingSource)
    cam = Camera(process, StaticPathProvider(UUIDFilenameProvider(), tmp_path), name="cam")
    with pytest.raises(Exception) as info:
        RE(ensure_connected(cam))
    assert _cause_matches(info.value, "no camera found on the bus")
    assert not process.running
    assert list_segments(f"fail{os.getpid()}") == []


def test_child_exits_when_its_owner_dies(tmp_path):
    import subprocess
    import sys
    import textwrap

    instance = f"orphan{os.getpid()}"
    code = textwrap.dedent(
        f"""
        import sys, time
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        import numpy as np
        from frame_sources import CountingSource
        from magscope_devices._acquisition import AcquisitionConfig, AcquisitionProcess
        p = AcquisitionProcess(CountingSource, (48, 64), np.uint8, 8,
                               AcquisitionConfig(instance={instance!r}))
        p.start()
        print(p.process.pid, flush=True)
        time.sleep(60)
        """
    )
    owner = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        child_pid = int(owner.stdout.readline())
        assert len(list_segments(instance)) == 2
        owner.kill()
        owner.wait(10)
    finally:
        owner.kill()
    deadline = time.monotonic() + 10
    while Path(f"/proc/{child_pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not Path(f"/proc/{child_pid}").exists(), "camera process outlived its owner"
    # its shared memory is stale now, and the next start of any instrument removes it
    process = _process(instance)
    process.start()
    try:
        owners = {s.pid for s in list_segments(instance)}
        assert owners == {os.getpid()}
    finally:
        process.stop()
    assert list_segments(instance) == []


@pytest.mark.parametrize("buffer_frames", [10, 1])
def test_a_stalled_host_catches_up_on_the_driver_queue(tmp_path, buffer_frames):
    """A 60 ms stall at 100 frames/s: a 10-frame queue keeps every exposure (their
    timestamps one period apart); without a queue the frames of the stall are lost."""
    instance = f"stall{buffer_frames}{os.getpid()}"
    process = _process(instance, factory=StallingSource, frame_rate_hz=100.0,
                       driver_buffer_frames=buffer_frames)
    process.start()
    try:
        _wait_frames(process, 50)
        ctl = process.control
        lost, delayed = int(ctl["frames_late"]), int(ctl["frames_delayed"])
        stamps = [process.ring.read_frame(i)[1] for i in range(0, 50)]
    finally:
        process.stop()
    steps = np.diff(stamps)
    if buffer_frames == 10:
        assert lost == 0, f"{lost} frames lost with a 10-frame queue"
        assert delayed >= 4, f"only {delayed} frames delivered late: no stall seen"
        np.testing.assert_allclose(steps, 0.01, atol=1e-6)
    else:
        assert lost >= 4, f"only {lost} frames lost without a queue"
        assert steps.max() >= 0.05 - 1e-6
