"""A status-bar label whose text never widens the window: it is cut with "..." to the
room it has, and the whole text is its tooltip."""

from __future__ import annotations

from PyQt5 import QtCore, QtGui, QtWidgets


class StatusLabel(QtWidgets.QLabel):
    """QLabel for a status bar. A QLabel asks for the width of its whole text, so a long
    message would make the window wider (off the screen, and the camera view re-laid out
    under the mouse); this one takes the room it is given, at least ``min_chars``
    characters wide, and elides the rest (``text()`` stays the whole text)."""

    def __init__(self, text: str = "", parent=None, *, min_chars: int = 12) -> None:
        super().__init__(parent)
        self._full = ""
        self._min_chars = min_chars
        policy = QtWidgets.QSizePolicy.Policy
        self.setSizePolicy(policy.Preferred, policy.Preferred)
        self.setText(text)

    def text(self) -> str:  # noqa: D102 - QLabel's
        return self._full

    def setText(self, text: str | None) -> None:  # noqa: N802 - Qt's name
        self._full = text or ""
        self.setToolTip(self._full)
        self._elide()

    def minimumSizeHint(self) -> QtCore.QSize:  # noqa: N802 - Qt's name
        hint = super().minimumSizeHint()
        return QtCore.QSize(self.fontMetrics().averageCharWidth() * self._min_chars, hint.height())

    def sizeHint(self) -> QtCore.QSize:  # noqa: N802 - Qt's name
        hint = super().sizeHint()
        margins = self.contentsMargins()
        width = self.fontMetrics().horizontalAdvance(self._full) + margins.left() + margins.right() + 4
        return QtCore.QSize(width, hint.height())

    def resizeEvent(self, event: QtGui.QResizeEvent | None) -> None:  # noqa: N802 - Qt's name
        super().resizeEvent(event)
        self._elide()

    def _elide(self) -> None:
        room = self.contentsRect().width()
        shown = self.fontMetrics().elidedText(self._full, QtCore.Qt.TextElideMode.ElideRight, max(room, 0))
        super().setText(shown if room > 0 else self._full)
