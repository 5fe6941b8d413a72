"""Video beside the tracks: ROI crops, every Nth frame and a trigger window, written by
the video writer process into HDF5 assets of the run, read back from a real Tiled server
aligned with the track rows by frame index; a full disk mid-record.

Real camera process, tracking workers, video writer process and Tiled server.
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid

import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp
import h5py
import hdf5plugin  # noqa: F401 - the video codec (bitshuffle-lz4) for h5py
import numpy as np
import pytest
from bluesky import RunEngine
from bluesky.utils import FailedStatus
from ophyd_async.core import init_devices

from magscope_devices import make_simulated_microscope
from magscope_devices.sim.world import SimParams
from magscope_ipc.shm import list_segments
from magscope_plans import TrackRecorder, save_frames, with_safe_finish, with_video_mode
from magscope_session import runs
from magscope_session._document_writer import SpoolingTiledWriter
from magscope_tracking import locate_xy
from magscope_tracking.track_file import read_track_file
from tracking_sim import true_rois, truth_now

pytestmark = pytest.mark.system

NM_PER_PX = 100.0
ROI = 64
BEADS = [0, 1, 2, 3, 4, 5]


@pytest.fixture(scope="module")
def RE():
    return RunEngine(call_returns_result=True)


@pytest.fixture(scope="module")
def microscope(RE, tiled_server):
    with init_devices():
        mic = make_simulated_microscope(
            SimParams(seed=5), data_dir=tiled_server.detector_data_dir, instance="vidtest",
            tracking_workers=1, frame_rate_hz=100.0, name="mic",
        )
    RE(bps.mv(mic.magnet_z, 2.0))
    RE(bps.mv(mic.tracker.rois, true_rois(truth_now(mic), BEADS, roi=ROI, nm_per_px=NM_PER_PX)))
    yield mic
    mic.close()
    assert list_segments("vidtest") == []


def run_of(RE, mic, tiled_server, body):
    """Run ``body`` (a plan) in a run staged with the microscope, written to Tiled; the
    run's Tiled client."""
    writer = SpoolingTiledWriter(
        tiled_server.uri, tiled_server.api_key, tiled_server.spool_dir, batch_size=50
    )
    token = RE.subscribe(writer)

    @bpp.stage_decorator([mic])
    @bpp.run_decorator(md={"purpose": "video test"})
    def plan():
        yield from body()

    try:
        uid = RE(plan()).run_start_uids[0]
    finally:
        RE.unsubscribe(token)
        writer.close()
    return tiled_server.client()[uid]


def test_roi_crops_of_every_frame_are_the_pixels_the_tracker_tracked(RE, microscope, tiled_server):
    mic = microscope
    recorder = TrackRecorder(mic.tracker, chunk_frames=50, video=mic.video)

    def body():
        yield from with_video_mode(recorder.record(150), mic, "roi_crops")
        yield from recorder.record(100)  # a second record: the same stream and file

    run = run_of(RE, mic, tiled_server, body)
    assert RE(bps.rd(mic.video.mode)).plan_result == "tracks"  # put back
    tracks = runs.read_tracks(run)
    video = runs.read_video(run)
    assert video.kind == "crops" and video.stream == "video"
    assert video.bead_ids.tolist() == BEADS and video.shape == (len(BEADS), ROI, ROI)
    assert len(tracks) == 250 and len(video) == 250
    # one image row per track row, the same camera frames
    rows = video.rows_for(tracks.frame_index)
    assert np.array_equal(rows, np.arange(250))
    assert np.all(np.isfinite(video.timestamp))
    assert np.allclose(video.timestamp, tracks.timestamp)
    # the crops are the pixels the tracker tracked in that frame: the same kernel on
    # them gives the same centres (a crop of the frame before or after would not)
    checked = 0
    tracked = np.flatnonzero(np.isfinite(tracks.x_nm).all(axis=1))  # not dropped
    assert tracked.size > 200
    for i in tracked[np.linspace(0, tracked.size - 1, 6).astype(int)]:
        crops = video.image(i)
        origin = video.origin(i)
        xy = locate_xy(crops)
        for b, bead in enumerate(BEADS):
            x_px = tracks.x_nm[i, b] / NM_PER_PX - origin[b, 0]
            y_px = tracks.y_nm[i, b] / NM_PER_PX - origin[b, 1]
            assert abs(xy.x_px[b] - x_px) < 1e-3 and abs(xy.y_px[b] - y_px) < 1e-3, (i, bead)
            checked += 1
        assert np.array_equal(video.crop(i, BEADS[2]), crops[2])
    assert checked == 6 * len(BEADS)
    ratio = RE(bps.rd(mic.video.compression_ratio)).plan_result
    assert ratio > 1.0
    # the instrument's health (its log line, the runs' health stream) says the same
    health = mic.health.figures()
    assert health.video_writer_alive == 1
    assert (health.video_rows_written, health.video_frames_lost) == (250, 0)
    stored = RE(bps.rd(mic.video.stored_mb)).plan_result
    assert health.video_stored_mb == pytest.approx(stored, rel=1e-6) and stored > 0
    assert health.video_write_mb_s > 0


