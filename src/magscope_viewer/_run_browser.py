"""The run browser: find past runs in Tiled, open one for review, scrub through it.

Filters are those of :func:`magscope_session.runs.find_runs` (sample, plan, bead id,
start date range ``YYYY-MM-DD`` inclusive). Double-clicking a run opens it as a
:class:`~magscope_viewer._run_source.RunSource` and emits :attr:`RunBrowser.source_opened`
(the window shows it in the same panels); the slider moves the review position
(:attr:`RunBrowser.position_changed`); "back to live" emits :attr:`RunBrowser.back_to_live`.
The browser never reaches into the window: it only emits.

The Tiled server: the URI and API key given, else ``$MAGSCOPE_TILED_URI`` and
``$MAGSCOPE_TILED_API_KEY`` as the session uses them. Searches and opening a run read
from the server in the GUI thread (a short run opens in about a second here).
"""

from __future__ import annotations

import datetime as dt
import math
import os
from typing import Any

from PyQt5 import QtCore, QtWidgets

from magscope_session._tiled_client import ENV_TILED_API_KEY, ENV_TILED_URI
from magscope_session.runs import find_runs, run_summary

from ._run_source import RunSource

_COLUMNS = ("start", "plan", "sample", "beads", "status", "uid")


def _local_time(iso: str | None) -> str:
    if not iso:
        return "?"
    try:
        return dt.datetime.fromisoformat(iso).strftime("%Y-%m-%d %H:%M:%S")
    except ValueError:
        return iso


