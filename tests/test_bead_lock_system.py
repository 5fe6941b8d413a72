"""The bead locks on the simulated microscope (a real camera process, a tracking worker,
the lock threads), scored against the simulator's truth: the focus lock holds the
reference beads' height against drift, holds still on every fault and says why, refuses
bad settings with their limits, is suspended by plans that own the focus; a suspender
pauses a full-rate record while the lock is lost; the XY lock recentres ROIs with the
tracks continuous."""

from __future__ import annotations

import threading
import time

import bluesky.plan_stubs as bps
import bluesky.plans as bp
import bluesky.preprocessors as bpp
import numpy as np
import pytest
from bluesky import RunEngine
from ophyd_async.core import init_devices

from magscope_devices import make_simulated_microscope
from magscope_devices.sim.world import SimParams
from magscope_ipc.shm import list_segments
from magscope_plans import (
    FocusLockSuspender,
    PlanArgumentError,
    TrackRecorder,
    find_reference_beads,
    focus_lock_suspended,
    lock_focus,
    lock_xy,
    remove_beads,
    unlock_focus,
    unlock_xy,
    zlut_sweep,
)
from magscope_plans._recording import column_of
from tracking_sim import true_rois, truth_now

# the lock loops hold real-time rates: run alone (`make test` runs them after the rest)
pytestmark = [pytest.mark.system, pytest.mark.alone, pytest.mark.xdist_group("bead-lock")]

INSTANCE = "bead-lock"
PARAMS = SimParams(
    seed=11, n_tethered=4, n_reference=3, width_px=512, height_px=384,
    drift_rms_speed_nm_s=(80.0, 80.0, 50.0), drift_period_s_range=(20.0, 120.0),
)


@pytest.fixture(scope="module")
def RE():
    return RunEngine(call_returns_result=True)


@pytest.fixture(scope="module")
def mic(RE, tmp_path_factory):
    with init_devices():
        mic = make_simulated_microscope(
            PARAMS, data_dir=tmp_path_factory.mktemp("lock"), instance=INSTANCE,
            tracking_workers=1, name="microscope",
        )
    mic.simulation.set_drift_speed(0.0)  # each test turns the drift on when it wants it
    while mic.camera.process.ring.count < 2:
        time.sleep(0.01)
    RE(bps.mv(mic.magnet_z, 3.0))
    RE(bps.mv(mic.tracker.rois, true_rois(truth_now(mic))))
    RE(zlut_sweep(mic, -2000, 2000, 100, frames_per_step=3))
    refs = RE(find_reference_beads(mic.tracker)).plan_result
    assert sorted(refs) == [4, 5, 6], refs
    mic.rois0 = RE(bps.rd(mic.tracker.rois)).plan_result
    yield mic
    mic.close()
    assert list_segments(INSTANCE) == []


@pytest.fixture
def clean(mic, RE):
    """Each test starts unlocked, without drift, the ROIs and limits as made."""
    yield
    mic.simulation.set_drift_speed(0.0)
    mic.simulation.set_stage_z_offset(0.0)
    RE(unlock_focus(mic))
    RE(unlock_xy(mic))
    mic.tracker.service.set_options(worker_delay_s=0.0)
    RE(bps.mv(mic.focus.high_limit, 80_000.0))
    RE(bps.mv(mic.tracker.rois, mic.rois0))


def _wait(condition, timeout_s=10.0, what=""):
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"not within {timeout_s} s: {what}")


def _ref_defocus(mic, since):
    """Frames since ``since``: the true mean defocus of the reference beads (nm)."""
    _, _, rows = mic.truth.since(since)
    return rows["z_nm"][:, 4:7].mean(axis=1) - rows["focal_plane_nm"][:, 0], rows


def _newest(mic):
    return mic.camera.latest_frame()[2]


def test_focus_lock_holds_the_reference_height_against_drift(mic, RE, clean):
    lock = mic.focus_lock
    RE(lock_focus(mic, rate_hz=10))
    _wait(lambda: lock.status.locked and lock.status.updates > 5, what="locked")
    k0 = _newest(mic)
    time.sleep(0.5)
    before, _ = _ref_defocus(mic, k0)
    target = float(before.mean())  # the true defocus the lock holds (no drift yet)
    k1 = _newest(mic)
    mic.simulation.set_drift_speed(1.0)
    time.sleep(8.0)
    mic.simulation.set_drift_speed(0.0)
    held, rows = _ref_defocus(mic, k1)
    drift = rows["z_nm"][:, 4:7].mean(axis=1)
    rms_on = float(np.sqrt(np.mean((held - target) ** 2)))
    rms_off = float(np.sqrt(np.mean((drift - drift[0]) ** 2)))  # the focus held still
    print(f"focus lock: {rms_on:.2f} nm r.m.s. on, {rms_off:.1f} nm off over the same drift")
    assert rms_on < 5.0 and rms_off > 10 * rms_on
    assert lock.status.moves > 40
    # the readbacks are in the events of a plan that reads the microscope
    docs = []
    RE(bp.count([mic]), lambda name, doc: docs.append((name, doc)))
    (event,) = [doc for name, doc in docs if name == "event"]
    data = event["data"]
    assert data["microscope-focus_lock-locked"] is True
    assert abs(data["microscope-focus_lock-error_nm"]) < 20
    assert data["microscope-focus_lock-n_reference_valid"] == 3
    assert data["microscope-focus_lock-moves"] > 40
    (desc,) = [doc for name, doc in docs if name == "descriptor"]
    assert desc["data_keys"]["microscope-focus_lock-error_nm"]["units"] == "nm"
    assert "microscope-xy_lock-moves" in data


