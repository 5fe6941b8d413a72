"""Live data from Tiled for consumers in other processes or on other machines.

A Tiled server with a streaming cache (Redis: ``magscope tiled --streaming-cache URI``,
``EmbeddedTiled(streaming_cache=...)``) publishes every write as it lands; a subscriber
connects over a WebSocket with its API key, so it needs no more than read access to the
runs (unlike bluesky's 0MQ proxy, which has no authentication and is for one computer or
a trusted LAN). :func:`watch_live` wraps bluesky-tiled-plugins' ``subscribe_to_streams``:
it calls back with each batch of new rows of a run's event stream.

How soon rows arrive depends on the writer: the session's spooling writer sends a
stream's events in batches of ``MAGSCOPE_TILED_BATCH_SIZE`` (50 by default), so a
live consumer of a slow plan wants a small batch (``docs/deploy.md`` has the figures).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["LiveRows", "watch_live"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LiveRows:
    """New rows of one run's event stream, as they arrived (``received`` in UNIX s)."""

    run_uid: str
    stream: str
    #: a pandas DataFrame for event tables (seq_num, time, the data keys and their
    #: ts_ timestamps), else an array
    data: Any
    received: float


def watch_live(
    client_or_uri: Any,
    callback: Callable[[LiveRows], None],
    *,
    streams: Mapping[str, str | Iterable[str] | None] | None = None,
    sample: str | None = None,
    plan_name: str | None = None,
    since: float | None = None,
    api_key: str | None = None,
) -> Any:
    """Call ``callback`` with every batch of rows written to matching runs, as they land.

    Parameters
    ----------
    client_or_uri
        The catalog (a Tiled client, or the server's URI with ``api_key``).
    streams
        Event streams and their data keys, e.g. ``{"primary": None}`` (every key of the
        primary stream); None: every stream and key.
    sample, plan_name
        Only runs whose start document has these values.
    since
        Only runs that started at or after this UNIX time (s); None: also the runs the
        streaming cache still holds (it replays them from their first row).

    Returns the subscription, already listening: ``.disconnect()`` ends it (or use it as
    a context manager). The callback runs in Tiled's worker threads, possibly several at
    once; rows of one stream come in order of their batches.
    """
    from bluesky_tiled_plugins.streaming import subscribe_to_streams

    from ._tiled_client import connect

    if since is not None and not (isinstance(since, int | float) and since == since):
        raise ValueError(f"since must be a UNIX time in s or None, got {since!r}")
    catalog = connect(client_or_uri, api_key=api_key)

    def wanted(start: Mapping[str, Any]) -> bool:
        return ((sample is None or start.get("sample") == sample)
                and (plan_name is None or start.get("plan_name") == plan_name)
                and (since is None or float(start.get("time", 0.0)) >= since))

    def deliver(update: Any) -> None:
        received = time.time()
        try:
            # the whole new rows (seq_num, time, timestamps and data): the update's own
            # data() keeps only the data keys asked for
            callback(LiveRows(update.run_uid, update.stream_name, update.update.data(),
                              received))
        except Exception:  # Tiled's worker thread would swallow it
            logger.exception("watch_live: the callback failed on rows of run %s (%s)",
                             update.run_uid, update.stream_name)

    return subscribe_to_streams(catalog, deliver, streams=streams, metadata_filter=wanted,
                                start=0)
