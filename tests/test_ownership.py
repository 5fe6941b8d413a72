"""One owner per instrument (issue 9, section 2).

The process that connects a named instrument holds its lock; a second owner, in another
process, is refused with a message naming the holder; another instance name is a separate
simulated instrument. The kernel drops the lock when the owner dies, even by SIGKILL.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest
from bluesky import RunEngine
from ophyd_async.core import init_devices

from magscope_devices import make_simulated_microscope
from magscope_devices._ownership import InstrumentBusyError, InstrumentLock

MAGSCOPE = str(Path(sys.executable).with_name("magscope"))

HOLDER = textwrap.dedent(
    """
    import sys, time
    from magscope_devices._ownership import InstrumentLock
    lock = InstrumentLock(sys.argv[1])
    lock.acquire()
    print("held", flush=True)
    time.sleep(120)
    """
)


def _name() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
def holder():
    """Another process holding the lock of a fresh instance name."""
    name = _name()
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, name], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "held"
    yield name, proc
    proc.kill()
    proc.wait()


@pytest.mark.system
def test_a_second_owner_is_refused_naming_the_holder(holder):
    name, proc = holder
    with pytest.raises(InstrumentBusyError) as info:
        InstrumentLock(name).acquire()
    message = str(info.value)
    assert f"pid {proc.pid}" in message and "--instance NAME" in message
    assert repr(name) in message


@pytest.mark.system
def test_the_lock_is_released_when_its_owner_is_killed(holder):
    name, proc = holder
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    with InstrumentLock(name) as lock:  # no stale lock after a crash
        assert lock.held


def test_bad_instance_names_are_refused():
    for bad in ("", "a b", "../x", "x" * 41):
        with pytest.raises(ValueError, match="instance name"):
            InstrumentLock(bad)


@pytest.mark.system
def test_connecting_a_named_microscope_takes_its_lock_and_another_name_is_separate(
    holder, tmp_path
):
    name, proc = holder
    RunEngine()  # devices connect on the RunEngine's event loop
    busy = make_simulated_microscope(
        data_dir=tmp_path, instance=name, track=False, name="busy"
    )
    with pytest.raises(Exception) as info:
        with init_devices():
            busy = make_simulated_microscope(
                data_dir=tmp_path, instance=name, track=False, name="busy"
            )
    assert f"pid {proc.pid}" in str(info.value)
    assert busy.camera.process.process is None  # refused before the camera started
    other = _name()
    with init_devices():
        free = make_simulated_microscope(
            data_dir=tmp_path, instance=other, track=False, name="free"
        )
    try:
        assert free.camera.process.running
        refused = subprocess.run(
            [sys.executable, "-c", HOLDER, other], capture_output=True, text=True, timeout=30
        )
        assert refused.returncode != 0
        assert "InstrumentBusyError" in refused.stderr and f"pid {os.getpid()}" in refused.stderr
    finally:
        free.close()
    with InstrumentLock(other) as lock:  # close() gave it back
        assert lock.held


@pytest.mark.system
def test_magscope_ipython_refuses_an_instance_another_process_drives(holder, tmp_path):
    name, proc = holder
    result = subprocess.run(
        [MAGSCOPE, "ipython", "--instance", name, "-c", "print('started')"],
        capture_output=True, text=True, timeout=60,
        env=dict(os.environ, MAGSCOPE_DATA_DIR=str(tmp_path)),
    )
    assert result.returncode != 0
    assert "started" not in result.stdout
    assert f"pid {proc.pid}" in result.stderr and "--instance NAME" in result.stderr
