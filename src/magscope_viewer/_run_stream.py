"""Run context from the live document stream (bluesky's 0MQ proxy), without Qt.

:class:`RunContext` is a model fed one document at a time (``context.update(name, doc)``):
the plan's name, uid, scan id, sample, start time, events per stream, progress where the
start document says how many points the run has (``num_points``, as ``bluesky.plans``
scans and the Z-LUT sweep record it, counted against the ``primary`` stream), the latest
results of every stream as they come, and how the run ended. A viewer that joins mid-run
missed the start document: the descriptors and events that follow still name the run
(descriptor ``run_start``) and their streams, so the context says "joined late" and shows
what it can.

:class:`DocumentSubscriber` reads the proxy's out side (``MAGSCOPE_PROXY_OUT``, default
``127.0.0.1:5578``) with a plain 0MQ SUB socket in a worker thread and hands each
``(name, doc)`` to a callback in that thread (the Qt panel relays it to the GUI thread
through a queued signal, :mod:`magscope_viewer._run_panel`). Messages are
``b"<prefix> <name> <pickle>"`` as :class:`bluesky.callbacks.zmq.Publisher` sends them;
like bluesky's ``RemoteDispatcher``, it unpickles what the proxy forwards, so point it
only at a proxy of this machine's own sessions (the proxy binds 127.0.0.1).

Times are UNIX s; elapsed and remaining times s.
"""

from __future__ import annotations

import os
import pickle
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

ENV_PROXY_OUT = "MAGSCOPE_PROXY_OUT"
DEFAULT_PROXY_OUT = "127.0.0.1:5578"

IDLE = "idle"
RUNNING = "running"
FINISHED = "finished"

#: Fields of one stream's latest event kept as results (the first ones, by name).
MAX_RESULT_FIELDS = 12


def default_proxy_address() -> str:
    """``tcp://`` address of the proxy's out side: ``$MAGSCOPE_PROXY_OUT`` or 127.0.0.1:5578."""
    return normalize_address(os.environ.get(ENV_PROXY_OUT) or DEFAULT_PROXY_OUT)


def normalize_address(address: str) -> str:
    """``"host:port"`` or ``"tcp://host:port"`` -> ``"tcp://host:port"`` (ValueError else)."""
    text = address.strip()
    bare = text.removeprefix("tcp://")
    host, _, port = bare.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"proxy address {address!r} is not host:port or tcp://host:port")
    return f"tcp://{bare}"


@dataclass(frozen=True)
class StreamResult:
    """The latest event of one stream: ``seq_num``, ``time`` (UNIX s) and its values (numbers
    as they came; arrays as NumPy arrays; fields filled from external files left out)."""

    stream: str
    seq_num: int
    time: float
    values: dict[str, Any]


def format_value(value: Any, max_items: int = 4) -> str:
    """Short text of a result value: numbers with 4 significant digits, arrays as their
    first items (``[1.2, 3.4, ... (10)]``)."""
    if isinstance(value, bool | np.bool_):
        return str(bool(value))
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating):
        return f"{float(value):.4g}"
    if isinstance(value, list | tuple | np.ndarray):
        arr = np.asarray(value)
        if arr.dtype.kind in "fiub" and arr.ndim >= 1:
            flat = arr.ravel()
            items = ", ".join(format_value(v) for v in flat[:max_items])
            more = f", ... ({flat.size})" if flat.size > max_items else ""
            return f"[{items}{more}]"
    text = str(value)
    return text if len(text) <= 40 else text[:37] + "..."