def test_the_lock_holds_still_when_the_reference_beads_are_lost(mic, RE, clean):
    lock = mic.focus_lock
    RE(lock_focus(mic))
    _wait(lambda: lock.status.locked, what="locked")
    RE(remove_beads(mic.tracker, [4, 5, 6]))  # their rows are NaN from now on
    _wait(lambda: "reference beads lost" in lock.status.reason, what="references lost")
    focus = RE(bps.rd(mic.focus)).plan_result
    moves = lock.status.moves
    mic.simulation.set_drift_speed(1.0)  # drift: a running-away lock would follow noise
    time.sleep(1.5)
    assert RE(bps.rd(mic.focus)).plan_result == focus and lock.status.moves == moves
    assert RE(bps.rd(lock.locked)).plan_result is False
    assert RE(bps.rd(lock.n_reference_valid)).plan_result == 0
    assert RE(bps.rd(lock.enabled)).plan_result is True  # it waits, it does not give up
    # the beads come back: the lock takes hold again
    RE(bps.mv(mic.tracker.rois, mic.rois0))
    _wait(lambda: lock.status.n_valid == 3 and lock.status.moves > moves, what="resumed")


def test_the_lock_holds_still_when_frames_are_dropped(mic, RE, clean):
    lock = mic.focus_lock
    RE(lock_focus(mic))
    _wait(lambda: lock.status.locked, what="locked")
    mic.tracker.service.set_options(worker_delay_s=0.05)  # tracks 1 frame in 5
    _wait(lambda: lock.status.reason.startswith("frames dropped"), what="dropped frames")
    focus = RE(bps.rd(mic.focus)).plan_result
    time.sleep(1.0)
    assert RE(bps.rd(mic.focus)).plan_result == focus
    assert not lock.status.locked and lock.status.reason.startswith("frames dropped")
    print("reason:", lock.status.reason)


def test_the_lock_stops_at_the_focus_limit_and_says_why(mic, RE, clean):
    lock = mic.focus_lock
    focus = RE(bps.rd(mic.focus)).plan_result
    RE(bps.mv(mic.focus.high_limit, focus + 100.0))
    RE(lock_focus(mic))
    _wait(lambda: lock.status.locked, what="locked")
    height = lock.status.target_nm
    RE(lock_focus(mic, target_nm=height - 400.0))  # needs the focus 400 nm up: beyond
    _wait(lambda: not lock.status.enabled, what="stopped")
    reason = RE(bps.rd(lock.reason)).plan_result
    assert reason == f"stopped: the focus reached its high limit {focus + 100.0:g} nm"
    assert RE(bps.rd(mic.focus)).plan_result == pytest.approx(focus + 100.0)
    _wait(lambda: RE(bps.rd(lock.enabled)).plan_result is False, what="enabled False")


def test_a_focus_move_by_hand_is_refused_while_the_lock_holds_the_focus(mic, RE, clean):
    from magscope_plans import PreflightError, move_axes

    RE(lock_focus(mic))
    focus = RE(bps.rd(mic.focus)).plan_result
    with pytest.raises(PreflightError, match="the focus lock is on and moves the focus"):
        RE(move_axes(mic, focus_nm=focus + 500.0))
    assert abs(RE(bps.rd(mic.focus)).plan_result - focus) < 100.0  # only the lock moved it
    RE(unlock_focus(mic))
    RE(move_axes(mic, focus_nm=focus + 10.0))


def test_bad_settings_are_refused_with_the_limit_and_change_nothing(mic, RE, clean):
    lock = mic.focus_lock
    with pytest.raises(Exception, match=r"kp = 3.0 is outside \(0, 1\]"):
        RE(bps.mv(lock.kp, 3.0))
    assert RE(bps.rd(lock.kp)).plan_result == 0.7
    with pytest.raises(Exception, match=r"rate_hz = 0.5 Hz is outside \[1, 10\] Hz"):
        RE(bps.mv(lock.rate_hz, 0.5))
    with pytest.raises(Exception, match=r"threshold_px = 40.0 px is outside \[0.5, 16\] px"):
        RE(bps.mv(mic.xy_lock.threshold_px, 40.0))
    # the plan stubs refuse before their first message: nothing is sent, nothing moves
    for plan, text in (
        (lock_focus(mic, rate_hz=50), "rate_hz=50"),
        (lock_focus(mic, ki=float("nan")), "ki=nan"),
        (lock_focus(mic, target_nm="here"), "target_nm='here'"),
        (lock_xy(mic, threshold_px=0.1), "threshold_px=0.1"),
    ):
        with pytest.raises(PlanArgumentError, match=text):
            next(plan)
    assert RE(bps.rd(lock.enabled)).plan_result is False


