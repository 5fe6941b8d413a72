"""Re-analysis of past runs: re-track their ROI crops (or their whole frames, cut at the
record's ROIs) with another Z-LUT or tracking options, on Dask distributed, and write
the results back to Tiled as new runs.

The work is cut into chunks of a run's video rows; each chunk is one task,
:func:`retrack_rows`, a function of its arguments only (it reads the crops and the Z-LUT
from Tiled itself), so a task lost with its worker is simply run again elsewhere and the
result does not depend on which worker ran what: a cluster gives the serial result
exactly. The numba kernels are those of :mod:`magscope_tracking`, imported by the
workers (never defined in ``__main__``, which Dask would pickle with every task).

Cluster: a ``LocalCluster`` of worker processes on this computer by default;
``scheduler="tcp://HOST:PORT"`` (or ``$MAGSCOPE_DASK_SCHEDULER``) uses a running one,
e.g. started on a SLURM cluster with dask-jobqueue (``docs/deploy.md``).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

__all__ = [
    "ENV_SCHEDULER",
    "READ_FROM",
    "ReanalysisResult",
    "reanalyse",
    "retrack_rows",
    "write_reanalysis",
]

ENV_SCHEDULER = "MAGSCOPE_DASK_SCHEDULER"

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ReanalysisResult:
    """One run re-tracked: ``x_nm``, ``y_nm``, ``z_nm`` (rows, beads) nm at the video's
    rows (``frame_index`` the camera frames), NaN where a bead was not found; x, y in the
    camera frame, z with the Z-LUT run's anchored heights added (the height above the
    reference beads, as the live tracker records it)."""

    source_run: str
    zlut_run: str
    options: dict[str, Any]
    bead_ids: np.ndarray
    frame_index: np.ndarray
    timestamp: np.ndarray
    x_nm: np.ndarray
    y_nm: np.ndarray
    z_nm: np.ndarray

    def equals(self, other: ReanalysisResult) -> bool:
        """Bit for bit the same numbers (NaN equal to NaN)."""
        return all(np.array_equal(getattr(self, k), getattr(other, k), equal_nan=True)
                   for k in ("bead_ids", "frame_index", "x_nm", "y_nm", "z_nm"))


@functools.lru_cache(maxsize=8)
def _zlut(uri: str, api_key: str | None, zlut_run: str) -> tuple[Any, Any]:
    """The Z-LUT of run ``zlut_run`` and its beads' anchored heights above the reference
    beads as the live tracker holds them (``tracker.height_offsets``, a
    :class:`~magscope_devices._bead_rois.BeadHeights` table of the beads with a finite
    height), so that a re-tracked z is the same height as a live one."""
    from magscope_devices._bead_rois import BeadHeights
    from magscope_plans._run_results import NoResultError, zlut_heights_from_run
    from magscope_plans._zlut import heights_table

    from . import runs
    from ._tiled_client import connect

    run = connect(uri, api_key)[zlut_run]
    try:
        heights = heights_table(*zlut_heights_from_run(run))
    except (KeyError, NoResultError):  # a Z-LUT without anchored heights: none added
        heights = BeadHeights.empty()
    return runs.zlut_of(run), heights


#: Where a task reads the images: "files" (the run's HDF5 files, at the path Tiled
#: serves them from), "tiled" (through the server), "auto" (files when readable here).
READ_FROM = ("auto", "files", "tiled")


@functools.lru_cache(maxsize=8)
def _video_of(uri: str, api_key: str | None, run_uid: str,
              read_from: str = "auto") -> tuple[Any, Any]:
    """The run's video (its images read as ``read_from`` says) and the bead layout of its
    tracks (ROIs, nm/px; not the tracks)."""
    from . import runs
    from ._run_tracks import _tracks_layout
    from ._run_video_files import with_file_reads
    from ._tiled_client import connect

    run = connect(uri, api_key)[run_uid]
    video = runs.read_video(run)
    if read_from != "tiled":
        direct = with_file_reads(video)
        if direct is None and read_from == "files":
            raise ValueError(
                f"run {run_uid}: its video is not in HDF5 files readable on this computer "
                "at the path the Tiled server has them (mount the detector data at the same "
                "path, or read through Tiled: read_from='tiled')")
        video = direct or video
    return video, _tracks_layout(run, None).layout


def _bead_ids(video: Any, layout: Any) -> np.ndarray:
    """The beads re-tracked: those of the crops, or for whole frames the tracks' beads."""
    return np.asarray(video.bead_ids if video.kind == "crops" else layout.bead_ids)


