"""The ``health`` stream: how healthy the instrument was while a run ran."""

from __future__ import annotations

from collections.abc import Generator, Iterable
from typing import Any

from bluesky.preprocessors import baseline_wrapper
from bluesky.utils import Msg

from magscope_devices._health import InstrumentHealth

#: Name of the stream the health is read into.
HEALTH_STREAM = "health"


def health_wrapper(
    plan: Iterable[Msg], health: InstrumentHealth, *, name: str = HEALTH_STREAM
) -> Generator[Msg, Any, Any]:
    """Read ``health`` (``microscope.health``: camera rate and late frames, frames
    tracked and dropped by reason, latency, workers, ring fill, Tiled spool backlog)
    into stream ``name`` right after every run of ``plan`` opens and right before it
    closes, whatever ends it. Use it as a RunEngine preprocessor
    (``RE.preprocessors.append(lambda plan: health_wrapper(plan, microscope.health))``,
    as the session does) so every run carries it, as bluesky's baseline does."""
    return (yield from baseline_wrapper(plan, [health], name=name))
