"""The viewer's axes, health and profile panels on records this test process owns (no
processes): what the owner mirrors is what the panels show."""

from __future__ import annotations

import math
import os
import time

import numpy as np
import pytest

from magscope_devices._acquisition import CONTROL_DTYPE
from magscope_devices._axes_record import AXES_DTYPE, AxesRecordWriter
from magscope_ipc.rings import FrameRing
from magscope_ipc.shm import SharedRecord, list_segments, segment_name
from magscope_ipc.track_ring import TrackRing
from magscope_tracking import build_zlut, synthetic_bead
from magscope_tracking._records import (
    WORKER_DTYPE,
    WorkerState,
    control_dtype,
    file_sha256,
    write_rois,
    write_zlut,
)
from magscope_viewer import LiveSource, ViewerWindow, lut_profile_at
from magscope_viewer._health_panel import busy_fraction

ROI = 64
DZ = np.linspace(-2.0, 2.0, 41)  # synthetic_bead's height units; the LUT's z = 1000 dz nm


@pytest.fixture
def owned(tmp_path):
    """Camera, tracker (one worker record), axes record of an instance this process owns."""
    instance = f"viewer-panels-unit-{os.getpid()}"
    frames = FrameRing.create_frames(segment_name(instance, "frames"), 4, 200, 300, np.uint16)
    camctl = SharedRecord.create(segment_name(instance, "camctl"), CONTROL_DTYPE)
    camctl["roi"] = np.array([0, 0, 300, 200])
    camctl["frame_period_s"] = 0.01
    tracks = TrackRing.create_tracks(segment_name(instance, "tracks"), 16, 4, nm_per_px=100.0)
    trkctl = SharedRecord.create(segment_name(instance, "trkctl"), control_dtype(4))
    trkctl["max_beads"], trkctl["nm_per_px"], trkctl["n_workers"] = 4, 100.0, 1
    worker = SharedRecord.create(segment_name(instance, "trkw0"), WORKER_DTYPE)
    axes = SharedRecord.create(segment_name(instance, "axes"), AXES_DTYPE)
    made = [frames, camctl, tracks, trkctl, worker, axes]
    yield {"instance": instance, "frames": frames, "camctl": camctl, "trkctl": trkctl,
           "worker": worker, "axes": AxesRecordWriter(axes), "dir": tmp_path}
    for item in reversed(made):
        item.unlink()
        item.close()
    assert list_segments(instance) == []


def _write_bead_frame(frames: FrameRing, dz: float, x0: int, y0: int) -> int:
    index, slot = frames.begin_write()
    slot[:200, :300] = 125
    slot[y0 : y0 + ROI, x0 : x0 + ROI] = np.round(synthetic_bead((ROI, ROI), dz=dz)).astype(
        np.uint16)
    frames.commit_frame(index, time.time(), 200, 300)
    return index


@pytest.fixture
def window(owned, qapp):
    win = ViewerWindow(LiveSource(owned["instance"]), selected=[7], refresh_hz=0)
    win.show()
    yield win
    win.close()


