"""Shared-memory segments, rings and control records: real /dev/shm, real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from magscope_ipc.rings import EntryOverwrittenError, FrameRing, SlotRing
from magscope_ipc.shm import (
    Segment,
    SharedMemoryError,
    SharedRecord,
    find_stale_segments,
    list_segments,
    remove_stale_segments,
    segment_name,
)


@pytest.fixture
def instance(request):
    name = f"test{os.getpid()}{abs(hash(request.node.name)) % 10**6}"
    yield name
    for seg in list_segments(name):
        Segment.attach(seg.name).unlink()


def test_frame_ring_round_trip_and_extent(instance):
    ring = FrameRing.create_frames(segment_name(instance, "frames"), 4, 6, 8, np.uint16)
    reader = FrameRing.attach(ring.name)
    for i in range(3):
        index, slot = ring.begin_write()
        slot[:5, :7] = 1000 + i
        ring.commit_frame(index, 100.0 + i, 5, 7)
    frame, timestamp = reader.read_frame(2)
    assert frame.shape == (5, 7)
    assert frame.dtype == np.uint16
    assert np.all(frame == 1002)
    assert timestamp == 102.0
    assert reader.available_since(0) == reader.available_since(0)
    assert list(reader.available_since(1)) == [1, 2]
    ring.unlink()


def test_reader_that_falls_behind_is_told_how_many_it_lost(instance):
    ring = SlotRing.create(segment_name(instance, "ring"), 4, (3,), np.float64)
    for i in range(10):
        ring.write(np.full(3, float(i)), float(i))
    avail = ring.available_since(2)
    # capacity 4: the slot the writer fills next is unsafe, so 3 entries (7, 8, 9) remain
    assert (avail.start, avail.stop, avail.lost) == (7, 10, 5)
    with pytest.raises(EntryOverwrittenError, match="overwritten"):
        ring.read(3)
    with pytest.raises(EntryOverwrittenError, match="not written yet"):
        ring.read(10)
    values, ts = ring.read(9)
    assert np.all(values == 9.0) and ts == 9.0
    ring.unlink()


def test_torn_read_is_detected(instance):
    ring = SlotRing.create(segment_name(instance, "ring"), 2, (4,), np.int64)
    ring.write(np.arange(4), 1.0)
    view = ring.view(0)
    assert ring.is_valid(0)
    # the writer comes round and claims the same slot while the reader still holds a view
    ring.write(np.arange(4) + 10, 2.0)
    index, _ = ring.begin_write()
    assert index == 2
    assert not ring.is_valid(0)
    assert view[0] in (0, 10)  # whatever the view shows, the reader knows it is stale
    ring.unlink()


def test_structured_dtype_survives_attach(instance):
    dtype = np.dtype([("bead_id", "<i4"), ("xyz_nm", "<f8", (3,))])
    ring = SlotRing.create(segment_name(instance, "tracks"), 8, (5,), dtype)
    other = SlotRing.attach(ring.name)
    assert other.dtype == dtype
    assert other.slot_shape == (5,)
    ring.unlink()


def test_shared_record_fields_and_limits(instance):
    dtype = np.dtype([("exposure_s", "<f8"), ("path", "S16"), ("count", "<i8")])
    rec = SharedRecord.create(segment_name(instance, "ctl"), dtype)
    other = SharedRecord.attach(rec.name)
    rec["exposure_s"] = 0.004
    rec["path"] = "/tmp/a.h5"
    assert other["exposure_s"] == 0.004
    assert other["path"] == "/tmp/a.h5"
    assert rec.increment("count", 3) == 3 and other["count"] == 3
    with pytest.raises(ValueError, match="at most 16 bytes"):
        rec["path"] = "x" * 17
    rec.unlink()


def test_attach_to_missing_segment_is_a_clear_error():
    with pytest.raises(SharedMemoryError, match="does not exist"):
        Segment.attach("magscope.nothing.1-1.here")


def test_bad_names_and_sizes_are_refused():
    with pytest.raises(ValueError, match="instance"):
        segment_name("has space", "frames")
    with pytest.raises(ValueError, match="positive"):
        Segment.create("magscope.x.1-1.y", 0)
    with pytest.raises(ValueError, match="capacity"):
        SlotRing.create("magscope.x.1-1.y", 1, (3,), np.uint8)


@pytest.mark.system
def test_segments_of_a_killed_process_are_found_and_removed(instance):
    code = textwrap.dedent(
        f"""
        import time, numpy as np
        from magscope_ipc.rings import FrameRing
        from magscope_ipc.shm import segment_name
        ring = FrameRing.create_frames(segment_name({instance!r}, "frames"), 4, 8, 8, np.uint8)
        print(ring.name, flush=True)
        time.sleep(60)
        """
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        name = child.stdout.readline().strip()
        assert name.startswith(f"magscope.{instance}.{child.pid}-")
        assert [s.name for s in list_segments(instance)] == [name]
        assert find_stale_segments(instance) == []  # owner alive: not stale
        os.kill(child.pid, signal.SIGKILL)
        child.wait(10)
    finally:
        child.kill()
    deadline = time.monotonic() + 5
    while not find_stale_segments(instance) and time.monotonic() < deadline:
        time.sleep(0.05)
    stale = find_stale_segments(instance)
    assert [s.name for s in stale] == [name]
    removed = remove_stale_segments(instance)
    assert [s.name for s in removed] == [name]
    assert list_segments(instance) == []
