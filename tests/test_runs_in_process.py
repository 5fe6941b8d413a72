"""Finding and summarising runs in a Tiled served inside the test process (fast tier).

Runs are written by the RunEngine through bluesky's TiledWriter into the embedded
server's own catalog configuration (SQLite catalog and table store), served in-process:
the queries are the point here, not the server process (tests/test_runs.py covers the
real server with tracked beads).
"""

from __future__ import annotations

import datetime as dt
import time

import bluesky.plans as bp
import numpy as np
import pytest
from bluesky import RunEngine
from bluesky_tiled_plugins import TiledWriter
from ophyd_async.core import init_devices

from magscope_devices import MagnetZ
from magscope_session.runs import find_runs, last, run_summary


@pytest.fixture(scope="module")
def written(tiled_in_process):
    """Four runs: two samples, two operators, bead ids on three, spaced in time."""
    RE = RunEngine({})
    with init_devices():
        magnet_z = MagnetZ(initial=8.0, velocity=50.0)
    RE.subscribe(TiledWriter(tiled_in_process))
    mds = [
        {"sample": "lambda-dna", "operator": "ana", "bead_ids": [1, 2]},
        {"sample": "lambda-dna", "operator": "ben", "bead_ids": [2, 3]},
        {"sample": "hairpin", "operator": "ana", "zlut_bead_ids": [3, 4]},
        {"sample": "hairpin", "operator": "ben"},
    ]
    uids, times = [], []
    for i, md in enumerate(mds):
        times.append(time.time())
        plan = bp.count([magnet_z], num=2, md=md) if i != 1 else bp.scan([], magnet_z, 8, 9, 2, md=md)
        (uid,) = RE(plan)
        uids.append(uid)
        time.sleep(0.05)  # distinct start times, for the ordering and the time bounds
    return tiled_in_process, uids, times


def uids_of(runs) -> list[str]:
    return [run.metadata["start"]["uid"] for run in runs]


def test_filters_are_exact_and_newest_first(written):
    client, uids, _ = written
    assert uids_of(find_runs(client)) == uids[::-1]
    assert uids_of(find_runs(client, sample="lambda-dna")) == [uids[1], uids[0]]
    assert uids_of(find_runs(client, sample="lambda-dna", operator="ana")) == [uids[0]]
    assert uids_of(find_runs(client, sample="lambda")) == []  # exact, not a substring
    assert uids_of(find_runs(client, limit=2)) == [uids[3], uids[2]]


def test_bead_filter_looks_in_bead_ids_and_zlut_bead_ids(written):
    client, uids, _ = written
    assert uids_of(find_runs(client, bead_id=2)) == [uids[1], uids[0]]
    assert uids_of(find_runs(client, bead_id=3)) == [uids[2], uids[1]]
    assert uids_of(find_runs(client, bead_id=99)) == []
    with pytest.raises(TypeError, match="integer"):
        find_runs(client, bead_id="2")


def test_plan_name_is_the_start_document_key(written):
    client, uids, _ = written
    assert uids_of(find_runs(client, plan_name="scan")) == [uids[1]]
    assert uids_of(find_runs(client, plan_name="count", operator="ana")) == [uids[2], uids[0]]
    with pytest.raises(TypeError, match="plan"):
        find_runs(client, plan="scan")  # the old keyword is gone


def test_time_bounds_are_inclusive(written):
    client, uids, times = written
    assert uids_of(find_runs(client, since=times[2])) == [uids[3], uids[2]]
    assert uids_of(find_runs(client, until=times[2])) == [uids[1], uids[0]]
    with pytest.raises(ValueError, match="before since"):
        find_runs(client, since=times[2], until=times[1])
    with pytest.raises(ValueError, match="YYYY-MM-DD"):
        find_runs(client, since="last tuesday")


def test_time_range_forms(written):
    """UNIX times, datetimes and date strings, through databroker's TimeRange query."""
    client, uids, times = written
    start = [client[uid].metadata["start"]["time"] for uid in uids]
    # inclusive at both ends, also for a run's exact start time
    assert uids_of(find_runs(client, since=start[1], until=start[2])) == [uids[2], uids[1]]
    as_datetime = dt.datetime.fromtimestamp(times[1])
    assert uids_of(find_runs(client, since=as_datetime)) == uids[:0:-1]
    assert uids_of(find_runs(client, until=as_datetime)) == [uids[0]]
    iso = dt.datetime.fromtimestamp(times[3]).isoformat(timespec="microseconds")
    assert uids_of(find_runs(client, since=iso)) == [uids[3]]
    # a date as `until` includes that whole day; the day before holds none of them
    today = dt.date.fromtimestamp(start[0])
    last_day = dt.date.fromtimestamp(start[3])  # the same day unless run across midnight
    assert uids_of(find_runs(client, since=today.isoformat(), until=last_day)) == uids[::-1]
    assert find_runs(client, until=(today - dt.timedelta(days=1)).isoformat()) == []
    assert uids_of(find_runs(client, sample="hairpin", since=today)) == [uids[3], uids[2]]
    with pytest.raises(TypeError, match="bool"):
        find_runs(client, since=True)
    with pytest.raises(ValueError, match="finite"):
        find_runs(client, until=float("nan"))


def test_the_catalog_is_databrokers_catalog_of_runs(written):
    from bluesky_tiled_plugins import CatalogOfBlueskyRuns
    from databroker.queries import TimeRange

    client, uids, times = written
    assert isinstance(client, CatalogOfBlueskyRuns)
    found = client.search(TimeRange(since=times[2]))
    assert sorted(found) == sorted(uids[2:])
    assert client[-1].metadata["start"]["uid"] == uids[3]


def test_last_gives_the_newest_runs(written):
    client, uids, _ = written
    assert last(client).metadata["start"]["uid"] == uids[3]
    assert uids_of(last(client, 2)) == [uids[3], uids[2]]
    assert uids_of(last(client, 10)) == uids[::-1]
    with pytest.raises(ValueError, match=">= 1"):
        last(client, 0)


def test_summary_of_a_run(written):
    client, uids, _ = written
    summary = run_summary(client[uids[2]])
    assert summary["uid"] == uids[2]
    assert summary["sample"] == "hairpin" and summary["operator"] == "ana"
    # the start document's bead_ids, else the bead layouts of its streams: none here
    # (zlut_bead_ids are the beads of a Z-LUT, not beads the run measured)
    assert summary["bead_ids"] == []
    assert summary["exit_status"] == "success"
    assert summary["num_events"] == {"primary": 2}
    assert summary["streams"] == ["primary"]


def test_event_series_gives_the_newest_reading_at_each_time(written):
    from magscope_session._run_export import event_series

    client, uids, _ = written
    scan = client[uids[1]]  # scan of magnet_z 8 -> 9 mm, 2 points
    series = event_series(scan, "-magnet_z")
    assert series is not None and series.name == "magnet_z"
    np.testing.assert_allclose(series.value, [8.0, 9.0])
    t = series.time
    assert t[0] < t[1]
    got = series.at(np.array([t[0] - 1.0, t[0], (t[0] + t[1]) / 2, t[1] + 5.0]))
    np.testing.assert_allclose(got, [np.nan, 8.0, 8.0, 9.0])
    assert event_series(scan, "-force") is None
