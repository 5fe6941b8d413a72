"""The live viewer's pure parts, without processes: decimation, kymograph, reference
subtraction, the trace history, and LiveSource on rings this test process owns."""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest

from magscope_devices._acquisition import CONTROL_DTYPE
from magscope_ipc.rings import FrameRing
from magscope_ipc.shm import SharedRecord, list_segments, segment_name
from magscope_ipc.track_ring import FrameStatus, TrackRing, TrackRows, empty_rows
from magscope_session._cli import build_parser, viewer_command
from magscope_tracking._records import control_dtype, write_rois
from magscope_viewer import (
    InstanceNotFoundError,
    LiveSource,
    TraceHistory,
    decimate_minmax,
    kymograph,
    minus_reference,
)
from magscope_viewer._camera_view import display_step, image_levels
from magscope_viewer._live_source import CONNECTED, DISCONNECTED
from magscope_viewer._status import RateMeter
from magscope_viewer._traces import (
    decimate_minmax_columns,
    follow_range,
    nanmedian_columns,
    points_for_width,
)
from magscope_viewer._window import parse_ids


def test_decimation_keeps_extremes_and_bounds_the_points():
    t = np.arange(10_000) * 0.005
    y = np.sin(t)
    y[4321] = 50.0  # a spike survives
    y[7000] = -50.0
    td, yd = decimate_minmax(t, y, 500)
    assert td.size <= 500
    assert yd.max() == 50.0 and yd.min() == -50.0
    assert np.all(np.diff(td) >= 0)  # time order kept
    short = decimate_minmax(t[:100], y[:100], 500)
    assert short[0].size == 100


def test_decimation_gives_gaps_for_nan_bins():
    y = np.ones(1000)
    y[:500] = np.nan
    _, yd = decimate_minmax(np.arange(1000.0), y, 10)
    assert np.isnan(yd[:4]).all() and np.isfinite(yd[-4:]).all()


def test_kymograph_bins_frames_per_bead():
    z = np.column_stack([np.arange(10.0), 100 + np.arange(10.0)])
    z[0, 1] = np.nan
    image = kymograph(z, 5)
    assert image.shape == (2, 5) and image.dtype == np.float32 and image.flags.c_contiguous
    np.testing.assert_allclose(image[0], [0.5, 2.5, 4.5, 6.5, 8.5])
    np.testing.assert_allclose(image[1], [101, 102.5, 104.5, 106.5, 108.5])
    assert kymograph(z, 50).shape == (2, 10)  # never more columns than frames


def test_minus_reference_subtracts_the_reference_mean():
    values = np.array([[1.0, 10.0, 20.0], [2.0, 12.0, np.nan]])
    out = minus_reference(values, np.array([4, 5, 6]), [5, 6])
    np.testing.assert_allclose(out[:, 0], [1 - 15, 2 - 12])
    assert minus_reference(values, np.array([4, 5, 6]), [9]) is values


def test_parse_ids_and_rate_meter():
    assert parse_ids("0-3, 7,2") == [0, 1, 2, 3, 7]
    with pytest.raises(ValueError):
        parse_ids("a")
    meter = RateMeter(min_interval_s=0.5)
    meter.update(0, now=0.0)
    assert meter.update(100, now=1.0) == pytest.approx(100.0)


def test_magscope_viewer_starts_the_viewer_module():
    args = build_parser().parse_args(["viewer", "--instance", "abc"])
    assert args.command == "viewer"
    command = viewer_command("abc", ["--select", "0-9"])
    assert command[1:] == ["-m", "magscope_viewer", "--instance", "abc", "--select", "0-9"]


@pytest.fixture
def owned_instance():
    """A camera and a tracker of an instance owned by this test process (no processes)."""
    instance = f"viewer-unit-{os.getpid()}"
    made: list = []

    def make():
        frames = FrameRing.create_frames(segment_name(instance, "frames"), 4, 8, 12, np.uint16)
        camctl = SharedRecord.create(segment_name(instance, "camctl"), CONTROL_DTYPE)
        tracks = TrackRing.create_tracks(segment_name(instance, "tracks"), 16, 4, nm_per_px=100.0)
        trkctl = SharedRecord.create(segment_name(instance, "trkctl"), control_dtype(4))
        trkctl["max_beads"] = 4
        trkctl["nm_per_px"] = 100.0
        made.extend([frames, camctl, tracks, trkctl])
        return frames, camctl, tracks, trkctl

    def remove():
        while made:
            item = made.pop()
            item.unlink()
            item.close()

    yield instance, make, remove
    remove()
    assert list_segments(instance) == []


