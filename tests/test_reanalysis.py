"""Re-analysis on Dask distributed, for real: runs recorded with ROI crops on the simulated
instrument into a real Tiled, re-tracked with their Z-LUT on a LocalCluster of worker
processes; the result must equal the serial one bit for bit, also when a worker is
killed mid-job, and go back to Tiled as new runs naming their source."""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest

from crop_runs import record_crop_runs
from magscope_session import EmbeddedTiled, runs
from magscope_session._document_writer import SpoolingTiledWriter
from magscope_session._reanalysis import reanalyse, write_reanalysis

pytestmark = pytest.mark.system

FRAMES = 120


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """An embedded Tiled holding a Z-LUT run and two runs of ROI crops; yields
    (tiled, zlut_uid, [run uids])."""
    folder = tmp_path_factory.mktemp("reanalysis")
    with EmbeddedTiled(folder / "tiled", port=0) as tiled:
        zlut_uid, uids = record_crop_runs(tiled, folder, frames=FRAMES)
        yield tiled, zlut_uid, uids


def test_a_cluster_gives_the_serial_result_exactly_even_when_a_worker_dies(recorded, capsys):
    tiled, zlut_uid, uids = recorded
    options = {"min_xy_score": 0.3}
    serial = reanalyse(tiled.uri, uids, zlut_run=zlut_uid, options=options,
                       api_key=tiled.api_key, chunk_rows=20, serial=True)
    assert [r.source_run for r in serial] == uids
    for r in serial:
        assert r.x_nm.shape == (FRAMES, r.bead_ids.size) and r.bead_ids.size >= 4
        assert np.isfinite(r.z_nm).mean() > 0.9
    # the re-tracked positions are the tracker's, near enough (same kernel, same LUT)
    tracks = runs.read_tracks(tiled.client()[uids[0]])
    rows = runs.read_video(tiled.client()[uids[0]]).rows_for(tracks.frame_index)
    both = rows >= 0
    dx = np.abs(serial[0].x_nm[rows[both]] - tracks.x_nm[both])
    assert np.nanmedian(dx) < 1.0, np.nanmedian(dx)

    seen: list[tuple[int, int]] = []
    clustered = reanalyse(tiled.uri, uids, zlut_run=zlut_uid, options=options,
                          api_key=tiled.api_key, chunk_rows=20, workers=2,
                          progress=lambda done, total: seen.append((done, total)))
    assert all(a.equals(b) for a, b in zip(serial, clustered, strict=True))
    assert seen[-1] == (12, 12) and [d for d, _ in seen] == list(range(1, 13))

    # a worker killed mid-job: its chunks run again elsewhere, the result is the same
    killed: list[int] = []

    def kill_a_worker(done: int, total: int) -> None:
        if done == 2 and not killed:
            pids = [p.pid for p in _worker_processes()]
            if pids:
                os.kill(pids[0], signal.SIGKILL)
                killed.append(pids[0])

    started = time.monotonic()
    again = reanalyse(tiled.uri, uids, zlut_run=zlut_uid, options=options,
                      api_key=tiled.api_key, chunk_rows=5, workers=2,
                      progress=kill_a_worker)
    assert killed, "no worker process was found to kill"
    assert all(a.equals(b) for a, b in zip(serial, again, strict=True))
    print(f"re-analysis with a worker killed: exact, {time.monotonic() - started:.1f} s")

    # a job that stops making progress ends with an error naming what is missing
    with pytest.raises(TimeoutError, match=r"stalled: no chunk finished in 0.01 s; \d+ of 24"):
        reanalyse(tiled.uri, uids, zlut_run=zlut_uid, api_key=tiled.api_key, chunk_rows=10,
                  workers=1, stall_s=0.01)

    # back to Tiled: new runs naming their source, the Z-LUT and the options
    writer = SpoolingTiledWriter(tiled.uri, tiled.api_key, tiled.spool_dir, batch_size=50)
    new_uid = write_reanalysis(writer, serial[0])
    assert writer.close(timeout=60) and writer.unsent_runs() == 0
    run = tiled.client()[new_uid]
    start = run.metadata["start"]
    assert (start["source_run"], start["zlut_run"]) == (uids[0], zlut_uid)
    assert start["tracking_options"] == options
    z = np.asarray(run["tracks"].read()["z_nm"])
    assert np.array_equal(z, serial[0].z_nm, equal_nan=True)


def _worker_processes():
    """The Dask worker processes of this test (children of this process)."""
    import psutil

    me = psutil.Process()
    return [p for p in me.children(recursive=True)
            if "distributed" in " ".join(p.cmdline()) or "spawn_main" in " ".join(p.cmdline())]


def test_bad_arguments_are_refused_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="chunk_rows"):
        reanalyse("http://127.0.0.1:9", [], zlut_run="x", chunk_rows=0)
    with pytest.raises(ValueError, match="workers"):
        reanalyse("http://127.0.0.1:9", [], zlut_run="x", workers=0)
    with pytest.raises(TypeError):
        reanalyse("http://127.0.0.1:9", [], zlut_run="x", options={"no_such_option": 1})
    with pytest.raises(ValueError, match="stall_s"):
        reanalyse("http://127.0.0.1:9", [], zlut_run="x", stall_s=0)