@dataclass
class RunContext:
    """What is known of the newest run from its documents (see the module docstring).

    ``state``: ``"idle"`` (no run seen), ``"running"`` or ``"finished"``. ``joined_late``:
    the start document was missed (the viewer connected mid-run). ``started_at``,
    ``stopped_at``: UNIX s from the start and stop documents (the first document seen
    when joined late). ``events``: events per stream; ``rows``: full-rate rows per
    stream announced by StreamDatum documents (tracks, frames). ``results``: the latest
    event of every stream (:class:`StreamResult`), newest last. ``exit_status``
    (``success``, ``abort``, ``fail``) and ``reason`` from the stop document.
    """

    state: str = IDLE
    plan_name: str | None = None
    uid: str | None = None
    scan_id: int | None = None
    sample: str | None = None
    started_at: float | None = None
    stopped_at: float | None = None
    num_points: int | None = None
    progress_stream: str = "primary"
    joined_late: bool = False
    exit_status: str | None = None
    reason: str = ""
    events: dict[str, int] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)
    results: dict[str, StreamResult] = field(default_factory=dict)
    documents: int = 0
    _streams: dict[str, str] = field(default_factory=dict, repr=False)  # descriptor uid -> name
    _external: dict[str, set[str]] = field(default_factory=dict, repr=False)

    # ----------------------------------------------------------------- the documents
    def update(self, name: str, doc: dict[str, Any]) -> bool:
        """Take one document; True if the context changed (any document of a run does)."""
        self.documents += 1
        if name == "start":
            self._start(doc)
        elif name == "descriptor":
            self._descriptor(doc)
        elif name == "event":
            self._events(doc["descriptor"], [doc.get("seq_num", 0)], [doc.get("time", 0.0)],
                         {k: [v] for k, v in doc.get("data", {}).items()})
        elif name == "event_page":
            self._events(doc["descriptor"], list(doc.get("seq_num", [])),
                         list(doc.get("time", [])), dict(doc.get("data", {})))
        elif name == "stream_datum":
            self._stream_datum(doc)
        elif name == "stop":
            self._stop(doc)
        else:  # resource, datum, datum_page, stream_resource: nothing to show
            return False
        return True

    def _reset(self) -> None:
        fresh = RunContext(documents=self.documents)
        self.__dict__.update(fresh.__dict__)

    def _start(self, doc: dict[str, Any]) -> None:
        self._reset()
        self.state = RUNNING
        self.uid = doc.get("uid")
        self.plan_name = doc.get("plan_name")
        scan_id = doc.get("scan_id")
        self.scan_id = int(scan_id) if isinstance(scan_id, int | float) else None
        sample = doc.get("sample")
        self.sample = None if sample is None else str(sample)
        self.started_at = float(doc.get("time", time.time()))
        points = doc.get("num_points")
        if isinstance(points, int | float) and not isinstance(points, bool) and points > 0:
            self.num_points = int(points)
        stream = doc.get("progress_stream")
        self.progress_stream = stream if isinstance(stream, str) and stream else "primary"

    def _join_late(self, run_uid: str | None, when: float | None) -> None:
        """A document of a run whose start was missed (or of another run than the last)."""
        if self.state == RUNNING and (run_uid is None or run_uid == self.uid):
            return
        self._reset()
        self.state = RUNNING
        self.joined_late = True
        self.uid = run_uid
        self.started_at = when

    def _descriptor(self, doc: dict[str, Any]) -> None:
        run_uid = doc.get("run_start")
        if self.state != RUNNING or (run_uid is not None and run_uid != self.uid):
            self._join_late(run_uid, doc.get("time"))
        stream = str(doc.get("name", "primary"))
        self._streams[doc["uid"]] = stream
        self._external[doc["uid"]] = {
            key for key, info in (doc.get("data_keys") or {}).items() if info.get("external")
        }
        self.events.setdefault(stream, 0)

    def _stream_of(self, descriptor: str, when: float | None) -> str:
        if descriptor not in self._streams:  # its descriptor was missed: joined late
            self._join_late(self.uid if self.state == RUNNING else None, when)
            self._streams[descriptor] = "?"
            self._external[descriptor] = set()
        return self._streams[descriptor]

    def _events(
        self, descriptor: str, seq: list[int], times: list[float], data: dict[str, list[Any]]
    ) -> None:
        if not seq:
            return
        stream = self._stream_of(descriptor, times[0] if times else None)
        self.events[stream] = self.events.get(stream, 0) + len(seq)
        external = self._external.get(descriptor, set())
        keys = sorted(k for k in data if k not in external)[:MAX_RESULT_FIELDS]
        values = {k: data[k][-1] for k in keys if len(data[k])}
        self.results.pop(stream, None)  # newest last
        self.results[stream] = StreamResult(
            stream, int(seq[-1]), float(times[-1]) if times else float("nan"), values
        )

    def _stream_datum(self, doc: dict[str, Any]) -> None:
        stream = self._stream_of(doc.get("descriptor", ""), None)
        indices = doc.get("indices") or {}
        n = int(indices.get("stop", 0)) - int(indices.get("start", 0))
        if n > 0:
            self.rows[stream] = self.rows.get(stream, 0) + n

    def _stop(self, doc: dict[str, Any]) -> None:
        run_uid = doc.get("run_start")
        if self.state != RUNNING or (run_uid is not None and run_uid != self.uid):
            self._join_late(run_uid, None)
        self.state = FINISHED
        self.exit_status = doc.get("exit_status")
        self.reason = str(doc.get("reason") or "")
        self.stopped_at = float(doc.get("time", time.time()))
        for stream, n in (doc.get("num_events") or {}).items():
            if stream in self.events or not self.joined_late:
                self.events[stream] = max(int(n), self.events.get(stream, 0))

    # ------------------------------------------------------------------- derived
    @property
    def running(self) -> bool:
        return self.state == RUNNING

    @property
    def progress(self) -> float | None:
        """Fraction (0..1) of the announced points done (events of the start document's
        ``progress_stream``, default ``primary``, over ``num_points``; 1 after a
        successful stop); None when the run did not say."""
        if self.state == FINISHED and self.exit_status == "success" and self.num_points:
            return 1.0
        if not self.num_points:
            return None
        return min(1.0, self.events.get(self.progress_stream, 0) / self.num_points)

    def elapsed_s(self, now: float | None = None) -> float | None:
        """Seconds since the start (until the stop once finished); None if unknown."""
        if self.started_at is None:
            return None
        end = self.stopped_at if self.stopped_at is not None else (
            time.time() if now is None else now
        )
        return max(0.0, end - self.started_at)

    def remaining_s(self, now: float | None = None) -> float | None:
        """Estimated seconds left (elapsed x (1 - p) / p at progress p); None if unknown."""
        if self.state != RUNNING:
            return 0.0 if self.state == FINISHED else None
        p, elapsed = self.progress, self.elapsed_s(now)
        if p is None or elapsed is None or p <= 0:
            return None
        return elapsed * (1.0 - p) / p

    def status_text(self) -> str:
        """One line: ``idle``, ``zlut_sweep running``, ``run in progress (joined late)``,
        ``count finished: success`` or ``... finished: abort (reason)``."""
        plan = self.plan_name or "run"
        if self.state == IDLE:
            return "idle"
        if self.state == RUNNING:
            if self.joined_late:
                return "run in progress (joined late)"
            return f"{plan} running"
        why = f" ({self.reason})" if self.reason and self.exit_status != "success" else ""
        return f"{plan if not self.joined_late else 'run'} finished: {self.exit_status}{why}"

    def result_rows(self) -> list[tuple[str, str, str]]:
        """(stream, field, value text) of the latest results, newest stream first."""
        out = []
        for result in reversed(list(self.results.values())):
            for key, value in result.values.items():
                out.append((result.stream, key, format_value(value)))
        return out


