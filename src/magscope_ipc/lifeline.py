"""Run a program so that it and everything it starts dies with this launcher's parent.

Usage (by :mod:`magscope_ipc.processes`, never by hand)::

    python -I -S lifeline.py PARENT_PID GRACE_S [--user UID:GID] -- PROGRAM [ARGS...]

The launcher is started as the leader of a new session (so the terminal's Ctrl-C never
reaches it or its program). It starts ``PROGRAM`` in its own process group and then
waits. When ``PROGRAM`` exits, the launcher ends the rest of the group and exits with the
same code. When the launcher's parent dies (its parent pid changes, however the parent
died: ``kill -9`` included), or the launcher is asked to stop (SIGTERM, SIGINT), it sends
SIGTERM to the whole group, waits up to ``GRACE_S`` seconds, and sends SIGKILL to what is
left. A service that forks helpers of its own (the queueserver's RE manager and worker)
is ended as a whole. With ``--user`` (the launcher runs as root) ``PROGRAM`` runs as that
uid and gid without supplementary groups: a server that refuses to run as root.

Only the standard library is used (``-I -S``: no site packages, no user environment), so
the launcher starts in about 20 ms and costs a few MB.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

POLL_S = 0.1


def _end_group(grace_s: float, child: subprocess.Popen) -> None:
    pgid = os.getpgid(0)
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        child.poll()
        if child.returncode is not None and not _others_in_group(pgid):
            return
        time.sleep(POLL_S)
    os.killpg(pgid, signal.SIGKILL)


def _others_in_group(pgid: int) -> bool:
    """True while a process other than this one is in the group (Linux /proc)."""
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != b"Z":
            return True
    return False


def main(argv: list[str]) -> int:
    parent_pid, grace_s = int(argv[0]), float(argv[1])
    split = argv.index("--")
    options, program = argv[2:split], argv[split + 1 :]
    as_user: dict = {}
    if options[:1] == ["--user"]:
        uid, gid = (int(v) for v in options[1].split(":"))
        as_user = {"user": uid, "group": gid, "extra_groups": []}
    stop_requested = False

    def request_stop(signum, frame):  # the group gets the signal too: just stop waiting
        nonlocal stop_requested
        stop_requested = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    if os.getppid() != parent_pid:  # the parent died before we got here
        return 1
    child = subprocess.Popen(program, **as_user)
    while True:
        code = child.poll()
        if code is not None:
            if _others_in_group(os.getpgid(0)):
                _end_group(grace_s, child)
            return code if code >= 0 else 128 - code
        if stop_requested or os.getppid() != parent_pid:
            _end_group(grace_s, child)
            code = child.wait()
            return code if code >= 0 else 128 - code
        time.sleep(POLL_S)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
