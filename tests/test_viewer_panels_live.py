"""The axes, health and profile panels on the simulated microscope (a real camera
process and a tracking worker of their own instance; pytest-qt offscreen)."""

from __future__ import annotations

import asyncio
import math
import os
import time

import bluesky.plan_stubs as bps
import numpy as np
import pytest
from bluesky import RunEngine
from ophyd_async.core import init_devices

from magscope_devices import make_simulated_microscope
from magscope_devices.sim.world import SimParams
from magscope_ipc.shm import list_segments
from magscope_plans._zlut import zlut_sweep
from magscope_viewer import LiveSource, ViewerWindow
from tracking_sim import true_rois, truth_now

pytestmark = pytest.mark.system

INSTANCE = "viewer-panels"
NM_PER_PX = 100.0
ROI = 64
#: Screenshots go here (looked at by hand; not compared).
SHOT_DIR = os.environ.get("MAGSCOPE_SCREENSHOT_DIR", "")


@pytest.fixture(scope="module")
def RE():
    return RunEngine(call_returns_result=True)


@pytest.fixture(scope="module")
def mic(RE, tmp_path_factory):
    with init_devices():
        mic = make_simulated_microscope(
            SimParams(seed=8), data_dir=tmp_path_factory.mktemp("panels"), instance=INSTANCE,
            tracking_workers=1, name="microscope",
        )
    while mic.camera.process.ring.count < 2:
        time.sleep(0.01)
    RE(bps.mv(mic.tracker.rois, _rois_of(mic, range(6))))
    yield mic
    mic.close()
    assert list_segments(INSTANCE) == []


@pytest.fixture(scope="module")
def window(mic, qapp):
    win = ViewerWindow(LiveSource(INSTANCE), selected=[0, 1], refresh_hz=0)
    win.show()
    yield win
    win.close()


def _until(qtbot, win, condition, timeout_s=15.0, what=""):
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        win.refresh()
        win.refresh_panels(everything=True)
        if condition():
            return
        qtbot.wait(40)
    raise AssertionError(f"not within {timeout_s} s: {what}")


def _shot(win, qtbot, name):
    if SHOT_DIR:
        qtbot.wait(50)
        win.grab().save(os.path.join(SHOT_DIR, name))


def test_axes_panel_follows_a_magnet_move(qtbot, mic, window, RE):
    window.show_panel("axes")
    panel = window.axes_panel
    _until(qtbot, window, lambda: panel.values["magnet_z_mm"].text() == "8.000 mm",
           what="initial magnet height")
    assert panel.limits["magnet_z_mm"].text() == "[0.300, 10.000] mm"
    assert panel.limits["force_pn"].text() == "no force calibration loaded"
    seen_moving = []

    async def move():
        await mic.magnet_z.set(3.0)  # 5 mm at 5 mm/s: one second of motion

    # move on Bluesky's event loop while this (the GUI) thread watches the panel
    done = asyncio.run_coroutine_threadsafe(move(), RE.loop)
    while not done.done():
        window.refresh_panels(everything=True)
        seen_moving.append(panel.moving["magnet_z_mm"].text())
        qtbot.wait(100)
    done.result()
    _until(qtbot, window, lambda: panel.values["magnet_z_mm"].text() == "3.000 mm",
           what="magnet at 3 mm")
    assert seen_moving.count("moving") >= 3, seen_moving
    assert panel.moving["magnet_z_mm"].text() == "idle"
    axes = window.source.axes()
    assert axes is not None and axes["magnet_z_mm"].value == 3.0
    RE(bps.mv(mic.magnet_z, 2.0, mic.focus, RE(bps.rd(mic.focus)).plan_result + 100.0))
    _until(qtbot, window, lambda: panel.values["magnet_z_mm"].text() == "2.000 mm",
           what="magnet at 2 mm")
    assert window.source.axes()["focus_nm"].value == RE(bps.rd(mic.focus)).plan_result


