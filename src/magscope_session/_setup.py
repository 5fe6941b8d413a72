"""Building a session: RunEngine, metadata, Tiled writer, the simulated instrument.

Used by the startup profile (``profile/startup``), the demo and the tests, so all
three make runs that look the same in Tiled.
"""

from __future__ import annotations

import getpass
import os
import socket
from collections.abc import Callable
from typing import Any

from bluesky import RunEngine
from bluesky.callbacks.best_effort import BestEffortCallback
from bluesky.utils import FailedStatus, ProgressBarManager

from magscope_devices.sim.world import SimParams

from ._document_writer import SpoolingTiledWriter
from ._health_log import HEALTH_LOG_INTERVAL_S, HealthLog, health_log_path
from ._tiled_server import TiledTarget

#: Instrument name written into the start document of every run of the simulator.
SIMULATED_INSTRUMENT = "magscope-sim"


def session_metadata(
    *,
    sample: str = "unspecified",
    operator: str | None = None,
    instrument: str = SIMULATED_INSTRUMENT,
    sim_params: SimParams | None = None,
) -> dict[str, Any]:
    """What every run's start document carries, so Tiled queries find it.

    ``sim_params`` adds the simulator's seed and bead counts (simulated instrument only).
    """
    md: dict[str, Any] = {
        "instrument": instrument,
        "sample": sample,
        "operator": operator or getpass.getuser(),
        "host": socket.gethostname(),
        "software": "magscope-bluesky",
    }
    if sim_params is not None:
        md["simulated"] = True
        md["sim_seed"] = int(sim_params.seed)
        md["sim_n_tethered"] = int(sim_params.n_tethered)
        md["sim_n_reference"] = int(sim_params.n_reference)
        md["nm_per_px"] = float(sim_params.nm_per_px)
    return md


class MagscopeRunEngine(RunEngine):
    """A RunEngine whose stop documents name the error of a failed run.

    When a plan fails because a status object failed (a device's ``set``, ``trigger``,
    ``kickoff`` ...), bluesky writes ``str(FailedStatus(status))`` into the stop
    document's ``reason``: the status object's repr (``<AsyncStatus, device: camera,
    task: <coroutine ...>, errored: CameraProcessError(...)>``). This RunEngine writes the
    error instead: ``"CameraProcessError: camera process was killed by signal 9"``.
    Every other stop document is left as bluesky makes it.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._status_errors: dict[str, BaseException] = {}

    def _status_object_completed(self, ret: Any, *args: Any, **kwargs: Any) -> Any:
        # bluesky raises FailedStatus(ret) from ret.exception(); remember which error a
        # reason of str(FailedStatus(ret)) stands for.
        try:
            if ret.done and not ret.success:
                error = ret.exception(timeout=0)
                if isinstance(error, BaseException):
                    self._status_errors[str(FailedStatus(ret))] = error
        except Exception:  # noqa: BLE001 - never let the bookkeeping break the RunEngine
            pass
        return super()._status_object_completed(ret, *args, **kwargs)

    def emit_sync(self, name: Any, doc: Any) -> None:
        if str(getattr(name, "value", name)) == "stop":
            error = self._status_errors.get(doc.get("reason") or "")
            if doc.get("exit_status") == "fail" and error is not None:
                doc = {**doc, "reason": f"{type(error).__name__}: {error}"}
            self._status_errors.clear()
        super().emit_sync(name, doc)


def make_run_engine(
    md: dict[str, Any] | None = None,
    *,
    best_effort: bool = True,
    progress_bars: bool = False,
) -> tuple[RunEngine, BestEffortCallback | None]:
    """A :class:`MagscopeRunEngine` with ``md`` as default metadata, the
    BestEffortCallback (tables, no plots) and, if asked, progress bars on moves and waits."""
    RE = MagscopeRunEngine(md or {}, call_returns_result=True)
    bec = None
    if best_effort:
        bec = BestEffortCallback()
        bec.disable_plots()
        RE.subscribe(bec)
    if progress_bars:
        RE.waiting_hook = ProgressBarManager()  # type: ignore[assignment]
    return RE, bec


def close_at_exit(func: Callable[[], Any], *, priority: int) -> None:
    """Call ``func`` when this process exits, also when it is a multiprocessing child
    (the queueserver's RE worker), which skips ``atexit``. Higher ``priority`` runs first.
    """
    from multiprocessing.util import Finalize

    Finalize(None, func, exitpriority=priority)


def subscribe_tiled_writer(
    RE: RunEngine, target: TiledTarget, *, batch_size: int | None = None, check: bool = True
) -> SpoolingTiledWriter:
    """Send every run to ``target`` through a spooling writer (nothing lost if Tiled is down).

    ``batch_size`` (events of a stream sent in one request) defaults to
    ``$MAGSCOPE_TILED_BATCH_SIZE``, else 50; live subscribers of slow plans want 1-5.

    With ``$MAGSCOPE_TILED_ACCESS_TAG`` set (a lab's Tiled that gives each instrument its
    own key, ``docs/deploy.md``), every run's start document carries
    ``tiled_access_tags: [TAG]`` (``RE.md``), which tags the run in Tiled.

    With ``check`` False an unreachable server is not an error: runs are spooled and
    forwarded once it answers (``magscope tiled replay`` sends what is left). The writer is
    flushed and closed at exit (also in the queueserver's worker), before ``target`` stops
    an embedded server it started.
    """
    if batch_size is None:
        batch_size = _batch_size_from_env()
    writer = SpoolingTiledWriter(
        target.uri, target.api_key, target.spool_dir, batch_size=batch_size, check=check
    )
    tag = os.environ.get("MAGSCOPE_TILED_ACCESS_TAG", "").strip()
    if tag:  # a lab's Tiled with per-instrument access: every run under this tag
        RE.md.setdefault("tiled_access_tags", [tag])
    RE.subscribe(writer)
    close_at_exit(lambda: writer.close(timeout=60), priority=10)
    close_at_exit(target.close, priority=5)
    return writer


def _batch_size_from_env() -> int:
    text = os.environ.get("MAGSCOPE_TILED_BATCH_SIZE", "").strip()
    if not text:
        return 50
    if not text.isdigit() or not 1 <= int(text) <= 10_000:
        raise ValueError(f"MAGSCOPE_TILED_BATCH_SIZE must be an integer 1..10000 (events), "
                         f"got {text!r}")
    return int(text)


def watch_health(
    RE: RunEngine,
    microscope: Any,
    *,
    data_dir: str | os.PathLike[str],
    instance: str,
    writer: SpoolingTiledWriter | None = None,
    interval_s: float | None = None,
) -> HealthLog:
    """Make every run of ``RE`` carry a ``health`` stream (``microscope.health`` read at
    its start and end) and write the health log (``<data_dir>/logs/health-<instance>.log``,
    a line every ``interval_s`` s: ``$MAGSCOPE_HEALTH_INTERVAL_S``, else 60). ``writer``'s
    backlog is part of the figures. The log stops, with a last line, when this process
    exits."""
    from functools import partial

    from magscope_plans import health_wrapper

    health = microscope.health
    health.watch_spool(writer)
    RE.preprocessors.append(partial(health_wrapper, health=health))
    if interval_s is None:
        interval_s = float(os.environ.get("MAGSCOPE_HEALTH_INTERVAL_S", HEALTH_LOG_INTERVAL_S))
    log = HealthLog(health.figures, health_log_path(data_dir, instance), interval_s=interval_s)
    close_at_exit(log.stop, priority=25)  # before the microscope closes (20)
    return log.start()
