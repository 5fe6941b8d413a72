"""The embedded Tiled server a user gets by default, and the choice of which Tiled to use.

Which Tiled server
------------------
:func:`resolve_tiled` decides. If the environment variable ``MAGSCOPE_TILED_URI`` is
set (for example ``http://tiled.lab.example:8000``, a shared server with a PostgreSQL
catalog), that server is used, with the API key from ``MAGSCOPE_TILED_API_KEY``, and no
embedded server is started. Otherwise the embedded server of the data directory is used:
attached to if it already runs (``magscope tiled`` in another terminal), started if not.

The data directory
------------------
Default ``platformdirs.user_data_dir("magscope")`` (``~/.local/share/magscope`` on
Linux), overridden by the ``MAGSCOPE_DATA_DIR`` environment variable, overridden by the
``data_dir`` argument. Layout::

    <data_dir>/
      catalog.db           Tiled catalog (SQLite): run metadata, the tree of nodes
      data/                Tiled writable file storage (zarr arrays written through Tiled)
      tables.sqlite        Tiled writable table storage (event tables, one row per event);
                           SQLite, so several processes can write runs at once
      tables.duckdb        (data dirs made before tables.sqlite) the old table storage:
                           still served read-only, new runs go to tables.sqlite
      detector-data/       HDF5 files written by detectors (camera frames, track tables);
                           registered as readable storage so Tiled can serve them
      spool/               per-run JSONL spool of every document (SpoolingTiledWriter)
      spool/sent/          spool files of runs completely written to Tiled
      tiled-config.yml     the generated ``tiled serve config`` file (rewritten at start)
      tiled-api-key        the single-user API key (file mode 0600), reused across restarts
      tiled-server.json    uri and pid of the running embedded server (removed at stop)
      tiled-server.log     stdout and stderr of the last server start (the previous one
                           is kept as tiled-server.log.1)

Detectors must write their HDF5 files inside ``detector-data/``: the server refuses to
serve files outside its readable storage (HTTP 500, after about 25 s of client retries).

Reading a run back (:func:`magscope_session.connect`)::

    from magscope_session import connect
    runs = connect("http://127.0.0.1:8000", api_key=key)
    run = runs[uid]; run["primary"]["x"].read()

(``stream[key].read()`` for array-valued event fields: see
:mod:`magscope_session._document_writer`.)
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import logging
import os
import secrets
import signal
import socket
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from magscope_ipc.processes import ChildProcess, free_port, port_holder, spawn

from ._tiled_client import (
    API_KEY_FILENAME,
    ENV_TILED_API_KEY,
    ENV_TILED_URI,
    TiledUnreachableError,
    check_reachable,
    connect,
)

logger = logging.getLogger(__name__)

ENV_DATA_DIR = "MAGSCOPE_DATA_DIR"
ENV_CATALOG = "MAGSCOPE_TILED_CATALOG"  # a PostgreSQL catalog for `magscope tiled`
#: Redis URI of Tiled's streaming cache (live data for subscribers in other processes)
ENV_STREAMING_CACHE = "MAGSCOPE_TILED_STREAMING_CACHE"
SQL_TABLE_MIMETYPE = "application/x-tiled-sql-table"  # Tiled's appendable tables

DEFAULT_PORT = 8000
DEFAULT_HOST = "127.0.0.1"

CATALOG_FILENAME = "catalog.db"
DATA_SUBDIR = "data"
TABLES_FILENAME = "tables.sqlite"
#: The table storage of data dirs made by earlier versions; kept readable (see write_config).
LEGACY_TABLES_FILENAME = "tables.duckdb"
DETECTOR_DATA_SUBDIR = "detector-data"
SPOOL_SUBDIR = "spool"
CONFIG_FILENAME = "tiled-config.yml"
STATE_FILENAME = "tiled-server.json"
LOG_FILENAME = "tiled-server.log"
#: Environment variable carrying the API key from the owner to :func:`serve_main`.
ENV_SERVER_API_KEY = "TILED_SINGLE_USER_API_KEY"


class TiledServerError(RuntimeError):
    """The embedded Tiled server could not be started."""


def default_data_dir(environ: Mapping[str, str] | None = None) -> Path:
    """The data directory: ``$MAGSCOPE_DATA_DIR``, else ``user_data_dir("magscope")``."""
    environ = os.environ if environ is None else environ
    if value := environ.get(ENV_DATA_DIR):
        return Path(value).expanduser()
    import platformdirs

    return Path(platformdirs.user_data_dir("magscope"))


def tiled_executable() -> Path:
    """The ``tiled`` command of this Python environment (next to ``sys.executable``)."""
    bindir = Path(sys.executable).parent
    for name in ("tiled", "tiled.exe"):
        candidate = bindir / name
        if candidate.exists():
            return candidate
    raise TiledServerError(
        f"The 'tiled' command was not found next to {sys.executable} (looked in {bindir}). "
        "Install the server extras into this environment: pip install 'tiled[all]'."
    )


def _port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        if os.name == "posix":  # as uvicorn binds: a port in TIME_WAIT is usable
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


class EmbeddedTiled:
    """A local Tiled server (SQLite catalog, file and SQLite table storage) run as a
    subprocess.

    Use it as a context manager, or call :meth:`start` and :meth:`stop` (idempotent; also
    run at interpreter exit, so no server process outlives its parent)::

        with EmbeddedTiled(port=0) as server:
            client = server.client()

    Parameters
    ----------
    data_dir
        Directory holding catalog, data, detector files and API key (see the module
        docstring). Default: ``$MAGSCOPE_DATA_DIR`` or ``user_data_dir("magscope")``.
    port
        TCP port on ``host``; 0 picks a free port at the first start (and keeps it for
        restarts while it stays free). Default 8000.
    host
        Interface to bind; default 127.0.0.1 (this computer only).
    api_key
        Single-user API key (letters and digits). Default: read from
        ``<data_dir>/tiled-api-key``, generated and stored there on first use.
    startup_timeout
        Time to wait for the server to answer, in s.
    stop_timeout
        Time to wait after SIGTERM before killing the server, in s.
    catalog
        A PostgreSQL catalog (``postgresql://USER:PASSWORD@HOST:PORT/DB``) instead of the
        data dir's SQLite file; default ``$MAGSCOPE_TILED_CATALOG``, else SQLite. Its
        event tables go to ``tables`` (a PostgreSQL URI; default the catalog's database).
        Detector files stay in the data dir's ``detectors`` folder.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str] | None = None,
        *,
        port: int = DEFAULT_PORT,
        host: str = DEFAULT_HOST,
        api_key: str | None = None,
        startup_timeout: float = 60.0,
        stop_timeout: float = 10.0,
        catalog: str | None = None,
        tables: str | None = None,
        streaming_cache: str | None = None,
    ) -> None:
        self.data_dir = Path(data_dir).expanduser() if data_dir else default_data_dir()
        if streaming_cache is None:
            streaming_cache = os.environ.get(ENV_STREAMING_CACHE) or None
        if streaming_cache is not None and not streaming_cache.startswith(("redis://",
                                                                           "rediss://")):
            raise ValueError(f"the streaming cache is a Redis URI (redis://HOST:PORT), got "
                             f"{streaming_cache.split('@')[-1]!r}")
        #: Redis for Tiled's live streaming (None: no streaming; subscribers get nothing)
        self.streaming_cache = streaming_cache
        catalog = catalog if catalog is not None else os.environ.get(ENV_CATALOG) or None
        self.catalog_uri, self.tables_uri, self._pg_password = _postgres_uris(catalog, tables)
        if not 0 <= int(port) < 65536:
            raise ValueError(f"port={port!r} is not a TCP port; use 0..65535 (0 = any free).")
        if api_key is not None and not (api_key.isascii() and api_key.isalnum()):
            raise ValueError(
                "api_key must contain only letters and digits (Tiled's rule); got a key "
                f"of length {len(api_key)} with other characters. Generate one with "
                "python -c 'import secrets; print(secrets.token_hex(32))'."
            )
        self._requested_port = int(port)
        self.host = host
        self._api_key_override = api_key
        self.startup_timeout = float(startup_timeout)
        self.stop_timeout = float(stop_timeout)
        self._process: ChildProcess | None = None
        self._port: int | None = None
        self._api_key: str | None = None
        self._lock = threading.Lock()

    # ----------------------------------------------------------------- paths
    @property
    def catalog_path(self) -> Path:
        """The SQLite catalog file."""
        return self.data_dir / CATALOG_FILENAME

    @property
    def writable_data_dir(self) -> Path:
        """Folder where Tiled writes arrays it stores itself."""
        return self.data_dir / DATA_SUBDIR

    @property
    def tables_path(self) -> Path:
        """The SQLite file holding event tables."""
        return self.data_dir / TABLES_FILENAME

    @property
    def legacy_tables_path(self) -> Path:
        """The duckdb table file of a data dir made by an earlier version (read-only)."""
        return self.data_dir / LEGACY_TABLES_FILENAME

    @property
    def detector_data_dir(self) -> Path:
        """Folder where detectors must write their HDF5 files (served by Tiled)."""
        return self.data_dir / DETECTOR_DATA_SUBDIR

    @property
    def spool_dir(self) -> Path:
        """Folder for the document spool of :class:`SpoolingTiledWriter`."""
        return self.data_dir / SPOOL_SUBDIR

    @property
    def config_path(self) -> Path:
        return self.data_dir / CONFIG_FILENAME

    @property
    def log_path(self) -> Path:
        return self.data_dir / LOG_FILENAME

    @property
    def state_path(self) -> Path:
        return self.data_dir / STATE_FILENAME

    # ------------------------------------------------------------ properties
    @property
    def api_key(self) -> str:
        """The single-user API key (created in the data dir on first use)."""
        if self._api_key is None:
            self._api_key = self._api_key_override or self._load_or_create_api_key()
        return self._api_key

    @property
    def port(self) -> int:
        """The TCP port the server listens on (known once started)."""
        if self._port is None:
            if self._requested_port == 0:
                raise TiledServerError("port=0: the port is chosen at start(); start first.")
            return self._requested_port
        return self._port

    @property
    def uri(self) -> str:
        """``http://host:port`` of the server."""
        return f"http://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        """True while the server process is alive."""
        return self._process is not None and self._process.alive()

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def __repr__(self) -> str:
        state = f"running at {self.uri}" if self.running else "stopped"
        return f"<EmbeddedTiled {self.data_dir} {state}>"

    # ------------------------------------------------------------- lifecycle
    def _load_or_create_api_key(self) -> str:
        path = self.data_dir / API_KEY_FILENAME
        if path.exists():
            key = path.read_text().strip()
            if key.isascii() and key.isalnum():
                return key
            raise TiledServerError(
                f"The API key file {path} holds an invalid key (letters and digits only). "
                "Delete the file to generate a new key."
            )
        self.data_dir.mkdir(parents=True, exist_ok=True)
        key = secrets.token_hex(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as file:
            file.write(key + "\n")
        return key

    def write_config(self) -> Path:
        """Create the folders and write ``tiled-config.yml``; return its path.

        The key is not in the file: the server gets it from the environment variable
        ``TILED_SINGLE_USER_API_KEY``.

        Event tables go to a SQLite file: with a duckdb table store, two or more
        processes writing runs at once crashed the server (tiled 0.2.20: ADBC "No active
        transaction, cannot commit" in ``append_partition``, then a segfault). The
        ``tables.duckdb`` of a data dir made before stays readable storage, so its runs
        are still served; new runs, and runs replayed into it, go to ``tables.sqlite``.
        """
        for folder in (self.data_dir, self.writable_data_dir, self.detector_data_dir):
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)  # the owner's data only
        readable = [self.detector_data_dir.as_posix()]
        if self.legacy_tables_path.exists() and self.catalog_uri is None:
            readable.append(f"duckdb:///{self.legacy_tables_path.as_posix()}")
        catalog = self.catalog_uri or f"sqlite:///{self.catalog_path.as_posix()}"
        tables = self.tables_uri or f"sqlite:///{self.tables_path.as_posix()}"
        config = {
            "trees": [
                {
                    "path": "/",
                    "tree": "catalog",
                    "args": {
                        "uri": catalog,
                        "writable_storage": [self.writable_data_dir.as_posix(), tables],
                        "readable_storage": readable,
                        # clients get databroker's catalog of runs (bluesky-tiled-plugins'
                        # CatalogOfBlueskyRuns): TimeRange queries, catalog[-1], scan ids
                        "specs": [{"name": "CatalogOfBlueskyRuns", "version": "3.0"}],
                        # event tables read in seq_num order (PostgreSQL has no rowid)
                        "adapters_by_mimetype": {
                            SQL_TABLE_MIMETYPE:
                                "magscope_session._tiled_adapters:EventTableAdapter",
                        },
                        # serve_main creates the catalog in-process when it does not
                        # exist yet (Tiled's own init spawns `tiled catalog init`, 4 s)
                        "init_if_not_exists": False,
                    },
                }
            ],
            # One log line per request would grow the log by one line per event.
            "uvicorn": {"host": self.host, "access_log": False},
        }
        if self.streaming_cache:  # live data: every write also published through Redis
            config["streaming_cache"] = {"uri": self.streaming_cache}
        # JSON is valid YAML: no YAML writer needed.
        fd = os.open(self.config_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as file:
            file.write(json.dumps(config, indent=2) + "\n")
        return self.config_path

    def _command(self, port: int) -> list[str]:
        """Serve the config through :func:`serve_main`, which hands the API key to Tiled
        in-process: not on a command line (visible to every local user) and not printed
        into the log (``tiled serve config`` prints a key it did not get as an option)."""
        tiled_executable()  # a clear error if the server extras are missing
        return [
            sys.executable, "-m", "magscope_session._tiled_server", str(self.config_path),
            "--host", self.host, "--port", str(port),
        ]

    def _running_elsewhere(self) -> str | None:
        """URI of a live server recorded in the state file by another EmbeddedTiled."""
        try:
            state = json.loads(self.state_path.read_text())
        except (OSError, ValueError):
            return None
        if state.get("owner_pid") == os.getpid() and self._process is not None:
            return None
        try:
            check_reachable(state["uri"], self.api_key, timeout=2.0)
        except (TiledUnreachableError, KeyError):
            return None
        return state["uri"]

    def _reusable_port(self) -> int | None:
        """With port=0, restart on the port of the previous start if it is still free,
        so clients made before a restart keep working."""
        if self._port is None or not _port_is_free(self.host, self._port):
            return None
        return self._port

    def start(self) -> EmbeddedTiled:
        """Start the server and wait until it answers. No-op if already running.

        Raises
        ------
        TiledServerError
            If a server for this data dir already runs, or the process exits or does not
            answer within ``startup_timeout`` s (the message ends with its log tail).
        """
        with self._lock:
            if self.running:
                return self
            if (other := self._running_elsewhere()) is not None:
                raise TiledServerError(
                    f"An embedded Tiled server for {self.data_dir} already runs at {other}. "
                    "Use it (resolve_tiled() attaches to it) or stop it first."
                )
            port = self._requested_port or self._reusable_port() or free_port(self.host)
            if not _port_is_free(self.host, port):
                holder = port_holder(self.host, port)
                raise TiledServerError(
                    f"Port {port} on {self.host} is in use"
                    + (f" by {holder}" if holder is not None else "")
                    + f", so the embedded Tiled server for {self.data_dir} cannot start "
                    f"there. Is `magscope tiled` already running for another data dir? Stop "
                    f"it, pass another port (--port; 0 = any free one), or use that server "
                    f"by setting {ENV_TILED_URI}."
                )
            self.write_config()
            if self.log_path.exists():
                os.replace(self.log_path, self.log_path.with_suffix(".log.1"))
            env = dict(os.environ)
            env[ENV_SERVER_API_KEY] = self.api_key
            if self._pg_password is not None:  # PostgreSQL's password: not in the config
                env["PGPASSWORD"] = self._pg_password
            env.pop("TILED_CONFIG", None)
            env["PYTHONUNBUFFERED"] = "1"
            logger.info("Starting Tiled for %s on %s:%d", self.data_dir, self.host, port)
            # own session, owner-only files, ended with this process however it ends
            self._process = spawn(
                "Tiled server", self._command(port), env=env, log=self.log_path,
                cwd=self.data_dir, grace_s=self.stop_timeout,
            )
            self._port = port
            atexit.register(self.stop)
        try:
            self._wait_until_ready()
        except BaseException:
            self.stop()
            raise
        self.state_path.write_text(
            json.dumps({"uri": self.uri, "pid": self.pid, "owner_pid": os.getpid()}) + "\n"
        )
        logger.info("Tiled for %s answers at %s", self.data_dir, self.uri)
        return self

    def log_tail(self, lines: int = 30) -> str:
        """The last ``lines`` lines of the server log."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def _wait_until_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        last_error: Exception | None = None
        while True:
            process = self._process
            if process is None:
                raise TiledServerError(f"The Tiled server for {self.data_dir} was stopped.")
            code = process.returncode
            if code is not None:
                raise TiledServerError(
                    f"The Tiled server for {self.data_dir} exited with code {code} while "
                    f"starting on {self.host}:{self._port} (is the port in use? pass "
                    f"another port). Log {self.log_path}, last lines:\n{self.log_tail()}"
                )
            try:
                check_reachable(self.uri, self.api_key, timeout=2.0)
                return
            except TiledUnreachableError as err:
                last_error = err
            if time.monotonic() > deadline:
                raise TiledServerError(
                    f"The Tiled server for {self.data_dir} did not answer at {self.uri} "
                    f"within {self.startup_timeout:.0f} s (last error: {last_error}). "
                    f"Log {self.log_path}, last lines:\n{self.log_tail()}"
                )
            time.sleep(0.2)

    def stop(self) -> None:
        """Stop the server: SIGTERM, then kill after ``stop_timeout`` s. Idempotent."""
        with self._lock:
            process, self._process = self._process, None
            if process is not None:
                process.stop(self.stop_timeout + 3.0)
                with contextlib.suppress(OSError, ValueError):
                    state = json.loads(self.state_path.read_text())
                    if state.get("pid") == process.pid:
                        self.state_path.unlink()
            atexit.unregister(self.stop)

    def kill(self) -> None:
        """Kill the server at once (SIGKILL to its process group), as a crash would. For
        tests."""
        if self._process is not None and self._process.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._process.pid, signal.SIGKILL)
            self._process.process.wait(self.stop_timeout)
        self.stop()

    def __enter__(self) -> EmbeddedTiled:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def client(self, **kwargs: Any):
        """A Tiled client of this server (:func:`._tiled_client.connect`; keyword args are
        passed on to ``tiled.client.from_uri``)."""
        return connect(self.uri, self.api_key, **kwargs)

    def run_foreground(self, *, show_key: bool = False) -> int:
        """Serve until Ctrl-C or SIGTERM (the ``magscope tiled`` command); return an exit
        code. The API key is printed only with ``show_key`` (it stays in
        ``<data dir>/tiled-api-key``).

        The signals only set a flag that the loop checks, so they never land inside a
        call that waits on the server process (a KeyboardInterrupt there can leave
        ``subprocess``'s wait lock taken, and the stop would then hang)."""
        requested: list[int] = []
        previous = {
            sig: signal.signal(sig, lambda signum, frame: requested.append(signum))
            for sig in (signal.SIGINT, signal.SIGTERM)
        }
        try:
            self.start()
            key_line = (
                self.api_key if show_key
                else f"in {self.data_dir / API_KEY_FILENAME} (--show-key prints it)"
            )
            print(
                f"Tiled serves {self.data_dir} at {self.uri}\n"
                f"  API key:        {key_line}\n"
                f"  detector files: {self.detector_data_dir}\n"
                f"  log:            {self.log_path}\n"
                "Press Ctrl-C to stop.",
                flush=True,
            )
            while self.running and not requested:
                time.sleep(0.2)
            if requested:
                print("Stopping Tiled ...", flush=True)
                return 0
            print(f"The Tiled server exited; log tail:\n{self.log_tail()}", file=sys.stderr)
            return 1
        finally:
            self.stop()
            for sig, handler in previous.items():
                signal.signal(sig, handler)


@dataclass
class TiledTarget:
    """Which Tiled server to use: its URI and key, and the embedded server if we own one.

    ``close()`` (or leaving the ``with`` block) stops the embedded server if this target
    started it; an external or already-running server is left alone.
    """

    uri: str
    api_key: str | None
    source: str  # "env", "embedded-started" or "embedded-running"
    data_dir: Path
    server: EmbeddedTiled | None = field(default=None, repr=False)

    @property
    def spool_dir(self) -> Path:
        """Where the document spool of this session lives (``<data_dir>/spool``)."""
        return self.data_dir / SPOOL_SUBDIR

    @property
    def detector_data_dir(self) -> Path:
        return self.data_dir / DETECTOR_DATA_SUBDIR

    def client(self, **kwargs: Any):
        """A Tiled client of this server (:func:`._tiled_client.connect`)."""
        return connect(self.uri, self.api_key, **kwargs)

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()

    def __enter__(self) -> TiledTarget:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def resolve_tiled(
    data_dir: str | os.PathLike[str] | None = None,
    *,
    port: int = DEFAULT_PORT,
    start: bool = True,
    environ: Mapping[str, str] | None = None,
    timeout: float = 5.0,
) -> TiledTarget:
    """Decide which Tiled server to use, and start the embedded one if needed.

    1. ``$MAGSCOPE_TILED_URI`` set: that server, key ``$MAGSCOPE_TILED_API_KEY``; checked
       with :func:`check_reachable` (raises :class:`TiledUnreachableError`).
    2. An embedded server for ``data_dir`` already runs: attach to it.
    3. Otherwise start the embedded server (if ``start``; else raise
       :class:`TiledUnreachableError`) on ``port``.

    ``timeout`` (s) bounds the reachability check of an external server.
    """
    environ = os.environ if environ is None else environ
    folder = Path(data_dir).expanduser() if data_dir else default_data_dir(environ)
    if uri := environ.get(ENV_TILED_URI):
        api_key = environ.get(ENV_TILED_API_KEY) or None
        check_reachable(uri, api_key, timeout=timeout)
        return TiledTarget(uri=uri, api_key=api_key, source="env", data_dir=folder)
    server = EmbeddedTiled(folder, port=port)
    if (running := server._running_elsewhere()) is not None:
        return TiledTarget(
            uri=running, api_key=server.api_key, source="embedded-running", data_dir=folder
        )
    if not start:
        raise TiledUnreachableError(
            f"No Tiled server runs for {folder} and {ENV_TILED_URI} is unset. Run "
            f"`magscope tiled` to start the embedded server, or set {ENV_TILED_URI}."
        )
    server.start()
    return TiledTarget(
        uri=server.uri,
        api_key=server.api_key,
        source="embedded-started",
        data_dir=folder,
        server=server,
    )


def unreachable_target(
    data_dir: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None
) -> TiledTarget:
    """The target named by ``$MAGSCOPE_TILED_URI`` without checking that it answers: for
    spooling runs while the server is down (``subscribe_tiled_writer(..., check=False)``).
    """
    environ = os.environ if environ is None else environ
    uri = environ.get(ENV_TILED_URI)
    if not uri:
        raise TiledUnreachableError(f"{ENV_TILED_URI} is not set: no server to spool for")
    folder = Path(data_dir).expanduser() if data_dir else default_data_dir(environ)
    return TiledTarget(
        uri=uri, api_key=environ.get(ENV_TILED_API_KEY) or None, source="env-unreachable",
        data_dir=folder,
    )


def _postgres_uris(
    catalog: str | None, tables: str | None
) -> tuple[str | None, str | None, str | None]:
    """(catalog URI for Tiled's catalog adapter, table-storage URI, password) of a
    PostgreSQL catalog; (None, None, None) for the data dir's SQLite files. ValueError
    naming the scheme for anything else.

    The catalog's password is taken out of its URI and handed to the server as
    ``PGPASSWORD``, which asyncpg reads: Tiled logs the catalog's URI when it starts. The
    table store's URI keeps its password (Tiled's ADBC connection failed to authenticate
    without it); it is in the owner-only config file and not logged."""
    if catalog is None:
        if tables is not None:
            raise ValueError("tables= needs a PostgreSQL catalog= as well")
        return None, None, None
    schemes = ("postgresql://", "postgresql+asyncpg://")
    for name, uri in (("catalog", catalog), ("tables", tables)):
        if uri is not None and not uri.startswith(schemes):
            scheme = uri.split("://", 1)[0] if "://" in uri else uri[:20]
            raise ValueError(f"{name} must be a PostgreSQL URI (postgresql://USER:PASSWORD@"
                             f"HOST:PORT/DATABASE), got one of scheme {scheme!r}")
    plain = "postgresql://" + catalog.split("://", 1)[1]
    table_uri = "postgresql://" + (tables or plain).split("://", 1)[1]
    password = urlsplit(plain).password
    plain = _without_password(plain)
    return "postgresql+asyncpg://" + plain.split("://", 1)[1], table_uri, password


def _without_password(uri: str) -> str:
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    user = parts.username or ""
    host = parts.hostname or ""
    netloc = f"{user}@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def serve_main(argv: list[str] | None = None) -> None:
    """Serve a ``tiled serve config`` file with the single-user API key taken from
    ``$TILED_SINGLE_USER_API_KEY`` (the child side of :class:`EmbeddedTiled`)."""
    parser = argparse.ArgumentParser(description="the embedded Tiled server of magscope")
    parser.add_argument("config")
    parser.add_argument("--host", default=DEFAULT_HOST)
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    args = parser.parse_args(argv)
    import uvicorn
    from tiled.config import parse_configs
    from tiled.server.app import build_app_from_config

    config = parse_configs(args.config)
    for tree in config.trees:  # create a new SQLite catalog here, not in a subprocess
        uri = str(tree.args.get("uri", "")) if isinstance(tree.args, dict) else ""
        new_sqlite = uri.startswith("sqlite:///") and not Path(
            uri.removeprefix("sqlite:///")).exists()
        if new_sqlite or uri.startswith("postgresql"):  # idempotent on PostgreSQL
            from tiled.commandline._catalog import init as init_catalog

            init_catalog(database=uri, if_not_exists=True)
        if uri.startswith("postgresql"):
            from magscope_session._tiled_adapters import register_table_stores

            register_table_stores(uri, tree.args.get("writable_storage") or [])
    from magscope_session._tiled_adapters import use_for_table_storage

    use_for_table_storage()  # tables created safely by concurrent writers
    key = os.environ.pop(ENV_SERVER_API_KEY, None)
    if not config.authentication.providers:  # single-user: the key from the environment
        if not key:
            raise SystemExit(f"the server's API key is missing: set ${ENV_SERVER_API_KEY}")
        config.authentication.single_user_api_key = key
    kwargs = dict(config.uvicorn)
    kwargs.update(host=args.host, port=args.port)
    print(f"Tiled serves {args.config} at http://{args.host}:{args.port}", flush=True)
    uvicorn.run(build_app_from_config(config), **kwargs)


if __name__ == "__main__":
    serve_main()
