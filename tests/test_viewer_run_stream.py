"""Run context from the document stream: the pure model fed by documents of a real
RunEngine (fast), and the run panel subscribed to a real 0MQ proxy process (system)."""

from __future__ import annotations

import os
import time

import bluesky.plan_stubs as bps
import bluesky.plans as bp
import bluesky.preprocessors as bpp
import numpy as np
import pytest
from ophyd_async.core import Array1D, StandardReadable, init_devices, soft_signal_rw

from magscope_viewer._run_stream import RunContext, format_value, normalize_address
from process_helpers import free_port


class Det(StandardReadable):
    """A soft detector: a number and a per-bead array."""

    def __init__(self, name: str = "") -> None:
        with self.add_children_as_readables():
            self.value = soft_signal_rw(float, initial_value=1.5, units="nm")
            self.per_bead = soft_signal_rw(Array1D[np.float64], units="pN")
        super().__init__(name=name)


@pytest.fixture
def det(RE):
    with init_devices():
        d = Det(name="det")
    RE(bps.mv(d.per_bead, np.array([1.0, 2.0, 3.0, 4.0, 5.0])))
    return d


def documents(RE, plan) -> list[tuple[str, dict]]:
    docs: list[tuple[str, dict]] = []
    token = RE.subscribe(lambda name, doc: docs.append((name, doc)))
    try:
        RE(plan)
    except Exception:
        pass
    finally:
        RE.unsubscribe(token)
    return docs


def test_a_count_reports_plan_progress_results_and_success(RE, det):
    docs = documents(RE, bp.count([det], num=5, md={"sample": "lambda"}))
    ctx = RunContext()
    assert ctx.state == "idle" and ctx.status_text() == "idle" and ctx.progress is None
    seen = []
    for name, doc in docs:
        ctx.update(name, doc)
        if name == "event":
            seen.append(ctx.progress)
        if name == "start":
            assert ctx.running and ctx.plan_name == "count" and ctx.progress == 0.0
            assert ctx.status_text() == "count running"
    assert seen == [0.2, 0.4, 0.6, 0.8, 1.0]
    start = docs[0][1]
    assert ctx.uid == start["uid"] and ctx.scan_id == start["scan_id"]
    assert ctx.sample == "lambda" and ctx.started_at == start["time"]
    assert ctx.state == "finished" and ctx.exit_status == "success"
    assert ctx.status_text() == "count finished: success"
    assert ctx.events == {"primary": 5} and ctx.progress == 1.0 and ctx.remaining_s() == 0.0
    assert ctx.elapsed_s() == pytest.approx(docs[-1][1]["time"] - start["time"])
    (result,) = ctx.results.values()
    assert result.seq_num == 5 and result.values["det-value"] == 1.5
    np.testing.assert_array_equal(result.values["det-per_bead"], [1, 2, 3, 4, 5])
    rows = dict(((s, f), v) for s, f, v in ctx.result_rows())
    assert rows[("primary", "det-value")] == "1.5"
    assert rows[("primary", "det-per_bead")] == "[1, 2, 3, 4, ... (5)]"


def test_remaining_time_from_progress(RE, det):
    docs = documents(RE, bp.count([det], num=4))
    ctx = RunContext()
    for name, doc in docs:
        ctx.update(name, doc)
        if name == "event" and doc["seq_num"] == 1:
            break
    t0 = ctx.started_at
    assert ctx.progress == 0.25
    assert ctx.elapsed_s(now=t0 + 2.0) == pytest.approx(2.0)
    assert ctx.remaining_s(now=t0 + 2.0) == pytest.approx(6.0)  # 1/4 done in 2 s


def test_results_as_they_come_newest_stream_first(RE, det):
    @bpp.run_decorator(md={"plan_name": "force_calibration"})
    def plan():
        for height in (4.0, 2.0):
            yield from bps.mv(det.value, height)
            yield from bps.trigger_and_read([det], name="calibration")
        yield from bps.mv(det.value, 80.0)
        yield from bps.trigger_and_read([det.value], name="force_fit")

    docs = documents(RE, plan())
    ctx = RunContext()
    for name, doc in docs:
        ctx.update(name, doc)
        if name == "event" and ctx.results["calibration"].seq_num == 1:
            assert ctx.results["calibration"].values["det-value"] == 4.0
    assert ctx.events == {"calibration": 2, "force_fit": 1}
    assert ctx.progress is None  # no num_points: no fraction, only counts
    assert ctx.result_rows()[0] == ("force_fit", "det-value", "80")
    assert ctx.results["calibration"].values["det-value"] == 2.0


def test_joined_late_shows_what_it_can(RE, det):
    docs = documents(RE, bp.count([det], num=3))
    ctx = RunContext()
    descriptor_seen = [i for i, (n, _) in enumerate(docs) if n == "descriptor"][0]
    for name, doc in docs[descriptor_seen + 1:]:  # start and descriptor missed
        ctx.update(name, doc)
        if name == "event":
            assert ctx.running and ctx.joined_late
            assert ctx.status_text() == "run in progress (joined late)"
            assert ctx.progress is None
    assert ctx.state == "finished" and ctx.exit_status == "success"
    assert ctx.uid == docs[0][1]["uid"]  # from the stop document's run_start
    ctx = RunContext()
    for name, doc in docs[1:]:  # only the start missed: the descriptor names the run
        ctx.update(name, doc)
        if name == "descriptor":
            assert ctx.uid == docs[0][1]["uid"] and ctx.joined_late
    assert ctx.events["primary"] == 3