def _cut_rois(frames: np.ndarray, layout: Any) -> tuple[np.ndarray, np.ndarray]:
    """Whole frames (rows, height, width) cut at the record's ROIs: crops (rows, beads,
    size, size) and their origins (rows, beads, 2) px. The ROIs are those the tracker
    had when the record began (a record with the XY lock moving them is not re-tracked
    exactly)."""
    size = layout.roi_size_px
    x0, y0 = layout.roi_x0_px, layout.roi_y0_px
    height, width = frames.shape[1:]
    if (x0 < 0).any() or (y0 < 0).any() or (x0 + size > width).any() or \
            (y0 + size > height).any():
        raise ValueError(f"the record's ROIs ({size} px) do not fit its {width} x {height} "
                         "px frames")
    crops = np.stack([frames[:, y:y + size, x:x + size] for x, y in zip(x0, y0, strict=True)],
                     axis=1)
    origins = np.broadcast_to(np.stack([x0, y0], axis=1), (frames.shape[0], x0.size, 2))
    return crops, origins


def retrack_rows(uri: str, api_key: str | None, run_uid: str, start: int, stop: int,
                 zlut_run: str, options: dict[str, Any], read_from: str = "auto"
                 ) -> np.ndarray:
    """Rows ``start:stop`` of run ``run_uid``'s ROI crops (or whole frames, cut at the
    record's ROIs) tracked again with the Z-LUT of
    run ``zlut_run`` and :class:`~magscope_tracking.TrackOptions` ``options``: an array
    (rows, beads, 3) of x, y, z in nm (x, y in the camera frame), NaN where lost.
    A pure function of its arguments (the data come from Tiled, the images from the
    run's HDF5 files when ``read_from`` allows and this computer can read them): one
    Dask task.

    The Tiled client reads arrays by computing a small dask graph; inside a Dask worker
    that graph would go to the cluster itself (the worker's client), the task waiting
    for sub-tasks that wait for a worker thread: with every thread busy the job hung
    (in 3 of 7 runs on 2 workers x 1 thread). The reads here compute in this
    task's own threads (``scheduler="threads"``).
    """
    import dask

    with dask.config.set(scheduler="threads"):
        return _retrack_rows(uri, api_key, run_uid, start, stop, zlut_run, options,
                             read_from)


def _retrack_rows(uri: str, api_key: str | None, run_uid: str, start: int, stop: int,
                  zlut_run: str, options: dict[str, Any], read_from: str) -> np.ndarray:
    from magscope_devices._bead_rois import offsets_for
    from magscope_tracking import TrackOptions, track

    video, layout = _video_of(uri, api_key, run_uid, read_from)
    nm_per_px = layout.nm_per_px
    zlut, heights = _zlut(uri, api_key, zlut_run)
    bead_ids = _bead_ids(video, layout)
    index = zlut.index_of(bead_ids)
    offsets = offsets_for(heights, bead_ids)  # as the live tracker adds them (or None)
    opts = TrackOptions(**options)
    if video.kind == "crops":
        crops = video.images(start, stop)  # (rows, beads, size, size): one read
        origins = video.origins(start, stop).astype(float)
    else:  # whole frames (frames_every_n, trigger windows): cut at the record's ROIs
        crops, origins = _cut_rois(video.images(start, stop), layout)
        origins = origins.astype(float)
    origins[origins < 0] = np.nan  # a bead not tracked in that frame
    rows, beads = crops.shape[:2]
    result = track(crops.reshape(rows * beads, *crops.shape[2:]), zlut,
                   bead_index=np.tile(index, rows), options=opts)
    out = np.empty((rows, beads, 3))
    out[:, :, 0] = (result.x_px.reshape(rows, beads) + origins[:, :, 0]) * nm_per_px
    out[:, :, 1] = (result.y_px.reshape(rows, beads) + origins[:, :, 1]) * nm_per_px
    out[:, :, 2] = result.z_nm.reshape(rows, beads)
    if offsets is not None:
        out[:, :, 2] += offsets[None, :]
    return out


