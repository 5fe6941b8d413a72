"""Plans as message lists: what they ask the RunEngine to do, in which order (fast tier).

The microscope is built in ophyd-async's mock mode; bluesky's ``RunEngineSimulator``
records the messages and answers each ``read``/``locate`` with the mock device's value,
set per test with ``set_mock_value``. Nothing moves and no process starts: these tests
check the order of moves, runs and the safe finish, including when a step fails.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any

import bluesky.plan_stubs as bps
import pytest
from bluesky.run_engine import call_in_bluesky_event_loop
from bluesky.simulators import RunEngineSimulator
from bluesky.utils import Msg
from ophyd_async.core import StandardDetector, init_devices, set_mock_value

from magscope_devices import make_simulated_microscope
from magscope_plans import (
    PlanArgumentError,
    count_at_heights,
    focus_scan,
    restore_safe_state,
    with_safe_finish,
)


@pytest.fixture
def mic(RE, tmp_path):
    with init_devices(mock=True):
        microscope = make_simulated_microscope(data_dir=tmp_path, name="mic")
    for axis, low, high, position in (
        (microscope.magnet_z, 0.5, 8.0, 8.0),
        (microscope.magnet_rotation, -200.0, 200.0, 0.0),
        (microscope.focus, 0.0, 100_000.0, 50_000.0),
    ):
        set_mock_value(axis.low_limit, low)
        set_mock_value(axis.high_limit, high)
        set_mock_value(axis.readback, position)
        set_mock_value(axis.setpoint, position)
    return microscope


def simulator() -> RunEngineSimulator:
    """A simulator that answers reads and locates from the (mock) devices themselves."""
    sim = RunEngineSimulator()
    sim.add_handler(
        "read",
        lambda msg: call_in_bluesky_event_loop(msg.obj.read()),
        lambda msg: not isinstance(msg.obj, StandardDetector),  # its frames: not needed
    )
    sim.add_handler("locate", lambda msg: call_in_bluesky_event_loop(msg.obj.locate()))
    return sim


def moves(messages: list[Msg]) -> list[tuple[str, Any]]:
    """(device name, target) of every ``set``, in order."""
    return [(m.obj.name, m.args[0]) for m in messages if m.command == "set"]


def _answer(respond: RunEngineSimulator, msg: Msg) -> Any:
    handler = next((h for h in respond.message_handlers if h.predicate(msg)), None)
    return handler.runnable(msg) if handler is not None else None


def drive(
    plan: Generator[Msg, Any, Any],
    *,
    respond: RunEngineSimulator,
    fails: Callable[[Msg], bool] = lambda msg: False,
) -> tuple[list[Msg], list[Msg], BaseException | None]:
    """Drive ``plan`` as the RunEngine would; at the first message where ``fails`` is true,
    throw an error into the plan (as the RunEngine does when a device fails).

    Returns the messages up to the failing one, the messages the plan sent after it (its
    clean-up), and the error that came out of the plan (None if it finished)."""
    before: list[Msg] = []
    after: list[Msg] = []
    out = before
    try:
        msg = plan.send(None)
        while True:
            out.append(msg)
            if out is before and fails(msg):
                out = after
                msg = plan.throw(RuntimeError("injected failure"))
            else:
                msg = plan.send(_answer(respond, msg))
    except StopIteration:
        return before, after, None
    except Exception as error:  # noqa: BLE001 - the plan's own error is the result
        return before, after, error


def test_count_at_heights_moves_in_order_one_run_per_height_then_goes_safe(mic):
    messages = simulator().simulate_plan(count_at_heights(mic, [6.0, 4.0], num=2, track=False))
    assert moves(messages) == [
        ("mic-magnet_z", 6.0), ("mic-magnet_z", 4.0), ("mic-magnet_z", 8.0),
    ]
    commands = [m.command for m in messages]
    assert commands.count("open_run") == commands.count("close_run") == 2
    first_set = commands.index("set")
    assert "open_run" not in commands[:first_set]  # checks come first, then moves
    # one run per height: each run opens after its move and closes before the next move
    sets = [i for i, c in enumerate(commands) if c == "set"]
    opens = [i for i, c in enumerate(commands) if c == "open_run"]
    closes = [i for i, c in enumerate(commands) if c == "close_run"]
    assert sets[0] < opens[0] < closes[0] < sets[1] < opens[1] < closes[1] < sets[2]
    assert [m.obj.name for m in messages if m.command == "stop"] == ["mic-magnet_rotation"]
    triggers = [m for m in messages if m.command == "trigger"]
    assert [t.obj.name for t in triggers] == ["mic-camera"] * 4


def test_height_outside_the_limits_is_refused_before_any_message_moves(mic):
    set_mock_value(mic.magnet_z.low_limit, 5.0)
    sim = simulator()
    plan = count_at_heights(mic, [6.0, 4.0], num=2, track=False)
    with pytest.raises(PlanArgumentError, match=r"magnet_heights_mm\[1\]=4.0 is outside"):
        sim.simulate_plan(plan)


def test_a_failing_trigger_still_ends_with_the_magnets_safe(mic):
    triggers = 0

    def second_trigger(msg: Msg) -> bool:
        nonlocal triggers
        triggers += msg.command == "trigger"
        return triggers == 3  # the first frame of the second height

    before, after, error = drive(
        count_at_heights(mic, [6.0, 4.0], num=2, track=False), respond=simulator(),
        fails=second_trigger,
    )
    assert str(error) == "injected failure"
    assert moves(before) == [("mic-magnet_z", 6.0), ("mic-magnet_z", 4.0)]
    # the open run is closed (failed), then the finalizer stops rotation and lifts magnets
    cleanup = [m.command for m in after]
    assert "close_run" in cleanup
    assert moves(after) == [("mic-magnet_z", 8.0)]
    assert [m.obj.name for m in after if m.command == "stop"] == ["mic-magnet_rotation"]


def test_focus_scan_steps_relative_to_where_it_is_and_returns(mic):
    messages = simulator().simulate_plan(focus_scan(mic, -1000.0, 1000.0, 5))
    focus = [v for name, v in moves(messages) if name == "mic-focus"]
    assert focus[:5] == pytest.approx([49_000.0, 49_500.0, 50_000.0, 50_500.0, 51_000.0])
    assert focus[-1] == 50_000.0  # back where it started
    assert all(name == "mic-focus" for name, _ in moves(messages))  # magnets untouched


def test_focus_scan_beyond_the_focus_range_is_refused_naming_the_reach(mic):
    with pytest.raises(PlanArgumentError, match="reaching 101000 nm"):
        simulator().simulate_plan(focus_scan(mic, -1000.0, 51_000.0, 5))


def test_with_safe_finish_restores_turns_height_and_focus_in_that_order(mic):
    def plan():
        yield from bps.mv(mic.magnet_z, 3.0, mic.magnet_rotation, 10.0)
        yield from bps.sleep(1.0)

    before, after, error = drive(
        with_safe_finish(plan(), mic, restore_turns=0.0, restore_focus_nm=50_000.0),
        respond=simulator(), fails=lambda msg: msg.command == "sleep",
    )
    assert str(error) == "injected failure"
    assert moves(before) == [("mic-magnet_z", 3.0), ("mic-magnet_rotation", 10.0)]
    assert moves(after) == [
        ("mic-magnet_rotation", 0.0), ("mic-magnet_z", 8.0), ("mic-focus", 50_000.0),
    ]
    # rotation is stopped before it is turned back, and again before the magnets go up
    commands = [(m.command, m.obj.name if m.obj else None) for m in after]
    assert commands.index(("stop", "mic-magnet_rotation")) < commands.index(
        ("set", "mic-magnet_rotation")
    )
    # a plan that finishes cleanly gets the same finish
    _, _, error = drive(
        with_safe_finish(plan(), mic, restore_turns=0.0), respond=simulator()
    )
    assert error is None


def test_plans_end_at_the_microscope_s_configured_safe_height(mic):
    set_mock_value(mic.magnet_z.safe_height, 6.5)  # the config's magnet_z.safe
    messages = simulator().simulate_plan(count_at_heights(mic, [6.0, 4.0], num=1, track=False))
    assert moves(messages)[-1] == ("mic-magnet_z", 6.5)
    assert moves(simulator().simulate_plan(restore_safe_state(mic))) == [("mic-magnet_z", 6.5)]
    # a height given to the plan wins; a configured one outside the limits is refused
    messages = simulator().simulate_plan(
        count_at_heights(mic, [6.0], num=1, track=False, safe_magnet_height_mm=7.5)
    )
    assert moves(messages)[-1] == ("mic-magnet_z", 7.5)
    set_mock_value(mic.magnet_z.high_limit, 6.0)
    with pytest.raises(PlanArgumentError, match="safe_magnet_height_mm=6.5 is outside"):
        simulator().simulate_plan(count_at_heights(mic, [5.0], num=1, track=False))


def test_restore_safe_state_refuses_a_height_outside_the_limits(mic):
    with pytest.raises(PlanArgumentError, match="safe_magnet_height_mm=9.5 is outside"):
        simulator().simulate_plan(restore_safe_state(mic, safe_magnet_height_mm=9.5))
    messages = simulator().simulate_plan(restore_safe_state(mic, safe_magnet_height_mm=7.0))
    assert moves(messages) == [("mic-magnet_z", 7.0)]
