"""The run panel: plan name, state, progress, elapsed and remaining time, latest results.

Fed by documents (:meth:`RunPanel.handle_document`, in the GUI thread). With
:meth:`RunPanel.start_stream` it subscribes to bluesky's 0MQ proxy itself: a
:class:`~magscope_viewer._run_stream.DocumentSubscriber` reads in its worker thread and
emits :attr:`DocumentRelay.document`, delivered to the panel through a queued connection,
so the model is only ever touched by the GUI thread.
"""

from __future__ import annotations

import math
import time
from typing import Any

from PyQt5 import QtCore, QtWidgets

from ._run_stream import FINISHED, RUNNING, DocumentSubscriber, RunContext

#: State label colours (CSS): running, success, abort/fail.
_COLOURS = {"running": "#1f6fd1", "success": "#2a8a2a", "other": "#c0392b", "idle": "#777"}


def _seconds(value: float | None) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:.1f} s"


class DocumentRelay(QtCore.QObject):
    """Carries ``(name, doc)`` from the subscriber's thread to the GUI thread."""

    document = QtCore.pyqtSignal(str, object)


class RunPanel(QtWidgets.QWidget):
    """What runs now (or ran last), from the live document stream.

    :param tick_ms: how often the elapsed and remaining times are redrawn (ms).
    """

    changed = QtCore.pyqtSignal()

    def __init__(self, parent=None, *, tick_ms: int = 500) -> None:
        super().__init__(parent)
        self.context = RunContext()
        self.subscriber: DocumentSubscriber | None = None
        self.relay = DocumentRelay(self)
        queued = QtCore.Qt.ConnectionType.QueuedConnection
        self.relay.document.connect(self.handle_document, queued)  # type: ignore[call-arg]

        self.plan_label = QtWidgets.QLabel("–")
        font = self.plan_label.font()
        font.setPointSize(font.pointSize() + 3)
        font.setBold(True)
        self.plan_label.setFont(font)
        self.state_label = QtWidgets.QLabel("idle")
        self.run_label = QtWidgets.QLabel("")
        self.run_label.setTextInteractionFlags(QtCore.Qt.TextInteractionFlag.TextSelectableByMouse)
        self.progress = QtWidgets.QProgressBar()
        self.progress.setRange(0, 1000)
        self.progress.setValue(0)
        self.progress.setFormat("–")
        self.time_label = QtWidgets.QLabel("elapsed – · remaining –")
        self.counts_label = QtWidgets.QLabel("")
        self.counts_label.setWordWrap(True)
        self.results = QtWidgets.QTableWidget(0, 3)
        self.results.setHorizontalHeaderLabels(["stream", "field", "value"])
        vertical, horizontal = self.results.verticalHeader(), self.results.horizontalHeader()
        assert vertical is not None and horizontal is not None
        vertical.setVisible(False)
        horizontal.setStretchLastSection(True)
        self.results.setEditTriggers(QtWidgets.QAbstractItemView.NoEditTriggers)

        form = QtWidgets.QFormLayout()
        form.addRow("plan", self.plan_label)
        form.addRow("state", self.state_label)
        form.addRow("run", self.run_label)
        form.addRow("progress", self.progress)
        form.addRow("time", self.time_label)
        form.addRow("streams", self.counts_label)
        layout = QtWidgets.QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(QtWidgets.QLabel("latest results"))
        layout.addWidget(self.results, 1)

        self.timer = QtCore.QTimer(self)
        self.timer.timeout.connect(self._tick)
        self.timer.start(int(tick_ms))
        self._show()

    # ----------------------------------------------------------------- the stream
    def start_stream(self, address: str) -> DocumentSubscriber:
        """Subscribe to the proxy at ``address`` (``tcp://host:port``) in a worker thread."""
        self.stop_stream()
        self.subscriber = DocumentSubscriber(address, self.relay.document.emit).start()
        return self.subscriber

    def stop_stream(self) -> None:
        if self.subscriber is not None:
            self.subscriber.stop()
            self.subscriber = None

    def handle_document(self, name: str, doc: Any) -> None:
        """Take one document (GUI thread) and redraw."""
        if self.context.update(name, doc):
            self._show()
            self.changed.emit()

    # --------------------------------------------------------------------- queries
    def plan_running(self) -> str | None:
        """The running plan's name (``"run"`` if unknown, e.g. joined late), or None."""
        if self.context.state != RUNNING:
            return None
        return self.context.plan_name or "run"

    def status_text(self) -> str:
        return self.context.status_text()

    # ----------------------------------------------------------------- drawing
    def _tick(self) -> None:
        if self.context.state == RUNNING:
            self._show_times()

    def _show_times(self) -> None:
        ctx = self.context
        now = time.time()
        self.time_label.setText(
            f"elapsed {_seconds(ctx.elapsed_s(now))} · remaining {_seconds(ctx.remaining_s(now))}"
        )

    def _show(self) -> None:
        ctx = self.context
        self.plan_label.setText(ctx.plan_name or ("(start missed)" if ctx.joined_late else "–"))
        if ctx.state == RUNNING:
            colour = _COLOURS["running"]
        elif ctx.state == FINISHED:
            colour = _COLOURS["success" if ctx.exit_status == "success" else "other"]
        else:
            colour = _COLOURS["idle"]
        self.state_label.setText(ctx.status_text())
        self.state_label.setStyleSheet(f"color: {colour}; font-weight: bold")
        bits = []
        if ctx.scan_id is not None:
            bits.append(f"scan {ctx.scan_id}")
        if ctx.uid:
            bits.append(ctx.uid[:8])
        if ctx.sample:
            bits.append(f"sample {ctx.sample}")
        self.run_label.setText(" · ".join(bits))
        fraction = ctx.progress
        if fraction is None:
            self.progress.setValue(0)
            done = ctx.events.get("primary", 0)
            self.progress.setFormat(f"{done} events" if ctx.state != "idle" else "–")
        else:
            self.progress.setValue(int(round(1000 * fraction)))
            done = ctx.events.get("primary", 0)
            self.progress.setFormat(f"{100 * fraction:.0f} % ({done}/{ctx.num_points})")
        counts = [f"{s} {n} events" for s, n in ctx.events.items() if n]
        counts += [f"{s} {n:,} rows" for s, n in ctx.rows.items() if n]
        self.counts_label.setText(", ".join(counts))
        self._show_times()
        rows = ctx.result_rows()
        self.results.setRowCount(len(rows))
        for r, row in enumerate(rows):
            for c, text in enumerate(row):
                self.results.setItem(r, c, QtWidgets.QTableWidgetItem(text))
        self.results.resizeColumnsToContents()

    def closeEvent(self, event) -> None:  # noqa: N802 - Qt's name
        self.stop_stream()
        super().closeEvent(event)
