"""Health: the figures of a running simulated instrument, the ``health`` stream of a run,
and the health log (a line per interval, rotating, owner-only), against what the camera
and the tracking service count themselves."""

from __future__ import annotations

import math
import os
import re
import signal
import stat
import time

import bluesky.plans as bp
import pytest
from bluesky import RunEngine
from ophyd_async.core import init_devices

from magscope_devices import make_simulated_microscope
from magscope_devices._health import SIGNALS, recent_frame_rate
from magscope_devices.sim.world import SimParams
from magscope_ipc.shm import list_segments
from magscope_plans import HEALTH_STREAM, health_wrapper
from magscope_session._health_log import HealthLog, health_log_path

pytestmark = pytest.mark.system


@pytest.fixture(scope="module")
def RE():
    return RunEngine(call_returns_result=True)


@pytest.fixture(scope="module")
def microscope(RE, tmp_path_factory):
    with init_devices():
        mic = make_simulated_microscope(
            SimParams(seed=5, n_tethered=4, n_reference=1), data_dir=tmp_path_factory.mktemp("d"),
            instance="healthtest", frame_rate_hz=100.0, tracking_workers=2, name="microscope",
        )
    RE(bp.count([]))  # nothing: the RunEngine's loop is up
    from bluesky.run_engine import call_in_bluesky_event_loop

    call_in_bluesky_event_loop(mic.tracker.find_beads())
    yield mic
    mic.close()
    assert list_segments("healthtest") == []


def _wait_tracked(mic, n: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while mic.health.figures().frames_tracked < n:
        assert time.monotonic() < deadline, "the tracker tracks no frames"
        time.sleep(0.05)


def test_figures_agree_with_the_camera_and_tracker_counters(microscope):
    _wait_tracked(microscope, 50)
    ctl = microscope.camera.process.control
    n0, t0 = int(ctl["frames_acquired"]), time.monotonic()
    time.sleep(1.5)
    f = microscope.health.figures()
    n1, t1 = int(ctl["frames_acquired"]), time.monotonic()
    counted = (n1 - n0) / (t1 - t0)
    # the ring's timestamps say the same rate as the counter over the same time
    assert f.camera_rate_hz == pytest.approx(counted, rel=0.15), (f.camera_rate_hz, counted)
    assert f.camera_rate_set_hz == pytest.approx(100.0)
    assert n0 <= f.frames_acquired <= n1
    h = microscope.tracker.service.health()
    assert f.frames_tracked <= h.frames_tracked and f.frames_tracked > 0
    assert f.dropped_behind + f.dropped_worker + f.dropped_error == f.frames_dropped
    assert f.workers == 2 and f.workers_alive == 2
    assert 0.0 <= f.frame_ring_fill <= 1.0
    assert f.track_ring_fill == 0.0  # nothing records
    assert f.spool_documents == -1  # no spool watched
    assert 0 < f.latency_p50_s <= f.latency_p99_s < 1.0


def test_recent_frame_rate_reaches_back_one_second_at_most(microscope):
    ring = microscope.camera.process.ring
    rate = recent_frame_rate(ring)
    assert rate == pytest.approx(100.0, rel=0.2)
    newest = ring.count - 1
    span = float(ring.meta(newest)["timestamp"]) - float(ring.meta(newest - 60)["timestamp"])
    assert span > 0.5  # 60 frames at 100 frames/s: the estimate is over real time
    assert math.isnan(recent_frame_rate(ring, max_frames=1))


def test_every_run_gets_a_health_stream_at_its_start_and_end(RE, microscope):
    docs: list[tuple[str, dict]] = []
    descriptors: dict[str, str] = {}

    def keep(name, doc):
        docs.append((name, doc))
        if name == "descriptor":
            descriptors[doc["uid"]] = doc["name"]

    RE(health_wrapper(bp.count([microscope], num=3, delay=0.5), microscope.health), keep)
    health = [d for n, d in docs if n == "event" and descriptors[d["descriptor"]] == HEALTH_STREAM]
    assert len(health) == 2
    first, last = (e["data"] for e in health)
    key = "microscope-health-frames_acquired"
    assert set(first) == {f"microscope-health-{name}" for name, _, _ in SIGNALS}
    # 1 s of counting between them at 100 frames/s
    assert last[key] - first[key] >= 50
    assert last["microscope-health-frames_tracked"] > first["microscope-health-frames_tracked"]
    desc = next(d for n, d in docs if n == "descriptor" and d["name"] == HEALTH_STREAM)
    assert desc["data_keys"]["microscope-health-camera_rate_hz"]["units"] == "Hz"
    assert desc["data_keys"]["microscope-health-latency_p99_s"]["units"] == "s"
    # the primary stream does not carry the health
    primary = [d for n, d in docs if n == "event" and descriptors[d["descriptor"]] == "primary"]
    assert len(primary) == 3 and not any("health" in k for k in primary[0]["data"])


def test_the_log_writes_a_line_per_interval_and_sees_a_worker_killed(microscope, tmp_path):
    path = health_log_path(tmp_path, "healthtest")
    log = HealthLog(microscope.health.figures, path, interval_s=0.4).start()
    try:
        time.sleep(1.0)
        restarts = microscope.health.figures().worker_restarts
        victim = next(p for p in microscope.tracker.service.worker_pids() if p)
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 20
        while microscope.health.figures().worker_restarts <= restarts:
            assert time.monotonic() < deadline, "the killed worker was not restarted"
            time.sleep(0.1)
        time.sleep(0.9)
    finally:
        log.stop()
    lines = path.read_text().splitlines()
    assert lines[0].split(" ", 2)[2].startswith("session started | camera ")
    assert lines[-1].split(" ", 2)[2].startswith("session ended | ")
    assert len(lines) >= 5
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    for line in lines:
        assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d ", line)
        assert " frames/s (set 100.0)" in line and " tracked" in line and "latency p50" in line
    gained = [int(m) for m in re.findall(r"restarts \(\+(\d+)\)", "\n".join(lines))]
    assert sum(gained) >= 1, "no line saw the worker restart"
    rates = [float(m) for m in re.findall(r"tracked \(\+[\d,]+ = ([\d.]+)/s\)", "\n".join(lines))]
    assert rates and max(rates) > 30  # frames tracked per s over each interval
