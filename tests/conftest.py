"""Shared pytest fixtures. Each section is self-contained; keep new sections below."""

from __future__ import annotations

import asyncio
import inspect
import os
import secrets

import psutil
import pytest

# ---------------------------------------------------------------------------------------
# Test tiers. ``make test-fast`` runs ``-m "not system and not slow"``:
#   system  starts real processes (camera, tracking workers, Tiled, Redis, queueserver, a
#           ``magscope`` command); marked per module or per test.
#   slow    pure computation that takes seconds (accuracy against the simulator's truth).
#   soak    minutes; kept out of ``make test`` (``make soak``).
# Every other test is in the fast tier, and two checks keep it honest: a fast test that
# starts a process fails, and an async test that leaves an asyncio task pending fails.
# ---------------------------------------------------------------------------------------

_TIER_MARKERS = ("system", "slow", "soak")
# started once per interpreter by the standard library, not by the code under test
_ALLOWED_CHILDREN = ("multiprocessing.resource_tracker", "multiprocessing.forkserver")


def _children() -> dict[int, str]:
    out = {}
    for child in psutil.Process(os.getpid()).children(recursive=True):
        try:
            out[child.pid] = " ".join(child.cmdline())
        except psutil.Error:
            continue
    return {
        pid: cmd for pid, cmd in out.items() if not any(a in cmd for a in _ALLOWED_CHILDREN)
    }


@pytest.fixture(autouse=True)
def _fast_tests_start_no_process(request):
    """A test outside the system tier must not start a process (or leave one running)."""
    if any(request.node.get_closest_marker(m) for m in _TIER_MARKERS):
        yield
        return
    before = _children()
    yield
    started = {pid: cmd for pid, cmd in _children().items() if pid not in before}
    for pid in started:
        try:
            psutil.Process(pid).kill()
        except psutil.Error:
            pass
    assert not started, (
        f"a fast-tier test started processes {started}: mark it (or its module) "
        "pytest.mark.system"
    )


def pending_tasks(loop: asyncio.AbstractEventLoop | None = None) -> list[asyncio.Task]:
    """Tasks of ``loop`` (default: the running one) still pending, the caller excepted."""
    current = asyncio.current_task() if loop is None else None
    tasks = asyncio.all_tasks(loop) if loop is not None else asyncio.all_tasks()
    return [t for t in tasks if t is not current and not t.done()]


@pytest.fixture
async def _no_pending_tasks():
    """After an async test and its other fixtures, no asyncio task may be left pending."""
    yield
    for _ in range(3):  # let tasks that are finishing (callbacks, cancellations) settle
        await asyncio.sleep(0)
    leaked = pending_tasks()
    for task in leaked:
        task.cancel()
    assert not leaked, f"the test left asyncio tasks pending: {leaked}"


#: Modules that use the queueserver's and the 0MQ proxy's fixed addresses (Redis 6379,
#: manager 60615/60625, proxy 5577/5578) or the default instrument: one xdist group, so
#: ``make test`` (two workers) never runs two of them at once.
_FIXED_ADDRESSES = {"test_queueserver", "test_queueserver_tiled_down", "test_session", "test_docs"}


#: The longest xdist groups, longest first (seconds on this machine, serial run of
#: 2026-12-05): handed out first (``--no-loadscope-reorder`` keeps this order), so the two
#: workers end together instead of one waiting for a long group started last.
_LONGEST_FIRST = (
    "fixed-addresses",  # ~395 s
    "test_experiment_plans",  # ~215 s
    "test_tiled_robustness",  # ~80-110 s
    "test_wheel",  # ~50 s
    "test_run_rebuild",  # ~48 s
    "test_tiled_data_path",  # ~35-45 s
    "test_runs",  # ~35 s
    "test_microscope",  # ~23-38 s
)