def split_message(message: bytes) -> tuple[str, dict[str, Any]] | None:
    """``(name, doc)`` of one proxy message ``b"<prefix> <name> <pickle>"``; None for a
    message that is not one."""
    try:
        _, name, payload = message.split(b" ", 2)
        doc = pickle.loads(payload)  # noqa: S301 - bluesky's wire format (local proxy)
        return name.decode(), doc
    except Exception:
        return None


class DocumentSubscriber:
    """Read documents from bluesky's 0MQ proxy in a worker thread.

    :param address: the proxy's out side, ``tcp://host:port`` or ``host:port``.
    :param callback: called as ``callback(name, doc)`` **in the worker thread** for every
        document.
    :param poll_s: how often (s) the thread checks whether to stop.

    :meth:`start` connects and starts the thread; :meth:`stop` ends it (joins) and
    closes the socket. A proxy that is not there yet is no error: 0MQ connects when it
    appears. ``received``: documents handed on so far.
    """

    def __init__(
        self, address: str, callback: Callable[[str, dict[str, Any]], Any], *,
        poll_s: float = 0.1,
    ) -> None:
        self.address = normalize_address(address)
        self.callback = callback
        self.poll_s = float(poll_s)
        self.received = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._connected = threading.Event()

    def start(self) -> DocumentSubscriber:
        if self._thread is not None:
            raise RuntimeError("DocumentSubscriber already started")
        self._thread = threading.Thread(
            target=self._run, name=f"documents from {self.address}", daemon=True
        )
        self._thread.start()
        self._connected.wait(5.0)
        return self

    def _run(self) -> None:
        import zmq

        context = zmq.Context()
        socket = context.socket(zmq.SUB)
        try:
            socket.setsockopt(zmq.LINGER, 0)
            socket.connect(self.address)
            socket.setsockopt(zmq.SUBSCRIBE, b"")
            self._connected.set()
            timeout_ms = max(1, int(self.poll_s * 1000))
            while not self._stop.is_set():
                if not socket.poll(timeout_ms):
                    continue
                while True:  # everything waiting, then check for stop again
                    try:
                        message = socket.recv(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    parsed = split_message(message)
                    if parsed is None:
                        continue
                    self.received += 1
                    self.callback(*parsed)
        finally:
            self._connected.set()
            socket.close()
            context.term()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self, timeout: float = 2.0) -> None:
        """End the thread (waits up to ``timeout`` s) and close the socket."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
