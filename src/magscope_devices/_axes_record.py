"""The axes record: the microscope's axis positions in shared memory, for other processes.

The process that owns the instrument (the :class:`~magscope_devices.Microscope`) creates
one :class:`~magscope_ipc.shm.SharedRecord` of kind ``axes``
(``segment_name(instance, "axes")``) when it connects and unlinks it when it closes. It
mirrors every new reading of the axes into it, whatever the backend (simulated or
hardware): readers in other processes (the live viewer) see the axes without talking to
the owner. Nothing here imports ophyd-async: the record is plain NumPy.

Per axis ``key`` (:data:`AXES`, e.g. ``magnet_z_mm``) the record holds ``key`` (the
readback), ``key_setpoint``, ``key_low`` and ``key_high`` (its limits), all in the axis's
units, and ``key_moving`` (1 while the readback differs from the setpoint by more than
the axis's display precision). ``force_pn`` is the force the loaded calibration gives at
the magnet's current height (NaN without a calibration); its limits are the calibrated
range. The bead locks' state is there too (:data:`LOCK_FIELDS`, NaN without locks):
``focus_lock_enabled``/``_locked`` (0 or 1), ``focus_lock_error_nm``,
``focus_lock_moves``, ``xy_lock_enabled``/``_locked``, ``xy_lock_error_nm``,
``xy_lock_moves``. ``seq`` is a seqlock (odd while the owner writes; :func:`read_axes` reads between
two equal, even values), ``updated`` the UNIX time (s) of the last write.
"""

from __future__ import annotations

import math
import os
import time
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from magscope_ipc.shm import SharedRecord, segment_name

__all__ = [
    "AXES", "AXES_DTYPE", "LOCK_FIELDS", "AxesLink", "AxesReadback", "AxesRecordWriter",
    "AxisReadback", "read_axes",
]

#: (key, units, tolerance of the moving flag in those units) of every mirrored axis; the
#: keys are also those of the viewer's move requests (``{"magnet_z_mm": 3.0}``). The
#: force has no tolerance: it moves when the magnet does (its setpoint is only the last
#: force asked for).
AXES: tuple[tuple[str, str, float | None], ...] = (
    ("magnet_z_mm", "mm", 1e-4),
    ("magnet_turns", "turns", 1e-3),
    ("focus_nm", "nm", 0.1),
    ("force_pn", "pN", None),
)
_SUFFIXES = ("", "_setpoint", "_low", "_high")

#: The bead locks (attributes of the microscope) and the signals of each mirrored as
#: ``<lock>_<signal>``: the bead locks' state.
LOCKS: tuple[str, ...] = ("focus_lock", "xy_lock")
LOCK_SIGNALS: tuple[str, ...] = ("enabled", "locked", "error_nm", "moves")
LOCK_FIELDS: tuple[str, ...] = tuple(
    f"{lock}_{signal}" for lock in LOCKS for signal in LOCK_SIGNALS
)

#: The record's layout (see the module docstring).
AXES_DTYPE = np.dtype(
    [("seq", "<i8"), ("updated", "<f8"), ("owner_pid", "<i8")]
    + [(key + suffix, "<f8") for key, _, _ in AXES for suffix in _SUFFIXES]
    + [(key + "_moving", "<i8") for key, _, _ in AXES]
    + [(name, "<f8") for name in LOCK_FIELDS]
)


@dataclass(frozen=True)
class AxisReadback:
    """One axis as the owner last mirrored it (``units``; NaN: not known)."""

    key: str
    units: str
    value: float
    setpoint: float
    low: float
    high: float
    moving: bool


@dataclass(frozen=True)
class AxesReadback:
    """All axes of one consistent read of the record; ``axes[key]`` per :data:`AXES` key.

    ``seq``: the write counter (twice the writes); ``updated``: UNIX s of the last write;
    ``locks``: the :data:`LOCK_FIELDS` (NaN: no such lock).
    """

    seq: int
    updated: float
    owner_pid: int
    axes: dict[str, AxisReadback]
    locks: dict[str, float] = field(default_factory=dict)

    def __getitem__(self, key: str) -> AxisReadback:
        return self.axes[key]


