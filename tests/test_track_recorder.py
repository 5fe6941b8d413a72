"""TrackRecorder: the rows of requested frames go from the track ring to the track file
(driven here by hand, as the tracking service's collector drives it)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from magscope_ipc.shm import Segment, list_segments, segment_name
from magscope_ipc.track_ring import FrameStatus, TrackRing, empty_rows
from magscope_tracking import TrackRecorder, TrackRecordingError
from magscope_tracking.track_file import read_track_file


@pytest.fixture
def ring(request):
    instance = f"test{os.getpid()}{abs(hash(request.node.name)) % 10**6}"
    ring = TrackRing.create_tracks(segment_name(instance, "tracks"), 64, 4, first_index=10)
    yield ring
    ring.unlink()
    ring.close()
    for seg in list_segments(instance):
        Segment.attach(seg.name).unlink()


def write(ring: TrackRing, n: int, *, dropped: tuple[int, ...] = ()) -> None:
    """Frames of beads 7 and 3 (in that order): x = frame index, y = -x, z = 10 x."""
    for _ in range(n):
        f = ring.count
        rows = empty_rows(2)
        rows["bead_id"] = [7, 3]
        status = FrameStatus.DROPPED if f in dropped else FrameStatus.TRACKED
        if status == FrameStatus.TRACKED:
            rows["x_nm"] = [f, f + 0.5]
            rows["y_nm"] = [-f, -f - 0.5]
            rows["z_nm"] = [10 * f, 10 * f + 5]
            rows["score"] = 0.9
        ring.write_frame(f, 1000.0 + f, rows, status)


def test_records_only_the_requested_frames_with_offsets(ring, tmp_path):
    write(ring, 3)  # before the request: not recorded
    rec = TrackRecorder(ring, tmp_path / "t.h5", [7, 3], z_offsets=np.array([1.0, 2.0]))
    rec.capture(4)
    assert rec.busy
    write(ring, 2, dropped=(14,))
    rec.pump()
    assert rec.rows_written == 2 and rec.busy
    write(ring, 5)
    rec.pump()
    assert rec.rows_written == 4 and not rec.busy
    rec.announce(4)
    rec.close()
    data = read_track_file(tmp_path / "t.h5")
    assert data["bead_id"].tolist() == [3, 7]  # sorted columns
    assert data["frame_index"].tolist() == [13, 14, 15, 16]
    assert data["status"].tolist() == [1, 2, 1, 1]
    np.testing.assert_array_equal(data["x_nm"][:, 1], [13, np.nan, 15, 16])
    np.testing.assert_array_equal(data["z_nm"][:, 0], [135 + 1, np.nan, 155 + 1, 165 + 1])
    index, stamps, xyz = rec.window()
    assert index.tolist() == [13, 14, 15, 16] and stamps[0] == 1013.0
    np.testing.assert_array_equal(xyz[:, 2, 1], data["z_nm"][:, 1])


def test_a_request_starts_at_the_cameras_next_frame_while_the_trackers_are_behind(
    ring, tmp_path
):
    """The camera has written frames 10-17, the trackers published 10-12: the frames
    13-17 were exposed before the request, so the record starts at frame 18."""
    write(ring, 3)
    camera = {"count": 18}
    rec = TrackRecorder(ring, tmp_path / "t.h5", [7, 3], camera_count=lambda: camera["count"])
    rec.capture(3)
    assert rec.first_frame == 18
    write(ring, 5)  # the trackers catch up on 13-17: not recorded
    rec.pump()
    assert rec.rows_written == 0 and rec.busy and rec.backlog == 0
    write(ring, 4)  # 18-21
    rec.pump()
    assert rec.rows_written == 3 and not rec.busy
    rec.announce(3)
    rec.close()
    assert read_track_file(tmp_path / "t.h5")["frame_index"].tolist() == [18, 19, 20]


def test_unannounced_rows_are_dropped_and_announced_ones_kept(ring, tmp_path):
    rec = TrackRecorder(ring, tmp_path / "t.h5", [3, 7])
    rec.capture(3)
    write(ring, 3)
    rec.pump()
    rec.flush_through(3)
    rec.announce(3)
    rec.capture(5)  # a window a pause interrupts after 2 frames
    write(ring, 2)
    rec.pump()
    assert rec.rows_written == 5
    rec.drop_unannounced()
    assert rec.rows_written == 3 and not rec.busy
    write(ring, 4)
    rec.pump()  # the request ended: nothing more
    assert rec.rows_written == 3
    rec.close()
    assert read_track_file(tmp_path / "t.h5")["frame_index"].tolist() == [10, 11, 12]
    with pytest.raises(TrackRecordingError, match="closed"):
        rec.capture(1)


def test_a_lapped_recorder_reports_the_lost_frames(ring, tmp_path):
    rec = TrackRecorder(ring, tmp_path / "t.h5", [3, 7])
    rec.capture(200)
    write(ring, 100)  # the ring holds 64
    rec.pump()
    with pytest.raises(TrackRecordingError, match="overwritten"):
        rec.busy  # noqa: B018
    rec.close()


@pytest.mark.system
def test_flushed_rows_survive_a_killed_writer(tmp_path):
    """The rows flushed before announcing are on disk when the process dies (SWMR)."""
    script = f"""
import os, numpy as np
from magscope_ipc.shm import segment_name
from magscope_ipc.track_ring import FrameStatus, TrackRing, empty_rows
from magscope_tracking import TrackRecorder
ring = TrackRing.create_tracks(segment_name("rec{os.getpid()}", "tracks"), 64, 2)
try:
    rec = TrackRecorder(ring, {str(tmp_path / "t.h5")!r}, [1], flush_every=1000)
    rec.capture(5)
    for f in range(5):
        rows = empty_rows(1); rows["bead_id"] = 1; rows["x_nm"] = f
        ring.write_frame(f, float(f), rows, FrameStatus.TRACKED)
    rec.pump()
    rec.flush_through(5)
finally:
    ring.unlink()
os._exit(9)  # no close, no atexit: like kill -9 after the StreamDatum
"""
    result = subprocess.run([sys.executable, "-c", script], env=dict(os.environ), timeout=60)
    assert result.returncode == 9
    data = read_track_file(tmp_path / "t.h5")
    assert data["x_nm"][:, 0].tolist() == [0, 1, 2, 3, 4]
