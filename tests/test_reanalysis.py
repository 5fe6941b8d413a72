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
from magscope_session._reanalysis import _video_of, reanalyse, write_reanalysis
from magscope_session._run_video_files import HDF5Rows

pytestmark = pytest.mark.system

FRAMES = 120


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """An embedded Tiled holding a Z-LUT run and two runs of ROI crops; yields
    (tiled, zlut_uid, [run uids], the uid of a run of every 4th whole frame)."""
    folder = tmp_path_factory.mktemp("reanalysis")
    with EmbeddedTiled(folder / "tiled", port=0) as tiled:
        zlut_uid, uids = record_crop_runs(tiled, folder, frames=FRAMES, every_n=4)
        yield tiled, zlut_uid, uids[:2], uids[2]


def test_a_cluster_gives_the_serial_result_exactly_even_when_a_worker_dies(recorded, capsys):
    tiled, zlut_uid, uids, _ = recorded
    options = {"min_xy_score": 0.3}
    # the serial reference reads through Tiled; the cluster below reads the same bytes
    # from the runs' HDF5 files (read_from="auto": they are on this computer)
    serial = reanalyse(tiled.uri, uids, zlut_run=zlut_uid, options=options,
                       api_key=tiled.api_key, chunk_rows=20, serial=True, read_from="tiled")
    direct, _ = _video_of(tiled.uri, tiled.api_key, uids[0], "auto")
    assert isinstance(direct._images, HDF5Rows) and isinstance(direct._origin, HDF5Rows)
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
    # z too (this Z-LUT is not anchored; test_recalibration has one that is)
    dz = np.abs(serial[0].z_nm[rows[both]] - tracks.z_nm[both])
    assert np.nanmedian(dz) < 1.0, np.nanmedian(dz)

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

    # on a running cluster (--scheduler): the only tasks it sees are the chunks; the
    # Tiled reads inside a task compute in that task (sent to the cluster, they hung it)
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster, Client(cluster) as client:
        on_scheduler = reanalyse(tiled.uri, uids, zlut_run=zlut_uid, options=options,
                                 api_key=tiled.api_key, chunk_rows=40, read_from="tiled",
                                 scheduler=cluster.scheduler_address)
        prefixes = client.run_on_scheduler(
            lambda dask_scheduler: sorted(dask_scheduler.task_prefixes))
    assert all(a.equals(b) for a, b in zip(serial, on_scheduler, strict=True))
    assert prefixes == ["retrack"], prefixes

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


def test_whole_frames_are_retracked_at_the_record_s_rois(recorded):
    """A record of every 4th whole frame: cut at the record's ROIs and re-tracked, the
    beads sit where the tracker found them live at those frames."""
    tiled, zlut_uid, _, frames_uid = recorded
    (result,) = reanalyse(tiled.uri, [frames_uid], zlut_run=zlut_uid,
                          api_key=tiled.api_key, chunk_rows=10, serial=True)
    run = tiled.client()[frames_uid]
    video, tracks = runs.read_video(run), runs.read_tracks(run)
    assert video.kind == "frames" and len(result.frame_index) == len(video) == FRAMES // 4
    assert np.array_equal(result.bead_ids, tracks.layout.bead_ids)
    rows = np.flatnonzero(np.isin(tracks.frame_index, video.frame_index))
    assert rows.size == len(video)
    dx = np.abs(result.x_nm - tracks.x_nm[rows])
    dy = np.abs(result.y_nm - tracks.y_nm[rows])
    assert np.nanmedian(dx) < 1.0 and np.nanmedian(dy) < 1.0, (np.nanmedian(dx),
                                                              np.nanmedian(dy))
    assert np.isfinite(result.z_nm).mean() > 0.9


def _worker_processes():
    """The Dask worker processes of this test (children of this process)."""
    import psutil

    found = []
    for p in psutil.Process().children(recursive=True):
        try:  # a child may exit (or be a zombie not yet reaped) while we look
            command = " ".join(p.cmdline())
        except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
            continue
        if "distributed" in command or "spawn_main" in command:
            found.append(p)
    return found


def test_bad_arguments_are_refused_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="chunk_rows"):
        reanalyse("http://127.0.0.1:9", [], zlut_run="x", chunk_rows=0)
    with pytest.raises(ValueError, match="workers"):
        reanalyse("http://127.0.0.1:9", [], zlut_run="x", workers=0)
    with pytest.raises(TypeError):
        reanalyse("http://127.0.0.1:9", [], zlut_run="x", options={"no_such_option": 1})
    with pytest.raises(ValueError, match="stall_s"):
        reanalyse("http://127.0.0.1:9", [], zlut_run="x", stall_s=0)

    with pytest.raises(ValueError, match=r"read_from must be one of .* got 'disk'"):
        reanalyse("http://127.0.0.1:9", [], zlut_run="x", read_from="disk")