def test_plans_that_own_the_focus_suspend_the_lock_and_restore_it(mic, RE, clean):
    lock = mic.focus_lock
    RE(lock_focus(mic))
    _wait(lambda: lock.status.locked, what="locked")
    seen: list[bool] = []
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            seen.append(lock._loop_obj.enabled)
            time.sleep(0.02)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        RE(zlut_sweep(mic, -1000, 1000, 200, frames_per_step=2))
    finally:
        stop.set()
        watcher.join()
    assert False in seen and lock._loop_obj.enabled, lock.status  # off during the sweep, on after
    # the new Z-LUT has its own zero: the lock took the height it found as its target
    _wait(lambda: lock.status.locked, what="locked again")

    def boom():
        here = yield from bps.rd(mic.focus)
        yield from bps.mv(mic.focus, here + 50.0)
        raise RuntimeError("the plan failed")

    with pytest.raises(RuntimeError, match="the plan failed"):
        RE(focus_lock_suspended(boom(), mic))
    assert RE(bps.rd(lock.enabled)).plan_result is True


def test_a_record_waits_while_the_lock_is_lost(mic, RE, clean):
    lock = mic.focus_lock
    RE(lock_focus(mic))
    _wait(lambda: lock.status.locked and lock.status.updates > 3, what="locked")
    suspensions: list[float] = []
    request = RE.request_suspend

    def counting(*args, **kwargs):
        suspensions.append(time.monotonic())
        return request(*args, **kwargs)

    RE.request_suspend = counting

    def bump():  # the sample stage jumps 300 nm along z, 1 s into the record
        time.sleep(1.0)
        mic.simulation.set_stage_z_offset(300.0)

    recorder = TrackRecorder(mic.tracker, chunk_frames=50)
    result: dict = {}

    @bpp.run_decorator(md={"plan_name": "record_test"})
    def record():
        result["tracks"] = yield from recorder.record(300)

    bumper = threading.Thread(target=bump)
    bumper.start()
    try:
        RE(bpp.suspend_wrapper(record(), [FocusLockSuspender(mic, sleep_s=0.3)]))
    finally:
        bumper.join()
        RE.request_suspend = request
    assert len(suspensions) >= 1
    tracks = result["tracks"]
    z = tracks["z_nm"][:, column_of(tracks, [4, 5, 6])]
    height = np.nanmedian(z, axis=1)
    spread = float(np.nanmax(height) - np.nanmin(height))
    print(f"{len(suspensions)} suspension(s); the record's reference height spans "
          f"{spread:.1f} nm (the bump was 300 nm)")
    assert len(height) == 300 and np.isfinite(height).mean() > 0.95
    assert spread < 40.0  # recorded again once locked: not across the bump


def test_xy_lock_recentres_rois_and_tracks_stay_continuous(mic, RE, clean):
    lock = mic.xy_lock
    RE(lock_xy(mic, threshold_px=1.0, rate_hz=2.0))
    k0 = _newest(mic)
    mic.simulation.set_drift_speed(1.0)
    _wait(lambda: lock.status.moves >= 6, timeout_s=20, what="ROI moves")
    time.sleep(1.0)
    mic.simulation.set_drift_speed(0.0)
    table = mic.tracker.service.rois
    truth = truth_now(mic)
    half = (64 - 1) / 2
    offsets = np.hypot(truth["x_nm"][table["bead_id"]] / 100.0 - (table["x0"] + half),
                       truth["y_nm"][table["bead_id"]] / 100.0 - (table["y0"] + half))
    # reference beads sit still on the surface: within the dead-band and the drift of one
    # update; tethered beads also wander by their Brownian motion (about 1 px here)
    refs = np.isin(table["bead_id"], [4, 5, 6])
    assert offsets[refs].max() < 2.0 and offsets.max() < 5.0, offsets
    rows = mic.tracker.service.track_ring.rows_since(k0)
    _, _, tr = mic.truth.since(int(rows.frame_index[0]))
    n = min(len(rows), len(tr))
    cols = rows.columns(np.arange(7))
    err = (cols["x_nm"][:n, 4:7] - tr["x_nm"][:n, 4:7]) / 100.0  # reference beads, px
    ok = np.isfinite(err).all(axis=1)
    # no jump at ROI moves: the (tracked - true) error of frame pairs stays within noise
    jumps = np.abs(np.diff(err[ok], axis=0))
    print(f"XY lock: {lock.status.moves} moves, largest frame-to-frame change of "
          f"(tracked - true) {jumps.max():.4f} px")
    assert jumps.max() < 0.05
