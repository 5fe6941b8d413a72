"""Documents to Tiled without losing any: a local spool first, Tiled from a worker thread.

:class:`SpoolingTiledWriter` is a RunEngine callback. For every document it

1. appends one JSON line to the run's spool file ``<spool_dir>/<start uid>.jsonl`` and
   flushes it to the operating system (``fsync`` at the end of each run, or after every
   document with ``fsync="document"``), in the RunEngine's thread; then
2. queues it for a worker thread that forwards it to bluesky-tiled-plugins'
   ``TiledWriter``. The RunEngine never waits for Tiled (a synchronous ``TiledWriter``
   costs about 40 ms per event at ``batch_size=1``).

When Tiled fails for a run (server unreachable at run start, or any error while writing,
e.g. the server went down mid-run) the writer stops forwarding that run, logs one
warning naming the run, the server and the spool file, and keeps spooling it. A run that
was written to Tiled completely has its spool file moved to ``<spool_dir>/sent/`` (kept,
not deleted, so a local copy survives a later loss of the server's disks; delete old
files there by hand when the space is needed). Every file left directly in
``<spool_dir>`` is a run that is not (completely) in Tiled: :func:`replay` sends them.

A server that goes down in the middle of a write is noticed only after the Tiled client
has retried for about 25 s (tiled 0.2.20: environment variables ``TILED_RETRY_ATTEMPTS``
(default 10) and ``TILED_RETRY_TIMEOUT``, read when tiled is imported; there is no
per-client setting). Only the worker waits; at the start of each run the writer probes
the server without retries (``probe_timeout``), so later runs fail over at once. A server
that is back within the retry window simply receives the rest of the run; TiledWriter
then forces the retry of an event-table append whose answer was lost, which may
duplicate those rows (it says so in the run's ``notes`` metadata).

Spool format
------------
One ``{"name": ..., "doc": ...}`` JSON object per line, as bluesky's ``JSONLinesWriter``
writes, except that numpy values keep their type: an array is stored as
``{"__ndarray__": {"dtype": "<u2", "shape": [3, 4], "b64": "..."}}`` (C-order bytes) and
a numpy scalar other than float64 as ``{"__npscalar__": {"dtype": "<i4", "value": 7}}``.
:func:`read_spool` decodes both back to numpy. A truncated last line (a crash while
writing it) is dropped with a warning.

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
stop document) it holds an exclusive lock on the spool file (``flock`` on POSIX,
``msvcrt.locking`` on Windows; released by the OS if the process dies). :func:`replay`
skips locked files, so replaying while a session is live never sends a run twice.
"""

from __future__ import annotations

import atexit
import base64
import json
import logging
import os
import queue
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .tiled_client import (
    TiledUnreachableError,
    check_reachable,
    client_base_uri,
    connect,
    default_api_key,
)

logger = logging.getLogger(__name__)

SENT_SUBDIR = "sent"
#: Where :func:`replay` moves spool files holding no document (reported once).
EMPTY_SUBDIR = "empty"
SPOOL_SUFFIX = ".jsonl"
DEFAULT_BATCH_SIZE = 100
DEFAULT_MAX_ARRAY_SIZE = 0


# --------------------------------------------------------------------------- encoding
def _encode_default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        if obj.dtype.hasobject:
            return {
                "__ndarray__": {"dtype": "object", "shape": list(obj.shape), "list": obj.tolist()}
            }
        data = np.ascontiguousarray(obj)
        return {
            "__ndarray__": {
                "dtype": data.dtype.str,
                "shape": list(data.shape),
                "b64": base64.b64encode(data.tobytes()).decode("ascii"),
            }
        }
    if isinstance(obj, np.generic):
        return {"__npscalar__": {"dtype": obj.dtype.str, "value": obj.item()}}
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable: {obj!r}")


def _decode_hook(obj: dict[str, Any]) -> Any:
    if len(obj) == 1:
        if (spec := obj.get("__ndarray__")) is not None:
            if spec["dtype"] == "object":
                out = np.empty(len(spec["list"]), dtype=object)
                out[:] = spec["list"]
                return out.reshape(spec["shape"])
            raw = base64.b64decode(spec["b64"])
            return np.frombuffer(raw, dtype=np.dtype(spec["dtype"])).reshape(spec["shape"]).copy()
        if (spec := obj.get("__npscalar__")) is not None:
            return np.dtype(spec["dtype"]).type(spec["value"])
    return obj


