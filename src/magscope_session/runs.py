"""Finding and reading past runs in Tiled, for analysis in IPython or a notebook.

Every function that needs the catalog takes either a Tiled client (a container node:
``target.client()``, :func:`magscope_session.connect`) or the server's URI as a string
(then :func:`magscope_session.connect` connects with the API key
``api_key``, default ``$MAGSCOPE_TILED_API_KEY``).
Functions of one run take a run client, as returned by :func:`find_runs` or
``client[uid]``::

    from magscope_session.runs import bead_tracks, find_runs, run_summary

    runs = find_runs("http://127.0.0.1:8000", sample="lambda DNA", since="2025-03-14")
    for run in runs:
        print(run_summary(run))
    tracks = bead_tracks(runs[0], bead_id=3, drift_correct=True)  # a pandas DataFrame
    tracks.plot(x="time_s", y="z_nm")

Units: positions nm (sensor coordinates for x and y), times s, forces pN, magnet heights
mm.

How Tiled returns the data of a run (bluesky-tiled-plugins 2.0, "BlueskyRun" v3 specs)
---------------------------------------------------------------------------------------
A run is a container of streams; a stream is a container of *arrays*, one per field,
each with the event axis first. The bead tracker's full-rate fields come from its HDF5
track file and are served with one row per event: ``<tracker>-x_nm`` (also ``y_nm``,
``z_nm``, ``score``) has shape (events, frames per event, beads), and
``<tracker>-frame_index``, ``-timestamp``, ``-frame_status`` (events, frames per event).
In stream ``tracks`` (:class:`magscope_plans.TrackRecorder`) the frames of
successive records follow each other (frame_index jumps between records); in ``primary``
(counting the tracker) each event is one trigger window of ``window_frames`` frames and
the stream also holds ``<tracker>-bead_id`` (events, beads) and the per-window means.
Every stream with per-bead arrays says which bead each column is in its configuration
(``run[stream].metadata["configuration"][<device>]["data"]``): the bead layout of
:mod:`magscope_devices._bead_layout` (``<device>-bead_ids``, ``-roi_x0_px``,
``-roi_y0_px``, ``-roi_size_px``, ``-nm_per_px``, ``-zlut_uid``).

Modules: this one finds runs and summarises them; :mod:`._run_tracks` reads tracks
(:func:`bead_tracks`, all beads at once: :func:`read_tracks`); :mod:`._run_export` writes
them to CSV or Parquet (:func:`export`); :mod:`._run_frames` the
camera's frames (:func:`camera_frames`); :mod:`._run_video` a record's video (ROI crops
or whole frames, aligned with the track rows by frame index: :func:`read_video`);
:mod:`._run_results` gives a plan's results (:func:`zlut_of`,
:func:`force_calibration_of`) from the run alone.
"""

from __future__ import annotations

import datetime as dt
import math
import numbers
from typing import TYPE_CHECKING, Any

from magscope_devices._bead_layout import BeadLayout

from ._live_runs import LiveRows, watch_live
from ._run_export import ExportSummary, export_tracks
from ._run_frames import NoFramesError, RunFrames, camera_frames
from ._run_results import force_calibration_of, zlut_of
from ._run_tracks import (
    TRACK_COLUMNS,
    BeadNotInRunError,
    NoTracksError,
    RunTracks,
    _start,
    bead_tracks,
    read_tracks,
)
from ._run_video import NoVideoError, RunVideo, read_video
from ._tiled_client import connect

if TYPE_CHECKING:
    from databroker.queries import TimeRange

#: ``runs.export(run, "tracks.parquet")``: a run's tracks to CSV or Parquet
export = export_tracks

__all__ = [
    "BeadNotInRunError",
    "ExportSummary",
    "export",
    "export_tracks",
    "NoFramesError",
    "NoTracksError",
    "NoVideoError",
    "RunFrames",
    "RunVideo",
    "RunTracks",
    "TRACK_COLUMNS",
    "bead_tracks",
    "camera_frames",
    "find_runs",
    "last",
    "force_calibration_of",
    "read_tracks",
    "read_video",
    "run_summary",
    "zlut_of",
    "LiveRows",
    "watch_live",
]

_RUN_SPEC = "BlueskyRun"


def _is_run(node: Any) -> bool:
    try:
        return any(spec.name == _RUN_SPEC for spec in node.specs)
    except (AttributeError, TypeError):
        return False