def test_axes_panel_shows_the_record_and_asks_for_moves(owned, window, qtbot):
    writer: AxesRecordWriter = owned["axes"]
    writer.write({
        "magnet_z_mm": 2.5, "magnet_z_mm_setpoint": 3.0, "magnet_z_mm_low": 0.3,
        "magnet_z_mm_high": 10.0, "magnet_turns": 1.5, "magnet_turns_setpoint": 1.5,
        "magnet_turns_low": -200, "magnet_turns_high": 200, "focus_nm": 1234.0,
        "focus_nm_setpoint": 1234.0, "focus_nm_low": -20000, "focus_nm_high": 80000,
    })
    window.refresh()
    window.refresh_panels(everything=True)
    panel = window.axes_panel
    assert panel.values["magnet_z_mm"].text() == "2.500 mm"
    assert panel.setpoints["magnet_z_mm"].text() == "3.000 mm"
    assert panel.limits["magnet_z_mm"].text() == "[0.300, 10.000] mm"
    assert panel.moving["magnet_z_mm"].text() == "moving"
    assert panel.moving["focus_nm"].text() == "idle"
    assert panel.values["focus_nm"].text() == "1234 nm"
    assert panel.limits["force_pn"].text() == "no force calibration loaded"
    assert not panel.go["force_pn"].isEnabled() and panel.go["magnet_z_mm"].isEnabled()
    # the target spin box is bounded by the limits
    panel.targets["magnet_z_mm"].setValue(50.0)
    assert panel.targets["magnet_z_mm"].value() == 10.0
    panel.targets["magnet_z_mm"].setValue(3.25)
    with qtbot.waitSignal(panel.move_requested, timeout=1000) as signal:
        panel.go["magnet_z_mm"].click()
    assert signal.args == [{"magnet_z_mm": 3.25}]
    # locks: none in the record, said so, toggles disabled
    assert "No bead locks" in panel.lock_status.text() and panel.lock_status.isVisibleTo(panel)
    assert not any(t.isEnabled() for t in panel.lock_toggles.values())
    # a focus lock that holds, an XY lock that is off: shown, and the toggles ask
    writer.write({"focus_lock_enabled": 1, "focus_lock_locked": 1, "focus_lock_error_nm": -0.4,
                  "focus_lock_moves": 12, "xy_lock_enabled": 0, "xy_lock_locked": 0,
                  "xy_lock_error_nm": 80.0, "xy_lock_moves": 3})
    window.refresh_panels(everything=True)
    assert panel.lock_states["Z lock"].text() == "locked, error -0.4 nm, 12 moves"
    assert panel.lock_states["XY lock"].text() == "off (3 moves)"
    assert panel.lock_toggles["Z lock"].isChecked() and not panel.lock_toggles["XY lock"].isChecked()
    assert not panel.lock_status.isVisibleTo(panel)
    with qtbot.waitSignal(panel.lock_requested, timeout=1000) as signal:
        panel.lock_toggles["XY lock"].click()
    assert signal.args == ["lock_xy"]
    with qtbot.waitSignal(panel.lock_requested, timeout=1000) as signal:
        panel.lock_toggles["Z lock"].click()
    assert signal.args == ["unlock_focus"]
    writer.write({"focus_lock_locked": 0, "focus_lock_error_nm": 35.0})
    window.refresh_panels(everything=True)
    assert panel.lock_states["Z lock"].text().startswith("NOT locked, error +35.0 nm")
    # the move arrives: idle; a calibration: the force shows
    writer.write({"magnet_z_mm": 3.0, "force_pn": 4.25, "force_pn_low": 0.1,
                  "force_pn_high": 60.0})
    window.refresh_panels(everything=True)
    assert panel.moving["magnet_z_mm"].text() == "idle"
    assert panel.values["force_pn"].text() == "4.25 pN" and panel.go["force_pn"].isEnabled()
    # the box keeps what the user typed until a move made elsewhere changes the setpoint
    assert panel.targets["magnet_z_mm"].value() == 3.25
    writer.write({"magnet_z_mm_setpoint": 4.0})
    window.refresh_panels(everything=True)
    assert panel.targets["magnet_z_mm"].value() == 4.0


def test_health_panel_shows_counters_and_the_worker(owned, window):
    camctl, trkctl, worker = owned["camctl"], owned["trkctl"], owned["worker"]
    worker["pid"], worker["state"] = os.getpid(), WorkerState.RUNNING
    worker["heartbeat"], worker["frames_tracked"], worker["busy_s"] = time.time(), 900, 1.0
    camctl["frames_acquired"], camctl["frames_late"] = 1000, 3
    trkctl["frames_tracked"], trkctl["frames_dropped"] = 990, 6
    trkctl["dropped_behind"], trkctl["dropped_worker"], trkctl["dropped_error"] = 4, 2, 0
    trkctl["latency_p50_s"], trkctl["latency_p99_s"] = 0.004, 0.012
    window.refresh()
    health = window.source.health()
    assert [w.index for w in health.workers] == [0] and health.workers[0].alive
    assert health.frame_ring_capacity == 4 and health.track_ring_capacity == 16
    panel = window.health_panel
    t = time.monotonic()
    panel.show_health(health, now_s=t + 1.0)
    camctl["frames_acquired"] = 1500
    worker["heartbeat"], worker["busy_s"] = time.time(), 1.5
    time.sleep(0.05)
    panel.show_health(window.source.health(), now_s=t + 6.0)
    assert panel.frame_rate_hz == pytest.approx(100.0)
    assert panel.fields["frame_rate"].text() == "100.0 frames/s (set 100)"
    assert panel.fields["late"].text() == "3"
    assert panel.fields["dropped"].text() == "6  (4 / 2 / 0)"
    assert panel.fields["latency"].text() == "4.0 ms / 12.0 ms"
    row = [panel.workers.item(0, c).text() for c in range(panel.workers.columnCount())]
    assert row[:5] == ["0", str(os.getpid()), "running", "yes", "900"]
    assert row[6].endswith("%")
    # a worker without a heartbeat for long is not alive
    worker["heartbeat"] = time.time() - 60
    assert not window.source.health().workers[0].alive


