"""A lab's catalog under load: Tiled on PostgreSQL against the embedded SQLite layout.

Run:  .venv/bin/python benchmarks/bench_catalog.py [--writers 4] [--runs 3] [--events 100]
      [--seed-runs 200] [--queries 200]

Everything is real and on loopback: the bundled PostgreSQL server (fsync on), a Tiled
server process on it, and writer processes each sending runs through the session's
spooling writer (``tests/concurrent_writers.py``). Printed:

- **Concurrent writers**: ``--writers`` processes at once x ``--runs`` runs x
  ``--events`` events; documents per second, every document read back (values checked),
  and the server's own count of 5xx responses (Tiled's Prometheus metrics; the spooling
  writer retries, so a client would hide them). Baseline in the same run: the embedded
  SQLite layout with 2 writers, the most it held in earlier measurements (4 crashed a
  DuckDB table store).
- **Queries**: ``--seed-runs`` more runs seeded, then ``find_runs`` by sample (20 runs
  match), operator (the newest 50), plan name and date (the newest 20 each), in turn,
  from 1 client and from 4 at once (``--clients``): queries per second, latency median
  and p95 in all and per kind (bar: 20/s or more, p95 under 500 ms).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from concurrent_writers import check_runs, run_writers, server_5xx  # noqa: E402
from magscope_session import EmbeddedTiled  # noqa: E402
from magscope_session._postgres import PostgresServer  # noqa: E402
from magscope_session.runs import find_runs  # noqa: E402


def write_load(server: EmbeddedTiled, folder: Path, writers: int, runs: int, events: int,
               label: str) -> None:
    before = server_5xx(server.uri, server.api_key)
    uids, elapsed = run_writers(server.uri, server.api_key, folder, writers=writers, runs=runs,
                                events=events)
    check_runs(server.client(), uids, events=events)
    docs = writers * runs * (events + 3)  # start, descriptor, events, stop
    errors = server_5xx(server.uri, server.api_key) - before
    print(f"{label:<34} {writers} writers x {runs} runs x {events} events: {docs} documents "
          f"in {elapsed:5.1f} s = {docs / elapsed:5.0f} docs/s; all read back; "
          f"server 5xx: {errors}", flush=True)


QUERY_KINDS: list[dict[str, object]] = [
    dict(sample="seeded-{tag}-3"),  # 20 runs
    dict(operator="bench", limit=50),
    dict(plan_name="count", limit=20),
    dict(since="{today}", limit=20),
]


def query_load(servers: list[EmbeddedTiled], n_queries: int, tag: str, clients: int) -> None:
    """``n_queries`` ``find_runs`` calls over :data:`QUERY_KINDS` in turn, spread over
    ``clients`` threads (each its own Tiled client, of the servers in turn: Tiled
    processes on one database); printed per kind and in all."""
    from concurrent.futures import ThreadPoolExecutor

    today = time.strftime("%Y-%m-%d")
    kinds = [{k: v.format(tag=tag, today=today) if isinstance(v, str) else v
              for k, v in kind.items()} for kind in QUERY_KINDS]
    per_client = [servers[i % len(servers)].client() for i in range(clients)]

    def one(i: int) -> tuple[int, int, float]:
        q0 = time.perf_counter()
        n = len(find_runs(per_client[i % clients], **kinds[i % len(kinds)]))  # type: ignore[arg-type]
        return i % len(kinds), n, time.perf_counter() - q0

    for i in range(clients):  # connections open
        one(i)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        done = list(pool.map(one, range(n_queries)))
    total = time.perf_counter() - t0
    for k, kind in enumerate(kinds):
        lat = [d for j, _, d in done if j == k]
        found = max(n for j, n, _ in done if j == k)
        print(f"  {clients} client(s) find_runs({', '.join(f'{a}={b!r}' for a, b in kind.items())}):"
              f" {found} runs, median {1000 * statistics.median(lat):.0f} ms, "
              f"p95 {1000 * _p95(lat):.0f} ms", flush=True)
    lat = [d for _, _, d in done]
    print(f"{clients} client(s) of {len(servers)} server(s), find_runs x {n_queries} ({len(kinds)} kinds in turn): "
          f"{n_queries / total:5.1f} queries/s, latency median "
          f"{1000 * statistics.median(lat):.0f} ms, p95 {1000 * _p95(lat):.0f} ms "
          f"(bar: 20/s, p95 < 500 ms)", flush=True)


def whole_catalog(server: EmbeddedTiled, tag: str, repeats: int = 10) -> None:
    """The unbounded query: every seeded run in one ``find_runs`` (pages of 100)."""
    client = server.client()
    lat, n = [], 0
    for _ in range(repeats):
        q0 = time.perf_counter()
        n = len(find_runs(client, operator="bench"))
        lat.append(time.perf_counter() - q0)
    print(f"find_runs(operator='bench') without a limit: {n} runs, median "
          f"{1000 * statistics.median(lat):.0f} ms ({1000 * statistics.median(lat) / n:.1f} "
          f"ms a run)", flush=True)


def _p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[int(0.95 * (len(ordered) - 1))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--writers", type=int, default=4)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--events", type=int, default=100)
    ap.add_argument("--seed-runs", type=int, default=200)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 4],
                    help="query clients at once (threads), one measurement each")
    ap.add_argument("--no-second-server", dest="second_server", action="store_false",
                    help="skip the measurement with two Tiled processes on the database")
    args = ap.parse_args()
    tag = str(int(time.time()))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        with EmbeddedTiled(root / "sqlite", port=0) as sqlite:
            write_load(sqlite, root / "w-sqlite", 2, args.runs, args.events,
                       "baseline: embedded SQLite")
        pg = PostgresServer(root / "pg")
        try:
            pg.start()
            with EmbeddedTiled(root / "tiled", port=0, catalog=pg.uri("catalog"),
                               tables=pg.uri("tables")) as tiled:
                write_load(tiled, root / "w-pg", args.writers, args.runs, args.events,
                           "PostgreSQL")
                t0 = time.perf_counter()
                before = server_5xx(tiled.uri, tiled.api_key)
                _seed(tiled, root / "seed", args.seed_runs, tag)
                print(f"seeded {args.seed_runs} runs from 2 writers in "
                      f"{time.perf_counter() - t0:.0f} s; server 5xx: "
                      f"{server_5xx(tiled.uri, tiled.api_key) - before}", flush=True)
                whole_catalog(tiled, tag)
                for clients in args.clients:
                    query_load([tiled], args.queries, tag, clients)
                if args.second_server:  # the facility layout: stateless servers, one database
                    with EmbeddedTiled(root / "tiled2", port=0, catalog=pg.uri("catalog"),
                                       tables=pg.uri("tables")) as second:
                        query_load([tiled, second], args.queries, tag, max(args.clients))
        finally:
            pg.remove()


def _seed(server: EmbeddedTiled, folder: Path, n_runs: int, tag: str) -> None:
    """``n_runs`` small runs (5 events) from 2 writer processes, samples seeded-TAG-K."""
    import subprocess

    from concurrent_writers import child_env

    script = (
        "import sys, bluesky.plans as bp\n"
        "from bluesky import RunEngine\n"
        "from ophyd_async.core import StandardReadable, init_devices, soft_signal_rw\n"
        "from magscope_session._document_writer import SpoolingTiledWriter\n"
        "uri, key, spool, first, n, tag = sys.argv[1:7]\n"
        "class Dev(StandardReadable):\n"
        "    def __init__(self, name=''):\n"
        "        with self.add_children_as_readables():\n"
        "            self.value = soft_signal_rw(float, 0.0)\n"
        "        super().__init__(name=name)\n"
        "RE = RunEngine({})\n"
        "with init_devices():\n"
        "    dev = Dev()\n"
        "w = SpoolingTiledWriter(uri, key, spool, batch_size=25)\n"
        "RE.subscribe(w)\n"
        "for i in range(int(first), int(first) + int(n)):\n"
        "    RE(bp.count([dev], num=5), sample=f'seeded-{tag}-{i % 10}', operator='bench')\n"
        "sys.exit(0 if w.close(timeout=300) else 3)\n"
    )
    half = n_runs // 2
    procs = [
        subprocess.Popen([sys.executable, "-c", script, server.uri, server.api_key,
                          str(folder / f"s{k}"), str(k * half), str(half if k == 0 else
                                                                     n_runs - half), tag],
                         env=child_env(), stdout=subprocess.DEVNULL)
        for k in range(2)
    ]
    for p in procs:
        if p.wait(timeout=1800) != 0:
            raise SystemExit(f"a seeding process exited {p.returncode}")


if __name__ == "__main__":
    main()
