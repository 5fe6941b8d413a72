"""Checks of a plan's arguments, run before the plan's first message.

Pure functions (no device access): a plan calls them at the top of its body, so a bad
argument is refused at the plan's first ``next()``: before any message, with no run
opened and nothing moved. Every refusal is a :class:`PlanArgumentError` naming the plan,
the argument, the value and what was expected, with units::

    count_at_heights: magnet_heights_mm='12' is a str; expected a list of magnet
    heights (mm), e.g. [6.0, 4.0]

Checks against the instrument (limits, the loaded calibration, the ROI table, the
camera's health) need readings and live in :mod:`magscope_plans._preflight`.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "InstrumentNotReadyError",
    "PlanArgs",
    "PlanArgumentError",
    "PlanRefusal",
    "PreflightError",
    "is_refusal",
    "refusal_line",
]


class PlanRefusal(Exception):
    """A plan refused to start (bad argument, instrument not ready); its message is one
    line that says why and what would be accepted."""


class PlanArgumentError(PlanRefusal, ValueError):
    """A plan argument has the wrong type, is not finite, out of range, or the wrong
    length. ``plan``, ``argument``, ``value`` and ``expected`` hold the parts."""

    def __init__(
        self, plan: str, argument: str, value: Any, problem: str, expected: str
    ) -> None:
        self.plan = plan
        self.argument = argument
        self.value = value
        self.problem = problem
        self.expected = expected
        super().__init__(f"{plan}: {argument}={_short_repr(value)} {problem}; expected {expected}")


class PreflightError(PlanRefusal, ValueError):
    """The instrument's state does not allow the plan: no beads selected, no Z-LUT or
    force calibration loaded, a Z-LUT from another bead layout..."""


class InstrumentNotReadyError(PlanRefusal, RuntimeError):
    """The instrument cannot run a plan now (e.g. its camera process failed)."""


def _short_repr(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _a_type(value: Any) -> str:
    """``"a str"``, ``"an int"``: the value's type with its article."""
    name = type(value).__name__
    return f"{'an' if name[:1].lower() in 'aeiou' else 'a'} {name}"


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _units(units: str) -> str:
    return f" {units}" if units else ""


def _is_sequence(value: Any) -> bool:
    if isinstance(value, str | bytes | bytearray | Mapping):
        return False
    if isinstance(value, np.ndarray):
        return value.ndim == 1
    return isinstance(value, Sequence)