def dumps_document(name: str, doc: Any) -> str:
    """One spool line (no newline) for a document; numpy values keep dtype and shape."""
    return json.dumps({"name": name, "doc": doc}, default=_encode_default)


def loads_document(line: str) -> tuple[str, dict[str, Any]]:
    """Inverse of :func:`dumps_document`."""
    item = json.loads(line, object_hook=_decode_hook)
    return item["name"], item["doc"]


def read_spool(path: str | os.PathLike[str]) -> list[tuple[str, dict[str, Any]]]:
    """All documents of a spool file, in order. A truncated last line is dropped.

    Raises ValueError naming the file and line if any other line is unreadable.
    """
    path = Path(path)
    lines = path.read_text(encoding="utf-8").split("\n")
    docs: list[tuple[str, dict[str, Any]]] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            docs.append(loads_document(line))
        except (ValueError, KeyError) as err:
            if number == len(lines) or all(not rest.strip() for rest in lines[number:]):
                logger.warning("Dropping the truncated last line %d of %s (%s)", number, path, err)
                break
            raise ValueError(f"Spool file {path}, line {number} is unreadable: {err}") from err
    return docs


# --------------------------------------------------------------------------- locking
def _try_lock(file: Any) -> bool:
    """Take an exclusive, non-blocking lock on an open file; False if another holds it."""
    try:
        if os.name == "nt":
            import msvcrt

            file.seek(0)
            msvcrt.locking(file.fileno(), msvcrt.LK_NBLCK, 1)  # type: ignore[attr-defined]
        else:
            import fcntl

            fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


# --------------------------------------------------------------------------- clients
def _move_to_sent(path: Path) -> Path:
    sent = path.parent / SENT_SUBDIR
    sent.mkdir(exist_ok=True)
    target = sent / path.name
    if target.exists():  # the same run sent twice (re-run replay): keep both
        target = sent / f"{path.stem}.{int(time.time())}{path.suffix}"
    os.replace(path, target)
    return target


