"""RunProgress, the live output of long plans, fed event-model documents with a test clock."""

from __future__ import annotations

from event_model import compose_run

from magscope_session import RunProgress


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _progress():
    clock, lines = Clock(), []
    return RunProgress(after_s=3.0, every_s=5.0, out=lines.append, clock=clock), clock, lines


def test_a_scan_prints_its_percentage_and_a_last_line():
    progress, clock, lines = _progress()
    run = compose_run(metadata={"plan_name": "zlut_sweep", "num_points": 10})
    progress("start", run.start_doc)
    desc = run.compose_descriptor(
        name="primary", data_keys={"focus": {"dtype": "number", "shape": [], "source": "sim"}}
    )
    progress("descriptor", desc.descriptor_doc)
    for step in range(10):
        clock.now += 1.0  # one point a second
        progress("event", desc.compose_event(data={"focus": step}, timestamps={"focus": 0.0}))
    progress("stop", run.compose_stop())
    # quiet for the first 3 s, then a line at most every 5 s, then the closing line
    assert lines == [
        "zlut_sweep  3.0 s  primary 3/10 (30 %)",
        "zlut_sweep  8.0 s  primary 8/10 (80 %)",
        "zlut_sweep done (success) in 10.0 s: primary 10/10 (100 %)",
    ]


def test_a_record_counts_the_rows_of_its_full_rate_stream():
    progress, clock, lines = _progress()
    run = compose_run(metadata={"plan_name": "force_calibration"})
    progress("start", run.start_doc)
    tracks = run.compose_descriptor(
        name="tracks",
        data_keys={"x": {"dtype": "array", "shape": [10], "source": "file", "external": "STREAM:"}},
    )
    progress("descriptor", tracks.descriptor_doc)
    for chunk in range(12):
        clock.now += 1.0
        progress("stream_datum", {"descriptor": tracks.descriptor_doc["uid"],
                                  "indices": {"start": 100 * chunk, "stop": 100 * (chunk + 1)}})
    calibration = run.compose_descriptor(
        name="calibration", data_keys={"f": {"dtype": "number", "shape": [], "source": "fit"}}
    )
    progress("descriptor", calibration.descriptor_doc)
    progress("event", calibration.compose_event(data={"f": 1.0}, timestamps={"f": 0.0}))
    progress("stop", run.compose_stop(exit_status="abort", reason="user pressed Ctrl-C"))
    assert lines == [
        "force_calibration  3.0 s  tracks 300 rows",
        "force_calibration  8.0 s  tracks 800 rows",
        "force_calibration done (abort: user pressed Ctrl-C) in 12.0 s: "
        "tracks 1,200 rows, calibration 1 event",
    ]


def test_a_short_run_prints_nothing_and_documents_outside_a_run_are_ignored():
    progress, clock, lines = _progress()
    progress("event", {"descriptor": "nowhere", "seq_num": 1})  # before any start
    run = compose_run(metadata={"plan_name": "count"})
    progress("start", run.start_doc)
    desc = run.compose_descriptor(
        name="primary", data_keys={"x": {"dtype": "number", "shape": [], "source": "sim"}}
    )
    progress("descriptor", desc.descriptor_doc)
    clock.now += 0.5
    progress("event", desc.compose_event(data={"x": 1}, timestamps={"x": 0.0}))
    progress("stop", run.compose_stop())
    assert lines == []
    # a second run starts from zero
    run = compose_run(metadata={"plan_name": "focus_scan", "num_points": True})  # not a count
    progress("start", run.start_doc)
    desc = run.compose_descriptor(
        name="primary", data_keys={"x": {"dtype": "number", "shape": [], "source": "sim"}}
    )
    progress("descriptor", desc.descriptor_doc)
    clock.now += 4.0
    progress("event_page", {"descriptor": desc.descriptor_doc["uid"], "seq_num": [1, 2]})
    assert lines == ["focus_scan  4.0 s  primary 2 events"]