def _group_of(item) -> str:
    module = item.module.__name__.rsplit(".", 1)[-1] if item.module else item.nodeid
    return "fixed-addresses" if module in _FIXED_ADDRESSES else module


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(config, items):
    rank = {group: k for k, group in enumerate(_LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(_group_of(item), len(rank)))  # stable
    for item in items:
        # pytest-xdist (--dist loadgroup): a module's tests stay on one worker, so its
        # module-scoped fixtures (microscopes, servers, swept Z-LUTs) are built once
        item.add_marker(pytest.mark.xdist_group(_group_of(item)))
        function = getattr(item, "function", None)
        if function is not None and inspect.iscoroutinefunction(function):
            # first in the fixture order, so it is torn down after the test's own fixtures
            item.fixturenames.insert(0, "_no_pending_tasks")


@pytest.fixture(scope="module", autouse=True)
def _private_instance(request):
    """Every module outside the fixed-address group gets its own instrument instance
    (``MAGSCOPE_INSTANCE``, inherited by the processes it starts), so two xdist workers
    never meet on the default instance's ownership lock or shared memory."""
    module = request.module.__name__.rsplit(".", 1)[-1]
    if module in _FIXED_ADDRESSES:
        yield
        return
    before = os.environ.get("MAGSCOPE_INSTANCE")
    os.environ["MAGSCOPE_INSTANCE"] = ("t-" + module.removeprefix("test_"))[:40]
    yield
    if before is None:
        os.environ.pop("MAGSCOPE_INSTANCE", None)
    else:
        os.environ["MAGSCOPE_INSTANCE"] = before


@pytest.fixture(autouse=True)
def _asyncio_stacks_before_the_timeout(request):
    """A test that runs into pytest-timeout shows its threads' stacks; a hang inside the
    RunEngine's loop is an asyncio task, so print every task's stack too, shortly before."""
    import sys
    import threading

    marker = request.node.get_closest_marker("timeout")
    limit = float(marker.args[0]) if marker and marker.args else float(
        request.config.getini("timeout") or 0
    )
    if limit <= 30:
        yield
        return

    def dump() -> None:
        try:
            from bluesky.run_engine import get_bluesky_event_loop

            loop = get_bluesky_event_loop()
            tasks = list(asyncio.all_tasks(loop)) if loop is not None else []
        except Exception as exc:  # diagnostics only: never fail the test from here
            print(f"asyncio stacks unavailable: {exc!r}", file=sys.stderr)
            return
        print(f"\n{request.node.nodeid}: {len(tasks)} asyncio tasks on the bluesky loop "
              f"{limit - 20:g} s in:", file=sys.stderr)
        for task in tasks:
            print(repr(task), file=sys.stderr)
            task.print_stack(file=sys.stderr)

    timer = threading.Timer(limit - 20, dump)
    timer.daemon = True
    timer.start()
    yield
    timer.cancel()


@pytest.fixture
def RE():
    """A RunEngine on its own loop; fails the test if a plan left an asyncio task pending.

    Modules that share one RunEngine between tests define their own ``RE`` fixture.
    """
    from bluesky import RunEngine

    engine = RunEngine({}, call_returns_result=True)
    yield engine
    if engine.state != "idle":
        engine.abort("test teardown")

    async def pending():
        for _ in range(3):
            await asyncio.sleep(0)
        return [repr(t) for t in pending_tasks()]

    leaked = asyncio.run_coroutine_threadsafe(pending(), engine.loop).result(timeout=10)
    assert not leaked, f"the plan left asyncio tasks pending on the RunEngine's loop: {leaked}"

# ---------------------------------------------------------------------------------------
# Tiled data path: real embedded Tiled servers (subprocesses) on 127.0.0.1.
#   tiled_server   a running EmbeddedTiled (port=0, fresh data dir) shared by the tests of
#                  one module; 10-20 s to start on this machine, so share it. A test may
#                  stop and start it again (the port stays the same) but must leave it
#                  running.
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiled_server(tmp_path_factory):
    """A running embedded Tiled server with a fresh data dir, stopped after the module.

    Attributes used by tests: ``uri``, ``api_key``, ``client()``, ``detector_data_dir``
    (HDF5 files of detectors go there), ``spool_dir``, ``data_dir``.
    """
    from magscope_session import EmbeddedTiled

    server = EmbeddedTiled(tmp_path_factory.mktemp("tiled-data"), port=0)
    with server:
        yield server


# ---------------------------------------------------------------------------------------
# (other sections below)
# ---------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------
# In-process Tiled (fast tier): the embedded server's own config (SQLite catalog and table
# store, detector folder as readable storage) served by an ASGI app inside the test
# process, for tests where a server process is not the point.
#   tiled_in_process   a catalog client (module scope); writes and reads go through
#                      Tiled's HTTP API without a socket.
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiled_in_process(tmp_path_factory):
    from tiled.client import Context, from_context
    from tiled.commandline._catalog import init as init_catalog
    from tiled.config import parse_configs
    from tiled.server.app import build_app_from_config

    from magscope_session import EmbeddedTiled

    server = EmbeddedTiled(tmp_path_factory.mktemp("tiled-in-process"), port=0)
    config = parse_configs(str(server.write_config()))
    init_catalog(database=f"sqlite:///{server.catalog_path}", if_not_exists=True)
    key = secrets.token_hex(16)
    config.authentication.single_user_api_key = key
    context = Context.from_app(build_app_from_config(config), api_key=key)
    try:
        yield from_context(context)
    finally:
        context.close()