def test_every_nth_frame_is_written_with_its_frame_index(RE, microscope, tiled_server):
    mic = microscope
    recorder = TrackRecorder(mic.tracker, chunk_frames=100, video=mic.video)

    def body():
        yield from with_video_mode(recorder.record(200), mic, "frames_every_n", every_n=4)

    run = run_of(RE, mic, tiled_server, body)
    assert RE(bps.rd(mic.video.every_n)).plan_result == 10  # put back
    tracks = runs.read_tracks(run)
    video = runs.read_video(run)
    assert video.kind == "frames" and len(video) == 50 and len(tracks) == 200
    assert np.all(np.diff(video.frame_index) == 4)
    assert video.frame_index[0] == tracks.frame_index[0]
    rows = video.rows_for(tracks.frame_index)
    assert np.array_equal(np.flatnonzero(rows >= 0), np.arange(0, 200, 4))
    tracked = np.isfinite(tracks.x_nm).all(axis=1)
    row = int(next(r for r in rows[rows >= 0] if tracked[np.flatnonzero(rows == r)[0]]))
    frame = video.image(row)
    height, width = (RE(bps.rd(mic.camera.roi_height)).plan_result,
                     RE(bps.rd(mic.camera.roi_width)).plan_result)
    assert frame.shape == (height, width)
    # the whole frame: cut at the tracker's ROIs, the kernel finds the tracked centres
    t = int(np.flatnonzero(rows == row)[0])
    x0 = RE(bps.rd(mic.tracker.roi_x0_px)).plan_result
    y0 = RE(bps.rd(mic.tracker.roi_y0_px)).plan_result
    crops = np.stack([frame[y: y + ROI, x: x + ROI] for x, y in zip(x0, y0, strict=True)])
    xy = locate_xy(crops)
    assert np.allclose(xy.x_px + x0, tracks.x_nm[t] / NM_PER_PX, atol=1e-3)
    assert np.allclose(xy.y_px + y0, tracks.y_nm[t] / NM_PER_PX, atol=1e-3)


def test_a_trigger_window_reaches_back_before_the_trigger(RE, microscope, tiled_server):
    mic = microscope
    RE(bps.mv(mic.video.pre_trigger_s, 1.0, mic.video.mode, "trigger_window"))
    try:
        time.sleep(1.3)  # the writer keeps the last second from now on
        rate = RE(bps.rd(mic.camera.frame_rate_hz)).plan_result
        triggers: list[int] = []

        def body():
            triggers.append((yield from bps.rd(mic.video.next_camera_frame)))
            yield from save_frames(mic.video, 0.5, 0.3)
            yield from bps.sleep(0.2)
            triggers.append((yield from bps.rd(mic.video.next_camera_frame)))
            yield from save_frames(mic.video, 0.2, 0.1)  # the same stream, a second window

        run = run_of(RE, mic, tiled_server, body)
    finally:
        RE(bps.mv(mic.video.mode, "tracks"))
    video = runs.read_video(run, stream="triggered_frames")
    first, second = round(0.8 * rate), round(0.3 * rate)
    assert video.kind == "frames" and len(video) == first + second
    index = video.frame_index
    assert np.all(np.diff(index[:first]) == 1) and np.all(np.diff(index[first:]) == 1)
    # each window starts seconds_before before its trigger (frames kept by the writer,
    # long gone from the 64-frame ring)
    assert abs(int(index[0]) - (triggers[0] - round(0.5 * rate))) <= 2
    assert abs(int(index[first]) - (triggers[1] - round(0.2 * rate))) <= 2
    assert np.all(np.isfinite(video.timestamp))
    steps = np.diff(video.timestamp[:first])  # a late camera frame skips a period
    assert np.all(steps > 0) and np.median(steps) == pytest.approx(1 / rate, rel=0.01)
    assert RE(bps.rd(mic.video.frames_dropped)).plan_result == 0


