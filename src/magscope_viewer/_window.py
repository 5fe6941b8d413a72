"""The viewer's main window: camera in the middle, traces, kymograph and choices in docks,
health in the status bar, all refreshed from a :class:`LiveSource` on a timer (~30 Hz).

The viewer only looks: the selected and the reference beads are the viewer's own choice
(what to plot), never sent to the microscope.
"""

from __future__ import annotations

import time

import numpy as np
from PyQt5 import QtCore, QtWidgets

from ._camera_view import CameraView
from ._live_source import CONNECTED, LiveSource
from ._status import RateMeter, status_text
from ._trace_plots import KymographView, TracePlots
from ._traces import TraceHistory

REFRESH_HZ = 30.0
#: Traces and kymograph are redrawn at most this often (Hz); the camera at every refresh.
#: (A redraw of 3 x 10 traces and the kymograph of 100 beads costs about three camera
#: refreshes: at 5 Hz the viewer stays under a quarter of a core; see bench_viewer.py.)
PLOT_HZ = 5.0
#: The status line is rewritten at most this often (Hz).
STATUS_HZ = 4.0
#: Frames the trace history keeps (at 200 frames/s: 60 s).
HISTORY_FRAMES = 12_000


def parse_ids(text: str) -> list[int]:
    """Bead ids (>= 0) from text like ``"0-3, 7"`` -> [0, 1, 2, 3, 7] (order kept, no
    repeats); ``ValueError`` for anything else."""
    out: list[int] = []
    for part in text.replace(";", ",").split(","):
        part = part.strip()
        if not part:
            continue
        if "-" in part:
            lo, hi = part.split("-", 1)
            values = list(range(int(lo), int(hi) + 1))
        else:
            values = [int(part)]
        out.extend(v for v in values if v not in out)
    return out


def format_ids(ids) -> str:
    return ", ".join(str(int(i)) for i in ids)


