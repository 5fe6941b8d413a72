"""Instrument state that persists: beads, Z-LUT, force calibration, settings saved by one
session and restored by the next, which tracks z and moves ``force`` without redoing
them; a corrupt or newer state file is refused and left as it was; a Z-LUT run that is
nowhere is named and skipped."""

from __future__ import annotations

import time

import bluesky.plan_stubs as bps
import bluesky.plans as bp
import numpy as np
import pytest
import yaml
from bluesky import RunEngine
from ophyd_async.core import init_devices

from magscope_devices import make_simulated_microscope
from magscope_devices.sim.world import SimParams
from magscope_plans import find_reference_beads, zlut_sweep
from magscope_plans._force_calibration import force_calibration
from magscope_session._instrument_state import (
    keep_instrument_state,
    read_state_file,
    state_path,
)

pytestmark = pytest.mark.system

PARAMS = SimParams(seed=5, n_tethered=4, n_reference=2, width_px=448, height_px=320,
                   contour_nm_range=(2000.0, 3000.0))
INSTANCE = "statetest"


@pytest.fixture(scope="module")
def RE():
    engine = RunEngine(call_returns_result=True)
    yield engine
    if engine.state != "idle":
        engine.abort("test teardown")


def _session(RE, data_dir):
    """A new microscope on the same instance and data folder, and its state keeper."""
    with init_devices():
        mic = make_simulated_microscope(
            PARAMS, data_dir=data_dir, instance=INSTANCE, tracking_workers=1,
            name="microscope",
        )
    while mic.camera.process.ring.count < 2:
        time.sleep(0.01)
    keeper = keep_instrument_state(RE, mic, data_dir=data_dir, instance=INSTANCE,
                                   interval_s=0.2)
    return mic, keeper


def _z_by_bead(RE, mic) -> dict[int, float]:
    events = []
    RE(bps.mv(mic.tracker.window_frames, 40))
    RE(bp.count([mic.tracker]), lambda name, doc: events.append(doc) if name == "event" else None)
    data = events[-1]["data"]
    ids = next(v for k, v in data.items() if k.endswith("bead_id"))
    z = next(v for k, v in data.items() if k.endswith("z_nm_mean"))
    return {int(b): float(v) for b, v in zip(ids, z, strict=True)}


