"""Named shared-memory segments with crash-safe ownership.

A segment is a file in ``/dev/shm`` mapped into memory. Its name encodes the
instrument instance, the owner's process id and the owner's start time::

    magscope.<instance>.<pid>-<starttime>.<kind>

so a segment whose owner is gone (crashed, killed) is recognised as stale by
:func:`find_stale_segments` and removed by :func:`remove_stale_segments` at
the next start. One process (the owner) creates and unlinks a segment; other
processes attach by name and only close their mapping.

Plain ``mmap`` of ``/dev/shm`` files is used instead of
:mod:`multiprocessing.shared_memory` because the latter's resource tracker
unlinks segments a reader attached to when the reader exits (Python 3.11).
"""

from __future__ import annotations

import json
import mmap
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.lib.format import descr_to_dtype, dtype_to_descr

SHM_DIR = Path("/dev/shm")
PREFIX = "magscope"
_NAME_RE = re.compile(rf"^{PREFIX}\.(?P<instance>[A-Za-z0-9_-]+)\.(?P<pid>\d+)-(?P<start>\d+)\.(?P<kind>[A-Za-z0-9_-]+)$")


class SharedMemoryError(RuntimeError):
    """A shared-memory segment is missing, malformed or already exists."""


def _process_start_time(pid: int) -> int | None:
    """Start time of process ``pid`` in clock ticks since boot, or None if it is gone
    (a zombie, dead but not yet reaped, counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name (field 2) may contain spaces; fields after the last ')' are fixed.
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] == "Z":
        return None
    return int(fields[19])


def owner_token(pid: int | None = None) -> str:
    """The ``<pid>-<starttime>`` token naming segments owned by process ``pid`` (default: this one)."""
    pid = os.getpid() if pid is None else pid
    start = _process_start_time(pid)
    if start is None:
        raise SharedMemoryError(f"process {pid} does not exist")
    return f"{pid}-{start}"


def token_owner_alive(token: str) -> bool:
    """True while the process named by an :func:`owner_token` runs (same pid, same start
    time: a reused pid is not mistaken for the owner)."""
    try:
        pid_text, start_text = token.split("-", 1)
        pid, start = int(pid_text), int(start_text)
    except ValueError:
        return False
    return _process_start_time(pid) == start


def segment_name(instance: str, kind: str) -> str:
    """Name of a segment of ``kind`` owned by this process for instrument ``instance``."""
    for label, value in (("instance", instance), ("kind", kind)):
        if not re.fullmatch(r"[A-Za-z0-9_-]+", value):
            raise ValueError(
                f"shared-memory {label} {value!r} must contain only letters, digits, '_' and '-'"
            )
    return f"{PREFIX}.{instance}.{owner_token()}.{kind}"


@dataclass(frozen=True)
class SegmentInfo:
    """What a segment's name says about it."""

    name: str
    instance: str
    pid: int
    start_time: int
    kind: str
    size_bytes: int

    @property
    def owner_alive(self) -> bool:
        """True while the process that created the segment still runs."""
        return token_owner_alive(f"{self.pid}-{self.start_time}")


def list_segments(instance: str | None = None) -> list[SegmentInfo]:
    """All magscope segments in ``/dev/shm``, optionally of one instrument instance."""
    found: list[SegmentInfo] = []
    if not SHM_DIR.is_dir():
        return found
    for path in SHM_DIR.iterdir():
        match = _NAME_RE.match(path.name)
        if not match or (instance is not None and match["instance"] != instance):
            continue
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            continue
        found.append(
            SegmentInfo(
                name=path.name,
                instance=match["instance"],
                pid=int(match["pid"]),
                start_time=int(match["start"]),
                kind=match["kind"],
                size_bytes=size,
            )
        )
    return sorted(found, key=lambda s: s.name)


def find_stale_segments(instance: str | None = None) -> list[SegmentInfo]:
    """Segments whose owning process no longer runs (left behind by a crash)."""
    return [s for s in list_segments(instance) if not s.owner_alive]


def remove_stale_segments(instance: str | None = None) -> list[SegmentInfo]:
    """Unlink every stale segment; returns what was removed."""
    removed = []
    for seg in find_stale_segments(instance):
        try:
            (SHM_DIR / seg.name).unlink()
            removed.append(seg)
        except FileNotFoundError:
            pass
    return removed


