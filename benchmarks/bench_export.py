"""Exporting tracks: rows per second to CSV and Parquet, against pandas in the same run.

One command: ``.venv/bin/python benchmarks/bench_export.py [--frames N] [--beads B]
[--repeats R]``. A run's tracks as :func:`magscope_session.runs.read_tracks` returns them
(``RunTracks``: ``--frames`` x ``--beads``, default 100,000 x 100 = 10^7 rows, positions
with the noise and the NaN of lost beads a real run has, a force and a magnet height
from events) are turned into the export table (:func:`tracks_table`) and written
(:func:`write_table`) to CSV and to Parquet; the baseline is pandas writing the same
table (``DataFrame.to_csv``, ``DataFrame.to_parquet``). Medians of ``--repeats``; the
file sizes are printed. Reading from Tiled is not included (it depends on the server and
the network; the system test ``test_runs.py`` exports a real run). The machine is shared:
note ``uptime`` with the figures.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from magscope_devices._bead_layout import BeadLayout
from magscope_session._run_export import EventSeries, tracks_table, write_table
from magscope_session._run_tracks import RunTracks


def synthetic_tracks(frames: int, beads: int, seed: int = 0) -> RunTracks:
    rng = np.random.default_rng(seed)
    t = 1.7e9 + np.arange(frames) / 200.0
    xy0 = rng.uniform(5_000, 100_000, (2, beads))
    x = xy0[0] + rng.normal(0, 30, (frames, beads))
    y = xy0[1] + rng.normal(0, 30, (frames, beads))
    z = rng.normal(1500, 40, (frames, beads))
    lost = rng.random((frames, beads)) < 0.001
    for a in (x, y, z):
        a[lost] = np.nan
    layout = BeadLayout(
        bead_ids=np.arange(beads), roi_x0_px=np.zeros(beads, int), roi_y0_px=np.zeros(beads, int),
        roi_size_px=64, nm_per_px=100.0,
    )
    return RunTracks(
        run_uid="bench", stream="tracks", tracker="tracker", layout=layout,
        frame_index=np.arange(frames), timestamp=t, status=np.ones(frames, np.int32),
        x_nm=x, y_nm=y, z_nm=z,
    )


def timed(func, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = func()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), out


def pandas_write(table: dict[str, np.ndarray], path: Path, fmt: str) -> None:
    frame = pd.DataFrame(table)
    if fmt == "parquet":
        frame.to_parquet(path)
    else:
        frame.to_csv(path, index=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=100_000)
    parser.add_argument("--beads", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    tracks = synthetic_tracks(args.frames, args.beads)
    n = args.frames * args.beads
    times = tracks.timestamp[:: max(1, args.frames // 20)]
    force = EventSeries("microscope-force", times, np.linspace(0.1, 10, times.size))
    magnet = EventSeries("microscope-magnet_z", times, np.linspace(8, 1, times.size))
    refs = [0, 1]
    build_s, table = timed(lambda: tracks_table(tracks, refs, force=force, magnet_z=magnet), args.repeats)
    print(f"{n:,} rows ({args.frames:,} frames x {args.beads} beads); table built in "
          f"{build_s:.2f} s (median of {args.repeats})")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        rows = []
        for fmt in ("parquet", "csv"):
            path = folder / f"t.{fmt}"
            ours, _ = timed(lambda p=path, f=fmt: write_table(table, p, f, {}, overwrite=True),
                            args.repeats)
            size = path.stat().st_size
            base_path = folder / f"pandas.{fmt}"
            base, _ = timed(
                lambda p=base_path, f=fmt: pandas_write(table, p, f),
                1 if fmt == "csv" else args.repeats,
            )
            rows.append((fmt, build_s + ours, size, base))
        for fmt, total, size, base in rows:
            print(f"{fmt:8s} export {total:6.2f} s ({n / total / 1e6:5.2f} M rows/s, "
                  f"{size / 1e6:7.1f} MB) | pandas writing the same table {base:6.2f} s | "
                  f"ratio {base / total:5.1f}x")


if __name__ == "__main__":
    main()
