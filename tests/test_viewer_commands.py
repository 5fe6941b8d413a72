"""Bead editing from the viewer, end to end: a real simulated microscope (camera process,
tracking worker) of its own instance, the command endpoint an IPython session starts
(the function the profile calls), and a ViewerWindow offscreen. A click, a drag and a
right-click on the image go through the command channel to the plan stubs; the tracker's
ROI table (``microscope.tracker.rois``) is what the tests read back."""

from __future__ import annotations

import threading
import time

import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp
import numpy as np
import pytest
import pytestqt.exceptions
from bluesky import RunEngine
from bluesky.utils import DuringTask
from ophyd_async.core import init_devices
from PyQt5 import QtCore, QtGui, QtWidgets
from PyQt5.QtTest import QTest

from magscope_devices import make_simulated_microscope
from magscope_devices.sim.world import SimParams
from magscope_ipc.shm import list_segments
from magscope_session._command_server import start_command_server
from magscope_session._viewer_commands import discovery_path
from magscope_viewer import CommandClient, LiveSource, ViewerWindow
from tracking_sim import true_rois, truth_now

pytestmark = pytest.mark.system

INSTANCE = "viewer-cmd"
NM_PER_PX = 100.0
ROI = 64
LEFT, RIGHT = QtCore.Qt.MouseButton.LeftButton, QtCore.Qt.MouseButton.RightButton


@pytest.fixture(scope="module")
def RE():
    # the tests run a long plan from a thread: no SIGINT handler, no Qt during the wait
    return RunEngine(call_returns_result=True, context_managers=[], during_task=DuringTask())


@pytest.fixture(scope="module")
def mic(RE, tmp_path_factory):
    with init_devices():
        scope = make_simulated_microscope(
            SimParams(seed=21), data_dir=tmp_path_factory.mktemp("cmd"), instance=INSTANCE,
            tracking_workers=1, name="microscope",
        )
    RE(bps.mv(scope.magnet_z, 2.0))
    yield scope
    scope.close()
    assert list_segments(INSTANCE) == []


@pytest.fixture(scope="module")
def server(RE, mic):
    srv = start_command_server(RE, mic, INSTANCE)
    path = discovery_path(INSTANCE)
    assert path.exists() and (path.stat().st_mode & 0o777) == 0o600
    yield srv
    srv.close()
    assert not path.exists()


@pytest.fixture(scope="module")
def window(server, qapp):
    win = ViewerWindow(LiveSource(INSTANCE), refresh_hz=0)
    win.resize(1400, 900)
    win.show()
    yield win
    win.close()


def _rois(RE, mic) -> dict[int, tuple[int, int]]:
    table = RE(bps.rd(mic.tracker.rois)).plan_result
    return {int(b): (int(x), int(y)) for b, x, y in zip(table.bead_id, table.x0_px, table.y0_px, strict=True)}


def _set_rois(RE, mic, ids):
    RE(bps.mv(mic.tracker.rois, true_rois(truth_now(mic), ids, roi=ROI, nm_per_px=NM_PER_PX)))


def _show(qtbot, win, RE, mic):
    """Refresh until the viewer shows the tracker's current ROI table."""
    want = sorted(_rois(RE, mic))
    end = time.monotonic() + 20
    while time.monotonic() < end:
        win.refresh()
        qtbot.wait(20)
        table = win.camera.roi_table
        if win.camera.sensor_rect is not None and table is not None and sorted(table.ids.tolist()) == want:
            return
    raise AssertionError(f"the viewer did not show ROIs {want}: {win.status.text()}")


def _reply(qtbot, win, before: int):
    try:
        qtbot.waitUntil(lambda: win.commands.replies > before, timeout=10_000)
    except pytestqt.exceptions.TimeoutError as err:  # say what the window showed: sent, refused locally, none
        raise AssertionError(
            f"no reply in 10 s; busy={win.commands.busy}, reply line "
            f"{win.commands.label.text()!r}, status {win.status.text()!r}"
        ) from err
    return win.commands.last_reply