class Segment:
    """A mapped shared-memory segment. Create with :meth:`create`, attach with :meth:`attach`."""

    def __init__(self, name: str, size: int, fd: int, owner: bool, readonly: bool = False) -> None:
        self.name = name
        self.size = size
        self.owner = owner
        self.readonly = readonly
        access = mmap.ACCESS_READ if readonly else mmap.ACCESS_WRITE
        self._mmap: mmap.mmap | None = mmap.mmap(fd, size, access=access)
        os.close(fd)

    @classmethod
    def create(cls, name: str, size: int) -> Segment:
        """Create a new zero-filled segment of ``size`` bytes; this process becomes its owner."""
        if size <= 0:
            raise ValueError(f"segment size must be positive, got {size} bytes")
        path = SHM_DIR / name
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        except FileExistsError:
            raise SharedMemoryError(f"shared-memory segment {name!r} already exists") from None
        try:
            os.ftruncate(fd, size)
        except OSError:
            os.close(fd)
            path.unlink(missing_ok=True)
            raise
        return cls(name, size, fd, owner=True)

    @classmethod
    def attach(cls, name: str, *, readonly: bool = False) -> Segment:
        """Map an existing segment by name (read and write; ``readonly``: mapped read-only,
        so NumPy views of it are read-only and a write raises instead of reaching the
        owner's memory)."""
        try:
            fd = os.open(SHM_DIR / name, os.O_RDONLY if readonly else os.O_RDWR)
        except FileNotFoundError:
            raise SharedMemoryError(
                f"shared-memory segment {name!r} does not exist (its owner stopped or crashed)"
            ) from None
        size = os.fstat(fd).st_size
        return cls(name, size, fd, owner=False, readonly=readonly)

    @property
    def buffer(self) -> mmap.mmap:
        if self._mmap is None:
            raise SharedMemoryError(f"segment {self.name!r} is closed")
        return self._mmap

    def ndarray(self, dtype: np.dtype | type, shape: tuple[int, ...], offset: int = 0) -> np.ndarray:
        """A NumPy view of part of the segment."""
        dt = np.dtype(dtype)
        count = int(np.prod(shape, dtype=np.int64))
        if offset + count * dt.itemsize > self.size:
            raise SharedMemoryError(
                f"view of {count} x {dt} at offset {offset} exceeds segment {self.name!r} "
                f"of {self.size} bytes"
            )
        return np.frombuffer(self.buffer, dtype=dt, count=count, offset=offset).reshape(shape)

    def close(self) -> None:
        """Release this process's mapping (views still alive keep it mapped until collected)."""
        if self._mmap is not None:
            try:
                self._mmap.close()
            except BufferError:
                pass  # NumPy views still exist; the mapping goes when they are collected.
            self._mmap = None

    def unlink(self) -> None:
        """Remove the segment's name (owner only); mappings stay valid until closed."""
        (SHM_DIR / self.name).unlink(missing_ok=True)

    @property
    def exists(self) -> bool:
        return (SHM_DIR / self.name).exists()


_RECORD_HEADER = 4096


class SharedRecord:
    """One structured NumPy record in its own segment (a control block between processes).

    Fields are read and written by name (``rec["exposure_s"]``, ``rec["exposure_s"] = 0.005``).
    Single fields of 8 bytes or less are written atomically on the platforms we run on; a
    writer that updates several related fields bumps a generation counter last.
    """

    def __init__(self, segment: Segment) -> None:
        self.segment = segment
        header = bytes(segment.buffer[:_RECORD_HEADER]).rstrip(b"\0")
        if not header:
            raise SharedMemoryError(f"segment {segment.name!r} holds no record description")
        self.dtype = descr_to_dtype(_tuplify(json.loads(header.decode())))
        self._rec = segment.ndarray(self.dtype, (1,), _RECORD_HEADER)

    @classmethod
    def create(cls, name: str, dtype: np.dtype) -> SharedRecord:
        """Create a zero-filled record of ``dtype`` (this process owns and must unlink it)."""
        descr = json.dumps(dtype_to_descr(np.dtype(dtype))).encode()
        if len(descr) >= _RECORD_HEADER:
            raise ValueError("record dtype description is too long")
        segment = Segment.create(name, _RECORD_HEADER + np.dtype(dtype).itemsize)
        segment.buffer[: len(descr)] = descr
        return cls(segment)

    @classmethod
    def attach(cls, name: str) -> SharedRecord:
        return cls(Segment.attach(name))

    @property
    def name(self) -> str:
        return self.segment.name

    def __getitem__(self, field: str):
        value = self._rec[field][0]
        if isinstance(value, bytes):
            return value.rstrip(b"\0").decode()
        if isinstance(value, np.ndarray):
            return value.copy()
        return value.item() if hasattr(value, "item") else value

    def __setitem__(self, field: str, value) -> None:
        if isinstance(value, str):
            value = value.encode()
            size = self.dtype[field].itemsize
            if len(value) > size:
                raise ValueError(f"{field!r} holds at most {size} bytes, got {len(value)}")
        self._rec[field] = value

    def increment(self, field: str, by: int = 1) -> int:
        """Add ``by`` to an integer field (single writer only); returns the new value."""
        new = int(self._rec[field][0]) + by
        self._rec[field] = new
        return new

    def close(self) -> None:
        self._rec = None  # type: ignore[assignment]
        self.segment.close()

    def unlink(self) -> None:
        self.segment.unlink()


def _tuplify(descr):
    """JSON turns the tuples of a structured dtype description into lists; undo that."""
    if isinstance(descr, str):
        return descr
    out = []
    for field in descr:
        name, sub, *shape = field
        item = (name, _tuplify(sub)) + tuple(tuple(s) if isinstance(s, list) else s for s in shape)
        out.append(item)
    return out
