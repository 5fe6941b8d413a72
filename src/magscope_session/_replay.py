"""Sending spooled runs that are not (completely) in Tiled: :func:`replay` and the
``magscope tiled replay`` command (:func:`replay_main`).

A run is left in the spool (:mod:`._spool`) when Tiled failed while the session wrote it
(:class:`~magscope_session._document_writer.SpoolingTiledWriter`), or when the session
died mid-run. :func:`replay` writes each such run whole, under its own uid, and moves its
spool file to ``sent/``.
"""

from __future__ import annotations

import logging
import os
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ._document_writer import DEFAULT_MAX_ARRAY_SIZE, new_tiled_writer
from ._spool import EMPTY_SUBDIR, move_to_sent, read_spool, try_lock, unsent_spool_files
from ._tiled_client import TiledUnreachableError, check_reachable, client_base_uri, connect
from ._tiled_server import (
    DEFAULT_PORT,
    ENV_TILED_API_KEY,
    ENV_TILED_URI,
    SPOOL_SUBDIR,
    EmbeddedTiled,
    TiledServerError,
    default_data_dir,
)

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------- replay
@dataclass
class ReplaySummary:
    """What :func:`replay` did. Run uids in each list; ``documents`` sent in total."""

    replayed: list[str] = field(default_factory=list)
    documents: int = 0
    already_in_tiled: list[str] = field(default_factory=list)
    partial_deleted: list[str] = field(default_factory=list)
    stop_added: list[str] = field(default_factory=list)
    skipped_in_use: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    #: spool files with no document (the disk was full at the start document), moved
    #: to ``<spool_dir>/empty/`` so they are reported once: file name -> new path
    empty: dict[str, str] = field(default_factory=dict)
    #: per run, the external HDF5 data keys whose file holds more rows than the run's
    #: StreamDatums announce (a writer killed mid-record): Tiled serves the announced rows
    trimmed: dict[str, list[str]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failed

    def __str__(self) -> str:
        lines = [f"Replayed {len(self.replayed)} run(s), {self.documents} document(s)."]
        if self.partial_deleted:
            lines.append(
                f"  {len(self.partial_deleted)} partial copy(ies) in Tiled replaced: "
                + ", ".join(self.partial_deleted)
            )
        if self.stop_added:
            lines.append(
                f"  {len(self.stop_added)} run(s) had no stop document (the session "
                "crashed); written with exit_status 'fail': " + ", ".join(self.stop_added)
            )
        if self.already_in_tiled:
            lines.append(
                f"  {len(self.already_in_tiled)} run(s) were already complete in Tiled: "
                + ", ".join(self.already_in_tiled)
            )
        for uid, notes in self.trimmed.items():
            lines.append(
                f"  {uid}: file(s) hold rows no event describes (the session died while "
                "writing them); Tiled serves the described rows: " + "; ".join(notes)
            )
        for name, moved in self.empty.items():
            lines.append(
                f"  {name} held no document (the disk was full when its run started?); "
                f"moved to {moved}, not replayed"
            )
        if self.skipped_in_use:
            lines.append(
                f"  {len(self.skipped_in_use)} run(s) skipped, still being written by a "
                "live session: " + ", ".join(self.skipped_in_use)
            )
        for uid, error in self.failed.items():
            lines.append(f"  FAILED {uid}: {error}")
        return "\n".join(lines)


def _synthesize_stop(docs: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    start = docs[0][1]
    streams: dict[str, str] = {}
    counts: Counter[str] = Counter()
    last_time = start.get("time", time.time())
    for name, doc in docs:
        if isinstance(doc.get("time"), (int, float)):
            last_time = doc["time"]
        if name == "descriptor":
            streams[doc["uid"]] = doc["name"]
            counts[doc["name"]] += 0
        elif name == "event":
            counts[streams.get(doc["descriptor"], "?")] += 1
        elif name == "event_page":
            counts[streams.get(doc["descriptor"], "?")] += len(doc["seq_num"])
    return {
        "uid": str(uuid.uuid4()),
        "run_start": start["uid"],
        "time": last_time,
        "exit_status": "fail",
        "reason": "No stop document was recorded (the session ended mid-run); "
        "stop document added by magscope replay.",
        "num_events": dict(counts),
    }


def _announced_rows_only(
    docs: list[tuple[str, dict[str, Any]]],
) -> tuple[list[tuple[str, dict[str, Any]]], list[str]]:
    """Make Tiled serve only the rows of external HDF5 datasets that the run's
    StreamDatum documents announce.

    A detector that writes rows as they come and is killed mid-acquisition (``kill -9``
    of the session) leaves rows in its file that no document announced; Tiled sizes the
    array from the StreamDatums and then refuses the whole stream ("Can not reshape").
    For each such data key the first StreamResource gets the parameter
    ``slice="0:<announced rows>"`` (applied by Tiled's HDF5 adapter along the leading
    axis of the concatenated files). Only the last file of a data key may hold extra
    rows; files that cannot be opened here are left alone. Returns the (copied) documents
    and one note per trimmed data key.
    """
    descriptors: dict[str, dict[str, Any]] = {}
    resources: dict[str, dict[str, Any]] = {}
    announced: dict[str, int] = {}
    descriptor_of: dict[str, str] = {}
    for name, doc in docs:
        if name == "descriptor":
            descriptors[doc["uid"]] = doc
        elif name == "stream_resource" and doc.get("mimetype") == "application/x-hdf5":
            resources[doc["uid"]] = doc
        elif name == "stream_datum" and doc["stream_resource"] in resources:
            res = doc["stream_resource"]
            announced[res] = max(announced.get(res, 0), int(doc["indices"]["stop"]))
            descriptor_of[res] = doc["descriptor"]
    # data key (per descriptor) -> its resources, in document order
    groups: dict[tuple[str, str], list[str]] = {}
    for res, doc in resources.items():
        if res in descriptor_of:
            groups.setdefault((descriptor_of[res], doc["data_key"]), []).append(res)
    notes: list[str] = []
    patched: dict[str, dict[str, Any]] = {}
    for (descriptor, data_key), members in groups.items():
        first = resources[members[0]]
        if "slice" in first.get("parameters", {}):
            continue
        try:
            shape = descriptors[descriptor]["data_keys"][data_key]["shape"]
            needed, held = [], []
            for res in members:
                rows, trailing = _hdf5_rows(resources[res])
                per_index = int(np.prod(shape)) / max(1, int(np.prod(trailing)))
                if per_index != int(per_index):
                    raise ValueError("the datum shape does not divide into file rows")
                needed.append(announced.get(res, 0) * int(per_index))
                held.append(rows)
        except Exception as err:  # noqa: BLE001 - leave this key as it is
            logger.debug("Not checking the rows of %s: %s", data_key, err)
            continue
        if held == needed or held[-1] < needed[-1] or held[:-1] != needed[:-1]:
            continue  # exact, short (Tiled pads nothing: left alone), or not fixable here
        total = sum(needed)
        params = {**first.get("parameters", {}), "slice": f"0:{total}"}
        patched[members[0]] = {**first, "parameters": params}
        notes.append(f"{data_key} ({sum(held)} rows in the file, {total} described)")
    if not patched:
        return docs, notes
    out = [
        (name, patched.get(doc["uid"], doc) if name == "stream_resource" else doc)
        for name, doc in docs
    ]
    return out, notes


def _hdf5_rows(resource: dict[str, Any]) -> tuple[int, tuple[int, ...]]:
    """Rows (leading axis) and trailing shape of a StreamResource's HDF5 dataset."""
    from urllib.parse import urlparse

    import h5py

    path = urlparse(resource["uri"]).path
    # swmr=True: also a file whose writer was killed (still marked open for writing)
    with h5py.File(path, "r", swmr=True, locking=False) as file:
        shape = file[resource["parameters"]["dataset"]].shape
    return int(shape[0]), tuple(int(d) for d in shape[1:])


def _replay_state(uid: str, summary: ReplaySummary) -> str:
    if uid in summary.failed:
        return f"FAILED ({summary.failed[uid]})"
    if uid in summary.skipped_in_use:
        return "skipped, a live session still writes it"
    if uid in summary.already_in_tiled:
        return "already complete in Tiled"
    if uid in summary.empty:
        return f"empty spool file, moved to {summary.empty[uid]}"
    return "replayed"


def _replay_one(
    path: Path, client: Any, batch_size: int, max_array_size: int, summary: ReplaySummary
) -> None:
    with open(path, "a+", encoding="utf-8") as handle:
        if not try_lock(handle):
            summary.skipped_in_use.append(path.stem)
            return
        docs = read_spool(path)
        if not docs:  # e.g. the disk was full when the run started: nothing to send
            handle.close()
            folder = path.parent / EMPTY_SUBDIR
            folder.mkdir(exist_ok=True)
            target = folder / path.name
            os.replace(path, target)
            summary.empty[path.stem] = str(target)
            logger.warning("Spool file %s holds no document; moved to %s", path, target)
            return
        if docs[0][0] != "start":
            raise ValueError(f"{path} does not begin with a start document")
        uid = docs[0][1]["uid"]
        if uid in client:
            node = client[uid]
            if node.metadata.get("stop") is not None:
                summary.already_in_tiled.append(uid)
                handle.close()
                move_to_sent(path)
                return
            # A partial copy (the writer failed mid-run): remove it, then write it whole.
            client.delete_contents(uid, recursive=True, external_only=False)
            summary.partial_deleted.append(uid)
        if docs[-1][0] != "stop":
            docs.append(("stop", _synthesize_stop(docs)))
            summary.stop_added.append(uid)
        docs, trimmed = _announced_rows_only(docs)
        if trimmed:
            summary.trimmed[uid] = trimmed
        writer = new_tiled_writer(client, batch_size, max_array_size)
        for name, doc in docs:
            writer(name, doc)
        summary.replayed.append(uid)
        summary.documents += len(docs)
    move_to_sent(path)


def replay(
    spool_dir: str | os.PathLike[str],
    client_or_uri: Any,
    api_key: str | None = None,
    *,
    batch_size: int = 1000,
    max_array_size: int = DEFAULT_MAX_ARRAY_SIZE,
    runs: Iterable[str] | None = None,
    progress: Callable[[str], None] | None = None,
) -> ReplaySummary:
    """Send every unsent spooled run to Tiled, completely, and move it to ``sent/``.

    Idempotent: a run already complete in Tiled (its stop document is there) is only
    moved to ``sent/``; a partial copy (left by a writer that failed mid-run) is deleted
    first, with its internally stored data, and the run is written again under the same
    uid. External files (detector HDF5) are never deleted. A run without a stop document
    (the session died mid-run) gets one with ``exit_status="fail"``. Files locked by a
    live :class:`SpoolingTiledWriter` are skipped.

    Parameters
    ----------
    spool_dir
        The spool folder (``<data_dir>/spool`` for the embedded server).
    client_or_uri, api_key
        The Tiled container (or server URI and key) to write to.
    batch_size
        Events per Tiled write.
    runs
        Only these run uids (default: all unsent).
    progress
        Called with one line per run (e.g. ``print``).

    Raises
    ------
    TiledUnreachableError
        If the server does not answer; nothing is changed then.
    """
    files = unsent_spool_files(spool_dir)
    if runs is not None:
        wanted = set(runs)
        files = [p for p in files if p.stem in wanted]
    summary = ReplaySummary()
    if not files:
        return summary
    client = connect(client_or_uri, api_key)
    check_reachable(*client_base_uri(client))
    for path in files:
        try:
            _replay_one(path, client, int(batch_size), int(max_array_size), summary)
        except TiledUnreachableError:
            raise
        except Exception as err:  # noqa: BLE001 - report per run, continue with the rest
            summary.failed[path.stem] = f"{type(err).__name__}: {err}".splitlines()[0][:500]
            logger.warning("Replay of %s failed: %s", path, summary.failed[path.stem])
        if progress is not None:
            progress(f"{path.stem}: {_replay_state(path.stem, summary)}")
    return summary


# --------------------------------------------------------------------------- command
def replay_main(
    data_dir: str | os.PathLike[str] | None = None,
    uri: str | None = None,
    api_key: str | None = None,
    *,
    port: int = DEFAULT_PORT,
) -> int:
    """Replay ``<data_dir>/spool`` into Tiled; print what was done; return an exit code.

    The server: ``uri`` (with ``api_key``), else ``$MAGSCOPE_TILED_URI`` (with
    ``$MAGSCOPE_TILED_API_KEY``), else the embedded server of ``data_dir``, attached to
    if it runs, else started on ``port`` (``magscope tiled replay --port``; 0 = any free
    port) for the replay and stopped afterwards.

    Returns 0 if every unsent run is now in Tiled (or there was none), 1 if some run
    failed or was skipped because a live session still writes it, 2 if no server answers.
    """
    folder = Path(data_dir).expanduser() if data_dir else default_data_dir()
    spool = folder / SPOOL_SUBDIR
    pending = unsent_spool_files(spool)
    if not pending:
        print(f"Nothing to replay: no unsent runs in {spool}.")
        return 0
    print(f"{len(pending)} unsent run(s) in {spool}.")
    uri = uri or os.environ.get(ENV_TILED_URI) or None
    if uri is not None:
        api_key = api_key or os.environ.get(ENV_TILED_API_KEY) or None
    server: EmbeddedTiled | None = None
    try:
        if uri is None:
            server = EmbeddedTiled(folder, port=port)
            if (running := server._running_elsewhere()) is not None:
                uri, api_key, server = running, server.api_key, None
            else:
                print(f"Starting the embedded Tiled server of {folder} for the replay ...")
                server.start()
                uri, api_key = server.uri, server.api_key
        print(f"Replaying into {uri} ...")
        summary = replay(spool, uri, api_key, progress=lambda line: print("  " + line))
    except (TiledUnreachableError, TiledServerError) as err:
        print(f"Replay failed: {err}", file=sys.stderr)
        return 2
    finally:
        if server is not None:
            server.stop()
    print(summary)
    return 0 if summary.ok and not summary.skipped_in_use else 1
