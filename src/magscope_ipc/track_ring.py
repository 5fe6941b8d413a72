"""The track ring: per camera frame, the tracked position of every bead.

A :class:`TrackRing` is a :class:`~magscope_ipc.rings.SlotRing` whose slot is one
camera frame: ``max_beads`` rows of :data:`TRACK_DTYPE` (bead id, x, y, z in nm, score)
of which the first ``n_beads`` are used. The ring index *is* the camera frame index (the
frame ring's index): the ring starts at the frame the tracking service started with
(:attr:`TrackRing.first_index`) and has one entry for every frame after it, in order,
whether the frame was tracked or dropped (:class:`FrameStatus`). Per entry the ring's
metadata hold:

==========  =============================================================
``index``   camera frame index (= ring index)
timestamp   the frame's timestamp, UNIX epoch s (exposure start)
``rows``    number of bead rows used in the slot
``cols``    :class:`FrameStatus` of the frame (tracked / dropped)
==========  =============================================================

Positions are in nm in *sensor* coordinates: ``x_nm = (roi_x0_px + x_px) * nm_per_px``
with the centre of sensor pixel column ``i`` at ``i * nm_per_px`` (y likewise, rows);
``z_nm`` comes from the Z-LUT (NaN without one). A lost bead has NaN x, y, z and score;
a dropped frame has the bead ids of the ROI table and NaN everywhere else.

One writer (the tracking service's collector thread); any number of readers in any
process attach by name and call :meth:`TrackRing.rows_since` with the next frame index
they want. A reader that falls behind by more than the capacity is told how many frames
it lost (``TrackRows.lost``); the writer never waits for readers.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np

from .rings import HEADER_DTYPE, SlotRing
from .shm import Segment, SharedMemoryError

#: One bead in one frame. x, y: sensor coordinates (nm); z: from the Z-LUT (nm, NaN
#: without one); score: the kernels' quality figure (LUT match; NaN for a lost bead).
TRACK_DTYPE = np.dtype(
    [
        ("bead_id", "<i4"),
        ("x_nm", "<f8"),
        ("y_nm", "<f8"),
        ("z_nm", "<f8"),
        ("score", "<f4"),
    ]
)


class FrameStatus(enum.IntEnum):
    """What happened to a camera frame (the ``cols`` field of a track-ring entry)."""

    TRACKED = 1  # the kernels ran; rows hold positions (NaN for lost beads)
    DROPPED = 2  # not tracked (trackers behind, frame overwritten, worker died): rows NaN


# The track ring's own header, in the spare space of the ring header (after HEADER_DTYPE,
# before the metadata array).
_TRACK_MAGIC = 0x4D41475354524B31  # "MAGSTRK1"
_EXTRA_DTYPE = np.dtype([("magic", "<u8"), ("first_index", "<i8"), ("nm_per_px", "<f8")])
_EXTRA_OFFSET = (HEADER_DTYPE.itemsize + 63) // 64 * 64


def empty_rows(n: int) -> np.ndarray:
    """``n`` rows of :data:`TRACK_DTYPE`: bead id -1, NaN positions and scores."""
    rows = np.empty(n, dtype=TRACK_DTYPE)
    rows["bead_id"] = -1
    for field in ("x_nm", "y_nm", "z_nm", "score"):
        rows[field] = np.nan
    return rows


@dataclass(frozen=True)
class TrackRows:
    """Frames read from a track ring by :meth:`TrackRing.rows_since`.

    ``frame_index`` (n,) int64, ``timestamp`` (n,) float64 UNIX s, ``status`` (n,) int32
    (:class:`FrameStatus`), ``n_beads`` (n,) int32 rows used per frame, ``rows``
    (n, width) :data:`TRACK_DTYPE` where ``width`` is the largest ``n_beads`` (unused rows:
    bead id -1, NaN). ``lost``: frames from the requested index on that were overwritten
    before this read (the reader fell behind). ``next_index``: pass it to the next call.
    """

    frame_index: np.ndarray
    timestamp: np.ndarray
    status: np.ndarray
    n_beads: np.ndarray
    rows: np.ndarray
    lost: int
    next_index: int

    def __len__(self) -> int:
        return int(self.frame_index.size)

    @property
    def tracked(self) -> np.ndarray:
        """Boolean mask (n,) of frames the kernels tracked."""
        return self.status == FrameStatus.TRACKED

    def columns(self, bead_ids: np.ndarray) -> dict[str, np.ndarray]:
        """The rows as (frames, beads) columns ``x_nm``, ``y_nm``, ``z_nm``, ``score``
        (float64), one column per id of the sorted ``bead_ids``; NaN where a bead is
        missing from a frame or the frame was not tracked."""
        ids = np.asarray(bead_ids)
        k = len(self)
        out = {name: np.full((k, ids.size), np.nan) for name in ("x_nm", "y_nm", "z_nm", "score")}
        if ids.size == 0 or k == 0 or self.rows.shape[1] == 0:
            return out
        # every used row of every tracked frame at once: (frame, column) of its bead
        used = np.arange(self.rows.shape[1])[None, :] < self.n_beads[:, None]
        used &= (self.status == FrameStatus.TRACKED)[:, None]
        bead = self.rows["bead_id"]
        col = np.searchsorted(ids, bead)
        ok = used & (col < ids.size)
        ok[ok] &= ids[col[ok]] == bead[ok]
        frame = np.broadcast_to(np.arange(k)[:, None], ok.shape)[ok]
        col = col[ok]
        for name in out:
            out[name][frame, col] = self.rows[name][ok]
        return out

    def table(self) -> np.ndarray:
        """Flat table, one record per (frame, bead) of the used rows: ``frame_index``,
        ``timestamp`` (s), ``status``, then the :data:`TRACK_DTYPE` fields."""
        dtype = np.dtype(
            [("frame_index", "<i8"), ("timestamp", "<f8"), ("status", "<i4")]
            + [(name, TRACK_DTYPE[name]) for name in TRACK_DTYPE.names or ()]
        )
        if self.rows.size == 0:
            return np.empty(0, dtype)
        used = np.arange(self.rows.shape[1])[None, :] < self.n_beads[:, None]
        frame_of = np.broadcast_to(np.arange(len(self))[:, None], used.shape)[used]
        out = np.empty(int(used.sum()), dtype)
        out["frame_index"] = self.frame_index[frame_of]
        out["timestamp"] = self.timestamp[frame_of]
        out["status"] = self.status[frame_of]
        picked = self.rows[used]
        for name in TRACK_DTYPE.names or ():
            out[name] = picked[name]
        return out


class TrackRing(SlotRing):
    """A ring of per-frame bead rows (see the module docstring). Index = camera frame."""

    def __init__(self, segment: Segment) -> None:
        super().__init__(segment)
        meta_offset = int(self._header["meta_offset"][0])
        if _EXTRA_OFFSET + _EXTRA_DTYPE.itemsize > meta_offset or self.dtype != TRACK_DTYPE:
            raise SharedMemoryError(f"segment {segment.name!r} is not a magscope track ring")
        self._extra = segment.ndarray(_EXTRA_DTYPE, (1,), _EXTRA_OFFSET)
        if int(self._extra["magic"][0]) != _TRACK_MAGIC:
            raise SharedMemoryError(f"segment {segment.name!r} is not a magscope track ring")
        (self.max_beads,) = self.slot_shape

    @classmethod
    def create_tracks(
        cls, name: str, capacity: int, max_beads: int, first_index: int = 0,
        nm_per_px: float = float("nan"),
    ) -> TrackRing:
        """Create a track ring of ``capacity`` frames of up to ``max_beads`` beads each.

        ``first_index``: the camera frame index of the first entry (the ring's count starts
        there, so ring index = frame index). ``nm_per_px``: pixel size (nm) the positions
        were converted with, kept for readers.
        """
        if max_beads < 1:
            raise ValueError(f"max_beads must be at least 1, got {max_beads}")
        if first_index < 0:
            raise ValueError(f"first frame index must be >= 0, got {first_index}")
        ring = SlotRing.create(name, capacity, (int(max_beads),), TRACK_DTYPE)
        try:
            extra = ring.segment.ndarray(_EXTRA_DTYPE, (1,), _EXTRA_OFFSET)
            extra["first_index"] = first_index
            extra["nm_per_px"] = nm_per_px
            ring._header["write_count"] = first_index
            extra["magic"] = _TRACK_MAGIC  # last: attachers see a complete header
            del extra
            return cls(ring.segment)
        except BaseException:
            ring.unlink()
            ring.close()
            raise

    @classmethod
    def attach(cls, name: str) -> TrackRing:
        """Attach to an existing track ring by name (read only by convention)."""
        return cls(Segment.attach(name))

    @property
    def first_index(self) -> int:
        """Camera frame index of the ring's first entry."""
        return int(self._extra["first_index"][0])

    @property
    def nm_per_px(self) -> float:
        """Pixel size (nm) positions were converted with (NaN if not recorded)."""
        return float(self._extra["nm_per_px"][0])

    def oldest(self) -> int:
        """Oldest frame index still safe to read."""
        return max(super().oldest(), self.first_index)

    # -- writer ---------------------------------------------------------------------------
    def write_frame(
        self, frame_index: int, timestamp: float, rows: np.ndarray, status: FrameStatus
    ) -> None:
        """Append frame ``frame_index`` (must be :attr:`count`): its ``rows`` (n,)
        :data:`TRACK_DTYPE` with n <= ``max_beads``, timestamp (UNIX s) and status."""
        n = int(rows.shape[0])
        if n > self.max_beads:
            raise ValueError(f"{n} bead rows exceed the track ring's max_beads {self.max_beads}")
        index, slot = self.begin_write()
        if index != frame_index:
            raise ValueError(
                f"track ring {self.name!r} expects frame {index} next, got frame {frame_index}"
            )
        slot[:n] = rows
        self.commit(index, timestamp, n, int(status))

    # -- readers --------------------------------------------------------------------------
    def rows_since(self, k: int, max_frames: int | None = None) -> TrackRows:
        """Copy the frames from index ``k`` on (at most ``max_frames``), checked against
        being overwritten while copied. Frames between ``k`` and the first one returned
        that were overwritten are counted in ``lost``; frames not written yet are not.
        """
        k = max(int(k), self.first_index)  # frames before the first were never tracked
        available = self.available_since(k)
        start, stop = available.start, available.stop
        if max_frames is not None:
            stop = min(stop, start + max(0, int(max_frames)))
        n = stop - start
        if n <= 0:
            return self._empty(available.lost, start)
        slots = np.arange(start, stop) % self.capacity
        expected = 2 * np.arange(start, stop, dtype=np.int64) + 2
        seq_before = self._meta["seq"][slots]
        meta = self._meta[slots]  # fancy indexing copies
        rows = self._data[slots]
        seq_after = self._meta["seq"][slots]
        ok = (seq_before == expected) & (seq_after == expected)
        # The writer overwrites the oldest entries first: torn or overwritten ones are a
        # prefix. Keep what follows the last bad one.
        bad = np.flatnonzero(~ok)
        first_good = int(bad[-1]) + 1 if bad.size else 0
        lost = available.lost + first_good
        meta, rows = meta[first_good:], rows[first_good:]
        n_beads = meta["rows"].astype(np.int32)
        width = int(n_beads.max()) if n_beads.size else 0
        rows = np.ascontiguousarray(rows[:, :width])
        if width:
            unused = np.arange(width)[None, :] >= n_beads[:, None]
            rows[unused] = empty_rows(1)[0]
        return TrackRows(
            frame_index=meta["index"].astype(np.int64),
            timestamp=meta["timestamp"].astype(np.float64),
            status=meta["cols"].astype(np.int32),
            n_beads=n_beads,
            rows=rows,
            lost=lost,
            next_index=stop,
        )

    def latest(self) -> TrackRows:
        """The most recent frame (empty if none was written yet)."""
        return self.rows_since(max(self.count - 1, self.first_index))

    def _empty(self, lost: int, next_index: int) -> TrackRows:
        return TrackRows(
            frame_index=np.empty(0, np.int64),
            timestamp=np.empty(0, np.float64),
            status=np.empty(0, np.int32),
            n_beads=np.empty(0, np.int32),
            rows=np.empty((0, 0), TRACK_DTYPE),
            lost=lost,
            next_index=next_index,
        )

    def close(self) -> None:
        self._extra = None  # type: ignore[assignment]
        super().close()
