"""Documents to Tiled without losing any: a local spool first, Tiled from a worker thread.

:class:`SpoolingTiledWriter` is a RunEngine callback. For every document it

1. appends one JSON line to the run's spool file ``<spool_dir>/<start uid>.jsonl``
   (:mod:`._spool`) and flushes it to the operating system (``fsync`` at the end of each
   run, or after every document with ``fsync="document"``), in the RunEngine's thread;
   then
2. queues it for a worker thread that forwards it to bluesky-tiled-plugins'
   ``TiledWriter``. The RunEngine does not wait for Tiled while a run goes on (a
   synchronous ``TiledWriter`` costs about 40 ms per event at ``batch_size=1``); at the
   stop document it waits, up to ``stop_timeout`` s, until the worker has written the
   run's rest, so a run is readable from Tiled as soon as ``RE(...)`` returns.

Which run a document belongs to is decided by event_model's ``RunRouter`` (the router
bluesky-tiled-plugins' ``TiledWriter`` uses too); the spool keeps each document as the
RunEngine emitted it.

When Tiled fails for a run (server unreachable at run start, or any error while writing,
e.g. the server went down mid-run) the writer stops forwarding that run, logs one
warning naming the run, the server and the spool file, and keeps spooling it. A run that
was written to Tiled completely has its spool file moved to ``<spool_dir>/sent/`` (kept,
not deleted, so a local copy survives a later loss of the server's disks; delete old
files there by hand when the space is needed). Every file left directly in
``<spool_dir>`` is a run that is not (completely) in Tiled:
:func:`magscope_session._replay.replay` sends them.

A server that goes down in the middle of a write is noticed only after the Tiled client
has retried for about 25 s (tiled 0.2.20: environment variables ``TILED_RETRY_ATTEMPTS``
(default 10) and ``TILED_RETRY_TIMEOUT``, read when tiled is imported; there is no
per-client setting). Only the worker waits (and the RunEngine at a stop document, at most
``stop_timeout``); at the start of each run the writer probes the server without retries
(``probe_timeout``), so later runs fail over at once. A server that is back within the
retry window simply receives the rest of the run; TiledWriter then forces the retry of an
event-table append whose answer was lost, which may duplicate those rows (it says so in
the run's ``notes`` metadata).

Array-valued event fields
-------------------------
The writer passes ``max_array_size=0`` to ``TiledWriter``: every array-valued field of an
event (e.g. an ``Array1D[np.uint16]`` or a 2-D ``np.ndarray`` soft signal) is stored as
a zarr array (dtype and shape kept) and scalars go to the event table. With TiledWriter's
default (16), arrays of up to 16 elements go into the table instead, and then a 2-D
array aborts the write ("Can only convert 1-dimensional array values", pyarrow) and 1-D
arrays come back as strings from ``stream.read()`` (correctly from ``stream[key].read()``).
With ``max_array_size=0`` both reads work::

    run = client[uid]
    run["primary"]["cam-roi_sum"].read()   # numpy array, shape (n_events, *shape)
    run["primary"].read()                  # xarray.Dataset of all fields

Concurrent replays
------------------
While a writer owns a run (from its start document until it has finished forwarding its
stop document) it holds an exclusive lock on the spool file (:func:`._spool.try_lock`).
A replay skips locked files, so replaying while a session is live never sends a run twice.
"""

from __future__ import annotations

import atexit
import logging
import os
import queue
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from event_model import Filler, RunRouter

from ._spool import (
    SPOOL_SUFFIX,
    dumps_document,
    loads_document,
    move_to_sent,
    try_lock,
    unsent_spool_files,
)
from ._tiled_client import check_reachable, client_base_uri, connect, default_api_key

logger = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 100
DEFAULT_MAX_ARRAY_SIZE = 0
#: How long the RunEngine waits at a stop document for the run to be in Tiled, in s.
DEFAULT_STOP_TIMEOUT = 10.0