class ViewerWindow(QtWidgets.QMainWindow):
    """The live viewer of one instrument instance.

    :param source: what to show (attached read-only to the running microscope).
    :param selected: bead ids whose traces are drawn (None: the first ten of the ROI table).
    :param reference: reference bead ids (subtracted from the traces on request).
    :param window_s: time span (s) of the traces and the kymograph.
    :param refresh_hz: display refresh rate (Hz); 0: no timer (call :meth:`refresh`).
    """

    def __init__(
        self, source: LiveSource, *, selected=None, reference=(), window_s: float = 10.0,
        refresh_hz: float = REFRESH_HZ,
    ) -> None:
        super().__init__()
        self.source = source
        self.setWindowTitle(f"MagScope viewer: {source.instance}")
        self.camera = CameraView()
        self.setCentralWidget(self.camera)
        self.traces = TracePlots()
        self.kymograph = KymographView()
        self.history = TraceHistory(HISTORY_FRAMES)
        self.selected: list[int] | None = None if selected is None else [int(b) for b in selected]
        self.reference = [int(b) for b in reference]
        self.window_s = float(window_s)
        self.subtract_reference = False
        self._roi_key: tuple | None = None
        self._reconnects = source.reconnects
        self._frame_rate = RateMeter()
        self._display_rate = RateMeter()
        self._refreshes = 0
        self._last_plot = 0.0
        self._last_status = -1.0
        self._status_state = ""
        self._drawn_key: tuple | None = None  # (newest frame, frames, choices) plotted
        self._centres_frame = -1  # track frame whose centres the camera shows
        self._build_docks()
        self.status = QtWidgets.QLabel()
        status_bar = QtWidgets.QStatusBar()
        self.setStatusBar(status_bar)
        status_bar.addWidget(self.status, 1)
        self.resize(1400, 900)
        self.timer = QtCore.QTimer(self)
        self.timer.setTimerType(QtCore.Qt.TimerType.PreciseTimer)
        self.timer.timeout.connect(self.refresh)
        if refresh_hz > 0:  # period in whole ms, rounded down: at least refresh_hz
            self.timer.start(max(1, int(1000.0 / refresh_hz) - 1))

    # -- layout --------------------------------------------------------------------------
    def _build_docks(self) -> None:
        area = QtCore.Qt.DockWidgetArea
        trace_dock = QtWidgets.QDockWidget("Traces (selected beads)", self)
        trace_dock.setWidget(self.traces)
        self.addDockWidget(area.RightDockWidgetArea, trace_dock)
        kymo_dock = QtWidgets.QDockWidget("z kymograph (all beads)", self)
        kymo_dock.setWidget(self.kymograph)
        self.addDockWidget(area.RightDockWidgetArea, kymo_dock)
        orientation = QtCore.Qt.Orientation
        self.resizeDocks([trace_dock, kymo_dock], [560, 240], orientation.Vertical)
        self.resizeDocks([trace_dock], [700], orientation.Horizontal)

        bar = QtWidgets.QToolBar("Show", self)
        self.addToolBar(bar)
        bar.setMovable(False)
        self.selected_edit = QtWidgets.QLineEdit(format_ids(self.selected or []))
        self.selected_edit.setPlaceholderText("first ten")
        self.selected_edit.setMaximumWidth(220)
        self.selected_edit.editingFinished.connect(self._selection_edited)
        self.reference_edit = QtWidgets.QLineEdit(format_ids(self.reference))
        self.reference_edit.setPlaceholderText("none")
        self.reference_edit.setMaximumWidth(120)
        self.reference_edit.editingFinished.connect(self._selection_edited)
        self.subtract_box = QtWidgets.QCheckBox("traces minus reference")
        self.subtract_box.toggled.connect(self._subtract_toggled)
        self.window_spin = QtWidgets.QDoubleSpinBox()
        self.window_spin.setRange(0.5, 60.0)
        self.window_spin.setSuffix(" s")
        self.window_spin.setValue(self.window_s)
        self.window_spin.valueChanged.connect(self._window_changed)
        for label, widget in (
            ("selected beads ", self.selected_edit), ("  reference beads ", self.reference_edit),
            ("  ", self.subtract_box), ("  time window ", self.window_spin),
        ):
            bar.addWidget(QtWidgets.QLabel(label))
            bar.addWidget(widget)

    def _selection_edited(self) -> None:
        try:
            text = self.selected_edit.text()
            self.selected = parse_ids(text) if text.strip() else None
            self.reference = parse_ids(self.reference_edit.text())
        except ValueError:
            return
        self._roi_key = None

    def _subtract_toggled(self, on: bool) -> None:
        self.subtract_reference = bool(on)

    def _window_changed(self, value: float) -> None:
        self.window_s = float(value)

    def set_selection(self, selected=None, reference=None) -> None:
        """Choose the beads to plot (and the reference beads); drawn at the next refresh."""
        if selected is not None:
            self.selected = [int(b) for b in selected]
            self.selected_edit.setText(format_ids(self.selected))
        if reference is not None:
            self.reference = [int(b) for b in reference]
            self.reference_edit.setText(format_ids(self.reference))
        self._roi_key = None
        self._last_plot = 0.0

    def selected_ids(self) -> list[int]:
        """The beads drawn: the chosen ones, or the first ten of the ROI table."""
        if self.selected is not None:
            return self.selected
        return [int(b) for b in self.history.ids[:10]]

    # -- refresh -------------------------------------------------------------------------
    def refresh(self) -> None:
        """Read what is new and redraw (the timer calls this ~30 times a second)."""
        state = self.source.poll()
        if self.source.reconnects != self._reconnects:  # a new owner: frame indices restart
            self._reconnects = self.source.reconnects
            self.history = TraceHistory(HISTORY_FRAMES)
            self._roi_key = None
        if state == CONNECTED:
            frame = self.source.newest_frame()
            if frame is not None and frame.index != self.camera.frame_index:
                self.camera.set_frame(frame)
            self._refresh_tracks()
        else:
            self.history = TraceHistory(HISTORY_FRAMES) if len(self.history) else self.history
            self._roi_key = None
            self.camera.set_rois(None)
            self.camera.set_centres(np.zeros(0), np.zeros(0))
            self._centres_frame = -1
        health = self.source.health()
        self._refreshes += 1
        fps = self._frame_rate.update(health.frames_acquired)
        display = self._display_rate.update(self._refreshes)
        now = time.monotonic()
        if now - self._last_status >= 1.0 / STATUS_HZ or state != self._status_state:
            self.status.setText(status_text(self.source.instance, health, fps, display))
            self._last_status, self._status_state = now, state

    def _refresh_tracks(self) -> None:
        table = self.source.rois()
        if table is None:
            return
        key = (table.seq, tuple(self.selected or ()), tuple(self.reference))
        if key != self._roi_key:
            self.history.set_ids(table.ids)
            self.camera.set_rois(table, self.selected_ids(), self.reference)
            self._roi_key = key
        if self.history.next_index is None:
            count = self.source.track_count()
            start = max(0, count - HISTORY_FRAMES)
        else:
            start = self.history.next_index
        rows = self.source.tracks_since(start)
        if rows is None:
            return
        self.history.append(rows)
        plot_key = (
            self.history.last_frame_index, len(self.history), tuple(self.selected_ids()),
            tuple(self.reference), self.subtract_reference, self.window_s,
        )
        if plot_key == self._drawn_key:  # nothing new, nothing chosen anew: nothing to redraw
            return
        t, values = self.history.window(self.window_s)
        nm_per_px = self.source.nm_per_px()
        if t.size and nm_per_px > 0 and plot_key[0] != self._centres_frame:
            # the newest frame with positions (a dropped frame has none: keep the marks)
            tail = values["x_nm"][-200:]
            with_data = np.flatnonzero(np.isfinite(tail).any(axis=1))
            if with_data.size:
                row = with_data[-1] - tail.shape[0]
                self.camera.set_centres(
                    values["x_nm"][row] / nm_per_px, values["y_nm"][row] / nm_per_px
                )
            self._centres_frame = plot_key[0]
        now = time.monotonic()
        if t.size and now - self._last_plot >= 1.0 / PLOT_HZ:
            self.traces.show_traces(
                t, values, self.history.ids, self.selected_ids(), self.reference,
                self.subtract_reference, window_s=self.window_s,
            )
            self.kymograph.show_kymograph(t, values["z_nm"], self.history.ids)
            self._last_plot = now
            self._drawn_key = plot_key

    def closeEvent(self, event) -> None:  # noqa: N802 - Qt's name
        self.timer.stop()
        self.source.close()
        super().closeEvent(event)
