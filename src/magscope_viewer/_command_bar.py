"""The viewer's commands in the window: bead edits from the camera's mouse handling, an
"auto-select beads" button, the video mode (what records write beside the tracks), and
the replies in the status bar.

Each command goes to the instrument's owner through :class:`CommandClient` in a worker
thread (one at a time, each within the client's timeout), so the GUI never waits; the
reply (done, refused and why, or "no command channel") shows in :attr:`CommandBar.label`
in the status bar. While a command is on its way, further edits are refused locally.
"""

from __future__ import annotations

import threading
from typing import Any

from PyQt5 import QtCore, QtWidgets

from ._command_client import CommandClient, Reply
from ._status_label import StatusLabel

__all__ = ["CommandBar"]

#: The video modes offered (``microscope.video.mode``), after a prompt until one is chosen.
VIDEO_MODES = ("tracks", "roi_crops", "frames_every_n", "trigger_window")
_VIDEO_PROMPT = "(set the mode)"

#: The reply line, set apart from the health text beside it.
_LABEL_STYLE = "padding-left: 8px; border-left: 1px solid rgb(140, 140, 140);"


class CommandBar(QtCore.QObject):
    """Commands of ``window`` (a :class:`~._window.ViewerWindow`) to the owner of
    ``instance``: adds a toolbar with the auto-select button and a label to the status
    bar, and connects the camera's bead-editing signals."""

    #: a reply arrived (emitted from the worker thread, delivered in the GUI thread)
    replied = QtCore.pyqtSignal(object)

    def __init__(
        self, window: QtWidgets.QMainWindow, instance: str, *, client: CommandClient | None = None
    ) -> None:
        super().__init__(window)
        self.client = client or CommandClient(instance)
        self.busy = False
        self.last_reply: Reply | None = None
        self.replies = 0
        bar = QtWidgets.QToolBar("Commands", window)
        bar.setMovable(False)
        window.addToolBarBreak()  # a row of its own: the view options fill the first
        window.addToolBar(bar)
        self.auto_button = QtWidgets.QPushButton("auto-select beads")
        self.auto_button.setToolTip(
            "Track the beads found in the newest frame (replaces the ROI table).\n"
            "On the image: click adds a bead, drag an ROI moves it, right-click removes it."
        )
        self.auto_button.clicked.connect(self._auto_select)
        bar.addWidget(self.auto_button)
        bar.addSeparator()
        self.video_mode = QtWidgets.QComboBox()
        self.video_mode.addItems([_VIDEO_PROMPT, *VIDEO_MODES])
        self.video_mode.setToolTip(
            "What records write beside the tracks (microscope.video.mode):\n"
            "tracks: nothing more; roi_crops: every bead's ROI at every frame;\n"
            "frames_every_n: the whole frame every every_n frames;\n"
            "trigger_window: whole frames around save_frames() in a plan"
        )
        self.video_mode.activated.connect(self._video_mode_chosen)
        bar.addWidget(QtWidgets.QLabel(" video: "))
        bar.addWidget(self.video_mode)
        self.label = StatusLabel("commands: click a bead to add it", min_chars=30)
        self.label.setStyleSheet(_LABEL_STYLE)
        status_bar = window.statusBar()
        assert status_bar is not None  # the window made one
        status_bar.addPermanentWidget(self.label)
        vb = window.camera.plot.vb
        vb.sigAddBead.connect(lambda x, y: self.send("add_bead", {"x_px": x, "y_px": y}))
        vb.sigMoveBead.connect(
            lambda b, x, y: self.send("move_bead", {"bead_id": b, "x_px": x, "y_px": y})
        )
        vb.sigRemoveBead.connect(lambda b: self.send("remove_beads", {"bead_ids": [b]}))
        self.replied.connect(self._show)

    def _auto_select(self) -> None:
        self.send("auto_select")

    def _video_mode_chosen(self, index: int) -> None:
        mode = self.video_mode.itemText(index)
        if mode in VIDEO_MODES:
            self.send("video_mode", {"mode": mode})

    def send(self, command: str, args: dict[str, Any] | None = None) -> bool:
        """Send ``command`` in a worker thread; False (and says so) while one is on its way."""
        if getattr(self.parent(), "reviewing", False):
            self.label.setText(f"{command}: refused: reviewing a past run (back to live first)")
            return False
        if self.busy:
            self.label.setText(f"{command}: refused: the previous command has not answered yet")
            return False
        self.busy = True
        self.label.setText(f"{command}: sent ...")
        threading.Thread(
            target=self._work, args=(command, args), name="magscope-viewer-command", daemon=True
        ).start()
        return True

    def _work(self, command: str, args: dict[str, Any] | None) -> None:
        try:
            reply = self.client.send(command, args)
        except Exception as err:  # noqa: BLE001 - always answer the GUI
            reply = Reply(False, f"failed: {type(err).__name__}: {err}")
        self.replied.emit(reply)

    def _show(self, reply: Reply) -> None:
        self.busy = False
        self.last_reply = reply
        self.replies += 1
        self.label.setText(reply.message)
        self.label.setStyleSheet(_LABEL_STYLE + ("" if reply.ok else " color: rgb(220, 60, 60);"))

    def close(self) -> None:
        if not self.busy:  # a command on its way closes its own socket within the timeout
            self.client.close()
