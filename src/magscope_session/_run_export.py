"""A run's tracks out of Tiled into a file other programs read: CSV or Parquet.

One row per frame and bead (frames in recording order, beads in the run's bead order):

=================  ====================================================================
``time_s``         s since the first recorded frame
``unix_time_s``    the frame's camera timestamp (UNIX s)
``frame_index``    camera frame number
``bead_id``        the tracker's stable bead id
``x_nm, y_nm``     bead centre, sensor coordinates (nm)
``z_nm``           height from the Z-LUT (nm; NaN without one)
``extension_nm``   ``z_nm`` minus the reference beads' mean z in that frame (nm; NaN for
                   the reference beads themselves and when the run names none), minus
                   the bead's radius offset when the run's plan recorded one
                   (``bead_radius_offsets_nm`` of its start document: the bead's radius
                   minus the reference beads', from the force calibration), so the
                   tether's extension, as the plan's own streams give it
``force_pn``       the force the microscope reported at the frame's time (pN; the newest
                   reading of the run's events at or before it, by the reading's own
                   timestamp; NaN before the first or when the run did not read it)
``magnet_z_mm``    the magnet height at the frame's time, likewise (mm)
=================  ====================================================================

The run's metadata (uid, plan, sample, operator, times, stream, bead layout, reference
beads, the columns and their units) goes into a JSON sidecar ``PATH.json`` beside a CSV
file, and into the schema metadata (key ``magscope``) of a Parquet file as well. Parquet
keeps every value as it is (float64); a CSV rounds positions to 0.001 nm, forces to
1e-5 pN and magnet heights to 1e-6 mm (:data:`CSV_DECIMALS`), far below what tracking
resolves. Files are
the owner's only; an existing file is never replaced unless asked. The table is built
column by column with NumPy and written by pyarrow (no per-row Python).
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ._run_tracks import RunTracks, _start, read_tracks

#: the exported columns and their units
EXPORT_COLUMNS: dict[str, str] = {
    "time_s": "s", "unix_time_s": "s", "frame_index": "", "bead_id": "",
    "x_nm": "nm", "y_nm": "nm", "z_nm": "nm", "extension_nm": "nm", "force_pn": "pN",
    "magnet_z_mm": "mm",
}
FORMATS = {".csv": "csv", ".parquet": "parquet"}
#: decimals a CSV keeps (far below what tracking resolves; Parquet keeps every bit): the
#: shorter text writes faster and is a third smaller
CSV_DECIMALS = {"x_nm": 3, "y_nm": 3, "z_nm": 3, "extension_nm": 3, "force_pn": 5,
                "magnet_z_mm": 6}


@dataclasses.dataclass(frozen=True)
class ExportSummary:
    """What :func:`export_tracks` wrote: the file, its metadata sidecar, the rows (frames
    x beads), frames and beads."""

    path: Path
    sidecar: Path
    rows: int
    frames: int
    beads: int


@dataclasses.dataclass(frozen=True)
class EventSeries:
    """A reading the run's events carry over time: times (UNIX s, increasing), values."""

    name: str
    time: np.ndarray
    value: np.ndarray

    def at(self, t: np.ndarray) -> np.ndarray:
        """The newest value at or before each of ``t`` (NaN before the first)."""
        k = np.searchsorted(self.time, t, side="right") - 1
        out = np.where(k >= 0, self.value[np.clip(k, 0, None)], np.nan)
        return out.astype(float)


def event_series(run: Any, suffix: str) -> EventSeries | None:
    """The readings of the first data key named ``suffix`` without its dash or ending in
    it (``"-force"``: ``force``, ``microscope-force``) in the run's event streams, merged
    over streams in time order (each reading at its own timestamp, ``ts_<key>``, where
    the stream keeps it); None if no stream has one."""
    times, values, name = [], [], None
    for stream in run:
        node = run[stream]
        keys = [k for k in node.metadata.get("data_keys", {})
                if k.endswith(suffix) or k == suffix.lstrip("-")]
        if not keys or keys[0] not in node:
            continue
        if name is None:
            name = keys[0]
        if keys[0] != name:
            continue
        value = np.asarray(node[name].read(), float).reshape(-1)
        # the reading's own timestamp (when the value was measured: for the force, when
        # the magnet reached its height), else the event's time (after the reading)
        stamp_key = next((k for k in (f"ts_{name}", "time") if k in node), None)
        stamps = (np.asarray(node[stamp_key].read(), float).reshape(-1)
                  if stamp_key is not None else None)
        if stamps is None or stamps.size != value.size:
            continue
        times.append(stamps)
        values.append(value)
    if name is None or not times:
        return None
    t, v = np.concatenate(times), np.concatenate(values)
    order = np.argsort(t, kind="stable")
    return EventSeries(name, t[order], v[order])


