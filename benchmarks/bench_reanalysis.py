"""Re-analysis on Dask distributed: runs re-tracked per minute, serial and on 1 and 2
worker processes.

Run:  .venv/bin/python benchmarks/bench_reanalysis.py [--runs 4] [--frames 200]

Everything real: the simulated instrument records ``--runs`` runs of ``--frames`` frames
with the ROI crops of its beads (6 beads, 64 px ROIs) into an embedded Tiled, after a
Z-LUT sweep; then every run is re-tracked with that Z-LUT (``magscope_session.
_reanalysis.reanalyse``): in this process (the baseline, measured in the same run), and
on 1 and 2 worker processes, both as ``magscope reanalyse`` runs a job (a LocalCluster
started for it: its start-up included) and on a cluster that is already up (warm
workers; every run's metadata read again each time). Printed per configuration: median
seconds, runs per minute, rows per second, and whether the result equals the serial one
bit for bit. Each configuration twice: the crops read through the Tiled server (a third
process, over loopback) and straight from the runs' HDF5 files (``read_from``); this
machine has 2 cores.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from crop_runs import record_crop_runs  # noqa: E402
from magscope_session import EmbeddedTiled  # noqa: E402
from magscope_session._reanalysis import reanalyse  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=4)
    ap.add_argument("--frames", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=3, help="timings per configuration")
    ap.add_argument("--chunk-rows", type=int, default=50)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        with EmbeddedTiled(root / "tiled", port=0) as tiled:
            heights = [2.0 + 0.5 * k for k in range(args.runs)]
            t0 = time.perf_counter()
            zlut, uids = record_crop_runs(tiled, root, frames=args.frames, heights=heights,
                                          instance="benchreanalysis")
            print(f"recorded {len(uids)} runs x {args.frames} frames with ROI crops in "
                  f"{time.perf_counter() - t0:.0f} s", flush=True)
            rows = len(uids) * args.frames
            reference = None

            def measure(label: str, before, **kwargs) -> None:
                nonlocal reference
                times, exact = [], True
                for _ in range(args.repeats):
                    before()
                    t0 = time.perf_counter()
                    out = reanalyse(tiled.uri, uids, zlut_run=zlut, api_key=tiled.api_key,
                                    chunk_rows=args.chunk_rows, **kwargs)
                    times.append(time.perf_counter() - t0)
                    if reference is None:
                        reference = out
                    exact &= all(a.equals(b) for a, b in zip(reference, out, strict=True))
                med = statistics.median(times)
                print(f"{label:<48} median {med:5.1f} s ({min(times):.1f}-{max(times):.1f}): "
                      f"{60 * len(uids) / med:6.1f} runs/min, {rows / med:5.0f} rows/s; "
                      f"equal to serial: {exact}", flush=True)

            measure("serial, in this process, via Tiled (baseline)", _clear_caches,
                    serial=True, read_from="tiled")
            measure("serial, in this process, from the files", _clear_caches, serial=True,
                    read_from="files")
            for n in (1, 2):  # as `magscope reanalyse` does: a LocalCluster per job
                for source in ("tiled", "files"):
                    measure(f"{n} worker(s), a LocalCluster per job, {source}",
                            _clear_caches, workers=n, read_from=source)
            from distributed import Client, LocalCluster

            for n in (1, 2):  # a cluster that is up (a lab's scheduler): warm workers
                with LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                                  host="127.0.0.1", dashboard_address=None) as cluster, \
                        Client(cluster) as client:
                    client.run(_warm)

                    def clear(client=client) -> None:
                        _clear_caches()
                        client.run(_clear_caches)

                    for source in ("tiled", "files"):
                        measure(f"{n} worker(s), a cluster already up, {source}", clear,
                                scheduler=cluster.scheduler_address, read_from=source)


def _clear_caches() -> None:
    """Each run's metadata and the Z-LUT read again, as for runs never seen."""
    from magscope_session import _reanalysis

    _reanalysis._video_of.cache_clear()
    _reanalysis._zlut.cache_clear()


def _warm() -> None:
    """A worker's imports and kernels loaded (what a cluster that is up has done)."""
    import numpy as np

    from magscope_tracking import track

    track(np.zeros((1, 64, 64)))


if __name__ == "__main__":
    main()