def _chunks(n_rows: int, chunk_rows: int) -> list[tuple[int, int]]:
    return [(s, min(s + chunk_rows, n_rows)) for s in range(0, n_rows, chunk_rows)]


def reanalyse(
    uri: str,
    run_uids: Sequence[str],
    *,
    zlut_run: str,
    options: dict[str, Any] | None = None,
    api_key: str | None = None,
    chunk_rows: int = 50,
    scheduler: str | None = None,
    workers: int = 2,
    serial: bool = False,
    progress: Callable[[int, int], None] | None = None,
    retries: int = 3,
    stall_s: float = 600.0,
    read_from: str = "auto",
) -> list[ReanalysisResult]:
    """Re-track every run of ``run_uids`` (in that order) with the Z-LUT of run
    ``zlut_run`` and tracking ``options``.

    ``serial``: in this process, no Dask (the reference a cluster must equal).
    Otherwise on ``scheduler`` (``tcp://HOST:PORT``; default ``$MAGSCOPE_DASK_SCHEDULER``,
    else a ``LocalCluster`` of ``workers`` worker processes, closed at the end).
    ``progress(done, total)`` is called as chunks finish. A chunk whose worker died is
    run again (up to ``retries`` times). When no chunk finishes for ``stall_s`` seconds
    the job ends with :class:`TimeoutError` naming the chunks still missing.

    ``read_from``: where the tasks read the images: ``"files"``, the run's HDF5 files at
    the path the Tiled server reads them from (a shared filesystem mounted at the same
    path on every worker; the server is then out of the path), ``"tiled"``, through the
    server, or ``"auto"`` (files where a task can read them, else Tiled). The same bytes
    either way, so the same result.
    """
    from magscope_tracking import TrackOptions

    options = dict(options or {})
    TrackOptions(**options)  # refused here, not in a worker
    if not isinstance(chunk_rows, int) or chunk_rows < 1:
        raise ValueError(f"chunk_rows must be an integer >= 1 (video rows), got {chunk_rows!r}")
    if not isinstance(workers, int) or not 1 <= workers <= 256:
        raise ValueError(f"workers must be an integer 1..256, got {workers!r}")
    if not (isinstance(stall_s, int | float) and 0 < stall_s < math.inf):
        raise ValueError(f"stall_s must be a positive number of seconds, got {stall_s!r}")
    if read_from not in READ_FROM:
        raise ValueError(f"read_from must be one of {READ_FROM}, got {read_from!r}")
    plans = []
    for uid in run_uids:
        video, layout = _video_of(uri, api_key, uid, read_from)
        plans.append((uid, video, layout, _chunks(len(video), chunk_rows)))
    total = sum(len(chunks) for *_, chunks in plans)
    tasks = [(uid, s, e) for uid, *_, chunks in plans for s, e in chunks]
    parts: dict[tuple[str, int], np.ndarray] = {}
    if serial:
        for done, (uid, s, e) in enumerate(tasks, 1):
            parts[(uid, s)] = retrack_rows(uri, api_key, uid, s, e, zlut_run, options,
                                           read_from)
            if progress:
                progress(done, total)
    else:
        parts = _on_dask(uri, api_key, tasks, zlut_run, options, scheduler, workers,
                         progress, retries, stall_s, read_from)
    results = []
    for uid, video, layout, chunks in plans:
        rows = np.concatenate([parts[(uid, s)] for s, _ in chunks]) if chunks else \
            np.zeros((0, _bead_ids(video, layout).size, 3))
        results.append(ReanalysisResult(
            source_run=uid, zlut_run=zlut_run, options=options,
            bead_ids=_bead_ids(video, layout), frame_index=np.asarray(video.frame_index),
            timestamp=np.asarray(video.timestamp), x_nm=rows[..., 0], y_nm=rows[..., 1],
            z_nm=rows[..., 2]))
    return results