def tracks_table(
    tracks: RunTracks, reference_beads: Sequence[int] = (), *,
    force: EventSeries | None = None, magnet_z: EventSeries | None = None,
    radius_offsets_nm: dict[int, float] | None = None,
) -> dict[str, np.ndarray]:
    """The export columns of ``tracks`` (see the module docstring), frame-major: row
    ``f * beads + b`` is frame ``f``, bead ``b``."""
    n_frames, n_beads = tracks.x_nm.shape
    ids = tracks.layout.bead_ids.astype(np.int64)
    refs = np.isin(ids, np.asarray(list(reference_beads), np.int64))
    z = np.asarray(tracks.z_nm, float)
    if refs.any():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # every reference bead lost
            ref_z = np.nanmean(z[:, refs], axis=1)
        extension = z - ref_z[:, None]
        extension[:, refs] = np.nan
        if radius_offsets_nm:
            extension -= np.array([radius_offsets_nm.get(int(b), 0.0) for b in ids])[None, :]
    else:
        extension = np.full_like(z, np.nan)
    stamps = np.asarray(tracks.timestamp, float)
    finite = np.flatnonzero(np.isfinite(stamps))
    t0 = stamps[finite[0]] if finite.size else np.nan

    def per_frame(values: np.ndarray) -> np.ndarray:
        return np.repeat(values, n_beads)

    def per_bead(values: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(values).reshape(-1)

    nan = np.full(n_frames, np.nan)
    return {
        "time_s": per_frame(stamps - t0),
        "unix_time_s": per_frame(stamps),
        "frame_index": per_frame(np.asarray(tracks.frame_index, np.int64)),
        "bead_id": np.tile(ids, n_frames),
        "x_nm": per_bead(np.asarray(tracks.x_nm, float)),
        "y_nm": per_bead(np.asarray(tracks.y_nm, float)),
        "z_nm": per_bead(z),
        "extension_nm": per_bead(extension),
        "force_pn": per_frame(force.at(stamps) if force is not None else nan),
        "magnet_z_mm": per_frame(magnet_z.at(stamps) if magnet_z is not None else nan),
    }


def _radius_offsets(run: Any) -> dict[int, float]:
    """Bead id -> its radius minus the reference beads' (nm), as the run's plan used them
    (start document ``bead_ids`` and ``bead_radius_offsets_nm``); empty if it has none."""
    start = _start(run)
    offsets = start.get("bead_radius_offsets_nm")
    ids = start.get("bead_ids")
    if not offsets or not ids or len(offsets) != len(ids):
        return {}
    return {int(b): float(o) for b, o in zip(ids, offsets, strict=True)}


def _reference_beads(run: Any, tracks: RunTracks) -> list[int]:
    start = _start(run)
    refs = start.get("reference_bead_ids")
    if not refs:
        node = run[tracks.stream]
        config = node.metadata.get("configuration", {}).get(tracks.tracker.split("-")[0], {})
        refs = config.get("data", {}).get(f"{tracks.tracker}-reference_beads")
    return [int(b) for b in (refs or [])]


def run_metadata(run: Any, tracks: RunTracks, refs: Sequence[int], extra: dict) -> dict:
    """The sidecar: who, what, when, where the columns came from, and their units."""
    start = _start(run)
    stop = run.metadata.get("stop") or {}
    layout = tracks.layout
    keep = ("uid", "plan_name", "sample", "operator", "instrument", "scan_id", "time",
            "bead_ids", "plan_args")
    return {
        "magscope_export": 1,
        "run": {k: start[k] for k in keep if k in start},
        "exit_status": stop.get("exit_status"),
        "stream": tracks.stream,
        "tracker": tracks.tracker,
        "bead_layout": {
            "bead_ids": layout.bead_ids.tolist(), "roi_x0_px": layout.roi_x0_px.tolist(),
            "roi_y0_px": layout.roi_y0_px.tolist(), "roi_size_px": int(layout.roi_size_px),
            "nm_per_px": float(layout.nm_per_px), "zlut_uid": layout.zlut_uid,
        },
        "reference_beads": list(refs),
        "columns": EXPORT_COLUMNS,
        **extra,
    }


def write_table(
    columns: dict[str, np.ndarray], path: Path, fmt: str, metadata: dict, *,
    overwrite: bool = False,
) -> Path:
    """Write ``columns`` to ``path`` (``fmt`` "csv" or "parquet") and the metadata to the
    sidecar ``path.json``, both owner-only, through temporary files renamed at the end (a
    failed write leaves no half file). Returns the sidecar's path."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    path = Path(path)
    sidecar = path.with_name(path.name + ".json")
    if not overwrite:
        for p in (path, sidecar):
            if p.exists():
                raise FileExistsError(f"{p} exists; pass overwrite=True (--overwrite) to replace it")
    if fmt == "csv":  # text: positions to 1 pm, forces to 1e-5 pN, heights to 1 nm
        metadata = {**metadata, "csv_decimals": CSV_DECIMALS}
        columns = {k: np.round(v, CSV_DECIMALS[k]) if k in CSV_DECIMALS else v
                   for k, v in columns.items()}
    text = json.dumps(metadata, indent=2, default=str)
    table = pa.table(columns)
    if fmt == "parquet":
        table = table.replace_schema_metadata({"magscope": text})
    path.parent.mkdir(parents=True, exist_ok=True)
    written: list[tuple[str, Path]] = []
    try:
        for target, write in (
            (path, lambda p: pq.write_table(table, p, compression="zstd") if fmt == "parquet"
             else pacsv.write_csv(table, p)),
            (sidecar, lambda p: Path(p).write_text(text)),
        ):
            # mkstemp makes the file owner-only; pyarrow writes to the path itself (through
            # a Python file object the CSV writer took 60 % longer)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{target.name}.", suffix=".tmp")
            os.close(fd)
            written.append((tmp, target))
            write(tmp)
        for tmp, target in written:
            os.replace(tmp, target)
    finally:
        for tmp, _ in written:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return sidecar


def export_tracks(
    run: Any, path: str | os.PathLike[str], *, stream: str | None = None,
    fmt: str | None = None, overwrite: bool = False,
) -> ExportSummary:
    """Write the full-rate tracks of ``run`` (a run client) to ``path``: CSV or Parquet by
    its suffix (or ``fmt``), the metadata beside it (see the module docstring).

    Raises :class:`~magscope_session.runs.NoTracksError` when the run has no full-rate
    tracks, :class:`FileExistsError` when ``path`` exists (unless ``overwrite``),
    :class:`ValueError` for an unknown format."""
    path = Path(path).expanduser()
    fmt = fmt or FORMATS.get(path.suffix.lower())
    if fmt is None or fmt not in FORMATS.values():
        raise ValueError(
            f"export format of {str(path)!r}: {fmt or path.suffix or 'no suffix'!r}; use "
            f"a .csv or .parquet path (or fmt='csv' / 'parquet')"
        )
    tracks = read_tracks(run, stream=stream)
    refs = _reference_beads(run, tracks)
    force = event_series(run, "-force")
    magnet = event_series(run, "-magnet_z")
    offsets = _radius_offsets(run)
    columns = tracks_table(tracks, refs, force=force, magnet_z=magnet, radius_offsets_nm=offsets)
    metadata = run_metadata(run, tracks, refs, {
        "force_source": force.name if force else None,
        "magnet_z_source": magnet.name if magnet else None,
        "bead_radius_offsets_nm": {str(b): o for b, o in offsets.items()},
    })
    sidecar = write_table(columns, path, fmt, metadata, overwrite=overwrite)
    n_frames, n_beads = tracks.x_nm.shape
    return ExportSummary(path, sidecar, n_frames * n_beads, n_frames, n_beads)