def _write_frame(ring: FrameRing, value: int, rows: int = 6, cols: int = 10) -> int:
    index, slot = ring.begin_write()
    slot[:rows, :cols] = value
    ring.commit_frame(index, 1000.0 + index, rows, cols)
    return index


def test_live_source_reads_copies_and_reattaches(owned_instance):
    instance, make, remove = owned_instance
    frames, camctl, tracks, trkctl = make()
    camctl["roi"] = np.array([3, 4, 10, 6])
    with LiveSource(instance) as source:
        assert source.state == CONNECTED and source.tracker_attached
        assert source.newest_frame() is None  # nothing written yet
        _write_frame(frames, 7)
        frame = source.newest_frame()
        assert frame.index == 0 and frame.image.shape == (6, 10) and (frame.image == 7).all()
        assert (frame.x0_px, frame.y0_px) == (3, 4)
        for k in range(5):  # the camera laps the ring: the copy stays as it was
            _write_frame(frames, 20 + k)
        assert (frame.image == 7).all()
        newest = source.newest_frame()
        assert newest.index == 5 and (newest.image == 24).all()
        # read-only mappings: the viewer cannot write the owner's memory
        ring = source._camera.items["frames"]
        with pytest.raises(ValueError, match="read-only"):
            ring._data[0, 0, 0] = 1
        # ROI table and tracks
        table = np.zeros(2, dtype=[("bead_id", "<i4"), ("x0", "<i4"), ("y0", "<i4")])
        table["bead_id"], table["x0"], table["y0"] = [3, 8], [10, 50], [20, 60]
        write_rois(trkctl, table, 64, 1)
        rois = source.rois()
        assert list(rois.ids) == [3, 8] and list(rois.x0) == [10, 50] and rois.size == 64
        rows = empty_rows(2)
        rows["bead_id"] = [3, 8]
        rows["x_nm"], rows["y_nm"], rows["z_nm"] = [1000, 5000], [2000, 6000], [1, 2]
        for k in range(3):
            tracks.write_frame(k, 1000.0 + k, rows, FrameStatus.TRACKED)
        history = TraceHistory(capacity=100)
        history.set_ids(rois.ids)
        history.append(source.tracks_since(0))
        t, values = history.window(10.0)
        assert t.size == 3 and history.last_frame_index == 2
        np.testing.assert_array_equal(values["x_nm"][-1], [1000, 5000])
        assert source.health().frames_tracked == 0  # mirrored counters, as written
        # the owner goes away: disconnected; a new owner: attached again
        remove()
        assert source.poll(force=True) == DISCONNECTED
        assert source.newest_frame() is None and source.rois() is None
        frames, *_ = make()
        _write_frame(frames, 3)
        assert source.poll(force=True) == CONNECTED and source.reconnects == 1
        assert (source.newest_frame().image == 3).all()


def test_wrong_instance_names_the_instance_and_lists_those_running(owned_instance):
    instance, make, _ = owned_instance
    make()
    with pytest.raises(InstanceNotFoundError) as err:
        LiveSource("no-such-instance")
    assert "'no-such-instance'" in str(err.value) and repr(instance) in str(err.value)
    source = LiveSource("no-such-instance", require_running=False)
    assert source.state == DISCONNECTED
    source.close()


def test_column_decimation_matches_one_trace_at_a_time():
    rng = np.random.default_rng(3)
    t = np.arange(5000) * 0.005
    y = rng.normal(size=(5000, 4))
    y[100:900, 1] = np.nan  # a lost bead: gaps
    y[:, 3] = np.nan  # no data at all
    td, yd = decimate_minmax_columns(t, y, 300)
    assert td.shape == yd.shape == (300, 4)
    for k in range(4):
        t1, y1 = decimate_minmax(t, y[:, k], 300)
        np.testing.assert_array_equal(td[:, k], t1)
        np.testing.assert_array_equal(yd[:, k], y1)
    assert np.isnan(yd[:, 3]).all() and np.isnan(yd[:, 1]).any()