class PlanArgs:
    """The argument checks of one plan: each method returns the checked value (as a
    float, int or list) or raises :class:`PlanArgumentError` naming ``plan``."""

    def __init__(self, plan: str) -> None:
        self.plan = plan

    def error(self, argument: str, value: Any, problem: str, expected: str) -> PlanArgumentError:
        return PlanArgumentError(self.plan, argument, value, problem, expected)

    # -- numbers ----------------------------------------------------------------------------
    def real(
        self,
        argument: str,
        value: Any,
        *,
        units: str = "",
        low: float | None = None,
        high: float | None = None,
        low_open: bool = False,
        high_open: bool = False,
        what: str = "",
    ) -> float:
        """A finite real number (not a bool or a str) within the bounds given (closed,
        or open with ``low_open`` / ``high_open``); ``what`` names the quantity."""
        expected = self._number_expectation(units, low, high, low_open, high_open, what)
        if not _is_real(value):
            raise self.error(argument, value, f"is {_a_type(value)}", expected)
        x = float(value)
        if not math.isfinite(x):
            raise self.error(argument, value, "is not finite", expected)
        if low is not None and (x <= low if low_open else x < low):
            if low == 0:
                problem = "is not positive" if low_open else "is negative"
            else:
                problem = f"is {'at or ' if low_open else ''}below {low:g}{_units(units)}"
            raise self.error(argument, value, problem, expected)
        if high is not None and (x >= high if high_open else x > high):
            problem = f"is {'at or ' if high_open else ''}above {high:g}{_units(units)}"
            raise self.error(argument, value, problem, expected)
        return x

    @staticmethod
    def _number_expectation(
        units: str, low: float | None, high: float | None, low_open: bool, high_open: bool,
        what: str,
    ) -> str:
        noun = what or "a number"
        if low is not None and high is not None:
            left, right = "(" if low_open else "[", ")" if high_open else "]"
            return f"{noun} in {left}{low:g}, {high:g}{right}{_units(units)}"
        if low == 0 and not what:
            kind = "a positive" if low_open else "a non-negative"
            return f"{kind} number of {units}" if units else f"{kind} number"
        if low is not None:
            return f"{noun} {'>' if low_open else '>='} {low:g}{_units(units)}"
        if high is not None:
            return f"{noun} {'<' if high_open else '<='} {high:g}{_units(units)}"
        if what:
            return f"{what} ({units})" if units else what
        return f"a finite number of {units}" if units else "a finite number"

    def positive(self, argument: str, value: Any, *, units: str = "", what: str = "") -> float:
        """A finite number > 0."""
        return self.real(argument, value, units=units, low=0.0, low_open=True, what=what)

    def non_negative(self, argument: str, value: Any, *, units: str = "", what: str = "") -> float:
        """A finite number >= 0."""
        return self.real(argument, value, units=units, low=0.0, what=what)

    def optional_real(self, argument: str, value: Any, **kwargs: Any) -> float | None:
        """None, or :meth:`real` with the same options."""
        return None if value is None else self.real(argument, value, **kwargs)

    def count(
        self, argument: str, value: Any, *, minimum: int = 1, maximum: int | None = None,
        what: str = "a whole number",
    ) -> int:
        """A whole number (int, not a bool, a float or a str) in [minimum, maximum]."""
        bounds = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        expected = f"{what} {bounds}"
        if not _is_int(value):
            raise self.error(argument, value, f"is {_a_type(value)}", expected)
        n = int(value)
        if n < minimum:
            raise self.error(argument, value, f"is below {minimum}", expected)
        if maximum is not None and n > maximum:
            raise self.error(argument, value, f"is above {maximum}", expected)
        return n

    def optional_count(self, argument: str, value: Any, **kwargs: Any) -> int | None:
        """None, or :meth:`count` with the same options."""
        return None if value is None else self.count(argument, value, **kwargs)

    def flag(self, argument: str, value: Any) -> bool:
        """True or False (a str such as "no" would count as true)."""
        if not isinstance(value, bool | np.bool_):
            raise self.error(argument, value, f"is {_a_type(value)}", "True or False")
        return bool(value)

    def choice(self, argument: str, value: Any, options: Sequence[Any]) -> Any:
        """One of ``options``."""
        if isinstance(value, bool) or value not in options:
            raise self.error(argument, value, "is not an option", f"one of {tuple(options)!r}")
        return value

    # -- sequences --------------------------------------------------------------------------
    def reals(
        self,
        argument: str,
        values: Any,
        *,
        units: str = "",
        what: str = "numbers",
        example: str = "",
        min_length: int = 1,
        max_length: int | None = None,
        low: float | None = None,
        high: float | None = None,
        min_distinct: int = 0,
    ) -> list[float]:
        """A list, tuple or 1-D array of finite numbers (each checked as :meth:`real`),
        with at least ``min_length`` (and at most ``max_length``) items and at least
        ``min_distinct`` different values."""
        unit = f" ({units})" if units else ""
        if max_length is None:
            size = "" if min_length <= 1 else f"at least {min_length} "
        else:
            size = f"{min_length} " if max_length == min_length else f"{min_length} to {max_length} "
        expected = f"a list of {size}{what}{unit}"
        if example:
            expected += f", e.g. {example}"
        if not _is_sequence(values):
            raise self.error(argument, values, f"is {_a_type(values)}", expected)
        items = list(values)
        if len(items) < min_length or (max_length is not None and len(items) > max_length):
            raise self.error(
                argument, values, f"has {len(items)} item{'' if len(items) == 1 else 's'}",
                expected,
            )
        out = [
            self.real(f"{argument}[{i}]", v, units=units, low=low, high=high)
            for i, v in enumerate(items)
        ]
        distinct = len(set(out))
        if distinct < min_distinct:
            raise self.error(
                argument, values,
                f"has {distinct} different value{'' if distinct == 1 else 's'}",
                f"at least {min_distinct} different {what}{unit}",
            )
        return out

    def bead_ids(self, argument: str, values: Any, *, allow_none: bool = True) -> list[int] | None:
        """None (when allowed) or a list of distinct bead ids (ints >= 0); an empty list
        is left to the plan, which says what it needs."""
        expected = "a list of bead ids (whole numbers >= 0), e.g. [0, 3, 5]"
        if allow_none:
            expected += ", or None"
        if values is None:
            if allow_none:
                return None
            raise self.error(argument, values, "is missing", expected)
        if not _is_sequence(values):
            raise self.error(argument, values, f"is {_a_type(values)}", expected)
        items = list(values)
        ids = [self.count(f"{argument}[{i}]", b, minimum=0, what="a bead id")
               for i, b in enumerate(items)]
        duplicates = sorted({b for b in ids if ids.count(b) > 1})
        if duplicates:
            raise self.error(argument, values, f"repeats bead ids {duplicates}", expected)
        return ids

    def metadata(self, argument: str, value: Any) -> dict[str, Any]:
        """None or a dict of extra start-document metadata (a copy)."""
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise self.error(
                argument, value, f"is {_a_type(value)}",
                "a dict of metadata, e.g. {'sample': 'lambda DNA'}, or None",
            )
        return dict(value)


def refusal_cause(exc: BaseException) -> BaseException | None:
    """The ordinary refusal behind ``exc`` (itself, or the cause of a failed status), or
    None when ``exc`` is an unexpected error that deserves its traceback."""
    from magscope_devices._force import NoForceCalibrationError
    from magscope_devices._force_curve import ForceRangeError
    from magscope_devices._motors import LimitError
    from magscope_tracking.zlut import ZLUTMismatchError

    kinds = (PlanRefusal, LimitError, ForceRangeError, NoForceCalibrationError, ZLUTMismatchError)
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, kinds):
            return current
        # bluesky raises FailedStatus from the device's error (a refused move)
        if type(current).__name__ != "FailedStatus":
            return None
        current = current.__cause__
    return None


def is_refusal(exc: BaseException) -> bool:
    """True when ``exc`` is an ordinary refusal (see :func:`refusal_line`)."""
    return refusal_cause(exc) is not None


def refusal_line(exc: BaseException) -> str | None:
    """The one line to show for an ordinary refusal (a plan's bad argument or unready
    instrument, an axis refusing a target, a force outside the calibration, a Z-LUT the
    tracker refuses), also when bluesky wrapped it in a ``FailedStatus``; None for any
    other error."""
    cause = refusal_cause(exc)
    if cause is None:
        return None
    text = " ".join(str(cause).split())
    return f"{type(cause).__name__}: {text}"
