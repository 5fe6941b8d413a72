"""Reading a run's full-rate bead tracks (behind :func:`magscope_session.runs.bead_tracks`).

Which column is which bead comes from one place: the bead layout in the configuration of
the stream's tracker (:class:`magscope_devices._bead_layout.BeadLayout`: ``<tracker>-bead_ids``,
the columns in order, with the ROIs, ROI size, nm/px and the Z-LUT's run uid).
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from magscope_devices._bead_layout import BeadLayout
from magscope_plans._recording import extension_traces, lateral_traces

__all__ = ["TRACK_COLUMNS", "BeadNotInRunError", "NoTracksError", "bead_tracks"]

#: Columns of the DataFrame :func:`bead_tracks` returns.
TRACK_COLUMNS = ("time_s", "frame_index", "x_nm", "y_nm", "z_nm")

_XYZ = ("x_nm", "y_nm", "z_nm")


class NoTracksError(ValueError):
    """The run holds no full-rate bead tracks (or not in the stream asked for)."""


class BeadNotInRunError(ValueError):
    """A bead id is not among the beads tracked in the run."""


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


# --------------------------------------------------------------------------- tracks
@dataclasses.dataclass
class _TracksLayout:
    stream: str
    node: Any
    prefix: str  # the tracker's name, e.g. "microscope-tracker"
    layout: BeadLayout  # the columns' beads, in order
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


def _streams_to_search(
    names: list[str], stream: str | None, preferred: Sequence[str]
) -> list[str]:
    """The streams a reader looks in, in order: ``stream`` alone if given (none if the run
    has no such stream), else the ``preferred`` ones the run has, then the rest sorted."""
    if stream is not None:
        return [stream] if stream in names else []
    first = [n for n in preferred if n in names]
    return first + sorted(n for n in names if n not in first)


def _find_tracks(run: Any, stream: str | None) -> tuple[str, Any, str]:
    start = _start(run)
    names = list(run)
    if stream is not None and stream not in names:
        raise NoTracksError(f"{_describe(start)} has no stream {stream!r}; its streams: {names}")
    for name in _streams_to_search(names, stream, ("tracks", "primary")):
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


def _tracker_config(node: Any, prefix: str, field: str) -> Any:
    try:
        return node.metadata["configuration"][prefix]["data"][f"{prefix}-{field}"]
    except (KeyError, TypeError, AttributeError):
        return None


def _tracks_layout(run: Any, stream: str | None) -> _TracksLayout:
    """Where the tracks are, and the bead of each column: the bead layout in the
    configuration of the stream's tracker (the tracker writes one column per bead of its
    ROI table, in increasing bead id, and records which in ``<tracker>-bead_ids``)."""
    start = _start(run)
    name, node, prefix = _find_tracks(run, stream)
    x_array = _field(node, f"{prefix}-x_nm")
    try:
        layout = BeadLayout.from_configuration(
            node.metadata.get("configuration") or {}, prefix
        )
    except KeyError as err:
        raise NoTracksError(
            f"{_describe(start)}: stream {name!r} does not record which bead each track "
            f"column is ({err.args[0]}): it was written before runs carried their bead "
            f"layout. Read the arrays directly: run[{name!r}][{prefix + '-x_nm'!r}].read() "
            "(events, frames, beads; columns in increasing bead id)."
        ) from None
    n_beads = int(x_array.shape[-1])
    if layout.bead_ids.size != n_beads:
        raise NoTracksError(
            f"{_describe(start)}: stream {name!r} has {n_beads} track columns but its "
            f"configuration names {layout.bead_ids.size} beads {layout.bead_ids.tolist()}"
        )
    return _TracksLayout(name, node, prefix, layout, x_array)


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

    Which column is which bead: the bead layout recorded in the configuration of the
    stream's tracker (``<tracker>-bead_ids``; :class:`magscope_devices._bead_layout.BeadLayout`).
    ``df.attrs`` records the run uid, stream, bead, the layout (ROIs, ROI size, nm/px,
    the Z-LUT's run uid) and the reference beads used.

    Raises
    ------
    NoTracksError
        The run (or ``stream``) has no full-rate tracks, or its configuration does not
        say which bead each column is.
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
    ids = layout.layout.bead_ids.tolist()
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
        layout=layout.layout, drift_corrected=bool(drift_correct),
        reference_beads=refs, t0_unix_s=float(t0),
    )
    return frame




# --------------------------------------------------------------------------- all beads
@dataclasses.dataclass(frozen=True)
class RunTracks:
    """Every recorded frame of every bead of one stream (for review, e.g. the viewer).

    ``frame_index`` (frames,) camera frame numbers; ``timestamp`` (frames,) UNIX s;
    ``status`` (frames,) the tracker's frame status (1 tracked, 2 dropped); ``x_nm``,
    ``y_nm``, ``z_nm`` (frames, beads) nm, one column per bead of ``layout`` (its
    ``bead_ids``, ROIs, ROI size px, nm/px); NaN where the tracker lost the bead.
    """

    run_uid: str
    stream: str
    tracker: str
    layout: BeadLayout
    frame_index: np.ndarray
    timestamp: np.ndarray
    status: np.ndarray
    x_nm: np.ndarray
    y_nm: np.ndarray
    z_nm: np.ndarray

    def __len__(self) -> int:
        return int(self.frame_index.size)


def read_tracks(run: Any, *, stream: str | None = None) -> RunTracks:
    """All beads' full-rate tracks of a run in one read (the stream chosen as for
    :func:`bead_tracks`; raises :class:`NoTracksError` likewise). Frames in recording
    order, events flattened."""
    start = _start(run)
    layout = _tracks_layout(run, stream)
    node, prefix = layout.node, layout.prefix
    n_beads = layout.layout.bead_ids.size

    def flat(field: str, dtype: Any, per_bead: bool) -> np.ndarray:
        array = layout.x_array if field == "x_nm" else _field(node, f"{prefix}-{field}")
        values = np.asarray(array.read(), dtype=dtype)
        return values.reshape(-1, n_beads) if per_bead else values.reshape(-1)

    xyz = {f: flat(f, float, True) for f in _XYZ}
    frame_index = flat("frame_index", np.int64, False)
    stamps = flat("timestamp", float, False)
    try:
        status = flat("frame_status", np.int32, False)
    except KeyError:  # older runs: tracked where any bead has a position
        status = np.where(np.isfinite(xyz["x_nm"]).any(axis=1), 1, 2).astype(np.int32)
    n = min(frame_index.size, stamps.size, status.size, *(a.shape[0] for a in xyz.values()))
    return RunTracks(
        run_uid=str(start.get("uid")), stream=layout.stream, tracker=prefix,
        layout=layout.layout, frame_index=frame_index[:n], timestamp=stamps[:n],
        status=status[:n], **{f: a[:n] for f, a in xyz.items()},
    )
