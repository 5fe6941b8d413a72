"""Concurrent writer processes for the Tiled servers' tests: each a RunEngine sending
runs through the session's spooling writer; every document is checked on the way back."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import numpy as np

WRITERS = 4
RUNS = 3
EVENTS = 100

# One writer process: a RunEngine sending RUNS runs of EVENTS events through the session's
# spooling writer, with small batches so the processes' table appends interleave.
WRITER = textwrap.dedent(
    """
    import sys
    import bluesky.plan_stubs as bps
    import bluesky.plans as bp
    from bluesky import RunEngine
    from ophyd_async.core import StandardReadable, init_devices, soft_signal_rw
    from magscope_session._document_writer import SpoolingTiledWriter

    uri, key, spool, writer_id, runs, events = sys.argv[1:7]

    class Dev(StandardReadable):
        def __init__(self, name=""):
            with self.add_children_as_readables():
                self.value = soft_signal_rw(float, 0.0)
                self.count = soft_signal_rw(int, 0)
                self.flag = soft_signal_rw(bool, False)
                self.label = soft_signal_rw(str, "")
            super().__init__(name=name)

    RE = RunEngine({})
    with init_devices():
        dev = Dev()
    writer = SpoolingTiledWriter(uri, key, spool, batch_size=25)
    RE.subscribe(writer)

    def per_shot(detectors, state={"i": 0}):
        i = state["i"]
        state["i"] += 1
        yield from bps.mv(dev.value, 1000.0 * int(writer_id) + i + 0.5, dev.count, i,
                          dev.flag, i % 2 == 1, dev.label, f"w{writer_id}-{i}")
        yield from bps.trigger_and_read(detectors)

    for r in range(int(runs)):
        (uid,) = RE(bp.count([dev], num=int(events), per_shot=per_shot),
                    sample=f"concurrent-{writer_id}", writer_id=int(writer_id), run_index=r)
        print(uid, flush=True)
    ok = writer.close(timeout=120)
    print("closed", ok, flush=True)
    sys.exit(0 if ok else 3)
    """
)


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    return env



def run_writers(uri: str, api_key: str, spool_root: Path, *, writers: int = WRITERS,
                runs: int = RUNS, events: int = EVENTS) -> tuple[dict[int, list[str]], float]:
    """Start ``writers`` writer processes at once against ``uri``; wait for them. Returns
    each writer's run uids (in order) and the time it took (s). Asserts each exited 0,
    closed its writer and left nothing unsent in its spool."""
    env = child_env()
    t0 = time.monotonic()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, uri, api_key, str(spool_root / f"spool{w}"),
             str(w), str(runs), str(events)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )
        for w in range(writers)
    ]
    outputs = [p.communicate(timeout=240) for p in procs]
    elapsed = time.monotonic() - t0
    uids: dict[int, list[str]] = {}
    for w, (p, (out, err)) in enumerate(zip(procs, outputs, strict=True)):
        assert p.returncode == 0, f"writer {w} exited {p.returncode}:\n{out}\n{err[-3000:]}"
        lines = out.split()
        assert lines[-2:] == ["closed", "True"], out
        uids[w] = lines[:-2]
        assert len(uids[w]) == runs
        # every run reached Tiled: nothing is left unsent in the writer's spool
        assert not list((spool_root / f"spool{w}").glob("*.jsonl")), err[-3000:]
    return uids, elapsed


def check_runs(client, uids: dict[int, list[str]], *, events: int = EVENTS) -> None:
    """Every run of :func:`run_writers` reads back from ``client`` whole: metadata, and
    every event's values."""
    for w, run_uids in uids.items():
        for r, uid in enumerate(run_uids):
            run = client[uid]
            assert run.metadata["start"]["writer_id"] == w
            assert run.metadata["start"]["run_index"] == r
            assert run.metadata["stop"]["exit_status"] == "success"
            assert run.metadata["stop"]["num_events"] == {"primary": events}
            table = run["primary"].read()
            i = np.arange(r * events, (r + 1) * events)
            seq_num = run["primary"]["seq_num"].read()
            np.testing.assert_array_equal(seq_num, np.arange(1, events + 1))
            np.testing.assert_array_equal(table["dev-value"], 1000.0 * w + i + 0.5)
            np.testing.assert_array_equal(table["dev-count"], i)
            np.testing.assert_array_equal(np.asarray(table["dev-flag"], bool), i % 2 == 1)
            assert list(table["dev-label"].values) == [f"w{w}-{k}" for k in i]


_5XX = re.compile(r'^tiled_request_duration_seconds_count\{[^}]*code="5\d\d"[^}]*\} (\S+)', re.M)


def server_5xx(uri: str, api_key: str) -> int:
    """5xx responses a Tiled server has given since it started, from its Prometheus
    metrics (the spooling writer retries, so its clients would not tell)."""
    text = httpx.get(f"{uri}/api/v1/metrics", headers={"Authorization": f"Apikey {api_key}"},
                     timeout=10).text
    return int(sum(float(v) for v in _5XX.findall(text)))
