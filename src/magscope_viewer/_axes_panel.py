"""The axes panel: magnet height, magnet rotation, force and focus, with their limits, a
"moving" indicator and move controls; and a place for the locks.

The readbacks come from the microscope's axes record in shared memory
(:func:`magscope_devices.read_axes`, through :meth:`LiveSource.axes`). The controls only
ask: a Go button emits :attr:`AxesPanel.move_requested` with ``{key: target}`` in the
axis's units (``{"magnet_z_mm": 3.0}``; keys of :data:`magscope_devices.AXES`); whoever
owns the command channel connects to it. Nothing here moves anything.
"""

from __future__ import annotations

import math

from PyQt5 import QtCore, QtWidgets

from magscope_devices import AxesReadback

#: (key, label, units, decimals, step) of the rows, top to bottom.
ROWS: tuple[tuple[str, str, str, int, float], ...] = (
    ("magnet_z_mm", "Magnet height", "mm", 3, 0.1),
    ("magnet_turns", "Magnet rotation", "turns", 2, 1.0),
    ("force_pn", "Force", "pN", 2, 0.5),
    ("focus_nm", "Focus", "nm", 0, 100.0),
)

MOVING_STYLE = "color: white; background: #c77c00; border-radius: 3px; padding: 0 4px;"
IDLE_STYLE = "color: #888;"
NO_LOCK_TEXT = "No bead locks: the owner publishes none (a microscope without a tracker?)."
#: (toggle label, record prefix, command to turn on, command to turn off)
LOCKS: tuple[tuple[str, str, str, str], ...] = (
    ("Z lock", "focus_lock", "lock_focus", "unlock_focus"),
    ("XY lock", "xy_lock", "lock_xy", "unlock_xy"),
)
LOCKED_STYLE = "color: white; background: #2e7d32; border-radius: 3px; padding: 0 4px;"
UNLOCKED_STYLE = "color: white; background: #c62828; border-radius: 3px; padding: 0 4px;"


def lock_text(prefix: str, locks: dict[str, float]) -> tuple[str, str]:
    """(one line, style) for a lock's state in the axes record: "off", "locked, error
    +0.4 nm, 12 moves" or "NOT locked, ..."."""
    enabled = locks.get(f"{prefix}_enabled", math.nan)
    if not math.isfinite(enabled):
        return "not available", IDLE_STYLE
    error = locks.get(f"{prefix}_error_nm", math.nan)
    moves = locks.get(f"{prefix}_moves", math.nan)
    parts = []
    if math.isfinite(error):  # the focus lock's error has a sign; the XY offset is a size
        parts.append(f"error {error:+.1f} nm" if prefix == "focus_lock"
                     else f"largest offset {error:.0f} nm")
    if math.isfinite(moves):
        parts.append(f"{int(moves)} moves")
    detail = (", " + ", ".join(parts)) if parts else ""
    if not enabled:
        return "off" + (f" ({int(moves)} moves)" if math.isfinite(moves) and moves else ""), IDLE_STYLE
    if locks.get(f"{prefix}_locked", 0.0) >= 0.5:
        return "locked" + detail, LOCKED_STYLE
    return "NOT locked" + detail, UNLOCKED_STYLE


def format_value(value: float, decimals: int, units: str) -> str:
    """``value`` with ``decimals`` and ``units``; "–" for NaN."""
    if not math.isfinite(value):
        return "–"
    return f"{value:.{decimals}f} {units}"


