"""Adapters the session's Tiled servers use in place of Tiled's own (by mimetype, in the
server config's ``adapters_by_mimetype``; imported by the server process only).

:class:`EventTableAdapter` reads a run's event table in ``seq_num`` order. Tiled's SQL
adapter orders rows by partition and then, in SQLite and DuckDB, by insertion (rowid);
PostgreSQL has no rowid, so rows of one partition came back in whatever order the
database holds them: with four writers at once, events 51-75 of a run before 26-50.
bluesky-tiled-plugins' writer creates the tables without an order, so the order is
supplied here, for every reader (databroker, the viewer, ``magscope_session.runs``).

It also creates tables safely when several writers (or several Tiled processes on one
database) start tables at once. Tiled's ``init_storage`` runs ``CREATE ... IF NOT
EXISTS`` for the table, one index named ``dataset_and_partition_index`` and a sequence;
on PostgreSQL two such statements racing on one name fail with a unique violation
(SQLSTATE 23505, a 500 to the writer), and since index names are one namespace per
schema only the first table ever got that index. :meth:`EventTableAdapter.init_storage`
retries a creation that lost such a race (the transaction was rolled back; the retry
finds the winner's objects) and gives every PostgreSQL table an index of its own name.
:func:`use_for_table_storage` makes the server process write through it (Tiled picks
the adapter that creates storage from its own table, not from the config).
"""

from __future__ import annotations

import hashlib
import time
from contextlib import closing
from typing import Any

from tiled.adapters.sql import SQLAdapter

__all__ = [
    "EVENT_ORDER",
    "EventTableAdapter",
    "SQL_TABLE_MIMETYPE",
    "register_table_stores",
    "use_for_table_storage",
]

#: SQLSTATEs of a ``CREATE ... IF NOT EXISTS`` that lost a race to a concurrent one:
#: unique violation (the catalog row of the name), duplicate table, duplicate object
_CREATE_RACE_SQLSTATES = frozenset({"23505", "42P07", "42710"})
#: tries of a table creation that keeps losing races, and the pause between them (s)
CREATE_TRIES = 5
CREATE_RETRY_PAUSE_S = 0.05

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

    @classmethod
    def init_storage(cls, storage: Any, data_source: Any, path_parts: Any = None) -> Any:
        """Tiled's table creation, retried when it lost a race to another creation of the
        same name, and on PostgreSQL an index on (dataset, partition) named per table."""
        for attempt in range(CREATE_TRIES):
            try:
                created = super().init_storage(storage, data_source, path_parts)
                break
            except Exception as exc:
                if (getattr(exc, "sqlstate", None) not in _CREATE_RACE_SQLSTATES
                        or attempt == CREATE_TRIES - 1):
                    raise
                time.sleep(CREATE_RETRY_PAUSE_S * (attempt + 1))
        if storage.dialect == "postgresql":
            _index_per_table(storage, cls.get_table_name(created))
        return created


def _index_per_table(storage: Any, table_name: str) -> None:
    """``CREATE INDEX IF NOT EXISTS`` on the table's (dataset, partition) columns under a
    name of its own (PostgreSQL's index names must be unique within a schema; the
    name is cut to its 63-byte limit with a hash of the table name)."""
    digest = hashlib.sha1(table_name.encode()).hexdigest()[:12]
    index = f"dsp_{digest}"
    statement = (f'CREATE INDEX IF NOT EXISTS "{index}" '
                 f'ON "{table_name}"(_dataset_id, _partition_id)')
    for attempt in range(CREATE_TRIES):
        try:
            with closing(storage.connect()) as conn:
                with conn.cursor() as cursor:
                    cursor.execute(statement)
                conn.commit()
            return
        except Exception as exc:
            if (getattr(exc, "sqlstate", None) not in _CREATE_RACE_SQLSTATES
                    or attempt == CREATE_TRIES - 1):
                raise
            time.sleep(CREATE_RETRY_PAUSE_S * (attempt + 1))


def register_table_stores(catalog_uri: str, writable_storage: list[Any]) -> None:
    """Enter each PostgreSQL table store of ``writable_storage`` in the catalog's assets
    once, before any writer does (idempotent; several servers may start at once).

    Every table Tiled creates names its database as an asset; the first tables of a new
    catalog, created at once by several writers, each found the asset missing and
    inserted it, and all but one failed on the asset's unique URI (a 500). Run in the
    server process before it serves; the catalog's password comes from ``PGPASSWORD``.
    """
    import asyncio

    from sqlalchemy.dialects.postgresql import insert
    from sqlalchemy.ext.asyncio import create_async_engine
    from tiled.catalog import orm
    from tiled.storage import (
        RemoteSQLStorage,
        parse_storage,
        strip_connection_parameters,
        strip_storage_uri_query_on_write,
    )
    from tiled.utils import ensure_specified_sql_driver

    data_uris = []
    for item in writable_storage:
        if isinstance(item, str) and item.startswith("postgresql"):
            storage = parse_storage(item)
            if isinstance(storage, RemoteSQLStorage):  # as Tiled's SQL adapter names it
                data_uris.append(strip_connection_parameters(storage.uri)
                                 if strip_storage_uri_query_on_write() else storage.uri)
    if not data_uris:
        return

    async def insert_assets() -> None:
        engine = create_async_engine(ensure_specified_sql_driver(catalog_uri))
        try:
            async with engine.begin() as conn:
                for data_uri in data_uris:
                    await conn.execute(
                        insert(orm.Asset)
                        .values(data_uri=data_uri, is_directory=False)
                        .on_conflict_do_nothing(index_elements=["data_uri"]))
        finally:
            await engine.dispose()

    asyncio.run(insert_assets())


def use_for_table_storage() -> None:
    """Make this (server) process create SQL tables through :class:`EventTableAdapter`.

    Tiled chooses the adapter that creates writable storage from its own table by
    mimetype (``tiled.catalog.adapter.STORAGE_ADAPTERS_BY_MIMETYPE``), which a config's
    ``adapters_by_mimetype`` does not reach; this sets that one entry. Call it in the
    server process before the app is built (``serve_main`` does).
    """
    from tiled.catalog.adapter import STORAGE_ADAPTERS_BY_MIMETYPE

    STORAGE_ADAPTERS_BY_MIMETYPE.set(SQL_TABLE_MIMETYPE, lambda: EventTableAdapter)