def _settle(qtbot, win) -> None:
    """Wait until the camera view's layout stops changing: a refresh sets labels, axes and
    docks whose layout Qt finishes in posted events, and a point mapped before that lands
    elsewhere after (a busy machine takes longer; CI once dragged 11 px short)."""
    vb = win.camera.plot.vb

    def layout():
        rect = vb.sceneBoundingRect()
        return (rect.x(), rect.y(), rect.width(), rect.height(), str(vb.viewRange()), win.camera.size())

    last, same, end = None, 0, time.monotonic() + 10
    while time.monotonic() < end:
        qtbot.wait(50)
        now = layout()
        same = same + 1 if now == last else 0
        if same >= 3:
            return
        last = now
    raise AssertionError(f"the camera view's layout kept changing for 10 s: {last}")


def _view_pos(win, point: QtCore.QPoint) -> tuple[float, float]:
    """Sensor px under widget pixel ``point`` of the camera view."""
    cam = win.camera
    p = cam.plot.vb.mapSceneToView(cam.mapToScene(point))
    return p.x(), p.y()


def _move(widget, point: QtCore.QPoint, buttons) -> None:
    # QTest.mouseMove carries no buttons in Qt 5: send the event itself
    event = QtGui.QMouseEvent(
        QtCore.QEvent.Type.MouseMove, QtCore.QPointF(point), QtCore.Qt.MouseButton.NoButton,
        buttons, QtCore.Qt.KeyboardModifier.NoModifier,
    )
    QtWidgets.QApplication.sendEvent(widget, event)


