"""Finding and summarising runs in a Tiled served inside the test process (fast tier).

Runs are written by the RunEngine through bluesky's TiledWriter into the embedded
server's own catalog configuration (SQLite catalog and table store), served in-process:
the queries are the point here, not the server process (tests/test_runs.py covers the
real server with tracked beads).
"""

from __future__ import annotations

import time

import bluesky.plans as bp
import pytest
from bluesky import RunEngine
from bluesky_tiled_plugins import TiledWriter
from ophyd_async.core import init_devices

from magscope_devices.motors import MagnetZ
from magscope_session.runs import find_runs, run_summary


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
    for md in mds:
        times.append(time.time())
        (uid,) = RE(bp.count([magnet_z], num=2, md=md))
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


def test_time_bounds_are_inclusive(written):
    client, uids, times = written
    assert uids_of(find_runs(client, since=times[2])) == [uids[3], uids[2]]
    assert uids_of(find_runs(client, until=times[2])) == [uids[1], uids[0]]
    with pytest.raises(ValueError, match="before since"):
        find_runs(client, since=times[2], until=times[1])
    with pytest.raises(ValueError, match="YYYY-MM-DD"):
        find_runs(client, since="last tuesday")


def test_summary_of_a_run(written):
    client, uids, _ = written
    summary = run_summary(client[uids[2]])
    assert summary["uid"] == uids[2]
    assert summary["sample"] == "hairpin" and summary["operator"] == "ana"
    assert summary["bead_ids"] == [3, 4]  # from zlut_bead_ids
    assert summary["exit_status"] == "success"
    assert summary["num_events"] == {"primary": 2}
    assert summary["streams"] == ["primary"]
