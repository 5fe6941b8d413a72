"""The spool: one JSON-lines file per run, kept until Tiled has the run.

Layout of a spool folder (the embedded server's is ``<data_dir>/spool``)::

    <spool_dir>/<start uid>.jsonl   a run not (completely) in Tiled: `magscope tiled replay`
    <spool_dir>/sent/               runs completely written to Tiled (kept as a local copy;
                                    delete old files by hand when the space is needed)
    <spool_dir>/empty/              spool files that held no document (reported once)

Spool format
------------
One ``{"name": ..., "doc": ...}`` JSON object per line, as bluesky's ``JSONLinesWriter``
writes, except that numpy values keep their type: an array is stored as
``{"__ndarray__": {"dtype": "<u2", "shape": [3, 4], "b64": "..."}}`` (C-order bytes) and
a numpy scalar other than float64 as ``{"__npscalar__": {"dtype": "<i4", "value": 7}}``.
:func:`read_spool` decodes both back to numpy. A truncated last line (a crash while
writing it) is dropped with a warning.

While a writer owns a run it holds an exclusive lock on its spool file (:func:`try_lock`:
``flock`` on POSIX, ``msvcrt.locking`` on Windows; released by the OS if the process
dies), so a replay never sends a run that a live session still writes.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

SENT_SUBDIR = "sent"
#: Where a replay moves spool files holding no document (reported once).
EMPTY_SUBDIR = "empty"
SPOOL_SUFFIX = ".jsonl"

__all__ = [
    "EMPTY_SUBDIR",
    "SENT_SUBDIR",
    "SPOOL_SUFFIX",
    "dumps_document",
    "loads_document",
    "move_to_sent",
    "read_spool",
    "try_lock",
    "unsent_spool_files",
]


# --------------------------------------------------------------------------- encoding
def _encode_default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        if obj.dtype.hasobject:
            return {
                "__ndarray__": {"dtype": "object", "shape": list(obj.shape), "list": obj.tolist()}
            }
        data = np.ascontiguousarray(obj)
        return {
            "__ndarray__": {
                "dtype": data.dtype.str,
                "shape": list(data.shape),
                "b64": base64.b64encode(data.tobytes()).decode("ascii"),
            }
        }
    if isinstance(obj, np.generic):
        return {"__npscalar__": {"dtype": obj.dtype.str, "value": obj.item()}}
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable: {obj!r}")


def _decode_hook(obj: dict[str, Any]) -> Any:
    if len(obj) == 1:
        if (spec := obj.get("__ndarray__")) is not None:
            if spec["dtype"] == "object":
                out = np.empty(len(spec["list"]), dtype=object)
                out[:] = spec["list"]
                return out.reshape(spec["shape"])
            raw = base64.b64decode(spec["b64"])
            return np.frombuffer(raw, dtype=np.dtype(spec["dtype"])).reshape(spec["shape"]).copy()
        if (spec := obj.get("__npscalar__")) is not None:
            return np.dtype(spec["dtype"]).type(spec["value"])
    return obj


def dumps_document(name: str, doc: Any) -> str:
    """One spool line (no newline) for a document; numpy values keep dtype and shape."""
    return json.dumps({"name": name, "doc": doc}, default=_encode_default)


def loads_document(line: str) -> tuple[str, dict[str, Any]]:
    """Inverse of :func:`dumps_document`."""
    item = json.loads(line, object_hook=_decode_hook)
    return item["name"], item["doc"]


def read_spool(path: str | os.PathLike[str]) -> list[tuple[str, dict[str, Any]]]:
    """All documents of a spool file, in order. A truncated last line is dropped.

    Raises ValueError naming the file and line if any other line is unreadable.
    """
    path = Path(path)
    lines = path.read_text(encoding="utf-8").split("\n")
    docs: list[tuple[str, dict[str, Any]]] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            docs.append(loads_document(line))
        except (ValueError, KeyError) as err:
            if number == len(lines) or all(not rest.strip() for rest in lines[number:]):
                logger.warning("Dropping the truncated last line %d of %s (%s)", number, path, err)
                break
            raise ValueError(f"Spool file {path}, line {number} is unreadable: {err}") from err
    return docs


# --------------------------------------------------------------------------- locking
def try_lock(file: Any) -> bool:
    """Take an exclusive, non-blocking lock on an open file; False if another holds it."""
    try:
        if os.name == "nt":
            import msvcrt

            file.seek(0)
            msvcrt.locking(file.fileno(), msvcrt.LK_NBLCK, 1)  # type: ignore[attr-defined]
        else:
            import fcntl

            fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


# --------------------------------------------------------------------------- folders
def unsent_spool_files(spool_dir: str | os.PathLike[str]) -> list[Path]:
    """Spool files of runs not (completely) in Tiled, oldest first."""
    folder = Path(spool_dir)
    if not folder.is_dir():
        return []
    files = [p for p in folder.glob(f"*{SPOOL_SUFFIX}") if p.is_file()]
    return sorted(files, key=lambda p: p.stat().st_mtime)


def move_to_sent(path: Path) -> Path:
    """Move a spool file into ``sent/`` beside it (a second copy of the same run gets a
    time suffix); returns the new path."""
    sent = path.parent / SENT_SUBDIR
    sent.mkdir(exist_ok=True)
    target = sent / path.name
    if target.exists():  # the same run sent twice (re-run replay): keep both
        target = sent / f"{path.stem}.{int(time.time())}{path.suffix}"
    os.replace(path, target)
    return target