def test_click_adds_drag_moves_right_click_removes(qtbot, RE, mic, window):
    _set_rois(RE, mic, [0, 1, 2])
    _show(qtbot, window, RE, mic)
    cam = window.camera
    truth = truth_now(mic)
    _settle(qtbot, window)
    point = cam.scene_point(truth["x_nm"][8] / NM_PER_PX, truth["y_nm"][8] / NM_PER_PX)
    x, y = _view_pos(window, point)

    # click on bead 8: a new bead (id 3) centred on the clicked pixel
    n = window.commands.replies
    QTest.mouseClick(cam.viewport(), LEFT, QtCore.Qt.KeyboardModifier.NoModifier, point)
    reply = _reply(qtbot, window, n)
    assert reply.ok, reply.message
    assert window.commands.label.text() == reply.message == f"added bead 3 at ({x:.1f}, {y:.1f}) px"
    rois = _rois(RE, mic)
    assert sorted(rois) == [0, 1, 2, 3]
    assert rois[3] == (int(np.rint(x)) - ROI // 2, int(np.rint(y)) - ROI // 2)
    _show(qtbot, window, RE, mic)

    # drag its box by about (+25, +15) px: the ROI moves by as much, the bead keeps its id
    _settle(qtbot, window)
    point = cam.scene_point(x, y)
    end = cam.scene_point(x + 25, y + 15)
    x, y = _view_pos(window, point)
    ex, ey = _view_pos(window, end)
    n = window.commands.replies
    QTest.mousePress(cam.viewport(), LEFT, QtCore.Qt.KeyboardModifier.NoModifier, point)
    for f in (0.2, 0.5, 0.8, 1.0):
        step = QtCore.QPoint(
            point.x() + round(f * (end.x() - point.x())), point.y() + round(f * (end.y() - point.y()))
        )
        qtbot.wait(25)  # pyqtgraph drops mouse moves closer than 10 ms (mouseRateLimit)
        _move(cam.viewport(), step, LEFT)
    assert cam.plot.vb._preview.isVisible(), "the drag did not start: no preview box"
    assert (_view_pos(window, point), _view_pos(window, end)) == ((x, y), (ex, ey)), "re-laid out"
    QTest.mouseRelease(cam.viewport(), LEFT, QtCore.Qt.KeyboardModifier.NoModifier, end)
    reply = _reply(qtbot, window, n)
    assert reply.ok and reply.message.startswith("moved bead 3 to"), reply.message
    x0, y0 = rois[3]
    moved = _rois(RE, mic)
    assert sorted(moved) == [0, 1, 2, 3]
    assert abs(moved[3][0] - (x0 + (ex - x))) <= 1 and abs(moved[3][1] - (y0 + (ey - y))) <= 1
    assert moved[3] != rois[3]
    assert all(moved[b] == rois[b] for b in (0, 1, 2))
    _show(qtbot, window, RE, mic)

    # right-click inside bead 1's box removes bead 1 only
    _settle(qtbot, window)
    ox, oy = moved[1]
    inside = cam.scene_point(ox + 10, oy + 10)
    n = window.commands.replies
    QTest.mouseClick(cam.viewport(), RIGHT, QtCore.Qt.KeyboardModifier.NoModifier, inside)
    reply = _reply(qtbot, window, n)
    assert reply.ok and reply.message == "removed bead 1", reply.message
    after = _rois(RE, mic)
    assert sorted(after) == [0, 2, 3] and after[3] == moved[3]
    _show(qtbot, window, RE, mic)
    assert sorted(window.camera.roi_table.ids.tolist()) == [0, 2, 3]


def test_auto_select_button_tracks_the_beads_found(qtbot, RE, mic, window):
    _set_rois(RE, mic, [0])
    n = window.commands.replies
    window.commands.auto_button.click()
    reply = _reply(qtbot, window, n)
    assert reply.ok, reply.message
    found = len(reply.result)
    assert reply.message == f"auto-selected {found} beads"
    assert found >= len(truth_now(mic)) - 2
    assert len(_rois(RE, mic)) == found


def test_the_video_mode_is_set_from_the_toolbar(qtbot, RE, mic, window):
    combo = window.commands.video_mode
    assert combo.isVisible() or not window.isVisible()
    n = window.commands.replies
    combo.setCurrentIndex(combo.findText("frames_every_n"))
    combo.activated.emit(combo.currentIndex())  # what a user's choice emits
    reply = _reply(qtbot, window, n)
    assert (reply.ok, reply.message) == (True, "video mode frames_every_n"), reply.message
    assert RE(bps.rd(mic.video.mode)).plan_result == "frames_every_n"
    n = window.commands.replies
    combo.setCurrentIndex(combo.findText("tracks"))
    combo.activated.emit(combo.currentIndex())
    assert _reply(qtbot, window, n).message == "video mode tracks"
    assert RE(bps.rd(mic.video.mode)).plan_result == "tracks"


def test_the_lock_toggles_turn_the_locks_on_and_off(qtbot, RE, mic, window):
    panel = window.axes_panel
    window.show_panel("axes")

    def shown():
        window.refresh()
        window.refresh_panels(everything=True)
        return panel.lock_toggles["XY lock"].isEnabled()

    qtbot.waitUntil(shown, timeout=10_000)  # the owner publishes its locks' state
    assert panel.lock_states["XY lock"].text().startswith("off")
    n = window.commands.replies
    panel.lock_toggles["XY lock"].click()
    reply = _reply(qtbot, window, n)
    assert (reply.ok, reply.message) == (True, "XY lock on")
    assert RE(bps.rd(mic.xy_lock.enabled)).plan_result is True

    def state_text():
        window.refresh_panels(everything=True)
        return panel.lock_states["XY lock"].text()

    qtbot.waitUntil(lambda: not state_text().startswith("off"), timeout=10_000)
    n = window.commands.replies
    panel.lock_toggles["XY lock"].click()
    assert _reply(qtbot, window, n).message == "XY lock off"
    assert RE(bps.rd(mic.xy_lock.enabled)).plan_result is False
    # the focus lock needs reference beads: refused, and the toggle shows the truth again
    RE(bps.mv(mic.tracker.reference_beads, np.zeros(0, np.int32)))
    n = window.commands.replies
    panel.lock_toggles["Z lock"].click()
    reply = _reply(qtbot, window, n)
    assert not reply.ok and "no reference beads" in reply.message, reply.message
    qtbot.waitUntil(lambda: (window.refresh_panels(everything=True), True)[1]
                    and not panel.lock_toggles["Z lock"].isChecked(), timeout=5_000)


def test_a_command_while_a_plan_runs_is_refused_and_changes_nothing(qtbot, RE, mic, window):
    _set_rois(RE, mic, [0, 1])
    _show(qtbot, window, RE, mic)
    before = _rois(RE, mic)
    z_before = RE(bps.rd(mic.magnet_z)).plan_result
    plan = bpp.run_wrapper(bps.sleep(3.0), md={"plan_name": "slow_count"})
    runner = threading.Thread(target=RE, args=(plan,))
    runner.start()
    try:
        qtbot.waitUntil(lambda: RE.state == "running", timeout=5_000)
        truth = truth_now(mic)
        point = window.camera.scene_point(truth["x_nm"][8] / NM_PER_PX, truth["y_nm"][8] / NM_PER_PX)
        n = window.commands.replies
        QTest.mouseClick(window.camera.viewport(), LEFT, QtCore.Qt.KeyboardModifier.NoModifier, point)
        reply = _reply(qtbot, window, n)
        assert not reply.ok
        assert reply.message == "refused: a plan is running (slow_count)"
        assert window.commands.label.text() == reply.message  # the status bar says so
        # an axis move likewise
        refused = CommandClient(INSTANCE).send("move_axes", {"magnet_z_mm": 4.0})
        assert (refused.ok, refused.message) == (False, "refused: a plan is running (slow_count)")
        assert RE.state == "running"
    finally:
        runner.join(timeout=10)
    assert _rois(RE, mic) == before
    assert RE(bps.rd(mic.magnet_z)).plan_result == z_before


def test_axis_moves_and_their_refusals(RE, mic, server):
    client = CommandClient(INSTANCE)
    try:
        reply = client.send("move_axes", {"magnet_z_mm": 3.0, "focus_nm": 100.0})
        assert reply.ok and reply.message == "moved magnet_z_mm=3, focus_nm=100", reply.message
        assert RE(bps.rd(mic.magnet_z.readback)).plan_result == pytest.approx(3.0, abs=1e-6)
        assert RE(bps.rd(mic.focus.readback)).plan_result == pytest.approx(100.0, abs=1e-6)
        reply = client.send("move_axes", {"magnet_z_mm": 2.0, "focus_nm": 1e7})
        assert not reply.ok
        assert reply.message.startswith(
            "refused: PlanArgumentError: move_axes: focus_nm=10000000.0 is outside the focus limits"
        )
        assert RE(bps.rd(mic.magnet_z.readback)).plan_result == pytest.approx(3.0, abs=1e-6)
        reply = client.send("move_axes", {"force_pn": 5.0})
        assert not reply.ok and "no force calibration loaded" in reply.message
        # refused by the allowlist before anything is sent
        assert client.send("move_axes", {"magnet_z_mm": float("nan")}).message == (
            "refused: move_axes: magnet_z_mm=nan is not finite; expected a finite number mm"
        )
        # a wrong token is refused by the endpoint
        import zmq

        from magscope_session._viewer_commands import decode, encode_request

        with zmq.Context() as ctx, ctx.socket(zmq.REQ) as sock:
            sock.setsockopt(zmq.RCVTIMEO, 5000)
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(server.address)
            sock.send(encode_request("move_axes", {"magnet_z_mm": 5.0}, "not-the-token"))
            assert decode(sock.recv()) == {"ok": False, "message": "refused: wrong token", "result": None}
        assert RE(bps.rd(mic.magnet_z.readback)).plan_result == pytest.approx(3.0, abs=1e-6)
    finally:
        RE(bps.mv(mic.magnet_z, 2.0, mic.focus, 0.0))
        client.close()


def test_a_silent_endpoint_is_no_command_channel_not_a_hang():
    import zmq

    from magscope_session._viewer_commands import write_discovery

    name = "viewer-cmd-silent"
    with zmq.Context() as ctx, ctx.socket(zmq.REP) as sock:  # binds, never answers
        port = sock.bind_to_random_port("tcp://127.0.0.1")
        path = write_discovery(name, {"transport": "zmq", "address": f"tcp://127.0.0.1:{port}", "token": "t"})
        try:
            client = CommandClient(name, timeout_s=0.5)
            t0 = time.monotonic()
            reply = client.send("add_bead", {"x_px": 10, "y_px": 10})
            assert time.monotonic() - t0 < 2.0
            assert not reply.ok and reply.message.startswith("no command channel: the session did not answer")
            client.close()
        finally:
            path.unlink()
    reply = CommandClient(name).send("add_bead", {"x_px": 10, "y_px": 10})
    assert not reply.ok and reply.message.startswith("no command channel: no session of instance")
