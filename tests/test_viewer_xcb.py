"""The viewer in a real X window: Debian's Xvfb, Qt's xcb platform (not offscreen), the
screenshot taken from the X server, scored against the simulator's truth.

Needs Debian's xvfb and Qt's xcb libraries (``make test`` installs them when it can as
root; otherwise this test fails saying the command to run). It installs nothing itself.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import bluesky.plan_stubs as bps
import numpy as np
import pytest
from bluesky import RunEngine
from ophyd_async.core import init_devices
from PyQt5 import QtGui

from magscope_devices import make_simulated_microscope
from magscope_devices.sim.world import SimParams
from tracking_sim import true_rois, truth_now

pytestmark = pytest.mark.system

INSTANCE = "viewer-xcb"
NM_PER_PX = 100.0
XVFB_PACKAGES = (
    "xvfb xauth libxcb-icccm4 libxcb-keysyms1 libxcb-xinerama0 libxcb-randr0 libxcb-shape0 "
    "libxcb-xfixes0 libxcb-xkb1 libxkbcommon-x11-0 libxcb-image0 libxcb-render-util0"
)


@pytest.fixture(scope="module")
def display():
    """A private X display from Xvfb (the server picks a free number; no TCP)."""
    if shutil.which("Xvfb") is None:
        pytest.fail(
            "Xvfb is not installed; as root run:  apt-get install -y --no-install-recommends "
            + XVFB_PACKAGES, pytrace=False,
        )
    read_fd, write_fd = os.pipe()
    xvfb = subprocess.Popen(
        ["Xvfb", "-displayfd", str(write_fd), "-screen", "0", "1400x900x24", "-nolisten", "tcp"],
        pass_fds=(write_fd,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    os.close(write_fd)
    with os.fdopen(read_fd) as pipe:
        number = pipe.readline().strip()
    try:
        assert number.isdigit(), "Xvfb did not report its display number"
        yield f":{number}"
    finally:
        xvfb.terminate()
        xvfb.wait(10)


@pytest.fixture(scope="module")
def scope(tmp_path_factory):
    RE = RunEngine(call_returns_result=True)
    with init_devices():
        mic = make_simulated_microscope(
            SimParams(seed=5), data_dir=tmp_path_factory.mktemp("xcb"), instance=INSTANCE,
            tracking_workers=1, name="microscope",
        )
    try:
        RE(bps.mv(mic.magnet_z, 2.0))
        truth = truth_now(mic)
        RE(bps.mv(mic.tracker.rois, true_rois(truth, nm_per_px=NM_PER_PX)))
        yield mic, truth
    finally:
        mic.close()


def test_viewer_window_on_a_real_x_display(display, scope, tmp_path, qapp):
    """`python -m magscope_viewer --screenshot` under Xvfb uses Qt's xcb platform, and the
    X server's picture of its window shows the beads: the bright rings of the camera image
    sit where the truth puts the beads, relative to each other."""
    _, truth = scope
    png = tmp_path / "xcb.png"
    env = dict(os.environ, DISPLAY=display, QT_QPA_PLATFORM="xcb")
    out = subprocess.run(
        [sys.executable, "-m", "magscope_viewer", "--instance", INSTANCE, "--screenshot",
         str(png), "--after", "4"],
        capture_output=True, text=True, timeout=120, env=env,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "Qt platform xcb" in out.stdout, out.stdout
    image = QtGui.QImage(str(png))
    assert image.width() >= 1000 and image.height() >= 700, (image.width(), image.height())
    grey_image = image.convertToFormat(QtGui.QImage.Format_Grayscale8)  # kept: ptr into it
    ptr = grey_image.constBits()
    ptr.setsize(grey_image.height() * grey_image.bytesPerLine())
    gray = np.frombuffer(ptr, np.uint8).reshape(grey_image.height(), grey_image.bytesPerLine())
    gray = gray[:, : image.width()].copy()
    # the camera image is the block of pixel noise in the window's left half
    left = gray[:, : image.width() // 2].astype(int)
    noisy = np.abs(np.diff(left, axis=1)) > 15
    y0, y1 = _longest_run(noisy.mean(axis=1) > 0.3)
    x0, x1 = _longest_run(noisy[y0: y1 + 1].mean(axis=0) > 0.3)
    assert y1 - y0 > 200 and x1 - x0 > 300, f"no camera image in the window: {x0, x1, y0, y1}"
    assert abs((x1 - x0) / (y1 - y0) - 1024 / 768) < 0.03, "the camera image is distorted"
    # beads: the window shows the whole sensor, so the truth maps linearly onto the block;
    # each bead's centre pixel neighbourhood holds a bright ring (white on the grey noise)
    sx = (x1 - x0) / 1024.0
    sy = (y1 - y0) / 768.0
    def bright(cx: int, cy: int) -> bool:
        patch = gray[max(cy - 6, 0): cy + 7, max(cx - 6, 0): cx + 7]
        return bool(patch.size and patch.max() >= 200)

    centres = [
        (int(x0 + x_nm / NM_PER_PX * sx), int(y0 + y_nm / NM_PER_PX * sy))
        for x_nm, y_nm in zip(truth["x_nm"], truth["y_nm"], strict=True)
    ]
    found = sum(bright(cx, cy) for cx, cy in centres)
    # control: the same test 40 screen pixels away from every bead finds mostly noise
    control = sum(bright(cx + 40, cy) for cx, cy in centres)
    assert control <= 0.3 * len(truth), f"{control} of {len(truth)} control spots bright"
    assert found >= 0.9 * len(truth), f"{found} of {len(truth)} beads seen at the truth"


def _longest_run(mask: np.ndarray) -> tuple[int, int]:
    """First and last index of the longest run of True in ``mask``."""
    best, start = (0, -1), None
    for i, value in enumerate([*mask.tolist(), False]):
        if value and start is None:
            start = i
        elif not value and start is not None:
            if i - 1 - start > best[1] - best[0]:
                best = (start, i - 1)
            start = None
    return best