def _new_tiled_writer(client: Any, batch_size: int, max_array_size: int) -> Any:
    from bluesky_tiled_plugins import TiledWriter

    return TiledWriter(client, batch_size=batch_size, max_array_size=max_array_size)


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
        # RunEngine-thread state: routing of documents to their run.
        self._runs: dict[str, _Run] = {}  # start uid -> run
        self._by_uid: dict[str, _Run] = {}  # descriptor / resource uid -> run
        self._runs_of: dict[str, list[str]] = {}  # start uid -> uids mapped in _by_uid
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
        run = self._route(name, doc)
        if run is None:
            self._spool_orphan(name, doc)
            return
        line = dumps_document(name, doc)
        run.file.write(line + "\n")
        run.file.flush()
        run.documents += 1
        if self.fsync == "document" or (self.fsync == "stop" and name == "stop"):
            os.fsync(run.file.fileno())
        if name == "stop":
            self._forget(run.uid)
        if self._closed:
            if name == "stop":
                self._finish(run, sent=False)
            return
        with self._pending_cond:
            self._pending += 1
        self._queue.put((run, name, line))

    def _open_run(self, doc: dict[str, Any]) -> _Run:
        uid = doc["uid"]
        path = self.spool_dir / f"{uid}{SPOOL_SUFFIX}"
        file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed in _finish()
        if not _try_lock(file):
            file.close()
            raise RuntimeError(f"Spool file {path} is locked by another process (same run uid?)")
        run = _Run(uid=uid, path=path, file=file)
        self._runs[uid] = run
        self._runs_of[uid] = []
        return run

    def _map(self, key: str, run: _Run) -> None:
        self._by_uid[key] = run
        self._runs_of[run.uid].append(key)

    def _forget(self, start_uid: str) -> None:
        self._runs.pop(start_uid, None)
        for key in self._runs_of.pop(start_uid, []):
            self._by_uid.pop(key, None)

    def _single_open_run(self) -> _Run | None:
        return next(iter(self._runs.values())) if len(self._runs) == 1 else None

    def _route(self, name: str, doc: dict[str, Any]) -> _Run | None:
        if name == "start":
            return self._open_run(doc)
        if name in ("descriptor", "stop"):
            run = self._runs.get(doc["run_start"])
            if run is not None and name == "descriptor":
                self._map(doc["uid"], run)
            return run
        if name in ("event", "event_page", "stream_datum", "datum", "datum_page"):
            key = {
                "event": "descriptor",
                "event_page": "descriptor",
                "stream_datum": "stream_resource",
                "datum": "resource",
                "datum_page": "resource",
            }[name]
            return self._by_uid.get(doc[key])
        if name in ("stream_resource", "resource"):
            run = self._runs.get(doc.get("run_start", "")) or self._single_open_run()
            if run is not None:
                self._map(doc["uid"], run)
            return run
        return None

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
            "is back, send it with `magscope tiled replay` (or document_writer.replay).",
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
                run.writer = _new_tiled_writer(
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
            run.file.close()  # releases the lock
            if sent:
                target = _move_to_sent(run.path)
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
                with self._pending_cond:
                    self._pending -= 1
                    self._pending_cond.notify_all()

    # -------------------------------------------------------------- control
    @property
    def pending(self) -> int:
        """Documents queued and not yet handled by the worker."""
        return self._pending

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


# --------------------------------------------------------------------------- replay
@dataclass
class ReplaySummary:
    """What :func:`replay` did. Run uids in each list; ``documents`` sent in total."""

    replayed: list[str] = field(default_factory=list)
    documents: int = 0
    already_in_tiled: list[str] = field(default_factory=list)
    partial_deleted: list[str] = field(default_factory=list)
    stop_added: list[str] = field(default_factory=list)
    skipped_in_use: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    #: spool files with no document (the disk was full at the start document), moved
    #: to ``<spool_dir>/empty/`` so they are reported once: file name -> new path
    empty: dict[str, str] = field(default_factory=dict)
    #: per run, the external HDF5 data keys whose file holds more rows than the run's
    #: StreamDatums announce (a writer killed mid-record): Tiled serves the announced rows
    trimmed: dict[str, list[str]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failed

    def __str__(self) -> str:
        lines = [f"Replayed {len(self.replayed)} run(s), {self.documents} document(s)."]
        if self.partial_deleted:
            lines.append(
                f"  {len(self.partial_deleted)} partial copy(ies) in Tiled replaced: "
                + ", ".join(self.partial_deleted)
            )
        if self.stop_added:
            lines.append(
                f"  {len(self.stop_added)} run(s) had no stop document (the session "
                "crashed); written with exit_status 'fail': " + ", ".join(self.stop_added)
            )
        if self.already_in_tiled:
            lines.append(
                f"  {len(self.already_in_tiled)} run(s) were already complete in Tiled: "
                + ", ".join(self.already_in_tiled)
            )
        for uid, notes in self.trimmed.items():
            lines.append(
                f"  {uid}: file(s) hold rows no event describes (the session died while "
                "writing them); Tiled serves the described rows: " + "; ".join(notes)
            )
        for name, moved in self.empty.items():
            lines.append(
                f"  {name} held no document (the disk was full when its run started?); "
                f"moved to {moved}, not replayed"
            )
        if self.skipped_in_use:
            lines.append(
                f"  {len(self.skipped_in_use)} run(s) skipped, still being written by a "
                "live session: " + ", ".join(self.skipped_in_use)
            )
        for uid, error in self.failed.items():
            lines.append(f"  FAILED {uid}: {error}")
        return "\n".join(lines)


def unsent_spool_files(spool_dir: str | os.PathLike[str]) -> list[Path]:
    """Spool files of runs not (completely) in Tiled, oldest first."""
    folder = Path(spool_dir)
    if not folder.is_dir():
        return []
    files = [p for p in folder.glob(f"*{SPOOL_SUFFIX}") if p.is_file()]
    return sorted(files, key=lambda p: p.stat().st_mtime)


def _synthesize_stop(docs: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    start = docs[0][1]
    streams: dict[str, str] = {}
    counts: Counter[str] = Counter()
    last_time = start.get("time", time.time())
    for name, doc in docs:
        if isinstance(doc.get("time"), (int, float)):
            last_time = doc["time"]
        if name == "descriptor":
            streams[doc["uid"]] = doc["name"]
            counts[doc["name"]] += 0
        elif name == "event":
            counts[streams.get(doc["descriptor"], "?")] += 1
        elif name == "event_page":
            counts[streams.get(doc["descriptor"], "?")] += len(doc["seq_num"])
    return {
        "uid": str(uuid.uuid4()),
        "run_start": start["uid"],
        "time": last_time,
        "exit_status": "fail",
        "reason": "No stop document was recorded (the session ended mid-run); "
        "stop document added by magscope replay.",
        "num_events": dict(counts),
    }


def _announced_rows_only(
    docs: list[tuple[str, dict[str, Any]]],
) -> tuple[list[tuple[str, dict[str, Any]]], list[str]]:
    """Make Tiled serve only the rows of external HDF5 datasets that the run's
    StreamDatum documents announce.

    A detector that writes rows as they come and is killed mid-acquisition (``kill -9``
    of the session) leaves rows in its file that no document announced; Tiled sizes the
    array from the StreamDatums and then refuses the whole stream ("Can not reshape").
    For each such data key the first StreamResource gets the parameter
    ``slice="0:<announced rows>"`` (applied by Tiled's HDF5 adapter along the leading
    axis of the concatenated files). Only the last file of a data key may hold extra
    rows; files that cannot be opened here are left alone. Returns the (copied) documents
    and one note per trimmed data key.
    """
    descriptors: dict[str, dict[str, Any]] = {}
    resources: dict[str, dict[str, Any]] = {}
    announced: dict[str, int] = {}
    descriptor_of: dict[str, str] = {}
    for name, doc in docs:
        if name == "descriptor":
            descriptors[doc["uid"]] = doc
        elif name == "stream_resource" and doc.get("mimetype") == "application/x-hdf5":
            resources[doc["uid"]] = doc
        elif name == "stream_datum" and doc["stream_resource"] in resources:
            res = doc["stream_resource"]
            announced[res] = max(announced.get(res, 0), int(doc["indices"]["stop"]))
            descriptor_of[res] = doc["descriptor"]
    # data key (per descriptor) -> its resources, in document order
    groups: dict[tuple[str, str], list[str]] = {}
    for res, doc in resources.items():
        if res in descriptor_of:
            groups.setdefault((descriptor_of[res], doc["data_key"]), []).append(res)
    notes: list[str] = []
    patched: dict[str, dict[str, Any]] = {}
    for (descriptor, data_key), members in groups.items():
        first = resources[members[0]]
        if "slice" in first.get("parameters", {}):
            continue
        try:
            shape = descriptors[descriptor]["data_keys"][data_key]["shape"]
            needed, held = [], []
            for res in members:
                rows, trailing = _hdf5_rows(resources[res])
                per_index = int(np.prod(shape)) / max(1, int(np.prod(trailing)))
                if per_index != int(per_index):
                    raise ValueError("the datum shape does not divide into file rows")
                needed.append(announced.get(res, 0) * int(per_index))
                held.append(rows)
        except Exception as err:  # noqa: BLE001 - leave this key as it is
            logger.debug("Not checking the rows of %s: %s", data_key, err)
            continue
        if held == needed or held[-1] < needed[-1] or held[:-1] != needed[:-1]:
            continue  # exact, short (Tiled pads nothing: left alone), or not fixable here
        total = sum(needed)
        params = {**first.get("parameters", {}), "slice": f"0:{total}"}
        patched[members[0]] = {**first, "parameters": params}
        notes.append(f"{data_key} ({sum(held)} rows in the file, {total} described)")
    if not patched:
        return docs, notes
    out = [
        (name, patched.get(doc["uid"], doc) if name == "stream_resource" else doc)
        for name, doc in docs
    ]
    return out, notes


def _hdf5_rows(resource: dict[str, Any]) -> tuple[int, tuple[int, ...]]:
    """Rows (leading axis) and trailing shape of a StreamResource's HDF5 dataset."""
    from urllib.parse import urlparse

    import h5py

    path = urlparse(resource["uri"]).path
    # swmr=True: also a file whose writer was killed (still marked open for writing)
    with h5py.File(path, "r", swmr=True, locking=False) as file:
        shape = file[resource["parameters"]["dataset"]].shape
    return int(shape[0]), tuple(int(d) for d in shape[1:])


def _replay_state(uid: str, summary: ReplaySummary) -> str:
    if uid in summary.failed:
        return f"FAILED ({summary.failed[uid]})"
    if uid in summary.skipped_in_use:
        return "skipped, a live session still writes it"
    if uid in summary.already_in_tiled:
        return "already complete in Tiled"
    if uid in summary.empty:
        return f"empty spool file, moved to {summary.empty[uid]}"
    return "replayed"


def _replay_one(
    path: Path, client: Any, batch_size: int, max_array_size: int, summary: ReplaySummary
) -> None:
    with open(path, "a+", encoding="utf-8") as handle:
        if not _try_lock(handle):
            summary.skipped_in_use.append(path.stem)
            return
        docs = read_spool(path)
        if not docs:  # e.g. the disk was full when the run started: nothing to send
            handle.close()
            folder = path.parent / EMPTY_SUBDIR
            folder.mkdir(exist_ok=True)
            target = folder / path.name
            os.replace(path, target)
            summary.empty[path.stem] = str(target)
            logger.warning("Spool file %s holds no document; moved to %s", path, target)
            return
        if docs[0][0] != "start":
            raise ValueError(f"{path} does not begin with a start document")
        uid = docs[0][1]["uid"]
        if uid in client:
            node = client[uid]
            if node.metadata.get("stop") is not None:
                summary.already_in_tiled.append(uid)
                handle.close()
                _move_to_sent(path)
                return
            # A partial copy (the writer failed mid-run): remove it, then write it whole.
            client.delete_contents(uid, recursive=True, external_only=False)
            summary.partial_deleted.append(uid)
        if docs[-1][0] != "stop":
            docs.append(("stop", _synthesize_stop(docs)))
            summary.stop_added.append(uid)
        docs, trimmed = _announced_rows_only(docs)
        if trimmed:
            summary.trimmed[uid] = trimmed
        writer = _new_tiled_writer(client, batch_size, max_array_size)
        for name, doc in docs:
            writer(name, doc)
        summary.replayed.append(uid)
        summary.documents += len(docs)
    _move_to_sent(path)


def replay(
    spool_dir: str | os.PathLike[str],
    client_or_uri: Any,
    api_key: str | None = None,
    *,
    batch_size: int = 1000,
    max_array_size: int = DEFAULT_MAX_ARRAY_SIZE,
    runs: Iterable[str] | None = None,
    progress: Callable[[str], None] | None = None,
) -> ReplaySummary:
    """Send every unsent spooled run to Tiled, completely, and move it to ``sent/``.

    Idempotent: a run already complete in Tiled (its stop document is there) is only
    moved to ``sent/``; a partial copy (left by a writer that failed mid-run) is deleted
    first, with its internally stored data, and the run is written again under the same
    uid. External files (detector HDF5) are never deleted. A run without a stop document
    (the session died mid-run) gets one with ``exit_status="fail"``. Files locked by a
    live :class:`SpoolingTiledWriter` are skipped.

    Parameters
    ----------
    spool_dir
        The spool folder (``<data_dir>/spool`` for the embedded server).
    client_or_uri, api_key
        The Tiled container (or server URI and key) to write to.
    batch_size
        Events per Tiled write.
    runs
        Only these run uids (default: all unsent).
    progress
        Called with one line per run (e.g. ``print``).

    Raises
    ------
    TiledUnreachableError
        If the server does not answer; nothing is changed then.
    """
    files = unsent_spool_files(spool_dir)
    if runs is not None:
        wanted = set(runs)
        files = [p for p in files if p.stem in wanted]
    summary = ReplaySummary()
    if not files:
        return summary
    client = connect(client_or_uri, api_key)
    check_reachable(*client_base_uri(client))
    for path in files:
        try:
            _replay_one(path, client, int(batch_size), int(max_array_size), summary)
        except TiledUnreachableError:
            raise
        except Exception as err:  # noqa: BLE001 - report per run, continue with the rest
            summary.failed[path.stem] = f"{type(err).__name__}: {err}".splitlines()[0][:500]
            logger.warning("Replay of %s failed: %s", path, summary.failed[path.stem])
        if progress is not None:
            progress(f"{path.stem}: {_replay_state(path.stem, summary)}")
    return summary
