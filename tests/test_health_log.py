"""The health log's lines and file (fast: figures made here, no instrument)."""

from __future__ import annotations

import math
import stat

import pytest

from magscope_devices._health import HealthFigures
from magscope_session._health_log import HealthLog, format_health_line


def _figures(t: float, **kw) -> HealthFigures:
    base = dict(
        time=t, camera_rate_hz=99.9, camera_rate_set_hz=100.0, frames_acquired=6000,
        frames_late=2, frames_tracked=5990, frames_dropped=3, dropped_behind=1,
        dropped_worker=2, dropped_error=0, queue_depth=1, latency_p50_s=0.0012,
        latency_p99_s=0.0034, workers_alive=2, workers=2, worker_restarts=0,
        frame_ring_fill=1 / 64, track_ring_fill=0.0, spool_documents=4, spool_runs_unsent=1,
    )
    base.update(kw)
    return HealthFigures(**base)


def test_a_line_has_units_and_what_the_counters_gained():
    before = _figures(100.0)
    now = _figures(160.0, frames_acquired=12000, frames_late=5, frames_tracked=11990,
                   worker_restarts=1, workers_alive=1)
    line = format_health_line(now, before)
    assert line.startswith("camera 99.9 frames/s (set 100.0), 12,000 frames, 5 late (+3) | ")
    assert "tracking 11,990 tracked (+6,000 = 100.0/s), 3 dropped (+0) (behind 1, worker 2, " \
        "error 0), queue 1 frames, latency p50 1.2 ms p99 3.4 ms" in line
    assert "workers 1/2 alive, 1 restarts (+1)" in line
    assert "frame ring 1.6 % full, track ring 0.0 % full" in line
    assert line.endswith("Tiled spool 4 documents queued, 1 runs unsent")
    first = format_health_line(_figures(0.0, frames_tracked=-1, spool_documents=-1))
    assert "(+" not in first and "tracking not running" in first and "spool" not in first
    dead = format_health_line(_figures(0.0, camera_rate_hz=math.nan, frames_acquired=-1))
    assert dead.startswith("camera n/a frames/s (set 100.0), n/a frames")
    assert "video" not in line  # no record asked for images yet


def test_a_line_says_what_the_video_writer_did_once_it_ran():
    video = dict(video_writer_alive=1, video_rows_written=12000, video_frames_lost=0,
                 video_stored_mb=3774.2, video_write_mb_s=212.4)
    line = format_health_line(_figures(160.0, **video),
                              _figures(100.0, **video | {"video_rows_written": 6000}))
    assert line.endswith("video 12,000 rows, 0 lost (+0), 3774.2 MB stored, writer 212 MB/s "
                         "busy")
    video.update(video_writer_alive=0, video_frames_lost=5, video_write_mb_s=math.nan)
    dead = format_health_line(_figures(160.0, **video))
    assert dead.endswith("video 12,000 rows, 5 lost, 3774.2 MB stored, writer n/a MB/s busy "
                         "(writer dead)")


def test_the_log_rotates_stays_private_and_says_when_health_is_unreadable(tmp_path):
    calls = {"n": 0}

    def read() -> HealthFigures:
        calls["n"] += 1
        if calls["n"] == 7:  # among the lines the rotation keeps
            raise RuntimeError("camera process gone")
        return _figures(float(calls["n"]))

    path = tmp_path / "logs" / "health-x.log"
    log = HealthLog(read, path, interval_s=1000.0, max_bytes=800, backup_count=2)
    for _ in range(8):
        log.write_line()
    log.stop()
    text = "\n".join(p.read_text() for p in sorted(path.parent.glob("health-x.log*")))
    assert "health not readable: RuntimeError: camera process gone" in text
    rotated = sorted(p.name for p in path.parent.iterdir())
    assert rotated == ["health-x.log", "health-x.log.1", "health-x.log.2"]
    for p in path.parent.iterdir():
        assert stat.S_IMODE(p.stat().st_mode) == 0o600, p
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    with pytest.raises(ValueError, match="interval_s=0"):
        HealthLog(read, path, interval_s=0)