def test_a_new_session_starts_where_the_last_one_stopped(RE, tmp_path, capsys):
    data_dir = tmp_path / "data"
    mic, keeper = _session(RE, data_dir)
    try:
        assert keeper is not None and not state_path(data_dir, INSTANCE).exists()
        RE(bps.wait_for([mic.tracker.find_beads]))
        refs = RE(find_reference_beads(mic.tracker)).plan_result
        RE(zlut_sweep(mic, -2000, 7000, 100, frames_per_step=2, magnet_z_mm=1.0))
        cal_uid = RE(force_calibration(mic, [2.0, 4.0, 6.0], rel_error=0.1,
                                       max_duration_s=6.0)).plan_result
        RE(bps.mv(mic.focus_lock.kp, 0.35, mic.xy_lock.threshold_px, 2.5,
                  mic.camera.exposure_s, 0.003, mic.video.every_n, 25,
                  mic.video.mode, "frames_every_n"))
        RE(bps.mv(mic.magnet_z, 3.0))
        z_before = _z_by_bead(RE, mic)
        zlut_uid = RE(bps.rd(mic.tracker.zlut_uid)).plan_result
        rois = RE(bps.rd(mic.tracker.rois)).plan_result
    finally:
        keeper.stop()
        mic.close()
    saved = read_state_file(state_path(data_dir, INSTANCE))
    assert saved["zlut_run"] == zlut_uid and saved["force_calibration_run"] == cal_uid
    assert saved["beads"]["reference"] == sorted(int(b) for b in refs)
    assert saved["focus_lock"]["kp"] == 0.35 and saved["camera"]["exposure_s"] == 0.003
    assert saved["video"]["mode"] == "frames_every_n" and saved["video"]["every_n"] == 25
    capsys.readouterr()

    mic, keeper = _session(RE, data_dir)  # a new session: nothing redone
    try:
        out = capsys.readouterr().out
        assert "Instrument state restored from" in out and "not restored" not in out, out
        again = RE(bps.rd(mic.tracker.rois)).plan_result
        assert np.array_equal(again.bead_id, rois.bead_id)
        assert np.array_equal(again.x0_px, rois.x0_px)
        assert sorted(RE(bps.rd(mic.tracker.reference_beads)).plan_result) == sorted(refs)
        assert RE(bps.rd(mic.tracker.zlut_uid)).plan_result == zlut_uid
        assert mic.force.calibration is not None and mic.force.calibration.source == cal_uid
        assert RE(bps.rd(mic.focus_lock.kp)).plan_result == 0.35
        assert RE(bps.rd(mic.xy_lock.threshold_px)).plan_result == 2.5
        assert RE(bps.rd(mic.camera.exposure_s)).plan_result == pytest.approx(0.003)
        assert RE(bps.rd(mic.video.mode)).plan_result == "frames_every_n"
        assert RE(bps.rd(mic.video.every_n)).plan_result == 25
        assert RE(bps.rd(mic.focus_lock.enabled)).plan_result is False
        # tracks z: each bead's height above the reference beads as the last session
        # measured it at the same magnet height (the focus drifts between the two, so the
        # absolute z does not repeat; the height above the stuck beads does)
        RE(bps.mv(mic.magnet_z, 3.0))
        z_after = _z_by_bead(RE, mic)
        ref = [int(b) for b in refs]
        assert all(np.isfinite(z_after[b]) for b in z_after), z_after
        for b in z_after:
            before = z_before[b] - np.mean([z_before[r] for r in ref])
            after = z_after[b] - np.mean([z_after[r] for r in ref])
            assert abs(after - before) < 40.0, (b, before, after)
        # moves force with the last session's calibration
        RE(bps.mv(mic.force, 2.0))
        height = RE(bps.rd(mic.magnet_z)).plan_result
        assert height == pytest.approx(mic.force.calibration.height_mm(2.0), abs=1e-3)
        assert RE(bps.rd(mic.force)).plan_result == pytest.approx(2.0, rel=1e-3)
    finally:
        keeper.stop()
        mic.close()

    # a Z-LUT and a calibration that are nowhere: the rest loads, the notes say which
    path = state_path(data_dir, INSTANCE)
    state = read_state_file(path)
    state["zlut_run"] = "00000000-dead-4000-8000-000000000000"
    state["force_calibration_run"] = "00000000-dead-4000-8000-000000000001"
    path.write_text(yaml.safe_dump(state))
    mic, keeper = _session(RE, data_dir)
    try:
        out = capsys.readouterr().out
        assert "not restored: the Z-LUT of run 00000000-dead-4000-8000-000000000000 was " \
               "not found" in out, out
        assert "force calibration of run 00000000-dead-4000-8000-000000000001 was not " \
               "found" in out, out
        assert np.array_equal(RE(bps.rd(mic.tracker.rois)).plan_result.bead_id, rois.bead_id)
        assert RE(bps.rd(mic.tracker.zlut_uid)).plan_result == ""
    finally:
        keeper.stop()
        mic.close()


@pytest.mark.parametrize(
    ("text", "reason"),
    [("version: 1\nbeads: [unclosed\n", "is not valid YAML"),
     ("version: 7\n", r"newer MagScope-Bluesky \(state version 7")],
)
def test_a_corrupt_or_newer_file_is_refused_and_left_as_it_was(RE, tmp_path, text, reason):
    data_dir = tmp_path / "data"
    path = state_path(data_dir, INSTANCE)
    path.parent.mkdir(parents=True)
    path.write_text(text)
    with pytest.warns(UserWarning, match=reason):
        mic, keeper = _session(RE, data_dir)
    try:
        assert keeper is None  # the session does not save over the file
        RE(bps.mv(mic.tracker.window_frames, 17))
    finally:
        mic.close()
    assert path.read_text() == text
