"""The run browser against a real Tiled server: a short run with camera frames and bead
tracks written by the simulated microscope, found by its filters, opened for review in
the viewer's own panels (pixels and traces compared with the run read back), scrubbed,
and left for live again."""

from __future__ import annotations

import os
import uuid
from types import SimpleNamespace

import bluesky.plan_stubs as bps
import bluesky.plans as bp
import numpy as np
import pytest
from ophyd_async.core import init_devices
from PyQt5 import QtCore

from magscope_devices import make_simulated_microscope
from magscope_devices.sim.world import SimParams
from magscope_session import make_run_engine, session_metadata, subscribe_tiled_writer
from magscope_session._tiled_server import TiledTarget
from magscope_session.runs import bead_tracks, camera_frames, find_runs, read_tracks
from magscope_viewer import LiveSource, RunBrowser, RunSource, ViewerWindow

pytestmark = pytest.mark.system

INSTANCE = "viewer-run"
EVENTS = 4
SHOT_DIR = os.environ.get("MAGSCOPE_SCREENSHOT_DIR")  # keep the screenshots here if set


@pytest.fixture(scope="module")
def written(tiled_server):
    """Two runs in Tiled: a count of camera and tracker (frames and tracks), and a count
    of the tracker alone under another sample."""
    tag = uuid.uuid4().hex[:8]
    target = TiledTarget(
        uri=tiled_server.uri, api_key=tiled_server.api_key, source="embedded-running",
        data_dir=tiled_server.data_dir,
    )
    params = SimParams(seed=7, n_tethered=3, n_reference=1, width_px=384, height_px=256)
    RE, _ = make_run_engine(
        session_metadata(sample=f"default-{tag}", operator="dana", sim_params=params),
        best_effort=False,
    )
    writer = subscribe_tiled_writer(RE, target)
    with init_devices():
        mic = make_simulated_microscope(
            params, data_dir=target.detector_data_dir, tracking_workers=1, name="mic",
            instance=INSTANCE,
        )
    try:
        RE(bps.mv(mic.magnet_z, 2.0))
        RE(bps.wait_for([mic.tracker.find_beads]))
        ids = np.asarray(RE(bps.rd(mic.tracker.rois)).plan_result.bead_id, np.int64)
        uid = RE(bp.count([mic.camera, mic.tracker], num=EVENTS, md={
            "sample": f"review-{tag}", "bead_ids": ids[:2].tolist(),
        })).plan_result
        other = RE(bp.count([mic.tracker], num=1, md={"sample": f"other-{tag}"})).plan_result
    finally:
        mic.close()
        assert writer.close(timeout=60)
    return SimpleNamespace(tag=tag, uid=uid, other=other, ids=ids, server=tiled_server)


@pytest.fixture
def window(qapp):
    live = LiveSource(INSTANCE, require_running=False)  # the microscope is gone: disconnected
    win = ViewerWindow(live, refresh_hz=0)
    win.resize(1500, 900)
    win.show()
    yield win
    win.close()
    live.close()


