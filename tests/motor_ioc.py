"""A motor-record IOC for the tests, written with caproto, run as its own process.

caproto's ``fake_motor_record`` example answers a ``.VAL`` put at once; a real motor
record (and ophyd-async's ``Motor``, which waits on put completion) completes the put
only when the move is done. This IOC does what the record does where our backend relies
on it:

- a put to ``.VAL`` moves ``.RBV`` towards it at ``.VELO`` (EGU/s) in ticks of
  ``1 / TICK_HZ`` s, with ``.DMOV`` 0 and ``.MOVN`` 1 while moving, and completes when the
  motor arrives (or stops); a new ``.VAL`` during a move takes over from where it is;
- a put of 1 to ``.STOP`` stops the move where it is (``.VAL`` becomes the position);
- a target outside ``.LLM`` .. ``.HLM`` (when the dial limits are not both 0, the
  record's "no limits") is refused as the record does: ``.LVIO`` 1, nothing moves, the
  put completes at once;
- the fields ophyd-async's ``Motor`` connects to all exist (EGU, MRES, SREV, UREV, ERES,
  VELO, OFF, RBV, VAL, VMAX, ACCL, PREC, RDBD, DMOV, LLM, HLM, DLLM, DHLM, FOFF, HLS, LLS,
  OUT, SET, STOP).

Run: ``python motor_ioc.py --prefix P: --motor NAME,EGU,LOW,HIGH,VELO,START ...``; it
binds and serves where ``EPICS_CAS_INTF_ADDR_LIST`` and ``EPICS_CA_SERVER_PORT`` say, and
prints ``ready`` on stdout once its PVs are served.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys

from caproto.server import PVGroup, SubGroup, pvproperty, run

TICK_HZ = 50.0  # how often a moving motor publishes .RBV


class MotorRecord(PVGroup):
    """One motor record (its ``.VAL`` is the group's prefix itself)."""

    motor = pvproperty(value=0.0, name="", record="motor", precision=4)

    def __init__(self, *args, egu: str = "mm", low: float = 0.0, high: float = 10.0,
                 velocity: float = 5.0, start: float = 0.0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.settings = {"egu": egu, "low": low, "high": high, "velocity": velocity,
                         "start": start}
        self._generation = 0  # bumped by each .VAL put: the newest move owns the motor
        self._target = start

    @motor.startup
    async def motor(self, instance, async_lib) -> None:
        s = self.settings
        f = instance.field_inst
        await instance.write(s["start"], verify_value=False)
        await instance.write_metadata(units=s["egu"])
        for field, value in (
            (f.engineering_units, s["egu"]), (f.velocity, s["velocity"]),
            (f.max_velocity, 2 * s["velocity"]), (f.seconds_to_velocity, 0.05),
            (f.motor_step_size, 1e-5), (f.steps_per_revolution, 200),
            (f.egu_s_per_revolution, 200 * 1e-5), (f.encoder_step_size, 1e-5),
            (f.retry_deadband, 1e-4), (f.display_precision, 4),
            (f.user_low_limit, s["low"]), (f.user_high_limit, s["high"]),
            (f.dial_low_limit, s["low"]), (f.dial_high_limit, s["high"]),
            (f.user_offset, 0.0), (f.output_specification, "@asyn(sim 0)"),
        ):
            await field.write(value, verify_value=False)
        await self._publish(f, s["start"])
        await f.done_moving_to_value.write(1, verify_value=False)
        await f.motor_is_moving.write(0, verify_value=False)

    async def _publish(self, f, position: float) -> None:
        await f.user_readback_value.write(position, verify_value=False)
        await f.dial_readback_value.write(position, verify_value=False)
        await f.raw_readback_value.write(int(round(position / 1e-5)), verify_value=False)

    @motor.putter
    async def motor(self, instance, value: float) -> float:
        f = instance.field_inst
        low, high = f.user_low_limit.value, f.user_high_limit.value
        no_limits = f.dial_low_limit.value == 0 and f.dial_high_limit.value == 0
        if not math.isfinite(value) or (not no_limits and not low <= value <= high):
            await f.limit_violation.write(1, verify_value=False)
            return instance.value  # refused: .VAL stays, nothing moves
        await f.limit_violation.write(0, verify_value=False)
        self._generation += 1
        generation = self._generation
        self._target = value
        if f.stop.value:
            await f.stop.write(0)
        await f.done_moving_to_value.write(0, verify_value=False)
        await f.motor_is_moving.write(1, verify_value=False)
        position = f.user_readback_value.value
        dt = 1.0 / TICK_HZ
        while True:
            if self._generation != generation:  # a newer .VAL took the motor over
                return self._target
            if f.stop.value:  # .STOP: stay where it is
                await f.stop.write(0)
                value = position
                break
            step = abs(f.velocity.value) * dt
            remaining = value - position
            if abs(remaining) <= step:
                position = value
                await self._publish(f, position)
                break
            position += math.copysign(step, remaining)
            await self._publish(f, position)
            await asyncio.sleep(dt)
        await f.motor_is_moving.write(0, verify_value=False)
        await f.done_moving_to_value.write(1, verify_value=False)
        return value


def motor_spec(text: str) -> dict:
    """``NAME,EGU,LOW,HIGH,VELO,START`` -> the settings of one motor."""
    name, egu, low, high, velocity, start = text.split(",")
    return {"name": name, "egu": egu, "low": float(low), "high": float(high),
            "velocity": float(velocity), "start": float(start)}


def make_ioc_class(specs: list[dict]) -> type[PVGroup]:
    """A PVGroup with one :class:`MotorRecord` per spec, at ``prefix + name``."""
    body = {
        spec["name"].replace(":", "_").lower(): SubGroup(
            MotorRecord, prefix=spec["name"],
            **{k: v for k, v in spec.items() if k != "name"},
        )
        for spec in specs
    }
    return type("MotorIOC", (PVGroup,), body)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--motor", action="append", type=motor_spec, required=True)
    args = parser.parse_args(argv)
    ioc = make_ioc_class(args.motor)(prefix=args.prefix)

    async def ready(async_lib) -> None:
        print("ready", flush=True)

    run(ioc.pvdb, startup_hook=ready, log_pv_names=False)


if __name__ == "__main__":
    sys.exit(main())