def test_points_follow_the_plot_width():
    assert points_for_width(700) == 700  # a (min, max) pair per 2 pixel columns
    assert points_for_width(10) == 100 and points_for_width(5000) == 2000
    assert points_for_width(float("nan")) == 100
    assert points_for_width(333.7) % 2 == 0


def test_axis_range_changes_only_when_the_data_leave_it():
    first = follow_range(None, 0.0, 10.0)
    assert first == (-1.0, 11.0)
    assert follow_range(first, 1.0, 9.0) is None  # inside and filling it: kept
    assert follow_range(first, 0.0, 12.0) == pytest.approx((-1.2, 13.2))  # outside: follows
    assert follow_range(first, 4.0, 5.0) == pytest.approx((3.9, 5.1))  # a third: shrinks
    assert follow_range(first, np.nan, 1.0) is None
    lo, hi = follow_range(None, 5.0, 5.0)
    assert lo < 5.0 < hi


def test_nanmedian_columns_matches_numpy():
    rng = np.random.default_rng(4)
    v = rng.normal(size=(101, 5))
    v[::3, 0] = np.nan
    v[:, 2] = np.nan
    v[:50, 4] = np.nan
    with np.errstate(all="ignore"), pytest.warns(RuntimeWarning):
        expected = np.nanmedian(v, axis=0)
    np.testing.assert_allclose(nanmedian_columns(v), expected, equal_nan=True)
    assert nanmedian_columns(np.zeros((0, 3))).shape == (3,)


def test_trace_history_keeps_the_newest_frames_across_buffer_moves():
    history = TraceHistory(capacity=50)
    history.set_ids(np.array([7, 2]))
    for start in range(0, 400, 13):  # 13 frames at a time: the buffer moves often
        k = np.arange(start, start + 13)
        rows = _rows(k, {2: k * 10.0, 7: -k * 1.0})
        history.append(rows)
        assert history.next_index == start + 13
        t, values = history.window(1e9)
        n = min(start + 13, 50)
        assert len(history) == t.size == n
        np.testing.assert_array_equal(t, 1000.0 + np.arange(start + 13 - n, start + 13))
        np.testing.assert_array_equal(values["x_nm"][:, 0], 10.0 * (t - 1000.0))  # bead 2
        np.testing.assert_array_equal(values["x_nm"][:, 1], -(t - 1000.0))  # bead 7
        assert history.last_frame_index == start + 12
    t, values = history.window(5.0)  # the last 5 s: 6 frames (both ends kept)
    assert t.size == 6 and not values["y_nm"].flags.writeable
    history.set_ids(np.array([2, 7]))  # the same beads: kept
    assert len(history) == 50
    history.set_ids(np.array([2]))
    assert len(history) == 0 and history.window(5.0)[1]["x_nm"].shape == (0, 1)


def _rows(frames: np.ndarray, x_by_bead: dict[int, np.ndarray]) -> TrackRows:
    beads = sorted(x_by_bead)
    rows = np.stack([empty_rows(len(beads)) for _ in frames])
    for j, bead in enumerate(beads):
        rows[:, j]["bead_id"] = bead
        rows[:, j]["x_nm"] = x_by_bead[bead]
        rows[:, j]["y_nm"] = 0.0
    return TrackRows(
        frame_index=frames.astype(np.int64), timestamp=1000.0 + frames,
        status=np.full(frames.size, FrameStatus.TRACKED, np.int32),
        n_beads=np.full(frames.size, len(beads), np.int32), rows=rows, lost=0,
        next_index=int(frames[-1]) + 1,
    )


def test_track_rows_columns_put_each_bead_in_its_column():
    frames = np.arange(3)
    rows = _rows(frames, {4: np.array([1.0, 2, 3]), 9: np.array([4.0, 5, 6])})
    rows.rows[1, 0]["bead_id"] = 5  # a bead not asked for
    status = rows.status.copy()
    status[2] = FrameStatus.DROPPED
    rows = TrackRows(rows.frame_index, rows.timestamp, status, rows.n_beads, rows.rows, 0, 3)
    cols = rows.columns(np.array([4, 9, 12]))
    np.testing.assert_array_equal(
        cols["x_nm"], [[1, 4, np.nan], [np.nan, 5, np.nan], [np.nan] * 3]
    )


