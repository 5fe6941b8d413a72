"""Finding and reading past runs in Tiled, for analysis in IPython or a notebook.

Every function that needs the catalog takes either a Tiled client (a container node:
``tiled.client.from_uri(...)``, ``target.client()``) or the server's URI as a string
(then it connects with the API key ``api_key``, default ``$MAGSCOPE_TILED_API_KEY``).
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
In stream ``tracks`` (:class:`magscope_plans.recording.TrackRecorder`) the frames of
successive records follow each other (frame_index jumps between records); in ``primary``
(counting the tracker) each event is one trigger window of ``window_frames`` frames and
the stream also holds ``<tracker>-bead_id`` (events, beads) and the per-window means.
The ``tracks`` stream does not carry the bead ids: see :func:`bead_tracks` for how
columns are matched to bead ids.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import numbers
import os
import warnings
from collections.abc import Iterable, Sequence
from itertools import islice
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import numpy as np
import pandas as pd

from magscope_devices.force_curve import ForceCalibration
from magscope_plans.recording import extension_traces, lateral_traces
from magscope_tracking import ZLUT
from magscope_tracking.options import TrackOptions
from magscope_tracking.track_file import DATASETS as TRACK_FILE_DATASETS

from .tiled_server import ENV_TILED_API_KEY, TiledUnreachableError, check_reachable

__all__ = [
    "BeadNotInRunError",
    "NoTracksError",
    "TRACK_COLUMNS",
    "bead_tracks",
    "connect",
    "find_runs",
    "force_calibration_of",
    "run_summary",
    "zlut_of",
]

#: Columns of the DataFrame :func:`bead_tracks` returns.
TRACK_COLUMNS = ("time_s", "frame_index", "x_nm", "y_nm", "z_nm")

_RUN_SPEC = "BlueskyRun"
_XYZ = ("x_nm", "y_nm", "z_nm")


class NoTracksError(ValueError):
    """The run holds no full-rate bead tracks (or not in the stream asked for)."""


class BeadNotInRunError(ValueError):
    """A bead id is not among the beads tracked in the run."""


# --------------------------------------------------------------------------- connecting
def connect(client_or_uri: Any, *, api_key: str | None = None, timeout: float = 5.0) -> Any:
    """The Tiled client of ``client_or_uri``.

    Parameters
    ----------
    client_or_uri
        A Tiled client node (returned as it is), an object with a ``client()`` method
        (:class:`~magscope_session.tiled_server.TiledTarget`,
        :class:`~magscope_session.tiled_server.EmbeddedTiled`), or the URI of a Tiled
        server, e.g. ``"http://127.0.0.1:8000"``.
    api_key
        API key for a URI; default the environment variable ``MAGSCOPE_TILED_API_KEY``
        (none if unset). Ignored for a client.
    timeout
        Time (s) to wait for the server to answer before giving up.

    Raises
    ------
    TiledUnreachableError
        No Tiled server answers at the URI within ``timeout`` s, or it rejects the key;
        the message names the URI. (Checked first, so an unreachable server fails in
        about ``timeout`` s instead of after the Tiled client's ~25 s of retries.)
    """
    from tiled.client.base import BaseClient

    if isinstance(client_or_uri, BaseClient):
        return client_or_uri
    if isinstance(client_or_uri, str):
        uri = client_or_uri.strip()
        parsed = urlparse(uri)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ValueError(
                f"{client_or_uri!r} is not the URI of a Tiled server; expected e.g. "
                "'http://127.0.0.1:8000'"
            )
        key = api_key if api_key is not None else (os.environ.get(ENV_TILED_API_KEY) or None)
        root = f"{parsed.scheme}://{parsed.netloc}"
        try:
            check_reachable(root, key, timeout=timeout)
        except TiledUnreachableError as err:
            if root != uri:
                raise TiledUnreachableError(f"Cannot connect to {uri}: {err}") from err
            raise
        from tiled.client import from_uri

        return from_uri(uri, api_key=key)
    make_client = getattr(client_or_uri, "client", None)
    if callable(make_client):
        return make_client()
    raise TypeError(
        f"expected a Tiled client or a URI string, got {type(client_or_uri).__name__}"
    )


def _is_run(node: Any) -> bool:
    try:
        return any(spec.name == _RUN_SPEC for spec in node.specs)
    except (AttributeError, TypeError):
        return False


# --------------------------------------------------------------------------- finding
def _unix_bound(value: Any, name: str, *, upper: bool) -> tuple[float, bool] | None:
    """``value`` as (UNIX s, exclusive). A date (no time of day) as the upper bound means
    the end of that day: the next local midnight, exclusive."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise TypeError(f"{name} must be a datetime, a date string or a UNIX time, not a bool")
    if isinstance(value, numbers.Real):
        seconds = float(value)
        if not math.isfinite(seconds):
            raise ValueError(f"{name}={value!r} is not a finite UNIX time (s)")
        return seconds, False
    day: dt.date | None = None
    when: dt.datetime | None = None
    if isinstance(value, dt.datetime):
        when = value
    elif isinstance(value, dt.date):
        day = value
    elif isinstance(value, str):
        text = value.strip()
        try:
            if len(text) == 10:
                day = dt.date.fromisoformat(text)
            else:
                when = dt.datetime.fromisoformat(text)
        except ValueError:
            raise ValueError(
                f"{name}={value!r}: expected a date 'YYYY-MM-DD', a date and time "
                "'YYYY-MM-DDTHH:MM[:SS]', a datetime or a UNIX time in s"
            ) from None
    else:
        raise TypeError(
            f"{name} must be a datetime, a date string 'YYYY-MM-DD' or a UNIX time (s), "
            f"not {type(value).__name__}"
        )
    if day is not None:
        if upper:
            day = day + dt.timedelta(days=1)
            return dt.datetime.combine(day, dt.time()).timestamp(), True
        return dt.datetime.combine(day, dt.time()).timestamp(), False
    assert when is not None
    return when.timestamp(), False  # naive: local time


def find_runs(
    client_or_uri: Any,
    *,
    sample: str | None = None,
    plan: str | None = None,
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
        The catalog: a Tiled client or a server URI (see :func:`connect`).
    sample, plan, operator
        Exact match on the start document's ``sample``, ``plan_name``, ``operator``.
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
    for key, value in (("sample", sample), ("plan_name", plan), ("operator", operator)):
        if value is not None:
            node = node.search(Key(f"start.{key}") == value)
    lower = _unix_bound(since, "since", upper=False)
    upper = _unix_bound(until, "until", upper=True)
    if lower is not None and upper is not None and upper[0] < lower[0]:
        raise ValueError(f"until={until!r} is before since={since!r}")
    if lower is not None:
        node = node.search(Key("start.time") >= lower[0])
    if upper is not None:
        t, exclusive = upper
        node = node.search(Key("start.time") < t if exclusive else Key("start.time") <= t)
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
        for run in islice(part.sort(("start.time", -1)).values(), limit):
            start = run.metadata["start"]
            found.setdefault(start["uid"], (float(start.get("time", 0.0)), run))
    ordered = [run for _, run in sorted(found.values(), key=lambda item: -item[0])]
    return ordered if limit is None else ordered[:limit]


# --------------------------------------------------------------------------- one run
def _start(run: Any) -> dict[str, Any]:
    try:
        return dict(run.metadata["start"])
    except (AttributeError, KeyError, TypeError):
        raise TypeError(
            f"expected a run client (e.g. client[uid] or an item of find_runs(...)), got "
            f"{type(run).__name__}"
        ) from None


def _describe(start: dict[str, Any]) -> str:
    return f"run {start.get('uid')} ({start.get('plan_name')!r})"


def _iso(seconds: Any) -> str | None:
    if not isinstance(seconds, numbers.Real):
        return None
    return dt.datetime.fromtimestamp(float(seconds)).astimezone().isoformat(timespec="seconds")


def run_summary(run: Any) -> dict[str, Any]:
    """The essentials of a run as a dict.

    Keys: ``uid``; ``plan`` (plan name); ``sample``; ``operator``; ``time`` (start, ISO
    8601 in the local time zone of this computer, with its UTC offset); ``streams``
    (names); ``bead_ids`` (the measured beads: start document ``bead_ids``, else
    ``zlut_bead_ids``, else the beads of the full-rate tracks, else []);
    ``reference_bead_ids``; ``exit_status`` (None while the run is open or if it never
    closed); ``num_events`` (per stream).
    """
    start = _start(run)
    stop = run.metadata.get("stop") or {}
    beads = start.get("bead_ids")
    if beads is None:
        beads = start.get("zlut_bead_ids")
    if beads is None:
        try:
            beads = _tracks_layout(run, None).bead_ids.tolist()
        except (NoTracksError, LookupError, OSError):
            beads = []
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


# --------------------------------------------------------------------------- tracks
@dataclasses.dataclass
class _TracksLayout:
    stream: str
    node: Any
    prefix: str  # the tracker's name, e.g. "microscope-tracker"
    bead_ids: np.ndarray  # column order
    bead_ids_from: str
    x_array: Any  # the client of <prefix>-x_nm


def _data_keys(node: Any) -> dict[str, Any]:
    try:
        return dict(node.metadata.get("data_keys") or {})
    except AttributeError:
        return {}


def _track_prefixes(node: Any) -> list[str]:
    """Tracker names with full-rate ``-x_nm``, ``-y_nm``, ``-z_nm`` fields in a stream."""
    keys = _data_keys(node)
    names = set(keys) if keys else set(node)
    prefixes = []
    for key in names:
        if not key.endswith("-x_nm"):
            continue
        prefix = key[: -len("-x_nm")]
        if not all(f"{prefix}-{f}" in names for f in _XYZ):
            continue
        shape = keys.get(key, {}).get("shape")
        if shape is not None and len(shape) != 2:  # per event: (frames, beads)
            continue
        prefixes.append(prefix)
    return sorted(prefixes)


def _find_tracks(run: Any, stream: str | None) -> tuple[str, Any, str]:
    start = _start(run)
    names = list(run)
    if stream is not None:
        if stream not in names:
            raise NoTracksError(f"{_describe(start)} has no stream {stream!r}; its streams: {names}")
        candidates = [stream]
    else:
        candidates = [n for n in ("tracks", "primary") if n in names]
        candidates += sorted(n for n in names if n not in candidates)
    for name in candidates:
        node = run[name]
        prefixes = _track_prefixes(node)
        if len(prefixes) > 1:
            raise NoTracksError(
                f"stream {name!r} of {_describe(start)} has tracks of several trackers "
                f"{prefixes}; this function reads one tracker per stream"
            )
        if prefixes:
            return name, node, prefixes[0]
    where = f"stream {stream!r}" if stream is not None else f"any of its streams {names}"
    raise NoTracksError(
        f"{_describe(start)} has no full-rate bead tracks: {where} has no "
        "'<tracker>-x_nm' field of shape (events, frames, beads). Runs get them from the "
        "bead tracker: TrackRecorder (stream 'tracks') or counting microscope.tracker "
        "(stream 'primary')."
    )


def _file_path(uri: Any) -> Path | None:
    if not isinstance(uri, str):
        return None
    parsed = urlparse(uri)
    if parsed.scheme != "file" or parsed.netloc not in ("", "localhost"):
        return None
    return Path(unquote(parsed.path))


def _ids_from_track_file(node: Any, prefix: str) -> tuple[np.ndarray, str] | None:
    """Bead ids of the HDF5 track file behind the stream, if this computer can read it."""
    source = _data_keys(node).get(f"{prefix}-x_nm", {}).get("source")
    path = _file_path(source)
    if path is None or not path.is_file():
        return None
    import h5py

    try:
        with h5py.File(path, "r", swmr=True, locking=False) as file:
            ids = np.asarray(file[TRACK_FILE_DATASETS["bead_id"]][()], dtype=np.int64)
    except (OSError, KeyError):
        return None
    return ids, f"the track file {path}"


def _tracker_config(node: Any, prefix: str, field: str) -> Any:
    try:
        return node.metadata["configuration"][prefix]["data"][f"{prefix}-{field}"]
    except (KeyError, TypeError, AttributeError):
        return None


def _tracks_layout(run: Any, stream: str | None) -> _TracksLayout:
    """Where the tracks are, and the bead id of each column.

    Column ids, first source that works: the stream's ``<tracker>-bead_id`` field (stream
    ``primary`` of a count of the tracker); the ``/entry/tracks/bead_id`` dataset of the
    HDF5 track file named by the stream (readable when this computer sees the file, as
    with the embedded server); else the start document: the sorted union of
    ``bead_ids``, ``reference_bead_ids``, ``zlut_bead_ids`` and the tracker's configured
    reference beads, if it has exactly as many beads as there are columns (the tracker
    writes one column per bead of its ROI table, in increasing bead id).
    """
    start = _start(run)
    name, node, prefix = _find_tracks(run, stream)
    x_array = _field(node, f"{prefix}-x_nm")
    n_beads = int(x_array.shape[-1])
    keys = _data_keys(node) or dict.fromkeys(node)
    id_key = f"{prefix}-bead_id"
    if id_key in keys:
        rows = np.asarray(_field(node, id_key).read(), dtype=np.int64).reshape(-1, n_beads)
        if rows.shape[0] and np.all(rows == rows[0]):
            return _TracksLayout(
                name, node, prefix, rows[0], f"the stream field {id_key!r}", x_array
            )
    from_file = _ids_from_track_file(node, prefix)
    if from_file is not None and from_file[0].size == n_beads:
        return _TracksLayout(name, node, prefix, from_file[0], from_file[1], x_array)
    listed: set[int] = set()
    for key in ("bead_ids", "reference_bead_ids", "zlut_bead_ids"):
        listed.update(int(b) for b in start.get(key) or [])
    listed.update(int(b) for b in _tracker_config(node, prefix, "reference_beads") or [])
    if len(listed) == n_beads:
        return _TracksLayout(
            name, node, prefix, np.array(sorted(listed), np.int64),
            "the start document (bead_ids + reference_bead_ids)", x_array,
        )
    raise NoTracksError(
        f"{_describe(start)}: cannot tell which of the {n_beads} track columns of stream "
        f"{name!r} is which bead: the stream has no {id_key!r} field, the track file is not "
        f"readable from this computer, and the start document lists {len(listed)} beads "
        f"{sorted(listed)}. Read the arrays directly: run[{name!r}][{prefix + '-x_nm'!r}]"
        ".read() (events, frames, beads; columns in increasing bead id)."
    )


def _field(node: Any, key: str) -> Any:
    """The client of field ``key`` of a stream. A v3 stream is a Tiled composite node whose
    ``node[key]`` lists the stream's contents (two requests) before fetching the field;
    the array children (tracker fields from HDF5, arrays written by Tiled) are reached in
    one request through ``node.base``; columns of the event table only through the
    composite."""
    base = getattr(node, "base", None)
    if base is not None:
        try:
            return base[key]
        except KeyError:
            pass
    return node[key]


def _column(array: Any, col: int) -> np.ndarray:
    """One bead column of a (events, frames, beads) or (frames, beads) array client, read
    on the server side (only that column crosses the network), flattened to frames."""
    index = (slice(None),) * (len(array.shape) - 1) + (col,)
    return np.asarray(array[index], dtype=float).reshape(-1)


def _as_ids(beads: Iterable[Any], what: str) -> list[int]:
    out = []
    for b in beads:
        if isinstance(b, bool) or not isinstance(b, numbers.Integral):
            raise TypeError(f"{what} must be integer bead ids, got {b!r}")
        out.append(int(b))
    return out


def bead_tracks(
    run: Any,
    bead_id: int,
    *,
    stream: str | None = None,
    drift_correct: bool = False,
    reference_beads: Sequence[int] | None = None,
) -> pd.DataFrame:
    """Every recorded frame of one bead, as a DataFrame.

    Columns: ``time_s`` (s since the first recorded frame of the stream), ``frame_index``
    (camera frame number), ``x_nm``, ``y_nm`` (nm, sensor coordinates), ``z_nm`` (nm, from
    the Z-LUT; NaN without one; the height above the reference beads after an anchored
    Z-LUT sweep). One row per frame; frames the tracker dropped or where it lost the bead
    are NaN. Times come from the camera: consecutive frames are 1/frame rate apart, more
    where the camera fell behind; frame_index jumps between separate records (and between
    the trigger windows of a counted tracker).

    Parameters
    ----------
    run
        A run client.
    bead_id
        The bead (its stable tracker id).
    stream
        Stream to read; default ``tracks`` if the run has it, else ``primary``, else the
        first stream with full-rate tracks (``<tracker>-x_nm`` of shape (events, frames,
        beads)).
    drift_correct
        Subtract the drift measured by the reference beads: x and y minus the reference
        beads' mean motion since the start of the record
        (:func:`magscope_plans.analysis.subtract_drift`, so they keep their absolute
        position at the start), and z minus the reference beads' mean z in each frame (the
        height above the reference beads). The bead itself is never its own reference.
    reference_beads
        Reference bead ids; default the start document's ``reference_bead_ids``, else the
        tracker's ``reference_beads`` configuration recorded with the stream.

    Which column is which bead: the tracker writes one column per bead of its ROI table in
    increasing bead id; the ids are taken from the stream's ``<tracker>-bead_id`` field,
    else from the HDF5 track file (when this computer can read it), else from the start
    document's ``bead_ids`` + ``reference_bead_ids`` if they account for every column.
    ``df.attrs`` records the run uid, stream, bead, where the ids came from and the
    reference beads used.

    Raises
    ------
    NoTracksError
        The run (or ``stream``) has no full-rate tracks, or the columns' bead ids cannot
        be found.
    BeadNotInRunError
        ``bead_id`` (or a reference bead) was not tracked in the run; the message lists
        the run's beads.
    ValueError
        ``drift_correct`` without any reference bead, or ``reference_beads`` without
        ``drift_correct``.
    """
    (bead,) = _as_ids([bead_id], "bead_id")
    if reference_beads is not None and not drift_correct:
        raise ValueError("reference_beads is only used with drift_correct=True")
    start = _start(run)
    layout = _tracks_layout(run, stream)
    ids = layout.bead_ids.tolist()
    column = {b: i for i, b in enumerate(ids)}
    if bead not in column:
        raise BeadNotInRunError(
            f"bead {bead} is not in {_describe(start)}: stream {layout.stream!r} tracked "
            f"beads {ids}"
        )
    refs: list[int] = []
    if drift_correct:
        if reference_beads is not None:
            refs = _as_ids(reference_beads, "reference_beads")
        elif start.get("reference_bead_ids"):
            refs = _as_ids(start["reference_bead_ids"], "reference_bead_ids")
        else:
            refs = _as_ids(
                _tracker_config(layout.node, layout.prefix, "reference_beads") or [],
                "reference_beads",
            )
        missing = [b for b in refs if b not in column]
        if missing:
            raise BeadNotInRunError(
                f"reference beads {missing} are not in {_describe(start)}: stream "
                f"{layout.stream!r} tracked beads {ids}"
            )
        refs = [b for b in dict.fromkeys(refs) if b != bead]
        if not refs:
            raise ValueError(
                f"drift_correct=True but {_describe(start)} names no reference bead other "
                f"than bead {bead}: pass reference_beads=[...] (ids among {ids})"
            )
    node, prefix = layout.node, layout.prefix
    wanted = [bead, *refs]
    arrays = {f: layout.x_array if f == "x_nm" else _field(node, f"{prefix}-{f}") for f in _XYZ}
    fields = {f: np.stack([_column(a, column[b]) for b in wanted], axis=1)
              for f, a in arrays.items()}
    frame_index = np.asarray(_field(node, f"{prefix}-frame_index").read(), np.int64).reshape(-1)
    stamps = np.asarray(_field(node, f"{prefix}-timestamp").read(), dtype=float).reshape(-1)
    n = min(frame_index.size, stamps.size, *(a.shape[0] for a in fields.values()))
    frame_index, stamps = frame_index[:n], stamps[:n]
    fields = {f: a[:n] for f, a in fields.items()}
    if drift_correct:
        tracks = {"bead_id": np.asarray(wanted, np.int64), **fields}
        x = lateral_traces(tracks, [bead], refs, axis="x")[:, 0]
        y = lateral_traces(tracks, [bead], refs, axis="y")[:, 0]
        z = extension_traces(tracks, [bead], refs)[:, 0]
    else:
        x, y, z = (fields[f][:, 0] for f in _XYZ)
    finite = np.flatnonzero(np.isfinite(stamps))
    t0 = stamps[finite[0]] if finite.size else np.nan
    frame = pd.DataFrame(
        {"time_s": stamps - t0, "frame_index": frame_index, "x_nm": x, "y_nm": y, "z_nm": z},
        columns=list(TRACK_COLUMNS),
    )
    frame.attrs.update(
        run_uid=start.get("uid"), stream=layout.stream, tracker=prefix, bead_id=bead,
        bead_ids_from=layout.bead_ids_from, drift_corrected=bool(drift_correct),
        reference_beads=refs, t0_unix_s=float(t0),
    )
    return frame


# --------------------------------------------------------------------------- Z-LUT
def _last_event(node: Any, key: str) -> np.ndarray:
    return np.asarray(_field(node, key).read())[-1]


def _event_time(node: Any, fallback: float) -> float:
    try:
        return float(_last_event(node, "time"))
    except (KeyError, IndexError, TypeError, ValueError):
        return fallback


def _roi_size_from_run(run: Any) -> int | None:
    """The tracker's ``roi_size_px`` recorded in any stream's configuration."""
    for name in run:
        try:
            config = run[name].metadata.get("configuration") or {}
        except AttributeError:
            continue
        for device in config.values():
            for key, value in (device.get("data") or {}).items():
                if key.endswith("-roi_size_px") and isinstance(value, numbers.Integral):
                    return int(value)
    return None


def _roi_size_for_bins(n_bins: int) -> int | None:
    """The square ROI side whose default radial bins have ``n_bins`` knots (the tracker's
    ROI size is 64 px unless changed): 64 if it fits, else the smallest that does."""
    options = TrackOptions()
    fits = []
    for side in range(16, 513):
        try:
            if options.bins_for((side, side)).n_bins == n_bins:
                fits.append(side)
        except ValueError:
            continue
    if not fits:
        return None
    return 64 if 64 in fits else fits[0]


def zlut_of(
    run: Any, *, nm_per_px: float | None = None, roi_size_px: int | None = None
) -> ZLUT:
    """The Z-LUT a ``zlut_sweep`` run built.

    Read from the file named in the start document (``zlut_file``). If that file is gone
    (or not on this computer), rebuilt from the run's ``zlut`` stream (``zlut-z_nm`` nm,
    ``zlut-profiles``, ``zlut-bead_ids``) with a warning; the stream does not record the
    pixel size or the ROI size, so they come from ``nm_per_px`` (nm/px) / ``roi_size_px``
    (px) if given, else from the start document's ``nm_per_px`` and the tracker's
    ``roi_size_px`` recorded in any stream, else the ROI size is the one whose default
    radial bins match the profiles (64 px for the tracker's default). The radial bin
    spacing is the tracking default. The LUT's ``source`` is set to the run uid when the
    file does not name one. (The beads' heights above the reference beads are the
    stream's ``zlut-height_nm``; :func:`magscope_plans.zlut.load_zlut` loads both into a
    live tracker.)

    Raises ValueError if the run holds no Z-LUT.
    """
    start = _start(run)
    uid = start.get("uid")
    path = start.get("zlut_file")
    if path and Path(path).is_file():
        lut = ZLUT.load(path)
        return lut if lut.source is not None else dataclasses.replace(lut, source=uid)
    if "zlut" not in list(run):
        if path:
            raise FileNotFoundError(
                f"{_describe(start)}: its Z-LUT file {path} is gone and the run has no "
                "'zlut' stream to rebuild it from"
            )
        raise ValueError(f"{_describe(start)} holds no Z-LUT (no zlut_file, no 'zlut' stream)")
    if path:
        warnings.warn(
            f"The Z-LUT file {path} of run {uid} is not on this computer; rebuilding the "
            "Z-LUT from the run's 'zlut' stream.",
            stacklevel=2,
        )
    node = run["zlut"]
    profiles = _last_event(node, "zlut-profiles")
    if nm_per_px is None:
        nm_per_px = start.get("nm_per_px")
    if nm_per_px is None:
        raise ValueError(
            f"{_describe(start)}: rebuilding its Z-LUT from the 'zlut' stream needs the pixel "
            "size, which the run does not record: pass nm_per_px=... (nm per pixel)"
        )
    side = roi_size_px or _roi_size_from_run(run) or _roi_size_for_bins(int(profiles.shape[-1]))
    if side is None:
        raise ValueError(
            f"{_describe(start)}: cannot tell the ROI size of its Z-LUT: pass roi_size_px=..."
        )
    return ZLUT(
        z_nm=_last_event(node, "zlut-z_nm"),
        profiles=profiles,
        roi_size=(int(side), int(side)),
        bin_px=TrackOptions().bins_for((int(side), int(side))).bin_px,
        nm_per_px=float(nm_per_px),
        bead_ids=np.asarray(_last_event(node, "zlut-bead_ids"), dtype=np.int64),
        created=_event_time(node, float(start.get("time", 0.0))),
        source=uid,
    )


# --------------------------------------------------------------------------- forces
def force_calibration_of(run: Any) -> ForceCalibration:
    """The magnet force calibration a ``force_calibration`` run made.

    Read from the file named in the start document (``force_calibration_file``). If that
    file is gone (or not on this computer), rebuilt from the ``force_fit`` stream
    (``f0_pn`` pN, ``a``, ``l1_mm``, ``l2_mm`` mm, ``bead_id``, ``bead_scale``) and the
    plan's magnet heights (``plan_args.magnet_heights_mm``, mm: the calibrated range),
    with a warning. ``source`` is set to the run uid when the file does not name one.

    Raises ValueError if the run holds no force calibration.
    """
    start = _start(run)
    uid = start.get("uid")
    path = start.get("force_calibration_file")
    if path and Path(path).is_file():
        cal = ForceCalibration.load(path)
        return cal if cal.source is not None else dataclasses.replace(cal, source=uid)
    if "force_fit" not in list(run):
        if path:
            raise FileNotFoundError(
                f"{_describe(start)}: its force calibration file {path} is gone and the run "
                "has no 'force_fit' stream to rebuild it from"
            )
        raise ValueError(
            f"{_describe(start)} holds no force calibration (no force_calibration_file, no "
            "'force_fit' stream)"
        )
    heights = (start.get("plan_args") or {}).get("magnet_heights_mm") or []
    if len(heights) < 2:
        raise ValueError(
            f"{_describe(start)}: rebuilding its force calibration needs the magnet heights "
            f"(plan_args.magnet_heights_mm), found {heights!r}"
        )
    if path:
        warnings.warn(
            f"The force calibration file {path} of run {uid} is not on this computer; "
            "rebuilding the calibration from the run's 'force_fit' stream.",
            stacklevel=2,
        )
    node = run["force_fit"]

    def value(field: str) -> np.ndarray:
        return _last_event(node, f"force_fit-{field}")

    return ForceCalibration(
        f0_pn=float(value("f0_pn")),
        a=float(value("a")),
        l1_mm=float(value("l1_mm")),
        l2_mm=float(value("l2_mm")),
        min_height_mm=float(min(heights)),
        max_height_mm=float(max(heights)),
        bead_ids=tuple(int(b) for b in np.atleast_1d(value("bead_id"))),
        bead_scale=tuple(float(s) for s in np.atleast_1d(value("bead_scale"))),
        source=uid,
        created=_event_time(node, float(start.get("time", 0.0))),
    )
