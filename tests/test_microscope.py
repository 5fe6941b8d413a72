"""The simulated microscope end to end: devices, camera process, world model, ground truth."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import bluesky.plan_stubs as bps
import bluesky.plans as bp
import h5py
import numpy as np
import pytest
from bluesky import RunEngine
from bluesky.run_engine import call_in_bluesky_event_loop
from ophyd_async.core import init_devices

from magscope_devices import make_simulated_microscope
from magscope_devices.sim.world import SimParams
from magscope_ipc.shm import list_segments

pytestmark = pytest.mark.system


@pytest.fixture(scope="module")
def RE():
    return RunEngine(call_returns_result=True)


@pytest.fixture(scope="module")
def microscope(RE, tmp_path_factory):
    with init_devices():
        mic = make_simulated_microscope(
            SimParams(seed=7), data_dir=tmp_path_factory.mktemp("frames"), instance="mictest",
            name="microscope",
        )
    yield mic
    mic.close()
    assert list_segments("mictest") == []


def _latest_truth(mic, after_index: int, timeout: float = 5.0, after_time: float = 0.0):
    deadline = time.monotonic() + timeout
    while True:
        frame, stamp, index = mic.camera.latest_frame()
        if index > after_index and stamp > after_time:
            return frame, mic.truth.frame(index), index
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_every_scheduled_frame_is_acquired_or_counted_late(microscope):
    """No frame goes missing silently: acquired + late = the 100 frames/s schedule.

    (The sustained frame rate itself is measured in benchmarks/bench_camera.py.)
    """
    ctl = microscope.camera.process.control
    time.sleep(0.3)
    n0, late0, t0 = ctl["frames_acquired"], ctl["frames_late"], time.monotonic()
    time.sleep(2.0)
    n1, late1, t1 = ctl["frames_acquired"], ctl["frames_late"], time.monotonic()
    scheduled = (t1 - t0) * 100.0
    accounted = (n1 - n0) + (late1 - late0)
    assert abs(accounted - scheduled) <= 3, (accounted, scheduled)
    assert n1 - n0 > 0.5 * scheduled, f"only {n1 - n0} of {scheduled:.0f} frames acquired"


def test_frames_show_beads_where_the_truth_says(microscope):
    frame, truth, _ = _latest_truth(microscope, -1)
    assert frame.shape == (768, 1024) and frame.dtype == np.uint8
    background = np.median(frame)
    for row in truth:
        col, r = row["x_nm"] / 100.0, row["y_nm"] / 100.0
        patch = frame[int(r) - 12 : int(r) + 13, int(col) - 12 : int(col) + 13].astype(float)
        # the ring pattern makes the patch far more varied than the noise of the background
        assert patch.std() > 3 * frame[:20, :20].std(), (row["x_nm"], row["y_nm"])
    assert 60 < background < 200


def test_magnets_and_focus_reach_the_world(RE, microscope):
    _, before, index = _latest_truth(microscope, -1)
    RE(bps.mv(microscope.magnet_z, 1.0, microscope.focus, 2000.0))
    _, after, _ = _latest_truth(microscope, index, after_time=time.time())
    tethered = np.isfinite(after["extension_nm"]) & (after["extension_nm"] > 0)
    assert np.all(after["magnet_z_mm"] == 1.0) and np.all(after["focus_nm"] == 2000.0)
    assert np.median(after["force_pn"][tethered]) > 10 * np.median(before["force_pn"][tethered])
    assert np.median(after["extension_nm"][tethered]) > np.median(before["extension_nm"][tethered])
    RE(bps.mv(microscope.magnet_z, 8.0, microscope.focus, 0.0))


def test_truth_follows_frame_index(microscope):
    _, _, index = _latest_truth(microscope, -1)
    indices, stamps, rows = microscope.truth.since(index - 10)
    assert list(indices) == list(range(index - 10, indices[-1] + 1))
    # frames keep to the 10 ms schedule (a late frame skips whole periods, never shifts it)
    periods = np.diff(stamps) / 0.01
    assert np.all(periods >= 0.999) and np.allclose(periods, np.round(periods), atol=1e-3)
    assert rows.shape[1] == 24


def test_reading_the_microscope_gives_positions_with_units(RE, microscope):
    reading = RE(bps.rd(microscope.magnet_z)).plan_result
    assert reading == pytest.approx(8.0)
    described = call_in_bluesky_event_loop(microscope.describe())
    units = {key: value.get("units") for key, value in described.items()}
    assert units == {
        "microscope-magnet_z": "mm",
        "microscope-magnet_rotation": "turns",
        "microscope-focus": "nm",
        "microscope-force": "pN",
        "microscope-force-error_pn": "pN",
        # the bead locks' readbacks (flags and reasons have no units)
        **{f"microscope-{lock}-{key}": units for lock, count in (
            ("focus_lock", "n_reference_valid"), ("xy_lock", "n_beads_valid"))
           for key, units in (("locked", None), ("error_nm", "nm"), ("correction_nm", "nm"),
                              (count, "beads"), ("moves", "moves"), ("reason", None))},
    }
    # no force calibration yet: the force reads NaN, not a guess
    assert np.isnan(RE(bps.rd(microscope.force)).plan_result)


def test_imports_have_no_side_effects():
    code = textwrap.dedent(
        """
        import os, glob
        import magscope_tracking, magscope_devices, magscope_plans, magscope_session
        import magscope_devices._microscope, magscope_devices.sim, magscope_plans._basic
        import magscope_plans._zlut, magscope_plans.analysis, magscope_session._cli
        mine = glob.glob(f'/dev/shm/magscope.*.{os.getpid()}-*')  # segments this process owns
        children = [p for p in os.listdir('/proc') if p.isdigit()
                    and open(f'/proc/{p}/stat').read().split(') ')[1].split()[1]
                    == str(os.getpid())]
        print(len(mine), len(children))
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["0", "0"]