def test_health_panel_shows_workers_and_the_frame_rate(qtbot, mic, window):
    window.show_panel("health")
    panel = window.health_panel
    period = window.source.health().frame_period_s
    _until(qtbot, window, lambda: math.isfinite(panel.frame_rate_hz), what="a frame rate")
    time.sleep(1.0)  # one clean second between two samples
    window.refresh_panels(everything=True)
    assert panel.frame_rate_hz == pytest.approx(1.0 / period, rel=0.15)
    health = window.source.health()
    assert len(health.workers) == 1 and all(w.alive for w in health.workers)
    assert health.workers[0].record.state == "running"
    assert health.workers[0].record.frames_tracked > 0
    assert panel.workers.item(0, 3).text() == "yes"
    assert health.frames_tracked > 0 and health.dropped_behind >= 0
    _shot(window, qtbot, "viewer-panels-health.png")


def test_profile_panel_matches_the_zlut_at_the_tracked_z(qtbot, mic, window, RE):
    window.show_panel("profile")
    panel = window.profile_panel
    _until(qtbot, window, lambda: panel.shown is not None, what="a profile without LUT")
    assert panel.zlut_label.text() == "no Z-LUT loaded" and panel.shown.lut_profile is None
    RE(bps.mv(mic.tracker.rois, _rois_of(mic, [0, 1])))
    RE(zlut_sweep(mic, -2000, 2000, 200, frames_per_step=2, magnet_z_mm=1.0))
    RE(bps.mv(mic.magnet_z, 1.0))
    _until(qtbot, window, lambda: panel.shown is not None and panel.shown.lut_profile is not None
           and math.isfinite(panel.shown.z_nm), what="a profile matched to the Z-LUT")
    assert window.zlut_file.zlut is not None and list(window.zlut_file.zlut.bead_ids) == [0, 1]
    shown = panel.shown
    residual = shown.profile - shown.lut_profile
    assert np.sqrt(np.mean(residual**2)) < 0.1 * np.ptp(shown.lut_profile)
    assert shown.z_score > 0.95
    # the tracker's own z of bead 0 around the frame the viewer profiled agrees with it
    # (the viewer profiles the newest camera frame: under load the tracker is a few
    # frames behind it, so wait until it has tracked them, and it may drop some: the
    # frames within 20 of it, 0.2 s at 100 frames/s, at a fixed magnet height)
    end = time.monotonic() + 10.0
    z_tracker = np.zeros(0)
    while time.monotonic() < end:
        rows = window.source.tracks_since(max(0, shown.frame_index - 20), 41)
        z_rows = rows.columns(np.array([0]))["z_nm"][:, 0]
        ok = np.isfinite(z_rows)
        if ok.sum() >= 3:  # the three tracked frames nearest the one profiled
            gap = np.abs(np.asarray(rows.frame_index)[ok] - shown.frame_index)
            z_tracker = z_rows[ok][np.argsort(gap, kind="stable")[:3]]
            if gap.min() <= 2 or rows.frame_index[-1] >= shown.frame_index + 20:
                break
        qtbot.wait(50)
    assert z_tracker.size and abs(np.median(z_tracker) - shown.z_nm) < 100.0
    assert panel.lut_image.image.shape == window.zlut_file.zlut.profiles[0].shape
    assert window.width() == 1400  # long texts never widen the window (1400 x 900)
    _shot(window, qtbot, "viewer-panels-profile.png")
    # what a panel update costs (ms), reported by the test run
    cost: dict[str, list[float]] = {}
    for _ in range(20):
        window.refresh()
        window.refresh_panels(everything=True)
        for key, ms in window.panel_ms.items():
            cost.setdefault(key, []).append(ms)
    print("panel update ms (median, max):",
          {k: (round(float(np.median(v)), 2), round(max(v), 2)) for k, v in cost.items()})
    RE(bps.mv(mic.magnet_z, 8.0))


def _rois_of(mic, ids):
    return true_rois(truth_now(mic), list(ids), roi=ROI, nm_per_px=NM_PER_PX)