def test_save_frames_is_refused_outside_the_trigger_window_mode(RE, microscope):
    mic = microscope

    @bpp.run_decorator()
    def plan():
        yield from save_frames(mic.video, 0.5, 0.5)

    with pytest.raises(Exception, match="mode is 'tracks'; set it to 'trigger_window'"):
        RE(plan())
    with pytest.raises(Exception, match=r"seconds_before=-1 .*expected"):
        RE(save_frames(mic.video, -1, 0.5))


@pytest.fixture
def small_disk(tmp_path):
    """A 24 MB tmpfs (a disk that fills mid-record, about 0.4 s of whole frames in: the
    tracks have rows by then), unmounted after the test."""
    mount = tmp_path / f"small-{uuid.uuid4().hex[:6]}"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m,mode=0700", "tmpfs",
                           str(mount)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"mounting a small tmpfs needs root: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_ends_the_run_clearly_and_keeps_what_was_written(small_disk):
    RE = RunEngine(call_returns_result=True)
    docs: list[tuple[str, dict]] = []
    RE.subscribe(lambda name, doc: docs.append((name, doc)))
    with init_devices():
        mic = make_simulated_microscope(
            SimParams(seed=5), data_dir=small_disk, instance="vidfull", tracking_workers=1,
            frame_rate_hz=100.0, name="mic",
        )
    try:
        RE(bps.mv(mic.tracker.rois, true_rois(truth_now(mic), BEADS, roi=ROI,
                                              nm_per_px=NM_PER_PX)))
        # the writer stops with 5 MB left (the default keeps 100 MB): room for the tracks
        # and for HDF5, which takes file space in blocks of 1-2 MB
        RE(bps.mv(mic.video.min_free_mb, 5.0))
        recorder = TrackRecorder(mic.tracker, chunk_frames=5, video=mic.video)

        @bpp.stage_decorator([mic])
        @bpp.run_decorator()
        def inner():
            yield from bps.mv(mic.magnet_z, 3.0)
            yield from recorder.record(2000)  # 20 s of whole frames: far more than 24 MB

        plan = with_safe_finish(
            with_video_mode(inner(), mic, "frames_every_n", every_n=1), mic,
            safe_magnet_height_mm=8.0,
        )
        t0 = time.monotonic()
        with pytest.raises(FailedStatus) as info:
            RE(plan)
        took = time.monotonic() - t0
        chain, exc = [], info.value
        while exc is not None:
            chain.append(str(exc))
            exc = exc.__cause__ or exc.__context__
        message = " | ".join(chain)
        print(f"failed after {took:.1f} s: {message}")
        assert "stopped: the disk is full" in message
        assert "MB free of 25 MB" in message and str(small_disk) in message
        assert took < 15
        # the magnets went safe
        assert RE(bps.rd(mic.magnet_z)).plan_result == pytest.approx(8.0, abs=1e-3)
        stop = [d for n, d in docs if n == "stop"][-1]
        assert stop["exit_status"] == "fail"
    finally:
        mic.close()
    assert list_segments("vidfull") == []
    # what was written stays readable: the video rows and the tracks announced
    resources = {d["uid"]: d for n, d in docs if n == "stream_resource"}
    announced: dict[str, int] = {}
    for name, doc in docs:
        if name == "stream_datum":
            key = resources[doc["stream_resource"]]["data_key"]
            announced[key] = max(announced.get(key, 0), doc["indices"]["stop"])
    video_path = next(d["uri"] for d in resources.values() if d["data_key"] == "mic-video")
    video_path = video_path.split("localhost", 1)[-1]
    with h5py.File(video_path, "r", swmr=True) as f:
        rows = len(f["/entry/frame_index"])
        images = f["/entry/data/data"][:rows]
        index = f["/entry/frame_index"][:rows]
    assert rows > 0 and announced.get("mic-video", 0) <= rows
    assert np.all(np.diff(index) == 1) and images.shape[0] == rows and images.any()
    track_path = next(d["uri"] for d in resources.values()
                      if d["data_key"] == "mic-tracker-x_nm").split("localhost", 1)[-1]
    tracks = read_track_file(track_path)
    assert announced["mic-tracker-x_nm"] > 0
    assert len(tracks["frame_index"]) == 5 * announced["mic-tracker-x_nm"]  # 5 per event
    assert announced["mic-video"] == rows
    print(f"kept: {rows} video rows ({announced.get('mic-video', 0)} announced), "
          f"{len(tracks['frame_index'])} track rows; free: {os.statvfs(small_disk).f_bavail}")