def read_axes(record: SharedRecord, attempts: int = 10) -> AxesReadback | None:
    """The axes from ``record`` (attached read-only is enough), read under its seqlock;
    None if the owner kept writing for ``attempts`` tries."""
    names = AXES_DTYPE.names or ()
    for _ in range(attempts):
        seq = int(record["seq"])
        if seq % 2:
            continue
        values = {name: record[name] for name in names}
        if int(record["seq"]) != seq:
            continue
        axes = {
            key: AxisReadback(
                key=key, units=units, value=float(values[key]),
                setpoint=float(values[key + "_setpoint"]), low=float(values[key + "_low"]),
                high=float(values[key + "_high"]), moving=bool(values[key + "_moving"]),
            )
            for key, units, _ in AXES
        }
        return AxesReadback(
            seq=seq, updated=float(values["updated"]), owner_pid=int(values["owner_pid"]),
            axes=axes, locks={name: float(values[name]) for name in LOCK_FIELDS},
        )
    return None


class AxesRecordWriter:
    """The owner's side: holds the last value of every field and writes changes under the
    seqlock (one writer: the owner's event loop)."""

    def __init__(self, record: SharedRecord) -> None:
        self.record = record
        self.values: dict[str, float] = {
            key + suffix: math.nan for key, _, _ in AXES for suffix in _SUFFIXES
        }
        self.values.update({name: math.nan for name in LOCK_FIELDS})
        record["owner_pid"] = os.getpid()
        self.write({})

    def write(self, changes: Mapping[str, float]) -> None:
        """Set the fields ``changes`` (readback/setpoint/limits by name), recompute the
        moving flags, stamp the time, all as one seqlocked write."""
        self.values.update({name: float(value) for name, value in changes.items()})
        record = self.record
        seq = int(record["seq"])
        record["seq"] = seq + 1
        for name, value in self.values.items():
            record[name] = value
        moving: dict[str, bool] = {}
        for key, _, tolerance in AXES:
            if tolerance is None:
                continue
            value, setpoint = self.values[key], self.values[key + "_setpoint"]
            moving[key] = math.isfinite(setpoint) and abs(value - setpoint) > tolerance
            record[key + "_moving"] = int(moving[key])
        record["force_pn_moving"] = int(moving["magnet_z_mm"])
        record["updated"] = time.time()
        record["seq"] = seq + 2


class AxesLink:
    """The owner's axes record of instrument ``instance``: created by :meth:`open`, fed by
    :meth:`mirror` (every new reading of a signal), unlinked by :meth:`close` or, if the
    owner never closes, when this object is collected or the interpreter exits."""

    def __init__(self, instance: str) -> None:
        self.instance = instance
        self.name = segment_name(instance, "axes")
        self.writer: AxesRecordWriter | None = None
        self._subscriptions: list[tuple[Any, Any]] = []
        self._finalizer: weakref.finalize | None = None

    @property
    def is_open(self) -> bool:
        return self.writer is not None

    def open(self) -> None:
        if self.writer is not None:
            return
        Path("/dev/shm", self.name).unlink(missing_ok=True)
        record = SharedRecord.create(self.name, AXES_DTYPE)
        self._finalizer = weakref.finalize(self, _unlink, self.name)
        self.writer = AxesRecordWriter(record)

    def mirror(self, field: str, signal: Any) -> None:
        """Copy every new reading of ``signal`` (an ophyd-async signal, or anything with
        ``subscribe_reading``/``clear_sub``) into the record's ``field``."""

        def on_reading(reading: dict) -> None:
            writer = self.writer
            if writer is not None:
                (entry,) = reading.values()
                writer.write({field: float(entry["value"])})

        signal.subscribe_reading(on_reading)
        self._subscriptions.append((signal, on_reading))

    def close(self) -> None:
        for signal, callback in self._subscriptions:
            try:
                signal.clear_sub(callback)
            except Exception:  # a signal already torn down: nothing to clear
                pass
        self._subscriptions.clear()
        writer, self.writer = self.writer, None
        if writer is not None:
            writer.record.unlink()
            writer.record.close()
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None


def _unlink(name: str) -> None:
    Path("/dev/shm", name).unlink(missing_ok=True)
