"""A plan written through the session's spooling writer while a subscriber in another
process (``runs.watch_live``) records when each event reaches it: for the live-data
test and ``benchmarks/bench_live.py``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import bluesky.plans as bp
import numpy as np
from bluesky import RunEngine
from ophyd_async.core import StandardReadable, init_devices, soft_signal_rw

from magscope_session._setup import subscribe_tiled_writer
from magscope_session._tiled_server import TiledTarget

SUBSCRIBER = textwrap.dedent("""
    import json, sys, threading
    from magscope_session import runs

    uri, key, since, out, expected = sys.argv[1:6]
    seen, done = set(), threading.Event()
    with open(out, "w") as f:
        def on_rows(rows):
            table = rows.data
            for seq, t in zip(table["seq_num"], table["time"]):
                f.write(json.dumps([rows.run_uid, rows.stream, int(seq), float(t),
                                    rows.received]) + "\\n")
                f.flush()
                seen.add((rows.run_uid, int(seq)))
            if len(seen) >= int(expected):
                done.set()
        sub = runs.watch_live(uri, on_rows, streams={"primary": None},
                              since=float(since), api_key=key)
        print("listening", flush=True)
        done.wait(120)
        sub.disconnect()
""")


class Dev(StandardReadable):
    def __init__(self, name: str = "") -> None:
        with self.add_children_as_readables():
            self.value = soft_signal_rw(float, 0.0)
        super().__init__(name=name)


def measure_live(uri: str, api_key: str, folder: Path, *, events: int, period_s: float,
                 batch_size: int | None, runs: int = 1) -> tuple[list[str], list[list]]:
    """Run ``bp.count`` of ``events`` events ``period_s`` apart, ``runs`` times, with the
    session's writer at ``batch_size`` (None: its default) while one subscriber listens
    throughout; returns the runs' uids and the rows the subscriber got:
    ``[run_uid, stream, seq_num, event time, received time]``."""
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / "received.jsonl"
    sub = subprocess.Popen(
        [sys.executable, "-c", SUBSCRIBER, uri, api_key, str(time.time()), str(out),
         str(events * runs)], stdout=subprocess.PIPE, text=True, env=dict(os.environ))
    try:
        assert sub.stdout is not None and sub.stdout.readline().strip() == "listening"
        RE = RunEngine({})
        target = TiledTarget(uri=uri, api_key=api_key, source="env", data_dir=folder)
        writer = subscribe_tiled_writer(RE, target, batch_size=batch_size)
        with init_devices():
            dev = Dev()
        uids = [RE(bp.count([dev], num=events, delay=period_s), sample="live")[0]
                for _ in range(runs)]
        if not writer.close(timeout=60) or writer.unsent_runs():
            raise RuntimeError(f"the runs {uids} did not reach Tiled whole")
        if sub.wait(timeout=60) != 0:
            raise RuntimeError(f"the subscriber exited {sub.returncode}")
    finally:
        if sub.poll() is None:
            sub.kill()
    return uids, [json.loads(line) for line in out.read_text().splitlines()]


def latencies(rows: list[list], run_uid: str | None = None) -> np.ndarray:
    """Seconds from each event's time to its (first) arrival at the subscriber, of one run
    or of all."""
    first: dict[tuple[str, int], float] = {}
    for uid, _, seq, t, received in rows:
        if run_uid is None or uid == run_uid:
            first.setdefault((uid, seq), received - t)
    return np.array(list(first.values()))
