"""The live viewer on the simulated microscope: a real camera process and tracking
workers of their own instance, the viewer's widgets offscreen (pytest-qt), scored
against the simulator's truth."""

from __future__ import annotations

import subprocess
import sys
import time

import bluesky.plan_stubs as bps
import numpy as np
import pytest
from bluesky import RunEngine
from ophyd_async.core import init_devices
from PyQt5 import QtCore

from magscope_devices import make_simulated_microscope
from magscope_devices.sim.world import SimParams
from magscope_ipc.shm import list_segments
from magscope_viewer import InstanceNotFoundError, LiveSource, ViewerWindow
from tracking_sim import true_rois, truth_now

pytestmark = pytest.mark.system

INSTANCE = "viewer-test"
NM_PER_PX = 100.0
ROI = 64


def _start(data_dir):
    with init_devices():
        mic = make_simulated_microscope(
            SimParams(seed=21), data_dir=data_dir, instance=INSTANCE, tracking_workers=1,
            name="microscope",
        )
    return mic


@pytest.fixture(scope="module")
def RE():
    return RunEngine(call_returns_result=True)


@pytest.fixture(scope="module")
def scope(RE, tmp_path_factory):
    """{"mic": the running microscope}; a test may replace it (a new owner)."""
    data_dir = tmp_path_factory.mktemp("viewer")
    holder = {"mic": _start(data_dir), "data_dir": data_dir}
    mic = holder["mic"]
    RE(bps.mv(mic.magnet_z, 2.0))
    RE(bps.mv(mic.tracker.rois, true_rois(truth_now(mic), roi=ROI, nm_per_px=NM_PER_PX)))
    yield holder
    holder["mic"].close()
    assert list_segments(INSTANCE) == []


@pytest.fixture(scope="module")
def window(scope, qapp):
    win = ViewerWindow(LiveSource(INSTANCE), selected=range(10), reference=[10], refresh_hz=0)
    win.resize(1500, 900)
    win.show()
    yield win
    win.close()


def _refresh_until(qtbot, win, condition, timeout_s=20.0):
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        win.refresh()
        qtbot.wait(30)
        if condition():
            return
    raise AssertionError(f"viewer did not get there in {timeout_s} s: {win.status.text()}")


