"""The health panel: the camera's rate and late frames, the tracker's counters (dropped
by reason), latency, each tracking worker, and how full the shared-memory rings are.

Everything comes from :meth:`LiveSource.health` (the owners' mirrored counters and the
workers' own records); rates and busy fractions are differences between two updates.
"""

from __future__ import annotations

import math
import time

from PyQt5 import QtCore, QtWidgets

from ._live_source import Health
from ._status import RateMeter

WORKER_COLUMNS = ("#", "pid", "state", "alive", "tracked", "dropped", "busy", "err")


def busy_fraction(previous: tuple[float, float] | None, now_s: float, busy_s: float) -> float:
    """Share of wall time a worker spent tracking between two samples (time s, busy s):
    (busy - busy0) / (now - t0), clipped to [0, 1]; NaN without an earlier sample or when
    the worker restarted (its busy time went down)."""
    if previous is None:
        return math.nan
    t0, b0 = previous
    if now_s <= t0 or busy_s < b0:
        return math.nan
    return min(1.0, max(0.0, (busy_s - b0) / (now_s - t0)))


def _ms(seconds: float) -> str:
    return "–" if not math.isfinite(seconds) else f"{seconds * 1e3:.1f} ms"


def _count(n: int) -> str:
    return "–" if n < 0 else f"{n:,}"


class HealthPanel(QtWidgets.QWidget):
    """Camera, tracking, workers and rings of the attached microscope (see module doc)."""

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self._frame_rate = RateMeter()
        self._track_rate = RateMeter()
        self._busy: dict[tuple[int, int], tuple[float, float]] = {}
        self.busy: dict[int, float] = {}  # worker index -> last busy fraction
        self.frame_rate_hz = math.nan

        self.fields: dict[str, QtWidgets.QLabel] = {}
        camera = self._form("Camera", (
            ("frame_rate", "frame rate"), ("frames", "frames"), ("late", "late frames"),
        ))
        tracking = self._form("Tracking", (
            ("tracked", "frames tracked"), ("dropped", "dropped (behind/worker/error)"),
            ("queue", "queue"), ("latency", "latency p50 / p99"), ("restarts", "restarts"),
        ))
        rings = self._form("Shared memory", (
            ("frame_ring", "frame ring"), ("track_ring", "track ring"),
        ))
        self.workers = QtWidgets.QTableWidget(0, len(WORKER_COLUMNS))
        self.workers.setHorizontalHeaderLabels(WORKER_COLUMNS)
        self.workers.setEditTriggers(QtWidgets.QAbstractItemView.NoEditTriggers)
        rows, columns = self.workers.verticalHeader(), self.workers.horizontalHeader()
        assert rows is not None and columns is not None
        rows.setVisible(False)
        columns.setSectionResizeMode(QtWidgets.QHeaderView.ResizeToContents)
        left = QtWidgets.QVBoxLayout()
        for box in (camera, rings):
            left.addWidget(box)
        left.addStretch(1)
        right = QtWidgets.QVBoxLayout()
        right.addWidget(tracking)
        right.addWidget(self.workers, 1)
        layout = QtWidgets.QHBoxLayout(self)
        layout.addLayout(left, 2)
        layout.addLayout(right, 3)

    def _form(self, title: str, rows) -> QtWidgets.QGroupBox:
        box = QtWidgets.QGroupBox(title)
        form = QtWidgets.QFormLayout(box)
        form.setLabelAlignment(QtCore.Qt.AlignmentFlag.AlignLeft)
        for key, text in rows:
            label = QtWidgets.QLabel("–")
            label.setTextInteractionFlags(QtCore.Qt.TextInteractionFlag.TextSelectableByMouse)
            self.fields[key] = label
            form.addRow(text, label)
        return box

    def show_health(self, health: Health, now_s: float | None = None) -> None:
        """Show one read of the counters (``now_s``: monotonic s, for the rates)."""
        now = time.monotonic() if now_s is None else now_s
        f = self.fields
        fps = self._frame_rate.update(health.frames_acquired, now)
        self.frame_rate_hz = fps
        period = health.frame_period_s
        nominal = f" (set {1.0 / period:.0f})" if period > 0 else ""
        f["frame_rate"].setText(
            ("–" if math.isnan(fps) else f"{fps:.1f} frames/s") + nominal
        )
        f["frames"].setText(_count(health.frames_acquired))
        f["late"].setText(_count(health.frames_late))
        if not health.tracker_attached:
            for key in ("tracked", "dropped", "queue", "latency", "restarts", "track_ring"):
                f[key].setText("no tracker")
            self.workers.setRowCount(0)
        else:
            rate = self._track_rate.update(health.frames_tracked, now)
            f["tracked"].setText(
                _count(health.frames_tracked)
                + ("" if math.isnan(rate) else f"  ({rate:.0f}/s)")
            )
            f["dropped"].setText(
                f"{_count(health.frames_dropped)}  ({_count(health.dropped_behind)} / "
                f"{_count(health.dropped_worker)} / {_count(health.dropped_error)})"
            )
            f["queue"].setText(f"{_count(health.queue_depth)} frames")
            f["latency"].setText(f"{_ms(health.latency_p50_s)} / {_ms(health.latency_p99_s)}")
            f["restarts"].setText(_count(health.worker_restarts))
            self._show_workers(health, time.time())
        f["frame_ring"].setText(self._ring_text(
            health.frame_ring_capacity, health.queue_depth if health.tracker_attached else -1,
            "tracker behind by"))
        if health.tracker_attached:
            cap = health.track_ring_capacity
            f["track_ring"].setText(
                f"{cap:,} frames ({cap * max(health.frame_period_s, 0):.0f} s of history)"
                if cap > 0 else "–"
            )

    @staticmethod
    def _ring_text(capacity: int, lag: int, who: str) -> str:
        if capacity <= 0:
            return "–"
        text = f"{capacity:,} slots"
        if lag >= 0:
            text += f"; {who} {lag:,} ({100.0 * lag / capacity:.0f} %)"
        return text

    def _show_workers(self, health: Health, wall_s: float) -> None:
        table = self.workers
        table.setRowCount(len(health.workers))
        for row, worker in enumerate(health.workers):
            rec = worker.record
            key = (worker.index, rec.pid)
            busy = busy_fraction(self._busy.get(key), wall_s, rec.busy_s)
            if key not in self._busy or math.isfinite(busy):
                self._busy[key] = (wall_s, rec.busy_s)
            if math.isfinite(busy):
                self.busy[worker.index] = busy
            shown = self.busy.get(worker.index, math.nan)
            cells = (
                str(worker.index), str(rec.pid) if rec.pid > 0 else "–", rec.state,
                "yes" if worker.alive else "NO", f"{rec.frames_tracked:,}",
                f"{rec.frames_dropped:,}", "–" if math.isnan(shown) else f"{100 * shown:.0f} %",
                f"{rec.kernel_errors}" + (f": {rec.error[:60]}" if rec.error else ""),
            )
            for col, text in enumerate(cells):
                item = table.item(row, col)
                if item is None:
                    item = QtWidgets.QTableWidgetItem()
                    table.setItem(row, col, item)
                if item.text() != text:
                    item.setText(text)
