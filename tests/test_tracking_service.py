"""The tracking service: real worker processes, real shared memory, rendered bead images.

A writer thread fills a frame ring (the camera's kind) with frames rendered by the
simulator's renderer at known sub-pixel bead positions that change from frame to frame,
so every track row can be checked against the truth of *its* frame.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from magscope_devices.sim.render import Renderer
from magscope_devices.sim.world import FrameTruth, SimParams
from magscope_ipc.rings import FrameRing
from magscope_ipc.shm import list_segments, segment_name
from magscope_ipc.track_ring import TRACK_DTYPE, FrameStatus, TrackRing
from magscope_tracking import ROI_DTYPE, TrackingService
from magscope_tracking.zlut import ZLUTMismatchError, build_zlut

pytestmark = pytest.mark.system

NM_PER_PX = 100.0
ROI = 48  # px
FPS = 100.0
# bead centres (px, sensor coordinates) before the per-frame jitter
CENTRES = np.array([[60.3, 58.7], [161.8, 61.2], [262.5, 57.9], [59.6, 171.4], [160.2, 170.6],
                    [259.1, 168.3]])
N_PATTERNS = 16  # distinct frames, cycled: frame i shows pattern i % N_PATTERNS
JITTER_PX = 1.5


def _params() -> SimParams:
    return SimParams(width_px=320, height_px=240, nm_per_px=NM_PER_PX, seed=11)


def _truth(x_px: np.ndarray, y_px: np.ndarray, dz_nm: np.ndarray, params: SimParams) -> FrameTruth:
    n = x_px.size
    x, y = x_px * params.nm_per_px, y_px * params.nm_per_px
    z = params.bead_radius_nm + 3000.0 + dz_nm
    return FrameTruth(
        t_s=0.0, exposure_s=params.exposure_s, bead_id=np.arange(n),
        tethered=np.zeros(n, bool), radius_nm=np.full(n, params.bead_radius_nm),
        x_nm=x, y_nm=y, z_nm=z, x0_nm=x, y0_nm=y, z0_nm=z, force_pn=np.full(n, np.nan),
        extension_nm=np.zeros(n), drift_x_nm=0.0, drift_y_nm=0.0, drift_z_nm=0.0,
        magnet_z_mm=10.0, magnet_turns=0.0, focus_nm=params.bead_radius_nm + 3000.0,
    )


@dataclass
class Scene:
    """Pre-rendered frames and their truth: pattern p has beads at xy[p] (px), dz[p] (nm)."""

    frames: np.ndarray  # (N_PATTERNS, h, w) uint8
    xy: np.ndarray  # (N_PATTERNS, n_beads, 2) px
    dz: np.ndarray  # (N_PATTERNS, n_beads) nm

    def truth_nm(self, frame_index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """x, y (nm) of every bead for each frame index: (n_frames, n_beads) each."""
        p = np.asarray(frame_index) % N_PATTERNS
        return self.xy[p, :, 0] * NM_PER_PX, self.xy[p, :, 1] * NM_PER_PX


def _render_scene(dz_of_pattern: np.ndarray | None = None) -> Scene:
    params = _params()
    renderer = Renderer(params, seed=5)
    rng = np.random.default_rng(3)
    n = len(CENTRES)
    xy = CENTRES[None] + rng.uniform(-JITTER_PX, JITTER_PX, (N_PATTERNS, n, 2))
    dz = np.full((N_PATTERNS, n), -1500.0) if dz_of_pattern is None else dz_of_pattern
    frames = np.stack([
        renderer.render(_truth(xy[p, :, 0], xy[p, :, 1], dz[p], params))
        for p in range(N_PATTERNS)
    ])
    return Scene(frames=frames, xy=xy, dz=dz)


class FrameWriter:
    """The camera's stand-in: writes scene frames into a frame ring at a fixed rate.

    ``inject(frame, n)`` makes the next ``n`` frames a given image instead; the frame
    indices it went into are returned.
    """

    def __init__(self, ring: FrameRing, frames: np.ndarray, fps: float = FPS) -> None:
        self.ring, self.frames, self.period = ring, frames, 1.0 / fps
        self._stop = threading.Event()
        self._special: list[tuple[np.ndarray, int, list[int]]] = []
        self._lock = threading.Lock()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> FrameWriter:
        self.thread.start()
        return self

    def inject(self, image: np.ndarray, n: int, timeout: float = 10.0) -> list[int]:
        done: list[int] = []
        with self._lock:
            self._special.append((image, n, done))
        deadline = time.monotonic() + timeout
        while len(done) < n:
            assert time.monotonic() < deadline
            time.sleep(0.005)
        return done

    def _run(self) -> None:
        next_t = time.time()
        while not self._stop.is_set():
            now = time.time()
            if now < next_t:
                time.sleep(min(next_t - now, 0.002))
                continue
            next_t = max(next_t + self.period, now - self.period)
            index, slot = self.ring.begin_write()
            image = self.frames[index % N_PATTERNS]
            with self._lock:
                if self._special:
                    image, n, done = self._special[0]
                    done.append(index)
                    if len(done) == n:
                        self._special.pop(0)
            h, w = image.shape
            slot[:h, :w] = image
            self.ring.commit_frame(index, now, h, w)

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(5)


def _sweep_zlut(path: Path, roi: int, dz_levels: np.ndarray, nm_per_px: float = NM_PER_PX,
                beads=None) -> Path:
    """A Z-LUT file from a rendered focus sweep of the scene's beads (ROIs of ``roi`` px
    centred on them), with z = bead height relative to the focus (nm)."""
    params = _params()
    renderer = Renderer(params, seed=9)
    beads = list(range(len(CENTRES))) if beads is None else beads
    x0 = np.round(CENTRES[beads, 0] - (roi - 1) / 2).astype(int)
    y0 = np.round(CENTRES[beads, 1] - (roi - 1) / 2).astype(int)
    images = np.empty((len(beads), dz_levels.size, roi, roi), np.uint8)
    for j, dz in enumerate(dz_levels):
        frame = renderer.render(
            _truth(CENTRES[:, 0], CENTRES[:, 1], np.full(len(CENTRES), dz), params)
        )
        for i in range(len(beads)):
            images[i, j] = frame[y0[i] : y0[i] + roi, x0[i] : x0[i] + roi]
    zlut = build_zlut(images, dz_levels, nm_per_px=nm_per_px, bead_ids=beads)
    return zlut.save(path)


def _rois_on(centres: np.ndarray, ids=None) -> np.ndarray:
    table = np.empty(len(centres), ROI_DTYPE)
    table["bead_id"] = np.arange(len(centres)) if ids is None else ids
    # centre of a ROI of 48 px is at 23.5 px from its top-left pixel
    table["x0"] = np.round(centres[:, 0] - (ROI - 1) / 2)
    table["y0"] = np.round(centres[:, 1] - (ROI - 1) / 2)
    return table


def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(0.01)


def _rows_until(service: TrackingService, start: int, n_frames: int, timeout: float = 20.0):
    """Frames [start, start + n_frames) read from the track ring."""
    service.wait_for_frame(start + n_frames - 1, timeout)
    got = service.track_ring.rows_since(start, max_frames=n_frames)
    assert got.lost == 0
    return got


def _tracked_since(service: TrackingService, start: int, n_tracked: int, timeout: float = 20.0):
    """Rows of the tracked frames from ``start`` on, once there are ``n_tracked`` of them
    (frames may be dropped on a busy machine; these tests are not about that)."""
    deadline = time.monotonic() + timeout
    while True:
        got = service.track_ring.rows_since(start)
        assert got.lost == 0
        if got.tracked.sum() >= n_tracked:
            return got.rows[got.tracked]
        assert time.monotonic() < deadline, (
            f"only {got.tracked.sum()} of {len(got)} frames tracked: {service.health()}"
        )
        time.sleep(0.02)


def _between(service: TrackingService, h0, h1):
    """The track-ring frames published between two health snapshots."""
    start, end = h0.first_frame + h0.frames_seen, h1.first_frame + h1.frames_seen
    got = service.track_ring.rows_since(start, max_frames=end - start)
    assert got.lost == 0 and list(got.frame_index) == list(range(start, end))
    return got


# -- fixtures ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def scene() -> Scene:
    return _render_scene()


@pytest.fixture(scope="module")
def rig(scene):
    """A uint8 frame ring fed at 100 frames/s and a running 2-worker tracking service."""
    instance = f"trk{os.getpid()}"
    ring = FrameRing.create_frames(segment_name(instance, "frames"), 64, 240, 320, np.uint8)
    writer = FrameWriter(ring, scene.frames).start()
    service = TrackingService(ring.name, NM_PER_PX, max_beads=16, n_workers=2, instance=instance)
    try:
        service.start()
        service.set_rois(_rois_on(CENTRES), roi_size=ROI)
        yield service, writer, ring
    finally:
        pids = [p for p in service.worker_pids() if p]
        service.stop()
        writer.stop()
        ring.unlink()
        ring.close()
    assert list_segments(instance) == []
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or "zombie" in _status(pid)


def _status(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().lower()
    except FileNotFoundError:
        return "zombie"


# -- track ring (no processes) -----------------------------------------------------------
def test_track_ring_reader_learns_what_it_lost(tmp_path):
    instance = f"trkring{os.getpid()}"
    ring = TrackRing.create_tracks(segment_name(instance, "tracks"), 8, 4, first_index=100,
                                   nm_per_px=NM_PER_PX)
    try:
        reader = TrackRing.attach(ring.name)
        assert reader.first_index == 100 and reader.max_beads == 4
        assert len(reader.rows_since(0)) == 0 and reader.rows_since(0).lost == 0
        for f in range(100, 120):
            rows = np.zeros(f % 3 + 1, TRACK_DTYPE)
            rows["bead_id"] = np.arange(rows.size) + 10
            rows["x_nm"] = f
            status = FrameStatus.DROPPED if f % 5 == 0 else FrameStatus.TRACKED
            ring.write_frame(f, 1000.0 + f, rows, status)
        with pytest.raises(ValueError, match="expects frame 120 next, got frame 125"):
            ring.write_frame(125, 0.0, np.zeros(1, TRACK_DTYPE), FrameStatus.TRACKED)
        # a reader still at frame 100 lost 100..112 (capacity 8: 113..119 still safe)
        got = reader.rows_since(100)
        assert got.lost == 13 and list(got.frame_index) == list(range(113, 120))
        assert got.next_index == 120
        assert list(got.n_beads) == [f % 3 + 1 for f in range(113, 120)]
        assert np.all(got.rows["x_nm"][got.rows["bead_id"] >= 0] ==
                      np.repeat(got.frame_index, got.n_beads))
        assert np.all(np.isnan(got.rows["x_nm"][got.rows["bead_id"] < 0]))
        assert list(got.status == FrameStatus.DROPPED) == [f % 5 == 0 for f in range(113, 120)]
        assert np.all(got.timestamp == 1000.0 + got.frame_index)
        table = got.table()
        assert len(table) == int(got.n_beads.sum())
        assert np.all(table["x_nm"] == table["frame_index"])
        # caught up: nothing new, nothing lost
        again = reader.rows_since(got.next_index)
        assert len(again) == 0 and again.lost == 0 and again.next_index == 120
        reader.close()
    finally:
        ring.unlink()
        ring.close()
    assert list_segments(instance) == []


# -- the service -------------------------------------------------------------------------
def test_rows_for_every_frame_in_order_at_the_truth(rig, scene):
    service, _, ring = rig
    start = service.track_ring.count
    got = _rows_until(service, start, 150)
    assert list(got.frame_index) == list(range(start, start + 150))
    # timestamps are the frames' own
    stamps = np.array([ring.meta(i)["timestamp"] for i in got.frame_index[-20:]])
    assert np.array_equal(got.timestamp[-20:], stamps)
    # the ROI table reaches each worker from the next frame it starts: only the very first
    # frames may have been tracked before it (no rows); none after
    full = got.n_beads == len(CENTRES)
    first_full = int(np.argmax(full))
    assert full[first_full:].all() and first_full <= 3, got.n_beads
    tracked = got.tracked & full
    assert tracked.mean() > 0.9, f"only {tracked.sum()} of 150 frames tracked"
    rows = got.rows[tracked][:, : len(CENTRES)]
    assert np.all(rows["bead_id"] == np.arange(len(CENTRES)))
    x_true, y_true = scene.truth_nm(got.frame_index[tracked])
    err_px = np.hypot(rows["x_nm"] - x_true, rows["y_nm"] - y_true) / NM_PER_PX
    assert np.all(err_px < 0.1), f"max error {err_px.max():.3f} px"
    # the jitter is 3 px peak to peak: rows of another frame would be far off
    assert np.all(np.isnan(rows["z_nm"]))  # no Z-LUT yet
    health = service.health()
    assert health.frames_seen == health.frames_tracked + health.frames_dropped
    assert health.frames_seen >= 150 and health.worker_restarts == 0
    assert 0 < health.latency_p50_s <= health.latency_p99_s  # figures: bench_tracking_service
    assert health.queue_depth < 20


def test_a_reader_in_another_process_attaches_by_name(rig):
    service, _, _ = rig
    code = textwrap.dedent(
        """
        import sys
        from magscope_ipc.track_ring import TrackRing
        ring = TrackRing.attach(sys.argv[1])
        got = ring.rows_since(ring.count - 5)
        print(ring.first_index, ring.nm_per_px, got.lost, *got.frame_index)
        print(*got.rows["bead_id"][-1], *got.rows["x_nm"][-1])
        """
    )
    out = subprocess.run([sys.executable, "-c", code, service.track_ring_name],
                         capture_output=True, text=True, timeout=60, check=True).stdout.split("\n")
    first, nm, lost, *frames = out[0].split()
    assert int(first) == service.track_ring.first_index and float(nm) == NM_PER_PX
    assert int(lost) == 0 and len(frames) == 5
    assert np.diff(np.array(frames, int)).tolist() == [1, 1, 1, 1]
    last = out[1].split()
    assert [int(v) for v in last[:6]] == list(range(6))
    row = service.track_ring.rows_since(int(frames[-1]), 1).rows[0]
    assert np.allclose([float(v) for v in last[6:]], row["x_nm"], equal_nan=True)


def test_roi_changes_apply_between_frames(rig, scene):
    service, _, _ = rig
    old = _rois_on(CENTRES)
    new = _rois_on(CENTRES[[0, 2, 4]], ids=[0, 7, 4])  # drop beads, renumber none, add id 7
    try:
        before = service.track_ring.count
        for _ in range(6):  # switch back and forth while frames flow
            service.set_rois(new)
            time.sleep(0.037)
            service.set_rois(old)
            time.sleep(0.029)
        service.set_rois(new)
        after = service.track_ring.count
        got = _rows_until(service, before, after - before + 30)
        kinds = []
        for i in range(len(got)):
            ids = list(got.rows["bead_id"][i, : got.n_beads[i]])
            assert ids in ([0, 1, 2, 3, 4, 5], [0, 7, 4]), f"frame mixes two ROI tables: {ids}"
            kinds.append(len(ids))
        assert kinds[-1] == 3 and 6 in kinds  # both tables were used, the last one last
        tracked = got.tracked & (got.n_beads == 3)
        x_true, _ = scene.truth_nm(got.frame_index[tracked])
        err = np.abs(got.rows["x_nm"][tracked][:, :3] - x_true[:, [0, 2, 4]]) / NM_PER_PX
        assert np.all(err < 0.1)
        assert service.health().roi_generation >= 14
    finally:
        service.set_rois(old)


def test_move_rois_leaves_edits_made_meanwhile_alone(rig):
    """The XY lock's write: a move applies only where the bead still is where the lock saw
    it, and only if the table stays valid; the ids stay."""
    service, _, _ = rig
    old = _rois_on(CENTRES)
    try:
        service.set_rois(old)
        seen = service.rois  # what the lock read
        edited = seen.copy()
        edited["x0"][1] += 3  # bead 1 moved by hand meanwhile
        service.set_rois(edited[edited["bead_id"] != 2])  # and bead 2 removed
        new = seen.copy()
        new["x0"] += 1
        new["y0"][3] = -5  # off the sensor: skipped
        moved = service.move_rois(seen, new)
        assert moved == (0, 4, 5)
        now = {int(r["bead_id"]): (int(r["x0"]), int(r["y0"])) for r in service.rois}
        assert now[0] == (int(seen["x0"][0]) + 1, int(seen["y0"][0]))
        assert now[1] == (int(seen["x0"][1]) + 3, int(seen["y0"][1]))  # the hand's edit won
        assert 2 not in now and now[3] == (int(seen["x0"][3]), int(seen["y0"][3]))
        with pytest.raises(ValueError, match="same beads in the same order"):
            service.move_rois(seen, new[::-1])
    finally:
        service.set_rois(old)


@pytest.mark.parametrize(
    "table, size, message",
    [
        ([(0, 300, 10)], ROI, r"ROI of bead 0: x0 \+ roi_size = 300 \+ 48 = 348 px is beyond "
                              r"the sensor width 320 px"),
        ([(3, 10, -2)], ROI, r"ROI of bead 3: y0 = -2 px is negative"),
        ([(1, 10, 10), (2, 40, 50)], ROI, r"ROIs of beads 1 and 2 overlap"),
        ([(5, 10, 10), (5, 100, 100)], ROI, r"bead id 5 appears 2 times"),
        ([(-4, 10, 10)], ROI, r"bead id -4 is negative"),
        ([(0, 10.5, 10)], ROI, r"x0 = 10.5 is not a whole number of px"),
        ([(i, 20 * i, 0) for i in range(17)], 16, r"17 ROIs exceed max_beads = 16"),
        ([(0, 0, 0)], 500, r"roi_size 500 px is outside \[16, 240\] px"),
        ([(0, 0)], ROI, r"rows of \(bead_id, x0, y0\)"),
    ],
)
def test_invalid_roi_tables_are_refused_and_change_nothing(rig, table, size, message):
    service, _, _ = rig
    before, generation = service.rois, service.health().roi_generation
    with pytest.raises(ValueError, match=message):
        service.set_rois(table, roi_size=size)
    assert np.array_equal(service.rois, before) and service.roi_size == ROI
    assert service.health().roi_generation == generation


def test_zlut_load_takes_effect_and_a_mismatched_one_is_refused(rig, tmp_path):
    service, _, ring = rig
    levels = np.arange(-2500.0, -450.0, 50.0)
    good = _sweep_zlut(tmp_path / "good.npz", ROI, levels, beads=[0, 1, 2, 3, 4])  # not 5
    wrong_roi = _sweep_zlut(tmp_path / "roi64.npz", 64, levels)
    wrong_px = _sweep_zlut(tmp_path / "px.npz", ROI, levels, nm_per_px=65.0)
    try:
        generation = service.load_zlut(good)
        _wait(lambda: all(w.zlut_generation == generation for w in service.health().workers),
              10, "the workers to load the Z-LUT")
        # frames the camera had not written when the workers had the LUT
        rows = _tracked_since(service, ring.count, 30)
        z = rows["z_nm"]
        # the scene's beads are 1500 nm below the focus; bead 5 is not in the LUT: NaN
        assert np.all(np.abs(z[:, :5] + 1500.0) < 50.0), np.abs(z[:, :5] + 1500.0).max()
        assert np.all(np.isnan(z[:, 5]))
        assert np.all(rows["score"][:, :5] > 0.9)
        for refused, message in (
            (wrong_roi, r"ROI size 48 x 48 px .* Z-LUT's ROI size 64 x 64 px.*stays loaded"),
            (wrong_px, r"made at 65 nm/px, the service converts with 100 nm/px"),
        ):
            with pytest.raises(ZLUTMismatchError, match=message):
                service.load_zlut(refused)
            assert service.zlut_path == good and service.health().zlut_generation == generation
        with pytest.raises(FileNotFoundError):
            service.load_zlut(tmp_path / "missing.npz")
        # an ROI size that the loaded LUT does not fit is refused as well
        with pytest.raises(ValueError, match=r"roi_size 64 px differs from the loaded Z-LUT"):
            service.set_rois(_rois_on(CENTRES), roi_size=64)
        later = _tracked_since(service, ring.count, 10)
        assert np.all(np.isfinite(later["z_nm"][:, :5]))
        assert all(w.error == "" for w in service.health().workers)
    finally:
        cleared = service.clear_zlut()
    _wait(lambda: all(w.zlut_generation == cleared for w in service.health().workers), 10,
          "the workers to drop the Z-LUT")
    after = _rows_until(service, ring.count, 5)
    assert np.all(np.isnan(after.rows["z_nm"]))
    assert np.all(after.rows["score"][after.tracked] > 0.5)  # XY score now


def test_saturated_and_black_frames_do_not_stop_tracking(rig, scene):
    service, writer, _ = rig
    white = np.full((240, 320), 255, np.uint8)
    clipped = scene.frames[0].copy()
    clipped[clipped > 100] = 255  # beads clipped at full scale
    indices = writer.inject(white, 4) + writer.inject(np.zeros((240, 320), np.uint8), 4)
    indices += writer.inject(clipped, 4)
    service.wait_for_frame(indices[-1] + 20)
    got = service.track_ring.rows_since(indices[0], max_frames=indices[-1] + 20 - indices[0])
    by_frame = dict(zip(got.frame_index.tolist(), range(len(got)), strict=True))
    # white, black, clipped: no usable bead anywhere, and the rows say so (NaN)
    for group in (indices[:4], indices[4:8], indices[8:]):
        tracked = [by_frame[f] for f in group if got.status[by_frame[f]] == FrameStatus.TRACKED]
        assert tracked  # (a frame may be dropped on a busy machine, not all four)
        assert np.all(np.isnan(got.rows["x_nm"][tracked, : len(CENTRES)]))
    # normal frames right after are tracked again, and no worker died or raised
    tail = got.tracked & (got.frame_index > indices[-1])
    assert tail.sum() > 10
    health = service.health()
    assert health.worker_restarts == 0
    assert all(w.alive and w.kernel_errors == 0 for w in health.workers), health.workers


def test_slow_worker_drops_and_counts(rig):
    service, _, ring = rig
    h0 = service.health()
    service.set_options(worker_delay_s=0.06, max_lag_frames=6)  # 50 frames/s each needed
    try:
        time.sleep(1.5)
    finally:
        service.set_options(worker_delay_s=0.0, max_lag_frames=ring.capacity // 2)
    time.sleep(0.5)
    h1 = service.health()
    got = _between(service, h0, h1)
    dropped = int((got.status == FrameStatus.DROPPED).sum())
    assert dropped > 30, f"only {dropped} frames dropped by workers 6x too slow"
    assert h1.frames_dropped - h0.frames_dropped == dropped
    assert h1.dropped_behind - h0.dropped_behind == dropped
    assert h1.frames_tracked - h0.frames_tracked == len(got) - dropped
    # dropped rows keep the bead ids, with NaN positions
    d = got.status == FrameStatus.DROPPED
    assert np.all(got.rows["bead_id"][d] == np.arange(len(CENTRES)))
    assert np.all(np.isnan(got.rows["x_nm"][d]))
    # and it recovers: the last frames are tracked, the queue is short
    assert got.tracked[-20:].all()
    assert h1.queue_depth < 20


def test_killed_worker_is_reported_restarted_and_its_frames_dropped(rig, caplog):
    service, _, _ = rig
    h0 = service.health()
    victim = service.worker_pids()[1]
    assert victim is not None
    with caplog.at_level(logging.WARNING, logger="magscope_tracking.service"):
        os.kill(victim, signal.SIGKILL)
        _wait(lambda: service.health().worker_restarts == h0.worker_restarts + 1, 10,
              "the death to be noticed")
        _wait(lambda: (p := service.worker_pids()[1]) is not None and p != victim
              and service.health().workers[1].state == "running", 120, "the restart")
    assert any(
        "tracking worker 1" in r.message and f"pid {victim}" in r.message
        and "killed by signal 9 (SIGKILL)" in r.message for r in caplog.records
    ), [r.message for r in caplog.records]
    # frames keep flowing, worker 1's again tracked
    service.wait_for_frame(service.track_ring.count + 40)
    h1 = service.health()
    got = _between(service, h0, h1)
    odd_after = got.tracked[-40:][got.frame_index[-40:] % 2 == 1]
    assert odd_after.mean() > 0.8
    lost = got.status == FrameStatus.DROPPED
    odd = got.frame_index % 2 == 1
    by_worker = h1.dropped_worker - h0.dropped_worker
    behind = h1.dropped_behind - h0.dropped_behind
    # worker 1's frames were dropped while it was down, and counted as such; worker 0's
    # frames are dropped only if it fell behind meanwhile (a busy machine), counted so
    assert 1 <= by_worker <= int((lost & odd).sum())
    assert int((lost & ~odd).sum()) <= behind
    assert int(lost.sum()) == by_worker + behind == h1.frames_dropped - h0.frames_dropped
    assert h1.frames_tracked - h0.frames_tracked == len(got) - int(lost.sum())
    assert h1.frames_seen == h1.frames_tracked + h1.frames_dropped
    assert h1.workers[1].alive and h1.workers[1].pid != victim


def test_stop_leaves_nothing_behind_and_restart_works(scene):
    instance = f"trkstop{os.getpid()}"
    ring = FrameRing.create_frames(segment_name(instance, "frames"), 32, 240, 320, np.uint8)
    writer = FrameWriter(ring, scene.frames).start()
    service = TrackingService(ring.name, NM_PER_PX, max_beads=8, n_workers=1, instance=instance)
    try:
        service.set_rois(_rois_on(CENTRES[:2]), roi_size=ROI)  # before start: kept for it
        for _ in range(2):  # start, stop, start again: the ROI table applies from the start
            service.start()
            first = service.track_ring.first_index
            service.wait_for_frame(first + 10)
            got = service.track_ring.rows_since(first)
            assert got.frame_index[0] == first and got.tracked.any()
            assert np.all(got.n_beads == 2)
            pids = [p for p in service.worker_pids() if p]
            kinds = sorted(s.kind for s in list_segments(instance))
            assert kinds == ["frames", "tracks", "trkctl", "trkout0", "trkw0"]
            service.stop()
            service.stop()  # idempotent
            assert not service.running
            assert [s.kind for s in list_segments(instance)] == ["frames"]
            assert all(not Path(f"/proc/{p}").exists() or "zombie" in _status(p) for p in pids)
    finally:
        service.stop()
        writer.stop()
        ring.unlink()
        ring.close()
    assert list_segments(instance) == []


def test_nan_frames_give_nan_rows_and_a_dropped_service_cleans_up(scene):
    instance = f"trknan{os.getpid()}"
    ring = FrameRing.create_frames(segment_name(instance, "frames"), 32, 240, 320, np.float32)
    writer = FrameWriter(ring, scene.frames.astype(np.float32)).start()
    service = TrackingService(ring.name, NM_PER_PX, max_beads=8, n_workers=1, instance=instance)
    held = [service]  # stopped if the test fails before it drops the service
    try:
        service.start()
        service.set_rois(_rois_on(CENTRES[:3]), roi_size=ROI)
        blot = scene.frames[1].astype(np.float32)
        blot[50:70, 40:80] = np.nan  # NaN pixels over bead 0 only
        indices = writer.inject(np.full((240, 320), np.nan, np.float32), 3)
        indices += writer.inject(blot, 3)
        service.wait_for_frame(indices[-1] + 10)
        got = service.track_ring.rows_since(indices[0], indices[-1] + 10 - indices[0])
        i = {f: j for j, f in enumerate(got.frame_index.tolist())}
        all_nan = [i[f] for f in indices[:3] if got.status[i[f]] == FrameStatus.TRACKED]
        blotted = [i[f] for f in indices[3:] if got.status[i[f]] == FrameStatus.TRACKED]
        assert all_nan and blotted  # (a frame may be dropped on a busy machine, not all)
        assert np.all(np.isnan(got.rows["x_nm"][all_nan, :3]))
        assert np.all(np.isnan(got.rows["x_nm"][blotted, 0]))  # bead 0 under the blot: lost
        assert np.all(np.isfinite(got.rows["x_nm"][blotted, 1:3]))  # the others are not
        tail = got.tracked & (got.frame_index > indices[-1])
        assert tail.sum() >= 5 and np.all(np.isfinite(got.rows["x_nm"][tail]))
        health = service.health()
        assert health.worker_restarts == 0 and health.workers[0].kernel_errors == 0
        # a running service that is no longer referenced stops its workers and unlinks
        # its shared memory (weakref.finalize)
        pids = [p for p in service.worker_pids() if p]
        del service
        held.clear()
        gc.collect()
        _wait(lambda: [s.kind for s in list_segments(instance)] == ["frames"], 5,
              "the dropped service's segments to go")
        _wait(lambda: all(not Path(f"/proc/{p}").exists() or "zombie" in _status(p)
                          for p in pids), 5, "the dropped service's workers to exit")
    finally:
        for dangling in held:
            dangling.stop()
        writer.stop()
        ring.unlink()
        ring.close()
    assert list_segments(instance) == []


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except FileNotFoundError:
        return []


def test_workers_exit_when_their_owner_dies():
    """Kill the owner as soon as its workers exist (they may still be compiling)."""
    instance = f"trkorphan{os.getpid()}"
    code = textwrap.dedent(
        f"""
        import time
        import numpy as np
        from magscope_ipc.rings import FrameRing
        from magscope_tracking import TrackingService
        from magscope_ipc.shm import segment_name
        ring = FrameRing.create_frames(segment_name({instance!r}, "frames"), 8, 64, 64, np.uint8)
        service = TrackingService(ring.name, 100.0, max_beads=4, n_workers=2,
                                  instance={instance!r})
        service.start()
        time.sleep(120)
        """
    )
    owner = subprocess.Popen([sys.executable, "-c", code])
    try:
        _wait(lambda: len(_children(owner.pid)) == 2 and len(list_segments(instance)) >= 6, 30,
              "the owner to start two workers")
        pids = _children(owner.pid)
        time.sleep(0.5)
        owner.kill()
        owner.wait(10)
    finally:
        owner.kill()
    deadline = time.monotonic() + 10
    while any(Path(f"/proc/{p}").exists() for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(Path(f"/proc/{p}").exists() for p in pids), "workers outlived their owner"
    # the dead owner's segments are stale; the next service start removes them
    segments = list_segments(instance)
    assert segments and not any(s.owner_alive for s in segments)
    ring = FrameRing.create_frames(segment_name(instance, "frames"), 8, 64, 64, np.uint8)
    service = TrackingService(ring.name, 100.0, max_beads=4, n_workers=1, instance=instance)
    try:
        service.start()
        assert {s.pid for s in list_segments(instance)} == {os.getpid()}
    finally:
        service.stop()
        ring.unlink()
        ring.close()
    assert list_segments(instance) == []
