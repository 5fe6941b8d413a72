"""Lock-free single-writer rings of fixed-size slots in shared memory.

One process writes (the camera's acquisition loop into the frame ring, the
trackers into the track ring); any number of processes read by name. Every
slot carries a sequence number used as a seqlock: a reader that copies a slot
checks afterwards that the writer did not overwrite it meanwhile, so a reader
never returns a torn frame, and a reader that falls behind by more than the
capacity is told how many entries it lost instead of silently skipping them.

Readers ask for "entries since index k" (:meth:`SlotRing.available_since`)
and copy only what they need (a view plus :meth:`SlotRing.is_valid`, or
:meth:`SlotRing.read`); nothing copies the whole ring on a hot path.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
from numpy.lib.format import descr_to_dtype, dtype_to_descr

from .shm import Segment, SharedMemoryError, _tuplify

_MAGIC = 0x4D41475352494E47  # "MAGSRING"
_HEADER_BYTES = 4096
_DESCR_BYTES = 2048

HEADER_DTYPE = np.dtype(
    [
        ("magic", "<u8"),
        ("capacity", "<i8"),
        ("write_count", "<i8"),
        ("ndim", "<i8"),
        ("shape", "<i8", (4,)),
        ("meta_offset", "<i8"),
        ("data_offset", "<i8"),
        ("slot_nbytes", "<i8"),
        ("closed", "<i8"),
        ("descr", f"S{_DESCR_BYTES}"),
    ]
)

META_DTYPE = np.dtype(
    [
        ("seq", "<i8"),  # 2*index+1 while writing, 2*index+2 when committed
        ("index", "<i8"),
        ("timestamp", "<f8"),  # UNIX epoch seconds
        ("rows", "<i4"),  # used extent of the slot (frames: ROI height, px)
        ("cols", "<i4"),  # frames: ROI width, px
    ]
)


class EntryOverwrittenError(LookupError):
    """The requested entry has already been overwritten by the writer."""


@dataclass(frozen=True)
class Available:
    """Result of :meth:`SlotRing.available_since`: readable indices and how many were lost."""

    start: int
    stop: int
    lost: int

    def __iter__(self):
        return iter(range(self.start, self.stop))

    def __len__(self) -> int:
        return self.stop - self.start


class SlotRing:
    """A ring of ``capacity`` slots, each an array of ``slot_shape`` and ``dtype``."""

    def __init__(self, segment: Segment) -> None:
        self.segment = segment
        self._header = segment.ndarray(HEADER_DTYPE, (1,))[0:1]
        header = self._header[0]
        if int(header["magic"]) != _MAGIC:
            raise SharedMemoryError(f"segment {segment.name!r} is not a magscope ring")
        self.capacity = int(header["capacity"])
        ndim = int(header["ndim"])
        self.slot_shape = tuple(int(v) for v in header["shape"][:ndim])
        self.dtype = descr_to_dtype(_decode_descr(bytes(header["descr"])))
        self._meta = segment.ndarray(META_DTYPE, (self.capacity,), int(header["meta_offset"]))
        self._data = segment.ndarray(
            self.dtype, (self.capacity, *self.slot_shape), int(header["data_offset"])
        )

    # -- construction -------------------------------------------------------------------
    @classmethod
    def create(
        cls, name: str, capacity: int, slot_shape: tuple[int, ...], dtype: np.dtype | type | str
    ) -> SlotRing:
        """Create the ring's segment (this process owns and must unlink it)."""
        if capacity < 2:
            raise ValueError(f"ring capacity must be at least 2 slots, got {capacity}")
        if not 0 < len(slot_shape) <= 4 or any(int(n) <= 0 for n in slot_shape):
            raise ValueError(f"slot shape must have 1 to 4 positive dimensions, got {slot_shape}")
        dt = np.dtype(dtype)
        descr = json.dumps(dtype_to_descr(dt)).encode()
        if len(descr) > _DESCR_BYTES:
            raise ValueError(f"dtype description too long for a ring header: {dt}")
        slot_nbytes = int(np.prod(slot_shape)) * dt.itemsize
        meta_offset = _HEADER_BYTES
        data_offset = _align(meta_offset + capacity * META_DTYPE.itemsize, 4096)
        size = data_offset + capacity * slot_nbytes
        segment = Segment.create(name, size)
        header = segment.ndarray(HEADER_DTYPE, (1,))
        header["capacity"] = capacity
        header["write_count"] = 0
        header["ndim"] = len(slot_shape)
        header["shape"][0, : len(slot_shape)] = slot_shape
        header["meta_offset"] = meta_offset
        header["data_offset"] = data_offset
        header["slot_nbytes"] = slot_nbytes
        header["descr"] = descr
        header["magic"] = _MAGIC  # last: readers see a complete header
        del header
        return cls(segment)

    @classmethod
    def attach(cls, name: str) -> SlotRing:
        """Attach to an existing ring by name."""
        return cls(Segment.attach(name))

    @property
    def name(self) -> str:
        return self.segment.name

    # -- writer ---------------------------------------------------------------------------
    @property
    def count(self) -> int:
        """Number of entries committed so far (the next index to be written)."""
        return int(self._header["write_count"][0])

    def begin_write(self) -> tuple[int, np.ndarray]:
        """Claim the next slot; returns its index and a writable view of it."""
        index = self.count
        slot = index % self.capacity
        self._meta["seq"][slot] = 2 * index + 1
        return index, self._data[slot]

    def commit(self, index: int, timestamp: float, rows: int = 0, cols: int = 0) -> None:
        """Publish the slot claimed by :meth:`begin_write`."""
        slot = index % self.capacity
        meta = self._meta
        meta["index"][slot] = index
        meta["timestamp"][slot] = timestamp
        meta["rows"][slot] = rows
        meta["cols"][slot] = cols
        meta["seq"][slot] = 2 * index + 2
        self._header["write_count"] = index + 1

    def write(self, value: np.ndarray, timestamp: float) -> int:
        """Copy ``value`` into the next slot and publish it; returns its index."""
        index, view = self.begin_write()
        view[...] = value
        self.commit(index, timestamp)
        return index

    # -- readers --------------------------------------------------------------------------
    def oldest(self) -> int:
        """Oldest index that is still safe to read (the writer may be filling the next slot)."""
        return max(0, self.count - self.capacity + 1)

    def available_since(self, k: int) -> Available:
        """Indices committed since ``k`` that are still in the ring, and how many were lost."""
        stop = self.count
        start = max(k, self.oldest())
        return Available(start=min(start, stop), stop=stop, lost=max(0, min(start, stop) - k))

    def is_valid(self, index: int) -> bool:
        """True if entry ``index`` is committed and not (being) overwritten."""
        return int(self._meta["seq"][index % self.capacity]) == 2 * index + 2

    def view(self, index: int) -> np.ndarray:
        """Zero-copy view of entry ``index``; check :meth:`is_valid` after using it."""
        if not self.is_valid(index):
            raise EntryOverwrittenError(self._lost_message(index))
        return self._data[index % self.capacity]

    def meta(self, index: int) -> np.void:
        """Copy of the metadata (index, timestamp, rows, cols) of entry ``index``."""
        value = self._meta[index % self.capacity].copy()
        if not self.is_valid(index):
            raise EntryOverwrittenError(self._lost_message(index))
        return value

    def read(self, index: int, out: np.ndarray | None = None) -> tuple[np.ndarray, float]:
        """Copy entry ``index`` (and its timestamp, s) out of the ring, checked against tearing."""
        slot = index % self.capacity
        if not self.is_valid(index):
            raise EntryOverwrittenError(self._lost_message(index))
        timestamp = float(self._meta["timestamp"][slot])
        if out is None:
            out = self._data[slot].copy()
        else:
            out[...] = self._data[slot]
        if not self.is_valid(index):
            raise EntryOverwrittenError(self._lost_message(index))
        return out, timestamp

    def _lost_message(self, index: int) -> str:
        count = self.count
        if index >= count:
            return f"entry {index} of ring {self.name!r} is not written yet (count {count})"
        return (
            f"entry {index} of ring {self.name!r} was overwritten (count {count}, "
            f"capacity {self.capacity}): the reader fell behind"
        )

    # -- lifetime -------------------------------------------------------------------------
    def close(self) -> None:
        """Drop this process's mapping."""
        self._header = self._meta = self._data = None  # type: ignore[assignment]
        self.segment.close()

    def unlink(self) -> None:
        """Remove the ring's name (owner only)."""
        self.segment.unlink()


