"""Live output of a running plan: one line every few seconds, so a long plan is never silent.

:class:`RunProgress` is a RunEngine callback (``RE.subscribe(RunProgress())``, done by the
IPython profile). A run shorter than ``after_s`` prints nothing; a longer one prints a line
when a document arrives at least ``every_s`` after the last line, and one when it ends::

    force_calibration  12.0 s  calibration 2 events, tracks 1,200 rows
    zlut_sweep  20.3 s  primary 41/91 (45 %)
    force_calibration done (success) in 46.2 s: calibration 5 events, force_fit 1 event, ...

The percentage is shown where the start document says how many points the run has
(``num_points``, as ``bluesky.plans`` scans record it), counted against the ``primary``
stream's events. Rows of full-rate streams (the tracker's ``tracks``, announced by
StreamDatum documents) are counted too: they arrive about once a second during a record.
Lines are plain (no carriage returns), so they interleave cleanly with the
BestEffortCallback's tables and with logs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

__all__ = ["RunProgress"]


class RunProgress:
    """Print a plan's name, elapsed time (s) and documents so far while it runs.

    :param after_s: stay quiet for runs shorter than this (s).
    :param every_s: at most one progress line per this many seconds.
    :param out: where lines go (default :func:`print`).
    :param clock: monotonic time in seconds (tests pass their own).
    """

    def __init__(
        self,
        *,
        after_s: float = 3.0,
        every_s: float = 5.0,
        out: Callable[[str], Any] = print,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.after_s = after_s
        self.every_s = every_s
        self.out = out
        self.clock = clock
        self._start_doc: dict[str, Any] | None = None
        self._t0 = 0.0
        self._last_line: float | None = None
        self._streams: dict[str, str] = {}  # descriptor uid -> stream name
        self._events: dict[str, int] = {}  # stream name -> events
        self._rows: dict[str, int] = {}  # stream name -> rows announced by StreamDatum

    # --------------------------------------------------------------------- the callback
    def __call__(self, name: str, doc: dict[str, Any]) -> None:
        if name == "start":
            self._start_doc = doc
            self._t0 = self.clock()
            self._last_line = None
            self._streams.clear()
            self._events.clear()
            self._rows.clear()
        elif self._start_doc is None:
            return
        elif name == "descriptor":
            stream = doc.get("name", "primary")
            self._streams[doc["uid"]] = stream
            self._events.setdefault(stream, 0)
            self._rows.setdefault(stream, 0)
        elif name == "event":
            self._count(self._events, doc["descriptor"], 1)
        elif name == "event_page":
            self._count(self._events, doc["descriptor"], len(doc.get("seq_num", ())))
        elif name == "stream_datum":
            indices = doc.get("indices", {})
            rows = int(indices.get("stop", 0)) - int(indices.get("start", 0))
            self._count(self._rows, doc.get("descriptor", ""), rows)
        elif name == "stop":
            self._stop(doc)

    def _stop(self, doc: dict[str, Any]) -> None:
        elapsed = self.clock() - self._t0
        if elapsed >= self.after_s:
            status = doc.get("exit_status", "?")
            reason = doc.get("reason") or ""
            why = f": {reason}" if reason and status != "success" else ""
            counts = self.summary()
            self.out(
                f"{self.plan_name} done ({status}{why}) in {elapsed:.1f} s"
                + (f": {counts}" if counts else "")
            )
        self._start_doc = None

    # ----------------------------------------------------------------------- the state
    @property
    def plan_name(self) -> str:
        return str((self._start_doc or {}).get("plan_name", "run"))

    @property
    def num_points(self) -> int | None:
        """Points the run announced (``num_points`` of its start document), if any."""
        value = (self._start_doc or {}).get("num_points")
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            return None
        return int(value)

    def summary(self) -> str:
        """The streams so far: ``primary 3/5 (60 %), tracks 1,200 rows``. A stream with
        events counts its events; one without (a full-rate record) its rows."""
        parts = []
        for stream, n in self._events.items():
            rows = self._rows.get(stream, 0)
            if n == 0 and rows:
                parts.append(f"{stream} {rows:,} rows")
            elif stream == "primary" and (total := self.num_points):
                parts.append(f"{stream} {n}/{total} ({100.0 * n / total:.0f} %)")
            elif n:
                parts.append(f"{stream} {n:,} event{'s' if n != 1 else ''}")
        return ", ".join(parts)

    def line(self) -> str:
        """The progress line now."""
        elapsed = self.clock() - self._t0
        counts = self.summary()
        return f"{self.plan_name}  {elapsed:.1f} s" + (f"  {counts}" if counts else "")

    def _count(self, counter: dict[str, int], descriptor: str, n: int) -> None:
        stream = self._streams.get(descriptor)
        if stream is None:
            return
        counter[stream] = counter.get(stream, 0) + n
        now = self.clock()
        if now - self._t0 < self.after_s:
            return
        if self._last_line is not None and now - self._last_line < self.every_s:
            return
        self._last_line = now
        self.out(self.line())
