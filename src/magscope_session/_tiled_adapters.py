"""Adapters the session's Tiled servers use in place of Tiled's own (by mimetype, in the
server config's ``adapters_by_mimetype``; imported by the server process only).

:class:`EventTableAdapter` reads a run's event table in ``seq_num`` order. Tiled's SQL
adapter orders rows by partition and then, in SQLite and DuckDB, by insertion (rowid);
PostgreSQL has no rowid, so rows of one partition came back in whatever order the
database holds them: with four writers at once, events 51-75 of a run before 26-50.
bluesky-tiled-plugins' writer creates the tables without an order, so the order is
supplied here, for every reader (databroker, the viewer, ``magscope_session.runs``).
"""

from __future__ import annotations

from typing import Any

from tiled.adapters.sql import SQLAdapter

__all__ = ["EVENT_ORDER", "EventTableAdapter", "SQL_TABLE_MIMETYPE"]

SQL_TABLE_MIMETYPE = "application/x-tiled-sql-table"
#: the order an event table is read in when its data source names none
EVENT_ORDER = [{"column": "seq_num", "direction": "asc"}]


class EventTableAdapter(SQLAdapter):
    """Tiled's SQL table adapter, reading a table with a ``seq_num`` column (a bluesky
    event stream) in ``seq_num`` order unless its data source asks for another."""

    @classmethod
    def from_catalog(cls, data_source: Any, node: Any, /, **kwargs: Any) -> SQLAdapter:
        adapter = super().from_catalog(data_source, node, **kwargs)
        # (the data source can be the catalog's database row: it is left as it is)
        if not adapter.order_by_args and "seq_num" in adapter.structure().columns:
            adapter.order_by_args = [dict(arg) for arg in EVENT_ORDER]  # type: ignore[misc]
        return adapter