def grey_at(camera, points) -> np.ndarray:
    """Grey values (0-255) of the grabbed camera panel at sensor positions ``points``
    (x, y px): the widget pixel holding each image pixel's centre (pyqtgraph's scene
    coordinates are the widget's pixels; floor, not round, gives the pixel)."""
    grab = camera.grab().toImage().convertToFormat(4)  # Format_RGB32
    ptr = grab.bits()
    ptr.setsize(grab.byteCount())
    pixels = np.frombuffer(ptr, np.uint8).reshape(grab.height(), grab.bytesPerLine() // 4, 4)
    out = []
    for x, y in points:
        p = camera.plot.vb.mapViewToScene(QtCore.QPointF(float(x), float(y)))
        out.append(pixels[int(p.y()), int(p.x()), :3].mean())
    return np.asarray(out)


def test_a_past_run_opens_from_tiled_in_the_same_panels(qtbot, written, window, tmp_path):
    server = written.server
    browser = RunBrowser(server.uri, api_key=server.api_key)
    window.add_run_browser(browser)
    qtbot.wait(50)
    # the filters find it: by sample, by plan and bead, and not by another bead
    browser.sample_edit.setText(f"review-{written.tag}")
    runs = browser.search()
    assert [r.metadata["start"]["uid"] for r in runs] == [written.uid]
    assert browser.table.rowCount() == 1 and browser.table.item(0, 1).text() == "count"
    browser.sample_edit.setText("")
    browser.plan_edit.setText("count")
    browser.bead_edit.setText(str(written.ids[1]))
    assert [r.metadata["start"]["uid"] for r in browser.search()] == [written.uid]
    browser.bead_edit.setText(str(written.ids[3]))  # not among the run's bead_ids
    assert browser.search() == [] and browser.message.text() == "0 runs"
    browser.bead_edit.setText("")
    browser.since_edit.setText("2000-01-01")
    found = {r.metadata["start"]["uid"] for r in browser.search()}
    assert found == {written.uid, written.other}
    browser.since_edit.setText("")
    browser.sample_edit.setText(f"review-{written.tag}")
    browser.plan_edit.setText("")
    browser.search()

    # double-click the row: the window reviews the run
    rect = browser.table.visualItemRect(browser.table.item(0, 0))
    viewport = browser.table.viewport()
    qtbot.mouseClick(viewport, QtCore.Qt.LeftButton, pos=rect.center())  # Qt sees a double
    qtbot.mouseDClick(viewport, QtCore.Qt.LeftButton, pos=rect.center())  # click after a click
    assert browser.message.text() == "1 run", browser.message.text()
    assert isinstance(window.source, RunSource) and window.source.uid == written.uid
    window.refresh()
    qtbot.wait(50)

    # what the run holds, read back independently
    run = server.client()[written.uid]
    frames = camera_frames(run)
    tracks = read_tracks(run)
    assert len(frames) == EVENTS and len(tracks) == EVENTS * 10
    assert tracks.layout.bead_ids.tolist() == sorted(written.ids.tolist())
    source = window.source
    last = source.frame_index_at()
    # at the end of the run: the newest frame taken by the last track row's time (the
    # run's last frame when tracking kept up; under load the tracker's rows lag the camera)
    assert last == int(np.flatnonzero(frames.timestamp <= tracks.timestamp[-1])[-1])
    assert 0 <= last <= EVENTS - 1
    expected = frames.frame(last)
    np.testing.assert_array_equal(window.camera.image.image, expected)
    assert window.camera.frame_index == last

    # the pixels on screen are that frame's, through the histogram's levels
    camera = window.camera
    for item in (*camera.boxes.values(), camera.centres, camera.labels):
        item.setVisible(False)
    with np.errstate(all="ignore"):  # a frame the tracker dropped under load is NaN
        x_px = np.nanmedian(tracks.x_nm, axis=0) / tracks.layout.nm_per_px
        y_px = np.nanmedian(tracks.y_nm, axis=0) / tracks.layout.nm_per_px
    k = int(np.flatnonzero(np.isfinite(x_px) & np.isfinite(y_px))[0])
    cx, cy = int(np.clip(round(x_px[k]), 40, 344)), int(np.clip(round(y_px[k]), 30, 226))
    camera.plot.setRange(xRange=(cx - 12, cx + 12), yRange=(cy - 12, cy + 12), padding=0)
    qtbot.wait(50)  # zoomed on a bead: several screen pixels per image pixel
    scale = camera.scene_point(cx + 10, cy).x() - camera.scene_point(cx, cy).x()
    assert scale >= 20, scale  # >= 2 screen pixels an image pixel
    lo, hi = camera.histogram.getLevels()
    rng = np.random.default_rng(1)
    pts = np.column_stack([rng.integers(cx - 10, cx + 11, 200), rng.integers(cy - 10, cy + 11, 200)])
    want = np.clip((expected[pts[:, 1], pts[:, 0]] - lo) / (hi - lo) * 255, 0, 255)
    got = grey_at(camera, pts)
    assert np.mean(np.abs(got - want) <= 3) > 0.95, np.abs(got - want).max()
    for item in (*camera.boxes.values(), camera.centres, camera.labels):
        item.setVisible(True)
    camera.plot.autoRange()

    # the ROI boxes are the run's, and the traces its tracks
    assert camera.roi_table is not None
    assert camera.roi_table.ids.tolist() == tracks.layout.bead_ids.tolist()
    drawn = window.traces.drawn_ids.tolist()
    assert drawn == tracks.layout.bead_ids.tolist()[:10]
    for k, bead in enumerate(drawn):
        column = tracks.layout.bead_ids.tolist().index(bead)
        for axis in ("x_nm", "y_nm"):
            t, y = window.traces.curves[axis][k].getData()
            trace = getattr(tracks, axis)[:, column]
            np.testing.assert_allclose(y, trace - np.nanmedian(trace), atol=0.01)  # traces are float32 for display (nm)
            assert t.size == len(tracks)
    df = bead_tracks(run, drawn[0])  # the runs API's own reading of one bead agrees
    np.testing.assert_allclose(tracks.x_nm[:, 0], df["x_nm"].to_numpy(), equal_nan=True)
    assert window.kymograph.data.shape == (len(tracks.layout.bead_ids), len(tracks))
    assert "review" in window.status.text()
    shot = tmp_path / "viewer-review.png"
    assert window.grab().save(str(shot))
    if SHOT_DIR:
        window.grab().save(os.path.join(SHOT_DIR, "viewer-review.png"))
    print(f"screenshot: {shot}")

    # scrub back to the second event: its frame, the tracks up to there
    position = 15  # track frame 16 of 40: second event's window
    browser.slider.setValue(position)
    window.refresh()
    k = source.frame_index_at()
    assert k == frames.at_time(tracks.timestamp[position]) and 0 <= k <= last
    np.testing.assert_array_equal(window.camera.image.image, frames.frame(k))
    assert len(window.history) == position + 1
    assert window.history.last_frame_index == tracks.frame_index[position]
    assert browser.position_label.text().startswith(f"{source.time_s():.3f} s (16/40)")

    # back to live: the (disconnected) live source again
    browser.live_button.click()
    assert isinstance(window.source, LiveSource)
    window.refresh()
    assert "disconnected" in window.status.text()


def test_open_by_uid_and_runs_without_frames(qtbot, written, window):
    browser = RunBrowser(written.server.uri, api_key=written.server.api_key)
    window.add_run_browser(browser)
    source = browser.open_uid(written.other)  # the tracker alone: tracks, no frames
    assert source is not None and source.frames is None and source.tracks is not None
    window.refresh()
    assert window.camera.frame_index == -1 and len(window.history) == 10
    assert browser.open_uid("no-such-run") is None
    assert "cannot open run no-such-run" in browser.message.text()
    bad = RunBrowser("http://127.0.0.1:9", api_key="x")
    assert bad.search() == [] and "search failed" in bad.message.text()
    found = find_runs(written.server.client(), sample=f"review-{written.tag}")
    assert len(found) == 1