def new_tiled_writer(client: Any, batch_size: int, max_array_size: int) -> Any:
    """bluesky-tiled-plugins' ``TiledWriter`` into ``client`` (one per run)."""
    from bluesky_tiled_plugins import TiledWriter

    return TiledWriter(client, batch_size=batch_size, max_array_size=max_array_size)


class _NoFilling(Filler):
    """The RunRouter's filler: external data are forwarded as references, never loaded,
    and no document is cached."""

    def event_page(self, doc: Any) -> Any:
        return doc

    def datum_page(self, doc: Any) -> Any:
        return doc

    def resource(self, doc: Any) -> Any:
        return doc

    def stream_resource(self, doc: Any) -> Any:
        return doc

    def stream_datum(self, doc: Any) -> Any:
        return doc


# --------------------------------------------------------------------------- the writer
@dataclass(eq=False)
class _Run:
    uid: str
    path: Path
    file: Any
    lock: threading.Lock = field(default_factory=threading.Lock)
    writer: Any = None
    failed: bool = False
    finished: bool = False
    documents: int = 0
    forwarded: int = 0
    error: str = ""
    #: set when the worker has handled the stop document (or the run was given up)
    done: threading.Event = field(default_factory=threading.Event)


_CLOSE = object()


class SpoolingTiledWriter:
    """RunEngine callback: spool every document locally, forward to Tiled in the background.

    Parameters
    ----------
    client_or_uri
        A ``tiled.client`` container to write runs into, or a server URI such as
        ``http://127.0.0.1:8000`` (a client is then made with ``api_key``).
    api_key
        API key for a URI (default ``$MAGSCOPE_TILED_API_KEY``; ignored for a client).
    spool_dir
        Folder of the spool files (created). The embedded server's is
        ``<data_dir>/spool``.
    batch_size
        Events (or StreamDatums) that ``TiledWriter`` collects before one write; a run's
        rest is written at its stop document. 1 makes every event visible in Tiled at
        once (about 40 ms of worker time each); 100 costs about 2 ms per event.
    max_array_size
        Passed to ``TiledWriter``; 0 (default) stores every array-valued event field as
        a zarr array (see the module docstring).
    fsync
        ``"stop"`` (default): ``os.fsync`` the spool file when a run ends, so a run
        survives a power cut once finished; ``"document"``: after every document (safe
        against power loss mid-run, slower); ``"never"``. Every document is always
        flushed to the operating system, which survives a crash of this process.
    check
        If True (default), raise :class:`TiledUnreachableError` now if the server does
        not answer. With False, runs are spooled only until the server answers.
    probe_timeout
        Time budget of the reachability probe at each run start, in s.
    stop_timeout
        At a stop document the RunEngine waits up to this long (s) until the worker has
        sent the run's rest to Tiled, so the run is readable as soon as ``RE(...)``
        returns; 0 does not wait. A run still being sent then goes on in the background
        (:meth:`flush` waits for it).
    """

    def __init__(
        self,
        client_or_uri: Any,
        api_key: str | None = None,
        spool_dir: str | os.PathLike[str] | None = None,
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        max_array_size: int = DEFAULT_MAX_ARRAY_SIZE,
        fsync: str = "stop",
        check: bool = True,
        probe_timeout: float = 2.0,
        stop_timeout: float = DEFAULT_STOP_TIMEOUT,
    ) -> None:
        if spool_dir is None:
            raise ValueError(
                "spool_dir is required: the folder where documents are kept until Tiled "
                "has them (the embedded server's is <data dir>/spool)."
            )
        if int(batch_size) < 1:
            raise ValueError(f"batch_size={batch_size!r}: use an integer >= 1 (events).")
        if fsync not in ("stop", "document", "never"):
            raise ValueError(f"fsync={fsync!r}: use 'stop', 'document' or 'never'.")
        self.spool_dir = Path(spool_dir).expanduser()
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        self.batch_size = int(batch_size)
        self.max_array_size = int(max_array_size)
        self.fsync = fsync
        self.probe_timeout = float(probe_timeout)
        self.stop_timeout = float(stop_timeout)
        if isinstance(client_or_uri, str):
            self.uri, self.api_key = client_or_uri.rstrip("/"), default_api_key(api_key)
            if check:
                check_reachable(self.uri, self.api_key, timeout=probe_timeout)
            self._client: Any = None  # made by the worker, so a slow server never blocks
        else:
            self._client = client_or_uri
            self.uri, self.api_key = client_base_uri(client_or_uri)
            if check:
                check_reachable(self.uri, self.api_key, timeout=probe_timeout)
        # RunEngine-thread state: the router names the run of each document.
        self._router = RunRouter([self._open_run], filler_class=_NoFilling)
        self._claimed: list[_Run] = []
        # Worker state.
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._pending = 0
        self._pending_cond = threading.Condition()
        self._closed = False
        self._abandoned = False
        self._worker = threading.Thread(
            target=self._work, name=f"SpoolingTiledWriter({self.uri})", daemon=True
        )
        self._worker.start()
        atexit.register(self.close, 10.0)

    def __repr__(self) -> str:
        return f"<SpoolingTiledWriter to {self.uri}, spool {self.spool_dir}>"

    # -------------------------------------------------------------- RunEngine side
    def __call__(self, name: str, doc: dict[str, Any]) -> None:
        run = self._run_of(name, doc)
        if run is None:
            self._spool_orphan(name, doc)
            return
        line = dumps_document(name, doc)
        run.file.write(line + "\n")
        run.file.flush()
        run.documents += 1
        if self.fsync == "document" or (self.fsync == "stop" and name == "stop"):
            os.fsync(run.file.fileno())
        if self._closed:
            if name == "stop":
                self._finish(run, sent=False)
            return
        with self._pending_cond:
            self._pending += 1
        self._queue.put((run, name, line))
        if name == "stop" and self.stop_timeout > 0 and not run.done.wait(self.stop_timeout):
            logger.info(
                "Run %s: not yet completely in Tiled at %s after %s s; it is still being "
                "sent in the background.",
                run.uid,
                self.uri,
                self.stop_timeout,
            )

    def _run_of(self, name: str, doc: dict[str, Any]) -> _Run | None:
        """The run of a document, as event_model's RunRouter routes it: each run's
        callback (made by :meth:`_open_run` at its start document) claims the documents
        routed to it. None for a document of no open run (or, for an old-style resource
        without ``run_start``, of several)."""
        self._claimed = []
        try:
            self._router(name, doc)
        except KeyError:  # a descriptor, event or datum of no open run
            return None
        return self._claimed[0] if len(self._claimed) == 1 else None

    def _open_run(self, name: str, doc: dict[str, Any]) -> tuple[list[Any], list[Any]]:
        """RunRouter factory: open the run's spool file; its callback claims the run's
        documents."""
        uid = doc["uid"]
        path = self.spool_dir / f"{uid}{SPOOL_SUFFIX}"
        file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed in _finish()
        if not try_lock(file):
            file.close()
            raise RuntimeError(f"Spool file {path} is locked by another process (same run uid?)")
        run = _Run(uid=uid, path=path, file=file)
        return [lambda name, doc: self._claimed.append(run)], []

    def _spool_orphan(self, name: str, doc: dict[str, Any]) -> None:
        path = self.spool_dir / "unrouted-documents.jsonl.txt"
        logger.error(
            "A %r document belongs to no open run; it is kept in %s but not sent to Tiled.",
            name,
            path,
        )
        with open(path, "a", encoding="utf-8") as file:
            file.write(dumps_document(name, doc) + "\n")

    # -------------------------------------------------------------- worker side
    def _get_client(self) -> Any:
        if self._client is None:
            self._client = connect(self.uri, self.api_key, timeout=self.probe_timeout)
        return self._client

    def _fail(self, run: _Run, err: BaseException, name: str) -> None:
        run.failed = True
        run.error = f"{type(err).__name__}: {err}"
        logger.warning(
            "Tiled at %s failed on the %r document of run %s (%s). The run goes on; no "
            "more of it is sent to Tiled, all its documents are kept in %s. When the server "
            "is back, send it with `magscope tiled replay` (or magscope_session._replay.replay).",
            self.uri,
            name,
            run.uid,
            run.error.splitlines()[0][:300],
            run.path,
        )

    def _forward(self, run: _Run, name: str, line: str) -> None:
        if run.failed:
            return
        if self._abandoned:
            run.failed, run.error = True, "the writer was closed before the run was sent"
            return
        try:
            if name == "start":
                check_reachable(self.uri, self.api_key, timeout=self.probe_timeout)
                run.writer = new_tiled_writer(
                    self._get_client(), self.batch_size, self.max_array_size
                )
            if run.writer is None:
                raise RuntimeError("the run's start document was not forwarded")
            run.writer(*loads_document(line))
            run.forwarded += 1
        except Exception as err:  # noqa: BLE001 - any failure: keep spooling, replay later
            self._fail(run, err, name)

    def _finish(self, run: _Run, sent: bool) -> None:
        with run.lock:
            if run.finished:
                return
            run.finished = True
            run.done.set()
            run.file.close()  # releases the lock
            if sent:
                target = move_to_sent(run.path)
                logger.info(
                    "Run %s is in Tiled (%d documents); spool moved to %s",
                    run.uid,
                    run.documents,
                    target,
                )
            else:  # already warned once, when it failed
                logger.info(
                    "Run %s ended with %d documents; it is NOT complete in Tiled (%s). "
                    "Spooled in %s: send it with `magscope tiled replay`.",
                    run.uid,
                    run.documents,
                    run.error or "writer closed",
                    run.path,
                )

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is _CLOSE:
                return
            run, name, line = item
            try:
                self._forward(run, name, line)
                if name == "stop":
                    self._finish(run, sent=not run.failed)
            except Exception:  # noqa: BLE001 - the worker must survive anything
                logger.exception("SpoolingTiledWriter worker error on run %s", run.uid)
            finally:
                if name == "stop":
                    run.done.set()
                with self._pending_cond:
                    self._pending -= 1
                    self._pending_cond.notify_all()

    # -------------------------------------------------------------- control
    @property
    def pending(self) -> int:
        """Documents queued and not yet handled by the worker."""
        return self._pending

    def unsent_runs(self) -> int:
        """Runs in the spool not yet wholly in Tiled (the open run included)."""
        return len(unsent_spool_files(self.spool_dir))

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until the worker has handled every queued document (sent, or skipped
        because its run failed). ``timeout`` in s (None: no limit). True if drained."""
        with self._pending_cond:
            return self._pending_cond.wait_for(lambda: self._pending == 0, timeout)

    def close(self, timeout: float | None = 30.0) -> bool:
        """Flush (up to ``timeout`` s), then stop the worker. Idempotent.

        Documents arriving later are still spooled, not forwarded. Returns True if all
        queued documents were handled; otherwise the unsent runs stay in the spool.
        """
        if self._closed:
            return self._pending == 0
        drained = self.flush(timeout)
        self._closed = True
        self._abandoned = not drained
        self._queue.put(_CLOSE)
        if drained:
            self._worker.join(timeout)
        else:
            logger.warning(
                "%d documents were not sent to Tiled at %s within %s s; their runs stay "
                "in %s for `magscope tiled replay`.",
                self._pending,
                self.uri,
                timeout,
                self.spool_dir,
            )
        atexit.unregister(self.close)
        return drained

    def __enter__(self) -> SpoolingTiledWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
