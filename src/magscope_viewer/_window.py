"""The viewer's main window: camera in the middle, traces, kymograph and choices in docks,
health in the status bar, all refreshed from a :class:`LiveSource` on a timer (~30 Hz).

The viewer only looks: the selected and the reference beads are the viewer's own choice
(what to plot), never sent to the microscope.
"""

from __future__ import annotations

import time

import numpy as np
from PyQt5 import QtCore, QtWidgets

from ._axes_panel import AxesPanel
from ._camera_view import CameraView
from ._command_bar import CommandBar
from ._health_panel import HealthPanel
from ._live_source import CONNECTED, LiveSource
from ._profile import ZlutFile, bead_profile, crop_roi
from ._profile_panel import ProfilePanel
from ._status import RateMeter, status_text
from ._status_label import StatusLabel
from ._trace_plots import KymographView, TracePlots
from ._traces import TraceHistory

REFRESH_HZ = 30.0
#: Traces and kymograph are redrawn at most this often (Hz); the camera at every refresh.
#: (A redraw of 3 x 10 traces and the kymograph of 100 beads costs about three camera
#: refreshes: at 5 Hz the viewer stays under a quarter of a core; see bench_viewer.py.)
PLOT_HZ = 5.0
#: The status line is rewritten at most this often (Hz).
STATUS_HZ = 4.0
#: The axes, health and profile panels are updated at most this often (Hz).
PANEL_HZ = 4.0
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
        self._build_panels()
        self.status = StatusLabel()
        status_bar = QtWidgets.QStatusBar()
        self.setStatusBar(status_bar)
        status_bar.addWidget(self.status, 1)
        self.commands = CommandBar(self, source.instance)  # bead edits, auto-select, replies
        self.axes_panel.move_requested.connect(self._request_move)
        self.axes_panel.lock_requested.connect(self._request_lock)
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

    def _build_panels(self) -> None:
        """Axes, health and profile panels: tabbed in one dock under the camera."""
        area = QtCore.Qt.DockWidgetArea
        self.setCorner(QtCore.Qt.Corner.BottomRightCorner, area.RightDockWidgetArea)
        self.axes_panel = AxesPanel()
        self.health_panel = HealthPanel()
        self.profile_panel = ProfilePanel()
        self.zlut_file = ZlutFile()
        #: ms the last update of each panel took (time.perf_counter)
        self.panel_ms: dict[str, float] = {}
        self._last_panels = 0.0
        self.panel_docks: dict[str, QtWidgets.QDockWidget] = {}
        first = None
        for key, title, widget in (
            ("axes", "Axes and locks", self.axes_panel),
            ("health", "Health", self.health_panel),
            ("profile", "Radial profile and Z-LUT", self.profile_panel),
        ):
            dock = QtWidgets.QDockWidget(title, self)
            dock.setObjectName(f"{key}_dock")
            dock.setWidget(widget)
            self.addDockWidget(area.BottomDockWidgetArea, dock)
            if first is None:
                first = dock
            else:
                self.tabifyDockWidget(first, dock)
            self.panel_docks[key] = dock
        assert first is not None
        first.raise_()
        self.resizeDocks([first], [270], QtCore.Qt.Orientation.Vertical)

    def _add_tab_dock(self, dock: QtWidgets.QDockWidget) -> None:
        """One more tab beside the axes, health and profile panels under the camera (the
        camera keeps the window's left column)."""
        first = self.panel_docks["axes"]
        self.addDockWidget(QtCore.Qt.DockWidgetArea.BottomDockWidgetArea, dock)
        self.tabifyDockWidget(first, dock)
        first.raise_()

    def show_panel(self, key: str) -> None:
        """Bring the panel ``key`` ("axes", "health", "profile") to the front."""
        self.panel_docks[key].raise_()

    def refresh_panels(self, everything: bool = False) -> None:
        """Update the visible panels (``everything``: all of them) from the source."""
        connected = self.source.state == CONNECTED
        if everything or self.axes_panel.isVisible():
            t0 = time.perf_counter()
            self.axes_panel.show_axes(self.source.axes() if connected else None)
            self.panel_ms["axes"] = (time.perf_counter() - t0) * 1e3
        if everything or self.health_panel.isVisible():
            t0 = time.perf_counter()
            self.health_panel.show_health(self.source.health())
            self.panel_ms["health"] = (time.perf_counter() - t0) * 1e3
        if everything or self.profile_panel.isVisible():
            t0 = time.perf_counter()
            self._update_profile(connected)
            self.panel_ms["profile"] = (time.perf_counter() - t0) * 1e3

    def _update_profile(self, connected: bool) -> None:
        panel = self.profile_panel
        if connected:
            self.zlut_file.update(self.source.zlut_file())
        bead = panel.chosen_bead(self.selected_ids())
        frame = self.source.last_frame if connected else None
        table = self.source.rois() if connected else None
        zlut = self.zlut_file.zlut
        index = -1
        if zlut is not None and bead is not None:
            rows = np.flatnonzero(zlut.bead_ids == bead)
            index = int(rows[0]) if rows.size else -1
        panel.show_zlut(zlut, index, self.zlut_file.message)
        if bead is None or frame is None or table is None:
            panel.show_message("no bead selected" if bead is None else "no frame or ROI table")
            return
        crop = crop_roi(frame.image, frame.x0_px, frame.y0_px, table, bead)
        if crop is None:
            panel.show_message(f"bead {bead}: no ROI in this frame")
            return
        panel.show_profile(bead_profile(crop, bead, frame.index, zlut))

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
        if time.monotonic() - self._last_panels >= 1.0 / PANEL_HZ:
            self._last_panels = time.monotonic()
            self.refresh_panels()

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
                    values["x_nm"][row] / nm_per_px, values["y_nm"][row] / nm_per_px,
                    frame_index=self.history.frame_index_from_end(int(row)),
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

    # -- sources: live or a past run (review) ------------------------------------------------
    def set_source(self, source) -> None:
        """Show ``source`` from now on (a :class:`LiveSource`, or a
        :class:`~magscope_viewer._run_source.RunSource` for review); the previous source
        is left open (its owner closes it)."""
        self.source = source
        self._reconnects = source.reconnects
        self.history = TraceHistory(HISTORY_FRAMES)
        self._roi_key = None
        self._last_plot = 0.0
        self._drawn_key = None
        self._centres_frame = -1
        self.camera.frame_index = -1
        self.setWindowTitle(f"MagScope viewer: {source.instance}")

    def add_run_browser(self, browser) -> None:
        """Show ``browser`` (a :class:`~magscope_viewer._run_browser.RunBrowser`) in a dock:
        a run it opens replaces the live source; "back to live" restores the source the
        window was made with."""
        live = self.source
        dock = QtWidgets.QDockWidget("Runs (Tiled)", self)
        dock.setObjectName("runs dock")
        dock.setWidget(browser)
        self._add_tab_dock(dock)
        browser.source_opened.connect(self.set_source)
        browser.back_to_live.connect(lambda: self.set_source(live))
        browser.position_changed.connect(lambda: setattr(self, "_last_plot", 0.0))

    # -- run context (optional) ------------------------------------------------------------
    def add_run_panel(self, panel) -> None:
        """Show ``panel`` (a :class:`~magscope_viewer._run_panel.RunPanel`) in a dock and
        its state ("plan X running") in the status bar; it stops its stream on close."""
        self.run_panel = panel
        dock = QtWidgets.QDockWidget("Run", self)
        dock.setObjectName("run dock")
        dock.setWidget(panel)
        self._add_tab_dock(dock)
        self.run_status = StatusLabel(panel.status_text())
        bar = self.statusBar()
        assert bar is not None
        bar.addPermanentWidget(self.run_status)
        panel.changed.connect(lambda: self.run_status.setText(panel.status_text()))

    @property
    def reviewing(self) -> bool:
        """True while a past run is shown (commands are refused then)."""
        return not isinstance(self.source, LiveSource)

    def _request_move(self, targets: dict) -> None:
        """An axes panel's Go: ``move_axes`` through the command channel (refused there
        while a plan runs; the reply shows in the status bar)."""
        self.commands.send("move_axes", targets)

    def _request_lock(self, command: str) -> None:
        """A lock toggle: ``lock_focus``/``unlock_focus``/``lock_xy``/``unlock_xy``."""
        self.commands.send(command)

    def plan_running(self) -> str | None:
        """The name of the plan running now (from the document stream), or None (no run,
        or no run panel)."""
        panel = getattr(self, "run_panel", None)
        return None if panel is None else panel.plan_running()

    def closeEvent(self, event) -> None:  # noqa: N802 - Qt's name
        self.timer.stop()
        self.commands.close()
        if getattr(self, "run_panel", None) is not None:
            self.run_panel.stop_stream()
        self.source.close()
        super().closeEvent(event)