def test_busy_fraction():
    assert math.isnan(busy_fraction(None, 1.0, 0.5))
    assert busy_fraction((0.0, 1.0), 2.0, 2.0) == 0.5
    assert math.isnan(busy_fraction((0.0, 5.0), 2.0, 1.0))  # restarted


def test_profile_panel_matches_the_lut_and_follows_its_generation(owned, window):
    frames, trkctl, tmp = owned["frames"], owned["trkctl"], owned["dir"]
    rois = np.zeros(1, dtype=[("bead_id", "<i4"), ("x0", "<i4"), ("y0", "<i4")])
    rois["bead_id"], rois["x0"], rois["y0"] = 7, 100, 60
    write_rois(trkctl, rois, ROI, 1)
    sweep = np.stack([synthetic_bead((ROI, ROI), dz=d) for d in DZ])
    lut = build_zlut(np.round(sweep).astype(np.uint16), DZ * 1000.0, nm_per_px=100.0,
                     bead_ids=[7], smooth_planes=0)
    path = lut.save(tmp / "lut.npz")
    _write_bead_frame(frames, 0.55, 100, 60)
    window.refresh()
    window.refresh_panels(everything=True)
    panel = window.profile_panel
    assert window.zlut_file.zlut is None and panel.zlut_label.text() == "no Z-LUT loaded"
    assert panel.shown is not None and panel.shown.lut_profile is None  # XY only
    write_zlut(trkctl, str(path), file_sha256(path), 1)
    window.refresh_panels(everything=True)
    shown = panel.shown
    assert window.zlut_file.zlut is not None and window.zlut_file.loads == 1
    assert shown is not None and shown.bead_id == 7 and shown.lut_index == 0
    assert abs(shown.z_nm - 550.0) < 30.0, shown.z_nm
    assert abs(shown.x_px - 31.5) < 0.05 and abs(shown.y_px - 31.5) < 0.05
    residual = shown.profile - shown.lut_profile
    assert np.sqrt(np.mean(residual**2)) < 0.05 * np.ptp(shown.profile)
    # the LUT at a different z does not match as well
    other = lut_profile_at(lut, 0, -1500.0)
    assert np.sqrt(np.mean((shown.profile - other) ** 2)) > 3 * np.sqrt(np.mean(residual**2))
    assert panel.lut_image.image.shape == (lut.n_planes, lut.n_bins)
    assert panel.z_line.isVisible() and panel.z_line.value() == pytest.approx(shown.z_nm)
    window.refresh_panels(everything=True)
    assert window.zlut_file.loads == 1  # same generation: not loaded again
    write_zlut(trkctl, "", "", 2)
    window.refresh_panels(everything=True)
    assert window.zlut_file.zlut is None and panel.zlut_label.text() == "no Z-LUT loaded"
    # a bead without an ROI
    panel.bead_spin.setValue(3)
    window.refresh_panels(everything=True)
    assert "no ROI" in panel.message.text() and panel.shown is None


def test_lut_profile_at_interpolates_between_planes():
    sweep = np.stack([synthetic_bead((ROI, ROI), dz=d) for d in DZ])
    lut = build_zlut(sweep, DZ * 1000.0, nm_per_px=100.0, smooth_planes=0)
    mid = 0.5 * (lut.z_nm[3] + lut.z_nm[4])
    np.testing.assert_allclose(
        lut_profile_at(lut, 0, mid), 0.5 * (lut.profiles[0, 3] + lut.profiles[0, 4]))
    np.testing.assert_allclose(lut_profile_at(lut, 0, lut.z_nm[0]), lut.profiles[0, 0])
    assert lut_profile_at(lut, 0, lut.z_nm[-1] + 1) is None
    assert lut_profile_at(lut, 0, math.nan) is None
