"""TrackRecorder.record_whole: a record with too many dropped frames is recorded again."""

from __future__ import annotations

import logging

import numpy as np

from magscope_plans import TrackRecorder
from magscope_plans._recording import dropped_fraction


def _tracks(n_frames: int, dropped: int) -> dict[str, np.ndarray]:
    x = np.ones((n_frames, 3))
    x[:dropped] = np.nan  # a dropped frame: every bead NaN
    x[-1, 0] = np.nan  # one bead lost in one frame is not a dropped frame
    return {"frame_index": np.arange(n_frames), "x_nm": x}


class _Scripted(TrackRecorder):
    """Returns the given records in turn instead of recording (no messages)."""

    def __init__(self, records):
        self.records = list(records)
        self.asked: list[int] = []
        self.tracker = type("T", (), {"name": "tracker"})()

    def record(self, n_frames):
        self.asked.append(n_frames)
        return self.records.pop(0)
        yield  # a generator, like the real record


def _run(gen):
    try:
        while True:
            next(gen)
    except StopIteration as stop:
        return stop.value


def test_dropped_fraction_counts_frames_where_every_bead_is_nan():
    assert dropped_fraction(_tracks(200, 3)) == 3 / 200
    assert dropped_fraction({"x_nm": np.zeros((0, 2))}) == 0.0


def test_a_clean_record_is_taken_at_once():
    rec = _Scripted([_tracks(200, 2), _tracks(200, 0)])
    assert dropped_fraction(_run(rec.record_whole(200))) == 2 / 200
    assert rec.asked == [200]


def test_a_broken_record_is_recorded_again_and_the_best_kept(caplog):
    rec = _Scripted([_tracks(200, 20), _tracks(200, 5), _tracks(200, 9)])
    with caplog.at_level(logging.WARNING):
        best = _run(rec.record_whole(200, tries=3))
    assert rec.asked == [200, 200, 200]
    assert dropped_fraction(best) == 5 / 200
    assert "10.0 % of the 200 frames of record 1/3 were dropped (limit 1.0 %): recording again" in caplog.text
    assert "record 3/3 were dropped (limit 1.0 %)" in caplog.text
    assert "record 3/3 were dropped (limit 1.0 %): recording again" not in caplog.text
