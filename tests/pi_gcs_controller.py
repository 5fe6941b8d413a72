"""A PI GCS 2.0 controller for the tests, over TCP, run as its own process.

PI controllers speak GCS: ASCII commands ending in a line feed, answers of one line per
axis (``1=12.5``), the lines of a multi-line answer ending in a space before the line
feed except the last. This controller knows the commands PI's ``pipython`` sends for
the backend (``CSV?``, ``*IDN?``, ``SAI?``, ``SVO``, ``SVO?``, ``TMN?``, ``TMX?``, ``MOV``,
``POS?``, ``ONT?``, ``HLT``, ``STP``, ``ERR?``) and moves each axis towards its target
at a fixed velocity (units/s), refusing (error 7, "position out of limits") a target
outside the travel range, as the controllers do.

Run: ``python pi_gcs_controller.py PORT AXIS,LOW,HIGH,VELOCITY,START ...``; it binds
127.0.0.1 and prints ``ready`` once it listens.
"""

from __future__ import annotations

import asyncio
import sys
import time
from dataclasses import dataclass, field

E_POSITION_OUT_OF_LIMITS = 7
E_UNKNOWN_COMMAND = 2
E_ILLEGAL_AXIS = 15
E_SERVO_OFF = 5
E_STOPPED = 10


@dataclass
class PiAxis:
    low: float
    high: float
    velocity: float
    start: float
    servo: bool = False
    target: float = 0.0
    t0: float = field(default_factory=time.monotonic)
    origin: float = 0.0

    def __post_init__(self) -> None:
        self.target = self.origin = self.start

    def position(self) -> float:
        travelled = self.velocity * (time.monotonic() - self.t0)
        if travelled >= abs(self.target - self.origin):
            return self.target
        return self.origin + travelled * (1 if self.target > self.origin else -1)

    def move(self, target: float) -> None:
        self.origin, self.t0, self.target = self.position(), time.monotonic(), target

    def halt(self) -> None:
        self.move(self.position())


class Controller:
    def __init__(self, axes: dict[str, PiAxis]) -> None:
        self.axes = axes
        self.error = 0

    def fail(self, code: int) -> None:
        if self.error == 0:  # the controller keeps the first error until ERR? reads it
            self.error = code

    def answer(self, line: str) -> str | None:
        """The reply to one command line (None: a command without a reply)."""
        cmd, _, rest = line.strip().partition(" ")
        args = rest.split()
        if cmd == "ERR?":
            code, self.error = self.error, 0
            return str(code)
        if cmd == "CSV?":
            return "2.0"
        if cmd == "*IDN?":
            return "Physik Instrumente (PI), Test GCS controller, 0, 1.0"
        if cmd == "SAI?":
            return "\n".join(self.axes)
        if cmd in ("POS?", "ONT?", "SVO?", "TMN?", "TMX?"):
            names = args or list(self.axes)
            if any(n not in self.axes for n in names):
                self.fail(E_ILLEGAL_AXIS)
                return ""
            value = {
                "POS?": lambda a: f"{a.position():.6f}",
                "ONT?": lambda a: "1" if a.position() == a.target else "0",
                "SVO?": lambda a: "1" if a.servo else "0",
                "TMN?": lambda a: f"{a.low:.6f}",
                "TMX?": lambda a: f"{a.high:.6f}",
            }[cmd]
            return "\n".join(f"{n}={value(self.axes[n])}" for n in names)
        if cmd in ("SVO", "MOV"):
            pairs = list(zip(args[::2], args[1::2], strict=False))
            for name, value in pairs:
                axis = self.axes.get(name)
                if axis is None:
                    self.fail(E_ILLEGAL_AXIS)
                elif cmd == "SVO":
                    axis.servo = value == "1"
                elif not axis.servo:
                    self.fail(E_SERVO_OFF)
                elif not axis.low <= float(value) <= axis.high:
                    self.fail(E_POSITION_OUT_OF_LIMITS)
                else:
                    axis.move(float(value))
            return None
        if cmd in ("HLT", "STP"):
            for name in args or list(self.axes):
                if name in self.axes:
                    self.axes[name].halt()
            self.fail(E_STOPPED)
            return None
        self.fail(E_UNKNOWN_COMMAND)
        return None


async def serve(port: int, axes: dict[str, PiAxis]) -> None:
    controller = Controller(axes)

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while line := await reader.readline():
            reply = controller.answer(line.decode("ascii"))
            if reply is not None:
                lines = reply.split("\n")
                writer.write((" \n".join(lines) + "\n").encode("ascii"))
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(client, "127.0.0.1", port)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


def main(argv: list[str]) -> None:
    port = int(argv[0])
    axes = {}
    for spec in argv[1:]:
        name, low, high, velocity, start = spec.split(",")
        axes[name] = PiAxis(float(low), float(high), float(velocity), float(start))
    asyncio.run(serve(port, axes))


if __name__ == "__main__":
    main(sys.argv[1:])