def _on_dask(uri, api_key, tasks, zlut_run, options, scheduler, workers, progress,
             retries, stall_s, read_from) -> dict[tuple[str, int], np.ndarray]:
    from distributed import Client, LocalCluster, wait

    scheduler = scheduler or os.environ.get(ENV_SCHEDULER) or None
    cluster = None
    if scheduler is None:
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                               host="127.0.0.1", dashboard_address=None)
        client = Client(cluster)
    else:
        client = Client(scheduler, timeout=30)
    try:
        futures = {
            client.submit(retrack_rows, uri, api_key, uid, s, e, zlut_run, options,
                          read_from, key=f"retrack-{uid}-{s}", retries=retries,
                          pure=False): (uid, s)
            for uid, s, e in tasks
        }
        parts: dict[tuple[str, int], np.ndarray] = {}
        pending = set(futures)
        while pending:
            try:
                finished, pending = wait(pending, timeout=stall_s,
                                         return_when="FIRST_COMPLETED")
            except TimeoutError:
                missing = sorted(f"{uid[:8]} rows {s}+" for uid, s in
                                 (futures[f] for f in pending))
                raise TimeoutError(
                    f"re-analysis stalled: no chunk finished in {stall_s:g} s; "
                    f"{len(pending)} of {len(futures)} chunks missing "
                    f"({', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''})"
                ) from None
            for future in finished:
                parts[futures[future]] = future.result()
                if progress:
                    progress(len(parts), len(futures))
        return parts
    finally:  # bounded: closing while chunks still run must not hang the caller
        try:
            client.close(timeout=30)
        except Exception as exc:  # noqa: BLE001 - report, then close the cluster
            logger.warning("closing the Dask client: %s: %s", type(exc).__name__, exc)
        if cluster is not None:
            try:
                cluster.close(timeout=30)
            except Exception as exc:  # noqa: BLE001 - the workers die with this process
                logger.warning("closing the LocalCluster: %s: %s", type(exc).__name__, exc)


def write_reanalysis(writer: Callable[[str, Any], Any], result: ReanalysisResult,
                     *, md: dict[str, Any] | None = None) -> str:
    """Send ``result`` as a new run through ``writer`` (a document callback, e.g. the
    session's spooling writer): start (naming the source run, the Z-LUT run and the
    options), a ``tracks`` stream with one event per video row, stop. Returns its uid."""
    from event_model import compose_run

    start_md = {
        "plan_name": "reanalyse", "source_run": result.source_run,
        "zlut_run": result.zlut_run, "tracking_options": result.options,
        "bead_ids": [int(b) for b in result.bead_ids], **(md or {}),
    }
    bundle = compose_run(metadata=start_md)
    writer("start", bundle.start_doc)
    n_beads = int(result.bead_ids.size)
    shape = [n_beads]
    desc = bundle.compose_descriptor(
        name="tracks",
        data_keys={
            "frame_index": {"source": "reanalysis", "dtype": "integer", "shape": []},
            "x_nm": {"source": "reanalysis", "dtype": "array", "shape": shape, "units": "nm",
                     "dtype_numpy": "<f8"},
            "y_nm": {"source": "reanalysis", "dtype": "array", "shape": shape, "units": "nm",
                     "dtype_numpy": "<f8"},
            "z_nm": {"source": "reanalysis", "dtype": "array", "shape": shape, "units": "nm",
                     "dtype_numpy": "<f8"},
        },
    )
    writer("descriptor", desc.descriptor_doc)
    now = time.time()
    for i in range(result.frame_index.size):
        t = float(result.timestamp[i]) if math.isfinite(result.timestamp[i]) else now
        data = {"frame_index": int(result.frame_index[i]), "x_nm": result.x_nm[i].tolist(),
                "y_nm": result.y_nm[i].tolist(), "z_nm": result.z_nm[i].tolist()}
        writer("event", desc.compose_event(data=data, timestamps={k: t for k in data}))
    writer("stop", bundle.compose_stop(exit_status="success"))
    return str(bundle.start_doc["uid"])