class FrameRing(SlotRing):
    """A :class:`SlotRing` of camera frames: slots of the full sensor, a used ROI extent each."""

    @classmethod
    def create_frames(
        cls, name: str, capacity: int, height: int, width: int, dtype: np.dtype | type | str
    ) -> FrameRing:
        """Ring of ``capacity`` frames of at most ``height`` x ``width`` px."""
        ring = SlotRing.create(name, capacity, (height, width), dtype)
        return cls(ring.segment)

    @classmethod
    def attach(cls, name: str) -> FrameRing:
        return cls(Segment.attach(name))

    def commit_frame(self, index: int, timestamp: float, rows: int, cols: int) -> None:
        """Publish a frame of ``rows`` x ``cols`` px written at the top-left of its slot."""
        self.commit(index, timestamp, rows, cols)

    def frame_view(self, index: int) -> np.ndarray:
        """Zero-copy view of frame ``index`` cropped to its extent; check :meth:`is_valid` after."""
        slot = index % self.capacity
        rows, cols = int(self._meta["rows"][slot]), int(self._meta["cols"][slot])
        return self.view(index)[:rows, :cols]

    def read_frame(self, index: int) -> tuple[np.ndarray, float]:
        """Copy of frame ``index`` (cropped to its extent) and its timestamp (s)."""
        meta = self.meta(index)
        frame = self.view(index)[: int(meta["rows"]), : int(meta["cols"])].copy()
        if not self.is_valid(index):
            raise EntryOverwrittenError(self._lost_message(index))
        return frame, float(meta["timestamp"])


def _align(offset: int, alignment: int) -> int:
    return (offset + alignment - 1) // alignment * alignment


def _decode_descr(raw: bytes):
    return _tuplify(json.loads(raw.rstrip(b"\0").decode()))