def test_crashed_session_leaves_shared_memory_that_the_next_start_removes(RE, tmp_path):
    code = textwrap.dedent(
        f"""
        import time
        from bluesky import RunEngine
        from ophyd_async.core import init_devices
        from magscope_devices import make_simulated_microscope
        RE = RunEngine()
        with init_devices():
            mic = make_simulated_microscope(data_dir={str(tmp_path)!r}, instance="crashme")
        print(mic.camera.process.process.pid, flush=True)
        time.sleep(120)
        """
    )
    owner = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        camera_pid = int(owner.stdout.readline())
        kinds = sorted(s.kind for s in list_segments("crashme"))
        # camera control + frames, world inputs + truth, tracking control + track ring + workers
        assert {"camctl", "frames", "siminputs", "truth", "trkctl", "tracks"} <= set(kinds)
        os.kill(owner.pid, signal.SIGKILL)
        owner.wait(10)
    finally:
        owner.kill()
    deadline = time.monotonic() + 10
    while Path(f"/proc/{camera_pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not Path(f"/proc/{camera_pid}").exists(), "camera process outlived its crashed owner"
    stale = list_segments("crashme")
    assert len(stale) == len(kinds) and not any(s.owner_alive for s in stale)
    with init_devices():
        fresh = make_simulated_microscope(data_dir=tmp_path, instance="crashme")
    try:
        assert {s.pid for s in list_segments("crashme")} == {os.getpid()}
    finally:
        fresh.close()
    assert list_segments("crashme") == []


def test_consecutive_runs_each_write_their_own_frames_file(RE, microscope):
    from magscope_plans import camera_and_axes

    resources = []

    def collect(name, doc):
        if name == "stream_resource" and doc["data_key"] == "microscope-camera":
            resources.append(doc["uri"])

    for _ in range(2):
        RE(bp.count(camera_and_axes(microscope), num=2), collect)
    assert len(resources) == 2 and resources[0] != resources[1]
    for uri in resources:
        with h5py.File(uri.removeprefix("file://localhost"), "r") as f:
            assert f["/entry/data/data"].shape == (2, 768, 1024)
