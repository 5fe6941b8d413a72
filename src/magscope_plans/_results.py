"""Plan results as signals, so they go into the run as events and Tiled holds them."""

from __future__ import annotations

import functools
from collections.abc import Generator, Mapping
from typing import Any

import bluesky.plan_stubs as bps
import numpy as np
from bluesky.utils import Msg
from ophyd_async.core import Array1D, soft_signal_rw

from magscope_devices._bead_layout import BeadLayoutRecord

__all__ = ["FLOAT", "ARRAY", "IDS", "ResultRecord", "emit", "set_layouts"]

FLOAT = float
ARRAY = Array1D[np.float64]
IDS = Array1D[np.int64]


class ResultRecord(BeadLayoutRecord):
    """A readable whose signals hold one set of results of a plan.

    ``fields`` maps a field name to ``(datatype, units)``: ``FLOAT`` for a number,
    ``ARRAY`` for one value per bead, ``IDS`` for bead ids. Reading keys are
    ``<name>-<field>``. Its configuration is the beads' layout
    (:class:`~magscope_devices._bead_layout.BeadLayoutRecord`): set it with
    ``bps.mv(*record.layout_moves(layout))`` before the first :func:`emit`; the ``ARRAY``
    fields have one value per bead of the layout, in its order.
    """

    def __init__(self, fields: Mapping[str, tuple[Any, str]], name: str) -> None:
        with self.add_children_as_readables():
            for key, (datatype, units) in fields.items():
                setattr(self, key, soft_signal_rw(datatype, units=units or None))
        self._fields = dict(fields)
        super().__init__(name=name)


def connect_replayably(*devices: Any) -> Generator[Msg, Any, None]:
    """Connect ``devices`` (soft, instant) in a message a RunEngine can replay.

    ``ophyd_async.plan_stubs.ensure_connected`` sends one coroutine made in advance: when
    a pause rewinds the plan to its checkpoint and the message is sent again, that
    coroutine was already awaited ("cannot reuse already awaited coroutine"). Here each
    send makes a new one."""
    yield from bps.wait_for([functools.partial(device.connect) for device in devices])


def emit(record: ResultRecord, stream: str, **values: Any) -> Generator[Msg, Any, None]:
    """Set ``record``'s signals to ``values`` (all its fields) and save one event of them in
    ``stream`` of the open run."""
    missing = set(record._fields) - set(values)
    if missing:
        raise ValueError(f"{record.name}: no value for {sorted(missing)}")
    yield from connect_replayably(record)
    args: list[Any] = []
    for key, value in values.items():
        datatype = record._fields[key][0]
        if datatype is ARRAY:
            value = np.asarray(value, dtype=np.float64)
        elif datatype is IDS:
            value = np.asarray(value, dtype=np.int64)
        else:
            value = float(value)
        args += [getattr(record, key), value]
    yield from bps.mv(*args)
    yield from bps.trigger_and_read([record], name=stream)


def set_layouts(
    tracker: Any, bead_ids: Any, *records: ResultRecord
) -> Generator[Msg, Any, None]:
    """Set the bead layout (configuration) of ``records`` to the tracker's layout of
    ``bead_ids``, in that order: the beads of their per-bead arrays."""
    from ._preflight import read_layout

    layout = (yield from read_layout(tracker)).select(bead_ids)
    for record in records:
        yield from connect_replayably(record)
        yield from bps.mv(*record.layout_moves(layout))
