"""The health log: one line of the instrument's health every minute, in a rotating file.

The session that owns the instrument (IPython, the queue's worker, the demo) writes
``<data_dir>/logs/health-<instance>.log``; at ``max_bytes`` the file rotates
(``.1`` .. ``.<backup_count>``, the oldest dropped). Files are the owner's only (0600).
A line says, with units, the camera's measured and set frame rate, frames and late frames
(and how many more than the line before), frames tracked (and the tracking rate over the
interval), dropped by reason, queue, latency p50/p99, workers alive and restarts, the
shared-memory rings' fill, the Tiled spool's backlog and, once a record has asked for
images, the video writer's rows, lost frames, MB stored and busy MB/s::

    2026-12-06 07:30:00 camera 100.0 frames/s (set 100.0), 6,000 frames, 0 late (+0) | ...
"""

from __future__ import annotations

import logging
import math
import os
import threading
from collections.abc import Callable
from logging.handlers import RotatingFileHandler
from pathlib import Path

from magscope_devices._health import HealthFigures

__all__ = ["HEALTH_LOG_INTERVAL_S", "HealthLog", "format_health_line", "health_log_path"]

#: Seconds between two lines (``MAGSCOPE_HEALTH_INTERVAL_S`` overrides it in a session).
HEALTH_LOG_INTERVAL_S = 60.0


def health_log_path(data_dir: str | os.PathLike[str], instance: str) -> Path:
    """Where the health log of ``instance`` goes: ``<data_dir>/logs/health-<instance>.log``."""
    return Path(data_dir) / "logs" / f"health-{instance}.log"


def _n(value: int) -> str:
    return "n/a" if value < 0 else f"{value:,}"


def _f(value: float, fmt: str = ".1f") -> str:
    return "n/a" if not math.isfinite(value) else format(value, fmt)


def _more(now: HealthFigures, before: HealthFigures | None, counter: str) -> str:
    """`` (+N)``: what ``counter`` gained since ``before`` ("" without a before)."""
    a = -1 if before is None else int(getattr(before, counter))
    b = int(getattr(now, counter))
    return "" if a < 0 or b < 0 else f" (+{b - a:,})"


def format_health_line(now: HealthFigures, before: HealthFigures | None = None) -> str:
    """One log line (no timestamp: the log adds it): ``now``'s figures with units, and
    what the counters gained since ``before`` (the previous line's figures)."""
    b = before
    parts = [
        f"camera {_f(now.camera_rate_hz)} frames/s (set {_f(now.camera_rate_set_hz)}), "
        f"{_n(now.frames_acquired)} frames, {_n(now.frames_late)} late"
        f"{_more(now, b, 'frames_late')}"
    ]
    if now.frames_tracked >= 0:
        tracked = f"{_n(now.frames_tracked)} tracked"
        if b is not None and b.frames_tracked >= 0:
            gained = now.frames_tracked - b.frames_tracked
            per_s = f" = {gained / (now.time - b.time):.1f}/s" if now.time > b.time else ""
            tracked += f" (+{gained:,}{per_s})"
        parts.append(
            f"tracking {tracked}"
            f", {_n(now.frames_dropped)} dropped{_more(now, b, 'frames_dropped')}"
            f" (behind {_n(now.dropped_behind)}, worker {_n(now.dropped_worker)}, "
            f"error {_n(now.dropped_error)}), queue {_n(now.queue_depth)} frames, latency "
            f"p50 {_f(1e3 * now.latency_p50_s)} ms p99 {_f(1e3 * now.latency_p99_s)} ms"
        )
        parts.append(
            f"workers {_n(now.workers_alive)}/{_n(now.workers)} alive, "
            f"{_n(now.worker_restarts)} restarts{_more(now, b, 'worker_restarts')}"
        )
        parts.append(
            f"frame ring {_f(100 * now.frame_ring_fill)} % full, "
            f"track ring {_f(100 * now.track_ring_fill)} % full"
        )
    else:
        parts.append("tracking not running")
    if now.spool_documents >= 0:
        parts.append(
            f"Tiled spool {_n(now.spool_documents)} documents queued, "
            f"{_n(now.spool_runs_unsent)} runs unsent"
        )
    if now.video_writer_alive >= 0:
        state = "" if now.video_writer_alive else " (writer dead)"
        parts.append(
            f"video {_n(now.video_rows_written)} rows, {_n(now.video_frames_lost)} lost"
            f"{_more(now, b, 'video_frames_lost')}, {_f(now.video_stored_mb)} MB stored, "
            f"writer {_f(now.video_write_mb_s, '.0f')} MB/s busy{state}"
        )
    return " | ".join(parts)


class _OwnerOnlyRotatingFileHandler(RotatingFileHandler):
    """A RotatingFileHandler whose files (the new one after each rotation too) are 0600."""

    def _open(self):  # type: ignore[no-untyped-def]
        fd = os.open(self.baseFilename, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.chmod(self.baseFilename, 0o600)
        return os.fdopen(fd, "a", encoding=self.encoding or "utf-8")


class HealthLog:
    """Writes :func:`format_health_line` of ``read()`` to ``path`` every ``interval_s`` s
    from a daemon thread, from :meth:`start` until :meth:`stop` (which writes a last line).
    A failed read is logged as such and the next line comes as usual."""

    def __init__(
        self,
        read: Callable[[], HealthFigures],
        path: str | os.PathLike[str],
        *,
        interval_s: float = HEALTH_LOG_INTERVAL_S,
        max_bytes: int = 5_000_000,
        backup_count: int = 5,
    ) -> None:
        if not (math.isfinite(interval_s) and interval_s > 0):
            raise ValueError(f"interval_s={interval_s!r}: use a number of seconds > 0")
        self.read = read
        self.path = Path(path)
        self.interval_s = float(interval_s)
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._handler = _OwnerOnlyRotatingFileHandler(
            self.path, maxBytes=int(max_bytes), backupCount=int(backup_count), encoding="utf-8"
        )
        self._handler.setFormatter(
            logging.Formatter("%(asctime)s %(message)s", datefmt="%Y-%m-%d %H:%M:%S")
        )
        self._logger = logging.Logger(f"magscope.health.{self.path}")  # not in the tree
        self._logger.addHandler(self._handler)
        self._logger.propagate = False
        self._last: HealthFigures | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def write_line(self, note: str = "") -> None:
        """Read the health and write one line now (``note`` goes first)."""
        try:
            now = self.read()
        except Exception as err:  # noqa: BLE001 - the log must say so, never stop
            self._logger.info("%shealth not readable: %s: %s", note, type(err).__name__, err)
            return
        self._logger.info("%s%s", note, format_health_line(now, self._last))
        self._last = now

    def start(self) -> HealthLog:
        if self._thread is None:
            self.write_line("session started | ")
            self._thread = threading.Thread(target=self._run, name="HealthLog", daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.write_line()

    def stop(self) -> None:
        """Stop the thread, write a last line, close the file. Idempotent."""
        if self._stop.is_set():
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self.write_line("session ended | ")
        self._handler.close()
