"""Live data from Tiled: how soon a subscriber in another process gets a plan's events.

Run:  .venv/bin/python benchmarks/bench_live.py [--events 60] [--rate 10] [--batch 1 5 50]

Real processes on loopback: a Redis server (Tiled's streaming cache), the embedded Tiled
server with it, a subscriber process (``runs.watch_live``), and this process running
``bp.count`` at ``--rate`` events/s through the session's spooling writer. For each
writer batch size (events per request; the session's default, 50, is the baseline)
printed: events received (of those written) and the latency from each event's time to
its arrival, median / p95 / max (the issue's bar: p95 under 2 s).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from live_stream_probe import latencies, measure_live  # noqa: E402
from magscope_ipc.processes import free_port  # noqa: E402
from magscope_session import EmbeddedTiled  # noqa: E402
from magscope_session._services import start_redis  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=60)
    ap.add_argument("--rate", type=float, default=10.0, help="events per second")
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 5, 50])
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        port = free_port()
        redis = start_redis(f"127.0.0.1:{port}", data_dir=root / "redis")
        try:
            with EmbeddedTiled(root / "tiled", port=0,
                               streaming_cache=f"redis://127.0.0.1:{port}") as tiled:
                for batch in args.batch:
                    _, rows = measure_live(tiled.uri, tiled.api_key, root / f"b{batch}",
                                           events=args.events, period_s=1 / args.rate,
                                           batch_size=batch)
                    lat = 1000 * latencies(rows)
                    p50, p95 = np.percentile(lat, [50, 95])
                    label = " (session default, baseline)" if batch == 50 else ""
                    print(f"batch {batch:>3}{label}: {len(lat)} of {args.events} events at "
                          f"{args.rate:g}/s received; latency median {p50:.0f} ms, p95 "
                          f"{p95:.0f} ms, max {lat.max():.0f} ms", flush=True)
        finally:
            redis.stop()


if __name__ == "__main__":
    main()