class RunBrowser(QtWidgets.QWidget):
    """Runs of a Tiled server, filtered, and the review position of the open one.

    :param uri: Tiled server URI (default ``$MAGSCOPE_TILED_URI``).
    :param api_key: its API key (default ``$MAGSCOPE_TILED_API_KEY``).
    :param limit: at most this many runs listed (the newest).
    """

    source_opened = QtCore.pyqtSignal(object)
    back_to_live = QtCore.pyqtSignal()
    position_changed = QtCore.pyqtSignal(int)

    def __init__(
        self, uri: str | None = None, api_key: str | None = None, *, limit: int = 200,
        parent=None,
    ) -> None:
        super().__init__(parent)
        self.api_key = api_key if api_key is not None else os.environ.get(ENV_TILED_API_KEY)
        self.limit = int(limit)
        self.client: Any = None
        self.runs: list[Any] = []
        self.source: RunSource | None = None

        self.uri_edit = QtWidgets.QLineEdit(uri or os.environ.get(ENV_TILED_URI) or "")
        self.uri_edit.setPlaceholderText("http://127.0.0.1:8000")
        self.sample_edit = QtWidgets.QLineEdit()
        self.plan_edit = QtWidgets.QLineEdit()
        self.bead_edit = QtWidgets.QLineEdit()
        self.since_edit = QtWidgets.QLineEdit()
        self.until_edit = QtWidgets.QLineEdit()
        for edit, hint in (
            (self.sample_edit, "any"), (self.plan_edit, "any, e.g. zlut_sweep"),
            (self.bead_edit, "any bead id"), (self.since_edit, "YYYY-MM-DD"),
            (self.until_edit, "YYYY-MM-DD"),
        ):
            edit.setPlaceholderText(hint)
            edit.returnPressed.connect(self._search_pressed)
        self.search_button = QtWidgets.QPushButton("Search")
        self.search_button.clicked.connect(self._search_pressed)
        self.message = QtWidgets.QLabel("")
        self.message.setWordWrap(True)
        self.table = QtWidgets.QTableWidget(0, len(_COLUMNS))
        self.table.setHorizontalHeaderLabels(list(_COLUMNS))
        self.table.setSelectionBehavior(QtWidgets.QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setEditTriggers(QtWidgets.QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.cellDoubleClicked.connect(self._row_double_clicked)
        header = self.table.verticalHeader()
        if header is not None:
            header.setVisible(False)
        self.review_label = QtWidgets.QLabel("live")
        self.slider = QtWidgets.QSlider(QtCore.Qt.Orientation.Horizontal)
        self.slider.setEnabled(False)
        self.slider.valueChanged.connect(self.set_position)
        self.position_label = QtWidgets.QLabel("")
        self.live_button = QtWidgets.QPushButton("Back to live")
        self.live_button.setEnabled(False)
        self.live_button.clicked.connect(self.go_live)

        form = QtWidgets.QFormLayout()
        form.addRow("Tiled", self.uri_edit)
        form.addRow("sample", self.sample_edit)
        form.addRow("plan", self.plan_edit)
        form.addRow("bead", self.bead_edit)
        dates = QtWidgets.QHBoxLayout()
        dates.addWidget(self.since_edit)
        dates.addWidget(QtWidgets.QLabel("to"))
        dates.addWidget(self.until_edit)
        form.addRow("date", dates)
        layout = QtWidgets.QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.search_button)
        layout.addWidget(self.message)
        layout.addWidget(self.table, 1)
        layout.addWidget(self.review_label)
        layout.addWidget(self.slider)
        layout.addWidget(self.position_label)
        layout.addWidget(self.live_button)

    # ----------------------------------------------------------------------- finding
    def _catalog(self) -> Any:
        from magscope_session._tiled_client import connect

        uri = self.uri_edit.text().strip()
        if self.client is None or getattr(self, "_client_uri", None) != uri:
            self.client = connect(uri, api_key=self.api_key)
            self._client_uri = uri
        return self.client

    def _search_pressed(self) -> None:
        self.search()

    def _row_double_clicked(self, row: int, _column: int) -> None:
        self.open_row(row)

    def filters(self) -> dict[str, Any]:
        """The filter fields as :func:`find_runs` keywords (ValueError for a bad bead id)."""
        out: dict[str, Any] = {}
        for key, edit in (
            ("sample", self.sample_edit), ("plan_name", self.plan_edit),
            ("since", self.since_edit), ("until", self.until_edit),
        ):
            text = edit.text().strip()
            if text:
                out[key] = text
        bead = self.bead_edit.text().strip()
        if bead:
            try:
                out["bead_id"] = int(bead)
            except ValueError:
                raise ValueError(f"bead must be a bead id (an integer), not {bead!r}") from None
        return out

    def search(self) -> list[Any]:
        """List the runs matching the filters (newest first); errors go to the message."""
        try:
            catalog = self._catalog()
            self.runs = find_runs(catalog, limit=self.limit, **self.filters())
        except Exception as err:  # unreachable server, bad filter: say so, keep going
            self.message.setText(f"search failed: {err}")
            self.runs = []
        else:
            self.message.setText(f"{len(self.runs)} run{'s' if len(self.runs) != 1 else ''}")
        self.table.setRowCount(len(self.runs))
        for r, run in enumerate(self.runs):
            start = run.metadata["start"]
            stop = run.metadata.get("stop") or {}
            beads = start.get("bead_ids") or start.get("zlut_bead_ids") or []
            cells = (
                _local_time(dt.datetime.fromtimestamp(float(start.get("time", 0))).isoformat()),
                str(start.get("plan_name") or ""), str(start.get("sample") or ""),
                ",".join(str(b) for b in beads), str(stop.get("exit_status") or "open"),
                str(start.get("uid", ""))[:8],
            )
            for c, text in enumerate(cells):
                self.table.setItem(r, c, QtWidgets.QTableWidgetItem(text))
        self.table.resizeColumnsToContents()
        return self.runs

    # ----------------------------------------------------------------------- review
    def open_row(self, row: int) -> RunSource | None:
        """Open the run of table row ``row`` for review."""
        if not 0 <= row < len(self.runs):
            return None
        return self.open_run(self.runs[row])

    def open_uid(self, uid: str) -> RunSource | None:
        """Open run ``uid`` (full or a unique start of it) from the server."""
        try:
            return self.open_run(self._catalog()[uid])
        except Exception as err:
            self.message.setText(f"cannot open run {uid}: {err}")
            return None

    def open_run(self, run: Any) -> RunSource | None:
        """Review ``run`` (a run client): emits :attr:`source_opened` with its source."""
        try:
            source = RunSource(run)
        except Exception as err:
            summary = run_summary(run)
            self.message.setText(f"cannot review run {str(summary['uid'])[:8]}: {err}")
            return None
        if self.source is not None:
            self.source.close()
        self.source = source
        self.review_label.setText(f"reviewing {source.instance}")
        self.slider.blockSignals(True)
        self.slider.setRange(0, max(0, source.n_positions - 1))
        self.slider.setValue(source.position)
        self.slider.blockSignals(False)
        self.slider.setEnabled(source.n_positions > 1)
        self.live_button.setEnabled(True)
        self._show_position()
        self.source_opened.emit(source)
        return source

    def set_position(self, position: int) -> None:
        """Move the review to ``position`` (the slider calls this)."""
        if self.source is None:
            return
        self.source.set_position(position)
        if self.slider.value() != self.source.position:
            self.slider.blockSignals(True)
            self.slider.setValue(self.source.position)
            self.slider.blockSignals(False)
        self._show_position()
        self.position_changed.emit(self.source.position)

    def _show_position(self) -> None:
        source = self.source
        if source is None:
            self.position_label.setText("")
            return
        t = source.time_s()
        when = "?" if math.isnan(t) else f"{t:.3f} s"
        frame = source.frame_index_at()
        shown = f", camera frame {frame + 1}/{len(source.frames)}" if source.frames else ""
        self.position_label.setText(
            f"{when} ({source.position + 1}/{source.n_positions}){shown}"
        )

    def go_live(self) -> None:
        """Leave review: emits :attr:`back_to_live`."""
        if self.source is not None:
            self.source.close()
        self.source = None
        self.review_label.setText("live")
        self.position_label.setText("")
        self.slider.setEnabled(False)
        self.live_button.setEnabled(False)
        self.back_to_live.emit()