def test_progress_counts_the_stream_the_start_document_names(RE, det):
    @bpp.run_decorator(md={"plan_name": "steps", "num_points": 4, "progress_stream": "extension"})
    def steps():
        for k in range(4):
            yield from bps.trigger_and_read([det], name="extension")
            yield from bps.trigger_and_read([det])  # primary events do not count here
            if k == 1:
                seen.append(ctx.progress)

    ctx = RunContext()
    seen: list[float | None] = []
    token = RE.subscribe(ctx.update)
    try:
        RE(steps())
    finally:
        RE.unsubscribe(token)
    assert seen == [0.5] and ctx.progress == 1.0 and ctx.events["primary"] == 4


def test_failed_and_aborted_runs_say_why(RE, det):
    @bpp.run_decorator(md={"plan_name": "broken"})
    def broken():
        yield from bps.trigger_and_read([det])
        raise RuntimeError("the magnet stalled")

    ctx = RunContext()
    for name, doc in documents(RE, broken()):
        ctx.update(name, doc)
    assert ctx.state == "finished" and ctx.exit_status == "fail"
    assert "the magnet stalled" in ctx.status_text() and ctx.status_text().startswith("broken")
    # a new start resets everything
    for name, doc in documents(RE, bp.count([det], num=1)):
        ctx.update(name, doc)
    assert ctx.plan_name == "count" and ctx.exit_status == "success" and ctx.reason == ""


def test_helpers():
    assert normalize_address("127.0.0.1:5578") == "tcp://127.0.0.1:5578"
    assert normalize_address("tcp://localhost:1") == "tcp://localhost:1"
    with pytest.raises(ValueError):
        normalize_address("5578")
    assert format_value(3) == "3" and format_value(1 / 3) == "0.3333"
    assert format_value(np.arange(2)) == "[0, 1]" and format_value("x" * 50).endswith("...")


# --------------------------------------------------------------------------- system
@pytest.fixture
def proxy(tmp_path):
    from magscope_session._services import start_proxy

    in_addr, out_addr = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    proc = start_proxy(in_addr, out_addr, log=tmp_path / "proxy.log")
    yield in_addr, out_addr
    proc.stop()


@pytest.mark.system
def test_the_panel_follows_a_plan_through_a_real_proxy(qtbot, proxy, RE, det, tmp_path):
    from bluesky.callbacks.zmq import Publisher

    from magscope_viewer._run_panel import RunPanel

    in_addr, out_addr = proxy
    panel = RunPanel()
    qtbot.addWidget(panel)
    panel.resize(460, 420)
    panel.show()
    panel.start_stream(f"tcp://{out_addr}")
    publisher = Publisher(in_addr)
    RE.subscribe(publisher)
    # 0MQ drops what a PUB sends before the SUB's subscription reached it: publish
    # until the panel receives something (documents of a warm-up run)
    deadline = time.monotonic() + 10
    while panel.subscriber.received == 0 and time.monotonic() < deadline:
        RE(bp.count([det], num=1, md={"plan_name": "warm_up"}))
        qtbot.wait(100)
    qtbot.waitUntil(lambda: panel.context.exit_status == "success", timeout=5000)

    states: list[tuple[str | None, float | None]] = []
    shot_dir = os.environ.get("MAGSCOPE_SCREENSHOT_DIR")  # keep a mid-run screenshot here

    def changed():
        states.append((panel.plan_running(), panel.context.progress))
        if shot_dir and panel.context.progress == 0.5:
            panel.grab().save(os.path.join(shot_dir, "viewer-run-panel.png"))

    panel.changed.connect(changed)

    @bpp.run_decorator(md={"plan_name": "focus_scan", "num_points": 6, "sample": "hairpin"})
    def focus_scan():
        for k in range(6):
            yield from bps.mv(det.value, 100.0 * k)
            yield from bps.trigger_and_read([det])
            yield from bps.sleep(0.1)

    RE(focus_scan())
    qtbot.waitUntil(lambda: panel.context.state == "finished"
                    and panel.context.plan_name == "focus_scan", timeout=10000)
    assert ("focus_scan", 0.5) in states  # seen running, half way
    assert panel.plan_running() is None
    assert panel.plan_label.text() == "focus_scan"
    assert panel.progress.value() == 1000 and panel.progress.text().startswith("100 %")
    assert panel.state_label.text() == "focus_scan finished: success"
    table = {
        panel.results.item(r, 1).text(): panel.results.item(r, 2).text()
        for r in range(panel.results.rowCount())
    }
    assert table["det-value"] == "500" and table["det-per_bead"] == "[1, 2, 3, 4, ... (5)]"
    path = tmp_path / "run-panel.png"
    assert panel.grab().save(str(path))
    print(f"screenshot: {path}")
    panel.stop_stream()
    publisher.close()