# --------------------------------------------------------------------------- finding
def _time_range(since: Any, until: Any) -> TimeRange | None:
    """databroker's :class:`~databroker.queries.TimeRange` for :func:`find_runs`'s
    inclusive bounds (TimeRange's ``until`` is exclusive: a date as ``until`` becomes the
    next day, a time the next float after it)."""
    if since is None and until is None:
        return None
    bounds = [_time_value(since, "since"), _time_value(until, "until")]
    if isinstance(bounds[1], dt.date) and not isinstance(bounds[1], dt.datetime):
        bounds[1] = bounds[1] + dt.timedelta(days=1)  # the whole day
    elif isinstance(bounds[1], dt.datetime):
        bounds[1] = bounds[1].timestamp()
    if isinstance(bounds[1], float):
        bounds[1] = math.nextafter(bounds[1], math.inf)  # inclusive
    since_, until_ = (b.isoformat() if type(b) is dt.date else b for b in bounds)
    from databroker.queries import TimeRange

    try:
        return TimeRange(since=since_, until=until_)
    except ValueError as err:
        if "since must not be greater" in str(err):
            raise ValueError(f"until={until!r} is before since={since!r}") from None
        raise


def _time_value(value: Any, name: str) -> Any:
    """A bound as TimeRange takes it: a float (UNIX s), a datetime or a date."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise TypeError(f"{name} must be a datetime, a date string or a UNIX time, not a bool")
    if isinstance(value, numbers.Real):
        if not math.isfinite(float(value)):
            raise ValueError(f"{name}={value!r} is not a finite UNIX time (s)")
        return float(value)
    if isinstance(value, dt.date):  # datetime included
        return value
    if not isinstance(value, str):
        raise TypeError(
            f"{name} must be a datetime, a date string 'YYYY-MM-DD' or a UNIX time (s), "
            f"not {type(value).__name__}"
        )
    try:
        text = value.strip()
        return dt.date.fromisoformat(text) if len(text) == 10 else dt.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"{name}={value!r}: expected a date 'YYYY-MM-DD', a date and time "
            "'YYYY-MM-DDTHH:MM[:SS]', a datetime or a UNIX time in s"
        ) from None


def _search_time(node: Any, time_range: TimeRange) -> Any:
    """``node.search(time_range)``: databroker's catalog of runs turns it into Tiled
    comparisons on ``start.time``; a plain container (a server without the
    ``CatalogOfBlueskyRuns`` spec on its root) gets the same comparisons here."""
    from bluesky_tiled_plugins import CatalogOfBlueskyRuns
    from tiled.queries import Comparison

    if isinstance(node, CatalogOfBlueskyRuns):
        return node.search(time_range)
    if time_range.since is not None:
        node = node.search(Comparison("ge", "start.time", time_range.since))
    if time_range.until is not None:
        node = node.search(Comparison("lt", "start.time", time_range.until))
    return node


def find_runs(
    client_or_uri: Any,
    *,
    sample: str | None = None,
    plan_name: str | None = None,
    bead_id: int | None = None,
    since: Any = None,
    until: Any = None,
    operator: str | None = None,
    limit: int | None = None,
    api_key: str | None = None,
) -> list[Any]:
    """Runs matching every filter given, newest first, as run clients.

    Parameters
    ----------
    client_or_uri
        The catalog: a Tiled client or a server URI (see
        :func:`magscope_session.connect`).
    sample, plan_name, operator
        Exact match on the start document's key of the same name.
    bead_id
        Runs that measured this bead: the id is in the start document's ``bead_ids``
        (force calibration, force-extension, protocols, and any run given
        ``md={"bead_ids": [...]}``) or ``zlut_bead_ids`` (Z-LUT sweeps). Done on the server
        with Tiled's ``Contains`` query. Runs that list no bead ids in their start document
        (e.g. a plain ``bp.count`` of the tracker) are not found this way, and reference
        beads (``reference_bead_ids``) do not count.
    since, until
        Start time bounds, inclusive: a ``datetime`` (naive = local time of this
        computer), a date string ``'YYYY-MM-DD'`` (local time; ``until`` a date includes
        that whole day), a date-time string ``'YYYY-MM-DDTHH:MM'``, or a UNIX time (s).
        Searched with databroker's ``TimeRange`` query.
    limit
        At most this many runs (the newest).
    api_key
        API key when ``client_or_uri`` is a URI (default ``$MAGSCOPE_TILED_API_KEY``).

    All filters are Tiled queries on the start document, run by the server.
    """
    catalog = connect(client_or_uri, api_key=api_key)
    if _is_run(catalog):
        raise TypeError(
            "find_runs needs the catalog (the client of the server), not a run; "
            "use run_summary(run) or bead_tracks(run, ...) for one run"
        )
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    from tiled.queries import Contains, Key, SpecsQuery

    node = catalog.search(SpecsQuery([_RUN_SPEC]))
    for key, value in (("sample", sample), ("plan_name", plan_name), ("operator", operator)):
        if value is not None:
            node = node.search(Key(f"start.{key}") == value)
    time_range = _time_range(since, until)
    if time_range is not None:
        node = _search_time(node, time_range)
    if bead_id is None:
        nodes = [node]
    else:
        if isinstance(bead_id, bool) or not isinstance(bead_id, numbers.Integral):
            raise TypeError(f"bead_id must be an integer, got {bead_id!r}")
        bead = int(bead_id)
        nodes = [
            node.search(Contains("start.bead_ids", bead)),
            node.search(Contains("start.zlut_bead_ids", bead)),
        ]
    found: dict[str, tuple[float, Any]] = {}
    for part in nodes:
        newest = part.sort(("start.time", -1)).values()
        # with a limit, one page of that size (Tiled's default page is 100 runs, each
        # costing the server a count of its streams)
        if limit == 0:
            break
        for run in (newest if limit is None else newest[:limit]):
            start = run.metadata["start"]
            found.setdefault(start["uid"], (float(start.get("time", 0.0)), run))
    ordered = [run for _, run in sorted(found.values(), key=lambda item: -item[0])]
    return ordered if limit is None else ordered[:limit]


def last(client_or_uri: Any, n: int = 1, *, api_key: str | None = None) -> Any:
    """The newest run (``n=1``), or a list of the ``n`` newest runs, newest first.

    ``client_or_uri`` and ``api_key`` as for :func:`find_runs`. Raises LookupError when
    the catalog holds no run (``n=1``).
    """
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
        raise ValueError(f"n must be an integer >= 1 (runs), got {n!r}")
    runs = find_runs(client_or_uri, limit=int(n), api_key=api_key)
    if n > 1:
        return runs
    if not runs:
        raise LookupError("the catalog holds no run yet")
    return runs[0]


# --------------------------------------------------------------------------- one run
def _iso(seconds: Any) -> str | None:
    if not isinstance(seconds, numbers.Real):
        return None
    return dt.datetime.fromtimestamp(float(seconds)).astimezone().isoformat(timespec="seconds")


def run_summary(run: Any) -> dict[str, Any]:
    """The essentials of a run as a dict.

    Keys: ``uid``; ``plan`` (plan name); ``sample``; ``operator``; ``time`` (start, ISO
    8601 in the local time zone of this computer, with its UTC offset); ``streams``
    (names); ``bead_ids`` (the measured beads: the start document's ``bead_ids``, which
    the experiment plans fill without the reference beads, else the beads in the bead
    layout of the run's streams' configuration (:func:`_layout_bead_ids`), else []);
    ``reference_bead_ids``; ``exit_status`` (None while the run is open or if it never
    closed); ``num_events`` (per stream).
    """
    start = _start(run)
    stop = run.metadata.get("stop") or {}
    beads = start.get("bead_ids")
    if beads is None:
        beads = _layout_bead_ids(run)
    return {
        "uid": start.get("uid"),
        "plan": start.get("plan_name"),
        "sample": start.get("sample"),
        "operator": start.get("operator"),
        "time": _iso(start.get("time")),
        "streams": list(run),
        "bead_ids": [int(b) for b in beads],
        "reference_bead_ids": [int(b) for b in start.get("reference_bead_ids", [])],
        "exit_status": stop.get("exit_status"),
        "num_events": dict(stop.get("num_events") or {}),
    }



def _layout_bead_ids(run: Any) -> list[int]:
    """The beads of the first stream (``tracks``, ``primary``, then by name) whose
    configuration carries a bead layout; [] when none does."""
    names = list(run)
    for name in [n for n in ("tracks", "primary") if n in names] + sorted(
        n for n in names if n not in ("tracks", "primary")
    ):
        configuration = run[name].metadata.get("configuration") or {}
        devices = BeadLayout.devices_in(configuration)
        if devices:
            return BeadLayout.from_configuration(configuration, devices[0]).bead_ids.tolist()
    return []