def test_beads_appear_where_the_truth_puts_them(qtbot, scope, window):
    _refresh_until(qtbot, window, lambda: window.camera.frame_index >= 0)
    camera = window.camera
    for item in (*camera.boxes.values(), camera.centres, camera.labels):
        item.setVisible(False)  # overlays sit on the beads: look at the image alone
    try:
        camera.plot.setRange(xRange=(0, 1024), yRange=(0, 768), padding=0)
        qtbot.wait(50)
        truth = scope["mic"].truth.frame(camera.frame_index)
        grab = camera.grab().toImage().convertToFormat(4)  # Format_RGB32
        ptr = grab.bits()
        ptr.setsize(grab.byteCount())
        pixels = np.frombuffer(ptr, np.uint8).reshape(grab.height(), grab.bytesPerLine() // 4, 4)
        grey = pixels[..., :3].mean(axis=2)
        scale = (camera.scene_point(100, 0).x() - camera.scene_point(0, 0).x()) / 100
        r = max(2, int(round(5 * scale)))  # the bead's central pattern: about 10 px across

        def contrast(x_px, y_px):
            p = camera.scene_point(x_px, y_px)
            patch = grey[p.y() - r : p.y() + r + 1, p.x() - r : p.x() + r + 1]
            return float(patch.std())

        x, y = truth["x_nm"] / NM_PER_PX, truth["y_nm"] / NM_PER_PX
        at_beads = np.array([contrast(a, b) for a, b in zip(x, y, strict=True)])
        # background: the same spots shifted 30 px away from the beads (spacing >= 70 px)
        beside = np.array([contrast(a + 30, b + 30) for a, b in zip(x, y, strict=True)])
        assert np.median(at_beads) > 3 * np.median(beside), (at_beads, beside)
        assert np.mean(at_beads > beside) > 0.9
        # and the image item's coordinates are sensor px: the frame's own pixel there
        assert camera.image.image.shape == (768, 1024)
        for a, b in zip(x[:5], y[:5], strict=True):
            local = camera.image.mapFromView(QtCore.QPointF(a, b))  # image item: pixel edges
            assert abs(local.x() - (a + 0.5)) < 1e-6 and abs(local.y() - (b + 0.5)) < 1e-6
    finally:
        for item in (*camera.boxes.values(), camera.centres, camera.labels):
            item.setVisible(True)
        camera.plot.autoRange()


def test_roi_boxes_and_tracked_centres_sit_on_the_beads(qtbot, scope, window, RE):
    _refresh_until(qtbot, window, lambda: window.history.last_frame_index >= 0
                   and len(window.history) > 20)
    table = RE(bps.rd(scope["mic"].tracker.rois)).plan_result
    order = np.argsort(table.bead_id)
    camera = window.camera
    xs, ys = [], []
    for item in camera.boxes.values():
        bx, by = item.getData()
        if bx is not None and len(bx):
            xs.append(np.asarray(bx).reshape(-1, 6)[:, 0])
            ys.append(np.asarray(by).reshape(-1, 6)[:, 0])
    lefts = np.sort(np.concatenate(xs) + 0.5)
    tops = np.sort(np.concatenate(ys) + 0.5)
    assert lefts.size == table.bead_id.size
    np.testing.assert_allclose(lefts, np.sort(table.x0_px[order]), atol=1.0)
    np.testing.assert_allclose(tops, np.sort(table.y0_px[order]), atol=1.0)
    # the tracked centres (newest frame with positions: a dropped frame has none) against
    # the truth of that frame
    index = camera.centres_frame
    assert window.history.last_frame_index - 200 < index <= window.history.last_frame_index
    truth = scope["mic"].truth.frame(index)
    cx, cy = camera.centres.getData()
    assert cx.size == len(truth)
    tx, ty = truth["x_nm"] / NM_PER_PX, truth["y_nm"] / NM_PER_PX
    for a, b in zip(cx, cy, strict=True):
        d = np.hypot(tx - a, ty - b).min()
        assert d < 1.0, f"tracked centre ({a:.1f}, {b:.1f}) is {d:.2f} px from every bead"
    # the selected beads have traces, in the bead colours; ids appear as labels
    assert list(window.traces.drawn_ids) == list(range(10))
    tx_, ty_ = window.traces.curves["x_nm"][0].getData()
    assert tx_.size > 10 and np.isfinite(ty_).any()
    # the trace ends at the newest frame (t = 0 s): decimated (min, max of each bin: a
    # busy machine holds more frames), its last point is an extreme of the last bin
    last_bin_s = 2 * (-tx_[0]) / tx_.size + 0.02
    assert -last_bin_s <= tx_[-1] <= 0.0, (tx_[0], tx_[-1], tx_.size)
    assert set(camera.labels.texts) == {str(b) for b in table.bead_id}
    assert "connected" in window.status.text() and "frames/s" in window.status.text()


def test_a_wrong_instance_name_gets_a_clear_error(scope):
    with pytest.raises(InstanceNotFoundError, match=r"'no-such-scope'.*'viewer-test'"):
        LiveSource("no-such-scope")
    done = subprocess.run(
        [sys.executable, "-m", "magscope_viewer", "--instance", "no-such-scope"],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 2
    assert "no-such-scope" in done.stderr and "viewer-test" in done.stderr


def test_owner_exit_shows_disconnected_and_a_new_owner_is_picked_up(qtbot, scope, window):
    _refresh_until(qtbot, window, lambda: window.camera.frame_index >= 0)
    scope["mic"].close()
    _refresh_until(qtbot, window, lambda: window.source.state == "disconnected", 10)
    assert "viewer-test: disconnected" in window.status.text()
    assert window.camera.centres.getData()[0].size == 0
    scope["mic"] = _start(scope["data_dir"])
    before = window.source.reconnects
    _refresh_until(qtbot, window, lambda: window.source.state == "connected"
                   and window.source.reconnects == before + 1, 30)
    index = window.camera.frame_index
    _refresh_until(qtbot, window, lambda: window.camera.frame_index != index, 10)
    assert "viewer-test: connected" in window.status.text()