def format_limits(low: float, high: float, decimals: int, units: str) -> str:
    """"[low, high] units", or "no limits" when either is NaN."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return "no limits"
    return f"[{low:.{decimals}f}, {high:.{decimals}f}] {units}"


class AxesPanel(QtWidgets.QWidget):
    """Readbacks (value, setpoint, limits, moving) and move requests of the axes.

    :attr:`move_requested` (dict): ``{key: target}`` when a Go button (or Enter in its
    spin box) is pressed; targets outside the shown limits cannot be entered.
    """

    move_requested = QtCore.pyqtSignal(dict)
    #: a lock toggle clicked: the command to send ("lock_focus", "unlock_xy", ...)
    lock_requested = QtCore.pyqtSignal(str)

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.values: dict[str, QtWidgets.QLabel] = {}
        self.setpoints: dict[str, QtWidgets.QLabel] = {}
        self.limits: dict[str, QtWidgets.QLabel] = {}
        self.moving: dict[str, QtWidgets.QLabel] = {}
        self.targets: dict[str, QtWidgets.QDoubleSpinBox] = {}
        self.go: dict[str, QtWidgets.QPushButton] = {}
        self._limits_shown: dict[str, tuple[float, float]] = {}
        self._setpoints_shown: dict[str, float] = {}

        grid = QtWidgets.QGridLayout()
        grid.setHorizontalSpacing(10)
        for col, title in enumerate(("axis", "readback", "setpoint", "limits", "", "move to")):
            label = QtWidgets.QLabel(f"<b>{title}</b>")
            grid.addWidget(label, 0, col)
        for row, (key, title, units, decimals, step) in enumerate(ROWS, start=1):
            grid.addWidget(QtWidgets.QLabel(title), row, 0)
            value = QtWidgets.QLabel("–")
            value.setMinimumWidth(90)
            value.setStyleSheet("font-weight: bold;")
            value.setAlignment(
                QtCore.Qt.Alignment(QtCore.Qt.AlignmentFlag.AlignRight)
                | QtCore.Qt.AlignmentFlag.AlignVCenter
            )
            self.values[key] = value
            grid.addWidget(value, row, 1)
            self.setpoints[key] = QtWidgets.QLabel("–")
            grid.addWidget(self.setpoints[key], row, 2)
            self.limits[key] = QtWidgets.QLabel("–")
            grid.addWidget(self.limits[key], row, 3)
            self.moving[key] = QtWidgets.QLabel("idle")
            self.moving[key].setStyleSheet(IDLE_STYLE)
            grid.addWidget(self.moving[key], row, 4)
            spin = QtWidgets.QDoubleSpinBox()
            spin.setDecimals(decimals)
            spin.setSingleStep(step)
            spin.setSuffix(f" {units}")
            spin.setRange(-1e9, 1e9)
            spin.setKeyboardTracking(False)
            spin.setMinimumWidth(110)
            self.targets[key] = spin
            go = QtWidgets.QPushButton("Go")
            go.setMaximumWidth(44)
            go.clicked.connect(lambda _=False, k=key: self.request_move(k))
            self.go[key] = go
            box = QtWidgets.QHBoxLayout()
            box.addWidget(spin)
            box.addWidget(go)
            grid.addLayout(box, row, 5)
        grid.setColumnStretch(6, 1)

        self.source_label = QtWidgets.QLabel("no axes record: the owner does not publish one")
        self.source_label.setStyleSheet("color: #888;")

        locks = QtWidgets.QGroupBox("Locks")
        lock_layout = QtWidgets.QGridLayout(locks)
        self.lock_toggles: dict[str, QtWidgets.QCheckBox] = {}
        self.lock_states: dict[str, QtWidgets.QLabel] = {}
        for row, (name, _, on, off) in enumerate(LOCKS):
            toggle = QtWidgets.QCheckBox(name)
            toggle.setEnabled(False)
            toggle.clicked.connect(
                lambda checked, on=on, off=off: self.lock_requested.emit(on if checked else off)
            )
            self.lock_toggles[name] = toggle
            state = QtWidgets.QLabel("not available")
            state.setStyleSheet(IDLE_STYLE)
            self.lock_states[name] = state
            lock_layout.addWidget(toggle, row, 0)
            lock_layout.addWidget(state, row, 1)
        self.lock_status = QtWidgets.QLabel(NO_LOCK_TEXT)
        self.lock_status.setWordWrap(True)
        self.lock_status.setStyleSheet("color: #888;")
        lock_layout.addWidget(self.lock_status, len(LOCKS), 0, 1, 2)
        lock_layout.setColumnStretch(1, 1)

        layout = QtWidgets.QVBoxLayout(self)
        layout.addLayout(grid)
        layout.addWidget(self.source_label)
        layout.addWidget(locks)
        layout.addStretch(1)
        self.set_connected(False)

    def request_move(self, key: str) -> None:
        """Emit :attr:`move_requested` with the target of ``key``'s spin box."""
        self.move_requested.emit({key: float(self.targets[key].value())})

    def set_connected(self, connected: bool) -> None:
        for key in self.go:
            self.go[key].setEnabled(connected)
            self.targets[key].setEnabled(connected)

    def show_axes(self, axes: AxesReadback | None) -> None:
        """Show one read of the axes record (None: no record; controls disabled)."""
        if axes is None:
            self.source_label.setVisible(True)
            for key in self.values:
                self.values[key].setText("–")
                self._set_moving(key, False)
            self.set_connected(False)
            return
        self.source_label.setVisible(False)
        for key, _, units, decimals, _ in ROWS:
            axis = axes[key]
            self.values[key].setText(format_value(axis.value, decimals, units))
            self.setpoints[key].setText(format_value(axis.setpoint, decimals, units))
            self.limits[key].setText(format_limits(axis.low, axis.high, decimals, units))
            self._set_moving(key, axis.moving)
            usable = math.isfinite(axis.low) and math.isfinite(axis.high)
            if usable and self._limits_shown.get(key) != (axis.low, axis.high):
                self.targets[key].setRange(axis.low, axis.high)
                if not math.isfinite(axis.value) or not self._limits_shown.get(key):
                    self.targets[key].setValue(axis.value if math.isfinite(axis.value) else axis.low)
                self._limits_shown[key] = (axis.low, axis.high)
            # a move made elsewhere (a plan, the prompt) becomes the box's new target,
            # unless the user is typing in it
            if (
                usable
                and math.isfinite(axis.setpoint)
                and self._setpoints_shown.get(key) != axis.setpoint
                and not self.targets[key].hasFocus()
            ):
                self.targets[key].setValue(axis.setpoint)
                self._setpoints_shown[key] = axis.setpoint
            # a force needs a calibration: without one, nothing to ask for
            self.go[key].setEnabled(usable)
            self.targets[key].setEnabled(usable)
        self.show_locks(axes.locks)
        force = axes["force_pn"]
        if not math.isfinite(force.value):
            self.values["force_pn"].setText("–")
            self.limits["force_pn"].setText("no force calibration loaded")

    def show_locks(self, locks: dict[str, float]) -> None:
        """Lock toggles and states from the record's lock fields (NaN: no such lock)."""
        any_lock = False
        for label, prefix, _, _ in LOCKS:
            enabled = locks.get(f"{prefix}_enabled", math.nan)
            available = math.isfinite(enabled)
            any_lock |= available
            toggle = self.lock_toggles[label]
            toggle.setEnabled(available)
            if available and not toggle.isDown():
                toggle.blockSignals(True)
                toggle.setChecked(bool(enabled))
                toggle.blockSignals(False)
            text, style = lock_text(prefix, locks)
            self.lock_states[label].setText(text)
            self.lock_states[label].setStyleSheet(style)
        self.lock_status.setVisible(not any_lock)

    def _set_moving(self, key: str, moving: bool) -> None:
        label = self.moving[key]
        label.setText("moving" if moving else "idle")
        label.setStyleSheet(MOVING_STYLE if moving else IDLE_STYLE)