def test_camera_display_step_and_levels():
    assert display_step((2.7, 2.7)) == 2 and display_step((0.5, 0.5)) == 1
    assert display_step(None) == 1 and display_step((np.inf, 1.0)) == 1
    assert display_step((100.0, 100.0)) == 8
    image = np.full((64, 64), 100, np.uint8)
    image[::8, ::8] = 250  # sampled at step 4: 1/4 of the sample is bright
    lo, hi = image_levels(image)
    assert lo == 100 and hi == 250
    assert image_levels(np.full((8, 8), 7, np.uint16)) == (7.0, 8.0)


def test_a_long_status_message_is_cut_and_never_widens_the_window(qtbot):
    """A QLabel asks for its whole text's width: a long health line or reply made the
    window wider and re-laid the camera view out under the mouse (a drag landed 11 px off
    in CI). The status labels take the room they get and keep the whole text."""
    from PyQt5 import QtWidgets

    from magscope_viewer._status_label import StatusLabel

    win = QtWidgets.QMainWindow()
    qtbot.addWidget(win)
    status, reply = StatusLabel(), StatusLabel("ready", min_chars=30)
    win.statusBar().addWidget(status, 1)
    win.statusBar().addPermanentWidget(reply)
    win.setCentralWidget(QtWidgets.QWidget())
    win.resize(800, 300)
    win.show()
    qtbot.waitExposed(win)
    long = "camera 200.0 frames/s, late 0, tracked 123456, dropped 0, p99 4.1 ms " * 6
    status.setText(long)
    reply.setText("moved bead 3 to (512.3, 500.1) px")
    for _ in range(5):
        QtWidgets.QApplication.processEvents()
    assert win.width() == 800 and win.minimumSizeHint().width() < 800
    assert status.text() == long and status.toolTip() == long
    shown = QtWidgets.QLabel.text(status)
    assert shown.endswith("…") and len(shown) < len(long)
    assert QtWidgets.QLabel.text(reply) == reply.text() == "moved bead 3 to (512.3, 500.1) px"


def test_magscope_health_prints_the_figures_of_a_running_instance(owned_instance):
    import json
    import subprocess
    import sys

    from magscope_session._cli import health_command

    instance, make, _ = owned_instance
    frames, camctl, tracks, trkctl = make()
    camctl["frame_period_s"] = 0.01
    camctl["frames_acquired"], camctl["frames_late"] = 1000, 3
    trkctl["frames_tracked"], trkctl["frames_dropped"] = 990, 7
    trkctl["latency_p50_s"], trkctl["latency_p99_s"] = 0.002, 0.0045
    done = subprocess.run(health_command(instance, ["--interval", "0.5"]),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    text = done.stdout
    assert f"instance {instance!r}: connected" in text
    assert "(set 100.0), 1,000 frames acquired, 3 late" in text
    assert "990 tracked, 7 dropped" in text and "latency p50 2.0 ms / p99 4.5 ms" in text
    assert "frame ring 4 frames" in text and "track ring 16 frames" in text
    # rates come from the change between two readings: a counter moving at a known rate
    stop = threading.Event()
    ticks: list[tuple[float, int]] = []

    def acquire() -> None:  # about 200 frames/s, the times and counts recorded
        while not stop.is_set():
            camctl["frames_acquired"] = int(camctl["frames_acquired"]) + 1
            ticks.append((time.monotonic(), int(camctl["frames_acquired"])))
            time.sleep(0.005)

    thread = threading.Thread(target=acquire, daemon=True)
    thread.start()
    try:
        out = subprocess.run(health_command(instance, ["--interval", "1.0", "--json"]),
                             capture_output=True, text=True, timeout=60).stdout
    finally:
        stop.set()
        thread.join()
    figures = json.loads(out)
    (t0, n0), (t1, n1) = ticks[0], ticks[-1]
    true_rate = (n1 - n0) / (t1 - t0)
    assert figures["camera"]["frame_rate_hz"] == pytest.approx(true_rate, rel=0.25)
    assert figures["tracking"]["frames_dropped"] == 7
    missing = subprocess.run([sys.executable, "-m", "magscope_viewer.health_report",
                              "--instance", "no-such-instance"], capture_output=True,
                             text=True, timeout=60)
    assert missing.returncode == 2 and "no-such-instance" in missing.stderr
